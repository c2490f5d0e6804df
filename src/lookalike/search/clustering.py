"""K-means on codes (seed 003): the elbow curve, a fitted clustering, and search
restricted to the query's cluster, with its recall against exact search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np
from sklearn.cluster import KMeans

from ..errors import LookalikeError


def elbow_curve(x: np.ndarray, ks: Sequence[int], seed: int = 0) -> np.ndarray:
    """K-means inertia (sum of squared distances to the nearest centre) for each ``k``:
    ``float64 (len(ks),)``."""
    return np.array([fit_kmeans(x, k, seed).inertia for k in ks], dtype=np.float64)


def choose_k(ks: Sequence[int], inertias: Sequence[float]) -> int:
    """The elbow: the ``k`` whose point lies farthest below the straight line joining
    the first and last points of the (normalised) curve."""
    k = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertias, dtype=np.float64)
    if len(k) < 3:
        return int(k[0])
    kn = (k - k[0]) / (k[-1] - k[0])
    yn = (y - y[-1]) / max(y[0] - y[-1], 1e-12)
    gap = (1 - kn) - yn  # the chord goes from (0, 1) to (1, 0)
    return int(k[int(np.argmax(gap))])


@dataclass(frozen=True, eq=False)
class Clustering:
    """``centroids`` ``float32 (k, d)``, ``assignment`` ``int64 (n,)`` (row order of the
    codes it was fitted on), ``inertia``."""

    centroids: np.ndarray
    assignment: np.ndarray
    inertia: float

    @property
    def k(self) -> int:
        return len(self.centroids)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Nearest centroid of each code: ``int64 (m,)``."""
        _, idx = faiss.knn(np.ascontiguousarray(x, dtype=np.float32), self.centroids, 1)
        return idx[:, 0].astype(np.int64)


def fit_kmeans(x: np.ndarray, k: int, seed: int = 0) -> Clustering:
    """Fit K-means (scikit-learn, k-means++, 3 restarts) on codes ``(n, d)``."""
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise LookalikeError(f"the number of clusters must be a positive integer, got {k}")
    if k > len(x):
        raise LookalikeError(f"cannot make {k} clusters of {len(x)} items")
    km = KMeans(n_clusters=int(k), n_init=3, random_state=seed).fit(np.asarray(x, np.float32))
    return Clustering(km.cluster_centers_.astype(np.float32), km.labels_.astype(np.int64),
                      float(km.inertia_))


def search_in_cluster(queries: np.ndarray, codes: np.ndarray, ids: np.ndarray,
                      clustering: Clustering, k: int, exclude: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` among the items of each query's cluster only.

    Returns ``(distances float32 (m, k), ids int64 (m, k))`` padded with +inf / -1 when
    the cluster holds fewer than ``k`` items. ``exclude`` drops one id per query.
    """
    q = np.ascontiguousarray(queries, dtype=np.float32)
    out_d = np.full((len(q), k), np.inf, dtype=np.float32)
    out_i = np.full((len(q), k), -1, dtype=np.int64)
    labels = clustering.predict(q)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        members = np.flatnonzero(clustering.assignment == c)
        if len(members) == 0:
            continue
        kk = min(k + 1, len(members))
        d, local = faiss.knn(q[rows], np.ascontiguousarray(codes[members], np.float32), kk)
        for r, dr, lr in zip(rows, d, local, strict=True):
            found = ids[members[lr]]
            keep = found != (exclude[r] if exclude is not None else -2)
            n = min(k, int(keep.sum()))
            out_d[r, :n] = dr[keep][:n]
            out_i[r, :n] = found[keep][:n]
    return out_d, out_i
