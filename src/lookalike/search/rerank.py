"""Label-free re-ranking by diffusion on the database's k-NN graph (Iscen et al.,
"Efficient diffusion on region manifolds", CVPR 2017; Zhou et al. 2004).

First (``whiten`` > 0), the codes are whitened to that power: centred on the database's
mean and each principal direction of the database's codes scaled by its variance to the
power ``-whiten / 2``, the covariance estimated with Ledoit-Wolf shrinkage (a shrinkage
derived from the data, so a small database does not blow up its weakest directions).
Square-root whitening (0.5) evens out the code's few dominant directions, which otherwise
decide most cosines (Jégou & Chum, ECCV 2012, on PCA-whitening for retrieval).

Optionally next (``expand`` > 0), database-side augmentation and query expansion
(Arandjelović & Zisserman 2012; Radenović et al. 2018): each code is replaced by the
``max(0, cos)^3``-weighted mean of its ``expand`` nearest database codes (itself included),
then re-normalised. The database codes (L2-normalised) then form a mutual k-nearest-
neighbour graph weighted by ``max(0, cos)^gamma``, symmetrically normalised to ``S``. A
query links to its ``query_k`` nearest database items with the same weights (vector ``y``);
its ranking is the solution ``f`` of ``(I - alpha S) f = y``, found by conjugate gradient.
Items the diffusion does not reach are ranked after the reached ones by their plain cosine.

Nothing here sees labels or the query images at fit time: only the database codes.

A collection's search (:func:`rerank_candidates`) runs the same diffusion on the query's
``candidates`` nearest items by its index only (the truncation of Iscen et al. 2017, §4),
with the whitening fitted once on a sample of the collection (:func:`fit_whitening`): its
cost per query does not grow with the collection, and a commit has no graph to maintain.
The evaluation protocol ranks the whole database with :class:`Diffusion` itself.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from ..config import DiffusionConfig
from ..errors import LookalikeError

#: the most codes a whitening is fitted on (a sample spread over the database beyond it)
WHITEN_SAMPLE = 5000

#: up to this many codes, nearest neighbours are found by one matrix product, not FAISS
SMALL = 2048
#: up to this many codes the graph is a dense matrix (cheaper than sparse at this size)
DENSE = 400

Whitening = tuple[np.ndarray, np.ndarray]
_FIT: Any = object()  # Diffusion(whitening=...) default: fit on the codes given


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def sample_rows(n: int, sample: int | None = WHITEN_SAMPLE) -> np.ndarray:
    """``sample`` rows of ``n`` at most, evenly spread (all of them when None)."""
    size = n if sample is None else min(n, sample)
    return np.unique(np.linspace(0, n - 1, size).astype(np.int64)) if size else np.empty(0, np.int64)


def fit_whitening(codes: np.ndarray, power: float, sample: int | None = WHITEN_SAMPLE
                  ) -> Whitening | None:
    """``(mean float32 (d,), projection float32 (d, d))`` whitening L2-normalised ``codes``
    to ``power`` (see the module), fitted on ``sample`` of them at most (evenly spread rows;
    None: all); None when ``power`` is 0 or there are too few codes or no variance."""
    if not power or len(codes) < 3:
        return None
    from sklearn.covariance import LedoitWolf  # (1.5 s to import: not on the search path)

    picked = _normalise(np.asarray(codes[sample_rows(len(codes), sample)]))
    est = LedoitWolf(assume_centered=False, store_precision=False).fit(picked.astype(np.float64))
    var, vec = np.linalg.eigh(est.covariance_)
    if not var.max() > 1e-12:  # the codes are (nearly) all alike: nothing to even out
        return None
    var = np.maximum(var, 1e-12 * float(var.max()))
    proj = vec / var ** (power / 2)
    return est.location_.astype(np.float32), proj.astype(np.float32)


class Diffusion:
    """Diffusion ranking over a fixed database of codes ``float32 (n, d)``."""

    def __init__(self, codes: np.ndarray, config: DiffusionConfig | None = None,
                 neighbours: tuple[np.ndarray, np.ndarray] | None = None,
                 whitening: Whitening | None = _FIT) -> None:
        """``neighbours``: the graph's ``(cosines float32 (n, k), rows int64 (n, k))`` as
        returned by :meth:`neighbours` earlier, else computed. ``whitening``: a fit of
        :func:`fit_whitening` (None: none) instead of one fitted on ``codes``."""
        self.config = config or DiffusionConfig()
        self.codes = _normalise(codes)
        self.plain = self.codes  # as searched without re-ranking, for ``config.keep``
        self._whitening = (fit_whitening(self.codes, self.config.whiten, None) if whitening is _FIT
                           else whitening)
        self.codes = self._whiten(self.codes)
        self._index: faiss.IndexFlatIP | None = None
        if self.config.expand:
            self.codes = self._expand(self.codes)
            self._index = None
        self._neighbours = neighbours if neighbours is not None else self._knn()
        self.graph = self._graph()

    def _search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` largest inner products of ``x`` with :attr:`codes`, best first: one
        matrix product for a small database (a collection's candidates), FAISS beyond."""
        n = len(self.codes)
        if n <= SMALL:
            sims = x @ self.codes.T
            top = (np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < n
                   else np.broadcast_to(np.arange(n), sims.shape))
            vals = np.take_along_axis(sims, top, 1)
            order = np.argsort(-vals, axis=1, kind="stable")
            return np.take_along_axis(vals, order, 1), np.take_along_axis(top, order, 1)
        if self._index is None:
            self._index = faiss.IndexFlatIP(self.codes.shape[1])
            self._index.add(self.codes)
        sims, ids = self._index.search(x, k)
        return sims, ids

    def _whiten(self, x: np.ndarray) -> np.ndarray:
        """L2-normalised codes ``x`` whitened by the database's fit, re-normalised."""
        if self._whitening is None:
            return x
        mean, proj = self._whitening
        return _normalise((x - mean) @ proj)

    def _expand(self, x: np.ndarray) -> np.ndarray:
        """Weighted mean of each code's ``expand`` nearest database codes, normalised."""
        k = min(self.config.expand, len(self.codes))
        sims, ids = self._search(x, k)
        w = np.maximum(sims, 0) ** 3
        return _normalise(np.einsum("mk,mkd->md", w, self.codes[ids]) + 1e-12 * x)

    def _knn(self) -> tuple[np.ndarray, np.ndarray]:
        k = min(self.config.k, len(self.codes) - 1)
        if k < 1:
            return (np.zeros((len(self.codes), 0), np.float32),
                    np.zeros((len(self.codes), 0), np.int64))
        sims, ids = self._search(self.codes, k + 1)
        # drop each item itself (usually first; not always when codes are duplicated)
        rows = np.arange(len(ids))[:, None]
        keep = ids != rows
        keep[keep.sum(axis=1) > k, -1] = False  # itself was not found: drop the farthest
        return (sims[keep].reshape(len(ids), k).astype(np.float32),
                ids[keep].reshape(len(ids), k).astype(np.int64))

    def neighbours(self) -> tuple[np.ndarray, np.ndarray]:
        """The database's k-NN lists ``(cosines float32 (n, k), rows int64 (n, k))``."""
        return self._neighbours

    def __len__(self) -> int:
        return len(self.codes)

    def _graph(self) -> sp.csr_matrix | np.ndarray:
        """``S``: dense for a few hundred codes (a collection's candidates), else sparse."""
        n = len(self.codes)
        sims, ids = self._neighbours
        k = ids.shape[1]
        if k < 1:
            return sp.csr_matrix((n, n), dtype=np.float32)
        w = np.maximum(sims, 0) ** self.config.gamma
        if n <= DENSE:
            a = np.zeros((n, n), np.float32)
            a[np.repeat(np.arange(n), k), ids.ravel()] = w.ravel()
            a = np.minimum(a, a.T)  # mutual neighbours only: robust to hubs
            inv = 1.0 / np.sqrt(np.maximum(a.sum(axis=1), 1e-30))
            return (a * inv[:, None] * inv[None, :]).astype(np.float32)
        a = sp.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k), ids.ravel())),
                          shape=(n, n), dtype=np.float32)
        a = a.minimum(a.T)
        deg = np.asarray(a.sum(axis=1)).ravel()
        inv = sp.diags((1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))).astype(np.float32))
        return (inv @ a @ inv).tocsr()

    def _seeds(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kq = min(self.config.query_k, len(self))
        sims, ids = self._search(q, kq)
        return sims, ids

    def scores(self, queries: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Ranking scores ``float32 (m, n)``, higher = closer. The ``config.keep`` nearest
        items by plain cosine score 2 + their cosine, so they come first, in that order;
        the others score their diffusion score in [0, 1] when reached, else their cosine
        minus 2, so unreached items follow every reached one in cosine order. With
        ``config.blend`` > 0 they score their plain cosine plus ``blend`` times their
        diffusion score (0 when unreached) instead. ``exclude``
        (``int64 (m,)``, -1 none): a row per query that scores -inf (the query itself)."""
        plain = _normalise(queries)
        q = self._whiten(plain)
        if self.config.expand:
            q = self._expand(q)
        n = len(self)
        sims, ids = self._seeds(q)
        y = np.zeros((n, len(q)), dtype=np.float32)
        cols = np.repeat(np.arange(len(q)), ids.shape[1])
        y[ids.ravel(), cols] = np.maximum(sims, 0).ravel() ** self.config.gamma
        f = self._solve(y).T
        cos = q @ self.codes.T
        top = f.max(axis=1, keepdims=True)
        reached = f > 1e-6 * np.maximum(top, 1e-30)
        diffused = f / np.maximum(top, 1e-30)
        if self.config.blend:  # the plain cosine decides; diffusion breaks near-ties
            near = plain @ self.plain.T
            out = (near + self.config.blend * np.where(reached, diffused, 0.0)).astype(np.float32)
        else:
            out = np.where(reached, diffused, cos - 2.0).astype(np.float32)
        ex = np.full(len(q), -1, np.int64) if exclude is None else np.asarray(exclude, np.int64)
        has = np.flatnonzero(ex >= 0)
        keep = min(self.config.keep, n - (1 if len(has) else 0))
        if keep > 0:
            near = plain @ self.plain.T
            near[has, ex[has]] = -np.inf
            first = np.argpartition(-near, keep - 1, axis=1)[:, :keep]
            np.put_along_axis(out, first, 2.0 + np.take_along_axis(near, first, 1), 1)
        out[has, ex[has]] = -np.inf
        return out

    def _solve(self, y: np.ndarray) -> np.ndarray:
        """Batched conjugate gradient for ``(I - alpha S) X = Y`` (SPD), one column a query."""
        alpha, s = self.config.alpha, self.graph
        x = np.zeros_like(y)
        r = y.copy()
        p = r.copy()
        rs = np.einsum("ij,ij->j", r, r)
        stop = (self.config.tol ** 2) * np.maximum(rs, 1e-30)
        for _ in range(self.config.iterations):
            ap = p - alpha * (s @ p)
            step = rs / np.maximum(np.einsum("ij,ij->j", p, ap), 1e-30)
            x += step * p
            r -= step * ap
            rs_new = np.einsum("ij,ij->j", r, r)
            if np.all(rs_new <= stop):
                break
            p = r + (rs_new / np.maximum(rs, 1e-30)) * p
            rs = rs_new
        return x

    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None,
               block: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` database rows by diffusion score: ``(scores float32 (m, k), rows int64
        (m, k))``, best first; ``exclude`` (``int64 (m,)``, -1 none) drops one row per query."""
        if k <= 0:
            raise LookalikeError(f"k must be a positive integer, got {k}")
        m = len(queries)
        kk = min(k, len(self))
        out_s = np.full((m, k), -np.inf, dtype=np.float32)
        out_i = np.full((m, k), -1, dtype=np.int64)
        for start in range(0, m, block):
            sc = self.scores(queries[start:start + block],
                             None if exclude is None else exclude[start:start + block])
            part = np.argpartition(-sc, kk - 1, axis=1)[:, :kk]
            order = np.take_along_axis(part, np.argsort(-np.take_along_axis(sc, part, 1),
                                                        axis=1, kind="stable"), 1)
            vals = np.take_along_axis(sc, order, 1)
            valid = np.isfinite(vals)
            out_s[start:start + len(sc), :kk] = np.where(valid, vals, -np.inf)
            out_i[start:start + len(sc), :kk] = np.where(valid, order, -1)
        return out_s, out_i


def rerank_candidates(query: np.ndarray, codes: np.ndarray, config: DiffusionConfig,
                      whitening: Whitening | None) -> np.ndarray:
    """Diffusion scores ``float32 (c,)`` (as :meth:`Diffusion.scores`, higher = closer) of
    a query ``float32 (d,)`` over its candidates ``float32 (c, d)`` alone: the graph is
    the mutual k-NN graph of the candidates, ``whitening`` the database's fit."""
    if not len(codes):
        return np.empty(0, np.float32)
    return Diffusion(codes, config, whitening=whitening).scores(query[None])[0]
