"""Near-duplicate images in a collection: one picture resized, re-encoded or slightly cropped.

Two stages, in memory O(n·k) (plus the items' thumbnails), never O(n²):

1. **Candidates from the codes.** Every item's ``k`` nearest items by cosine similarity of
   the codes (a FAISS flat inner-product index over the L2-normalised codes, searched
   ``block`` rows at a time). A model's codes put an image's copies near it, but they put
   other images of the same kind as near: on scikit-learn's digits, a 6%-cropped copy is
   no closer in code to its original than the nearest *distinct* digit is
   (``docs/benchmarks.md``, section "duplicates"). So codes only choose which pairs to look at.
2. **Checked on the pixels.** Each candidate pair's stored images (as the model sees them,
   grey, at most :data:`COMPARE_SIZE` pixels a side) are compared by the Pearson
   correlation of their pixels *after the best small alignment*: the highest correlation
   over :data:`WARPS`, the changes that cropping up to 6% of a side off one or both edges
   makes (and their inverses), each axis on its own. Resizing and re-encoding need no warp.
   (The search is a cascade: plain correlation, then the :data:`N_COARSE` warps that move one
   axis or both alike, then all, each on the rows that may still reach the threshold.)
   A pair is a near-duplicate when that correlation reaches ``threshold``
   (:data:`DEFAULT_THRESHOLD`). The correlation ignores brightness and contrast and does not
   depend on the model, so one threshold serves every collection. Images stored smaller
   than about 16 pixels a side hold too little to tell a cropped copy from a similar
   distinct image (8x8 digits: two different "1"s correlate 0.994 after alignment).

Groups are the connected components of the near-duplicate pairs (SciPy). A group larger
than ``k + 1`` is still found whole when its members' neighbour lists chain it together.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import TYPE_CHECKING

import faiss
import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from ..config import DUPLICATE_K, DUPLICATE_THRESHOLD, InputSpec
from ..data.images import conform
from ..errors import LookalikeError

if TYPE_CHECKING:
    from .collection import Collection

log = logging.getLogger(__name__)

#: Default aligned pixel correlation for a near-duplicate (see the module docstring and
#: docs/benchmarks.md for the distributions it was chosen from).
DEFAULT_THRESHOLD = DUPLICATE_THRESHOLD
DEFAULT_K = DUPLICATE_K
DEFAULT_BLOCK = 1024
#: Images are compared at most this many pixels a side (larger stored images are reduced).
COMPARE_SIZE = 32


def _axis_warps(crops: tuple[float, ...], zoom: float) -> tuple[tuple[float, float], ...]:
    """``(scale, shift)`` along one axis, the shift in sides. Cropping a fraction ``f`` off
    one edge and bringing the rest back to the full side is scale ``1 - f``, shift ``±f/2``;
    cropping ``zoom`` off both edges alike is scale ``1 - zoom``, no shift; and each one's
    inverse is there too (the cropped copy may be either image of a pair)."""
    out = {(1.0, 0.0), (1 - zoom, 0.0), (1 / (1 - zoom), 0.0)}
    for f in crops:
        for shift in (f / 2, -f / 2):
            out |= {(1 - f, shift), (1 / (1 - f), -shift / (1 - f))}
    return tuple(sorted(out))


#: Per axis: crops of 3% and 6% off either edge, 6% off both, and their inverses.
AXIS_WARPS = _axis_warps((0.03, 0.06), 0.06)
_IDENTITY = (1.0, 0.0)


def _coarse(warp: tuple[float, float, float, float]) -> bool:
    """Whether a warp moves one axis only, or both alike (a zoom, a crop off a corner)."""
    sy, sx, dy, dx = warp
    return (sy, dy) == _IDENTITY or (sx, dx) == _IDENTITY or (sy == sx and abs(dy) == abs(dx))


#: ``(scale_y, scale_x, shift_y, shift_x)``: every pair of per-axis warps (121), the first
#: :data:`N_COARSE` (39) of them the coarse ones (:func:`_coarse`).
WARPS: tuple[tuple[float, float, float, float], ...] = tuple(sorted(
    ((sy, sx, dy, dx) for (sy, dy), (sx, dx) in itertools.product(AXIS_WARPS, AXIS_WARPS)),
    key=lambda w: not _coarse(w)))
N_COARSE = sum(map(_coarse, WARPS))
#: The search is a cascade, each step on the rows that may still reach the threshold: the
#: plain correlation, then the coarse warps, then all. Measured on digits (docs/benchmarks.md),
#: a copy gains at most 0.14 from plain to aligned (2 px off two edges of 32: 0.85 -> 0.998)
#: and 0.003 from the coarse warps to all of them; these margins leave room to spare.
PLAIN_MARGIN = 0.2
COARSE_MARGIN = 0.03


def _unit_rows(codes: np.ndarray) -> np.ndarray:
    x = np.array(codes, dtype=np.float32, copy=True, order="C")
    if x.ndim != 2:
        raise LookalikeError(f"codes must be (n, d), got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


def thumbnails(images: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """``uint8 (n, H, W, C)`` -> ``uint8 (n, h*w)`` grey, at most COMPARE_SIZE a side, and
    ``(h, w)``."""
    _, height, width, _ = images.shape
    spec = InputSpec(1, min(height, COMPARE_SIZE), min(width, COMPARE_SIZE))
    out = np.empty((len(images), spec.height * spec.width), dtype=np.uint8)
    for start in range(0, len(images), 4096):  # (a memory-mapped collection stays on disk)
        chunk = conform(np.asarray(images[start:start + 4096]), spec)
        out[start:start + len(chunk)] = chunk.reshape(len(chunk), -1)
    return out, (spec.height, spec.width)


def _axis_operators(n: int) -> list[sparse.csr_matrix]:
    """Each of :data:`AXIS_WARPS` on a line of ``n`` pixels as an ``(n, n)`` matrix: SciPy's
    linear-interpolation ``affine_transform`` (edges repeated) of every one-pixel line."""
    centre = (n - 1) / 2
    ops = []
    for scale, shift in AXIS_WARPS:
        moved = ndimage.affine_transform(np.eye(n), np.array([1.0, scale]), order=1,
                                         offset=(0.0, centre * (1 - scale) + shift * n),
                                         mode="nearest")
        moved[np.abs(moved) < 1e-9] = 0
        ops.append(sparse.csr_matrix(moved.T))
    return ops


@functools.lru_cache(maxsize=8)
def _warp_operator(height: int, width: int) -> tuple[sparse.csr_matrix, np.ndarray]:
    """All of :data:`WARPS` as one sparse ``(len(WARPS) * h*w, h*w)`` matrix (bilinear
    interpolation is separable: each warp is the Kronecker product of its two axes' warps),
    and ``(len(WARPS), h*w)``: what each input pixel adds to each warp's pixel sum."""
    rows = dict(zip(AXIS_WARPS, _axis_operators(height), strict=True))
    cols = dict(zip(AXIS_WARPS, _axis_operators(width), strict=True))
    ops = [sparse.kron(rows[(sy, dy)], cols[(sx, dx)], format="csr")
           for sy, sx, dy, dx in WARPS]
    sums = np.stack([np.asarray(op.sum(axis=0)).ravel() for op in ops]).astype(np.float32)
    return sparse.vstack(ops, format="csr").astype(np.float32), sums


def _standardise(v: np.ndarray) -> np.ndarray:
    """Along the last axis, as float32: minus the mean, over the norm (a constant vector
    stays zero)."""
    v = v.astype(np.float32)
    v -= v.mean(axis=-1, keepdims=True)
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
    return v


def _best_warp(raw: np.ndarray, z: np.ndarray, shape: tuple[int, int], warps: int) -> np.ndarray:
    """``(c, k)``: the best correlation over the first ``warps`` of :data:`WARPS` of each
    of ``raw`` (``(c, h*w)``) with its neighbours ``z`` (standardised, ``(c, k, h*w)``)."""
    op, warp_sums = _warp_operator(*shape)
    size = shape[0] * shape[1]
    x = raw.astype(np.float32)
    by_warp = np.asarray(op[:warps * size] @ x.T).reshape(warps, size, len(x))
    moved = np.empty((len(x), warps, size), dtype=np.float32)
    for t in range(warps):  # (a transpose warp by warp stays in the cache)
        moved[:, t] = by_warp[t].T
    # Pearson correlation with a standardised z: <moved, z> / |moved - mean(moved)|
    # (z sums to 0, so the mean of moved drops out of the numerator).
    sums = x @ warp_sums[:warps].T  # (c, T): each warp's pixel sum
    spread = np.einsum("ctp,ctp->ct", moved, moved) - sums * sums / size
    corr = np.matmul(moved, z.transpose(0, 2, 1))  # (c, T, k)
    corr /= np.sqrt(np.maximum(spread, 1e-6))[:, :, None]
    return corr.max(axis=1)


def aligned_correlation(thumbs: np.ndarray, shape: tuple[int, int], rows: np.ndarray,
                        nbrs: np.ndarray, floor: float | None = None, chunk: int = 128
                        ) -> np.ndarray:
    """``float32 (m, k)``: for each row and each of its neighbours, the highest Pearson
    correlation of their pixels over :data:`WARPS` of the row's image.

    ``thumbs`` is ``(n, h*w)`` of images ``shape`` = ``(h, w)`` (see :func:`thumbnails`);
    ``rows`` ``(m,)`` and ``nbrs`` ``(m, k)`` are row indices (a negative neighbour scores
    -1). With ``floor``, rows whose neighbours cannot reach it (by the cascade's margins)
    keep a lower score than their best, one below ``floor``.
    """
    valid = nbrs >= 0
    z = _standardise(thumbs[np.where(valid, nbrs, 0)])  # (m, k, h*w)
    score = np.einsum("mh,mkh->mk", _standardise(thumbs[rows]), z)
    steps = [(N_COARSE, -np.inf if floor is None else floor - PLAIN_MARGIN),
             (len(WARPS), -np.inf if floor is None else floor - COARSE_MARGIN)]
    for warps, needed in steps:
        todo = np.flatnonzero(np.any(valid & (score >= needed), axis=1))
        for start in range(0, len(todo), chunk):
            pick = todo[start:start + chunk]
            best = _best_warp(thumbs[rows[pick]], z[pick], shape, warps)
            score[pick] = np.maximum(score[pick], best)
    return np.where(valid, score, -1.0).astype(np.float32)


def _groups(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Connected components with more than one member, as sorted row lists, sorted."""
    graph = sparse.coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    members = np.flatnonzero(np.bincount(label)[label] > 1)
    groups: dict[int, list[int]] = {}
    for row in members:
        groups.setdefault(int(label[row]), []).append(int(row))
    return sorted(groups.values())


def duplicate_rows(codes: np.ndarray, images: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                   k: int = DEFAULT_K, block: int = DEFAULT_BLOCK) -> list[list[int]]:
    """Groups of near-duplicate rows (see the module docstring): each group sorted, the
    groups sorted by their first row.

    ``codes`` is ``float32 (n, d)``, ``images`` ``uint8 (n, H, W, C)`` row-aligned with it.
    """
    if len(codes) != len(images):
        raise LookalikeError(f"{len(codes)} codes but {len(images)} images")
    if not -1.0 <= threshold <= 1.0:
        raise LookalikeError(f"threshold must be a correlation in [-1, 1], got {threshold}")
    if k <= 0 or block <= 0:
        raise LookalikeError(f"k and block must be positive, got k={k}, block={block}")
    n = len(codes)
    if n < 2:
        return []
    x = _unit_rows(codes)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    grey, shape = thumbnails(images)
    lefts: list[np.ndarray] = []
    rights: list[np.ndarray] = []
    for start in range(0, n, block):
        _, nbr = index.search(x[start:start + block], min(k + 1, n))
        rows = np.arange(start, start + len(nbr))
        nbr = np.where(nbr == rows[:, None], -1, nbr)  # not itself
        score = aligned_correlation(grey, shape, rows, nbr, floor=threshold)
        hit_row, hit_col = np.nonzero((score >= threshold) & (nbr >= 0))
        lefts.append(rows[hit_row])
        rights.append(nbr[hit_row, hit_col])
    i, j = np.concatenate(lefts), np.concatenate(rights)
    log.info("%d near-duplicate pairs among %d items' %d nearest codes", len(i), n, k)
    return _groups(n, i, j)


def find_duplicates(collection: Collection, threshold: float = DEFAULT_THRESHOLD,
                    k: int = DEFAULT_K, block: int = DEFAULT_BLOCK) -> list[list[int]]:
    """Groups of near-duplicate item ids in ``collection``: each group sorted, groups sorted."""
    rows = duplicate_rows(np.asarray(collection.embeddings), collection.images, threshold, k,
                          block)
    ids = collection.ids
    return sorted(sorted(int(ids[r]) for r in group) for group in rows)
