"""How alike two small grey pictures are once the best crop of one is laid over the other.

A collection stores each picture scaled to cover its frame and centre-cropped (the model's
input, at most 96 px a side), so whatever one copy of a photo lost at its borders (cropped
by up to :data:`MAX_CROP` a side), resizing or re-encoding, the stored picture of the copy is
the stored picture of the original *zoomed in by a factor s in [1 - 2·MAX_CROP, 1] and
shifted*: one uniform scale and a translation (both frames are cut by one scale factor; a
wide picture cut more on one side than the other moves sideways by up to about
:data:`SLACK` of the frame beyond what the zoom leaves room for).

:func:`pair_scores` scores a pair of pictures by the highest Pearson correlation of their
grey pixels over :data:`WARPS`: every such zoom of *either* picture (its centre region,
scaled up to the full frame, bilinear) laid over the other picture as it is. Zooming *into*
the picture with more content keeps every compared pixel inside both pictures, so the border
that a crop removed is never compared. Correlation ignores brightness and contrast; it does
not depend on any model, so its thresholds serve every collection.

The search is a cascade, each stage on the pairs still able to pass: a plain correlation of
8x8 block means (:data:`GATE`), then every warp of the grid at half size (16 px a side),
then, for the pairs within :data:`HALF_MARGIN` of the threshold, a local search around the
best grid warp at :data:`COMPARE_SIZE` (:func:`_refine`, which also scores the frame without
its outer :data:`RING` pixels and keeps the better).
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
from scipy import ndimage, sparse

from ..config import InputSpec
from ..data.images import conform

#: Pictures are compared at most this many pixels a side (grey).
COMPARE_SIZE = 32
#: The most a copy may have lost at each border, as a fraction of the side.
MAX_CROP = 0.10
#: How far (fraction of the side) a zoomed region may sit off-centre beyond the room the
#: zoom leaves: a wide picture cropped 10% on one side and 2% on the other moves 0.07.
SLACK = 0.08
#: Zoom factors (fraction of the side kept) and the step of the shifts.
SCALES = (1.0, 0.95, 0.9, 0.85, 0.8)
SHIFT_STEP = 0.025


Warp = tuple[float, float, float]


def _warps(scales: tuple[float, ...], step: float) -> tuple[Warp, ...]:
    """``(scale, shift_y, shift_x)``: the region of side ``scale`` whose centre sits at the
    frame's centre plus the shifts (fractions of the side), for every scale of ``scales``
    and every shift on a grid of ``step`` up to ``(1 - scale) / 2 + SLACK``."""
    out = []
    for s in scales:
        reach = int(np.floor(((1 - s) / 2 + SLACK) / step + 1e-9))
        steps = [i * step for i in range(-reach, reach + 1)]
        out += [(s, dy, dx) for dy in steps for dx in steps]
    return tuple(out)


#: The grid searched at half size (16 px a side), then refined at full size.
WARPS = _warps(SCALES, SHIFT_STEP)


def thumbnails(images: np.ndarray, size: int = COMPARE_SIZE) -> np.ndarray:
    """``uint8 (n, H, W, C)`` -> ``uint8 (n, h*w)``: grey, at most ``size`` a side (the
    pictures are square or are compared as their own shape); ``h, w`` = :func:`thumb_shape`."""
    _, height, width, _ = images.shape
    spec = InputSpec(1, min(height, size), min(width, size))
    out = np.empty((len(images), spec.height * spec.width), dtype=np.uint8)
    for start in range(0, len(images), 4096):  # (a memory-mapped collection stays on disk)
        chunk = conform(np.asarray(images[start:start + 4096]), spec)
        out[start:start + len(chunk)] = chunk.reshape(len(chunk), -1)
    return out


def thumb_shape(height: int, width: int, size: int = COMPARE_SIZE) -> tuple[int, int]:
    return min(height, size), min(width, size)


def _axis_operator(n: int, scale: float, shift: float) -> sparse.csr_matrix:
    """``(n, n)``: a line of ``n`` pixels resampled (linear, edges repeated) at the points of
    the region of length ``scale`` centred ``shift`` (fractions of the line) off its centre."""
    centre = (n - 1) / 2
    moved = ndimage.affine_transform(np.eye(n), np.array([1.0, scale]), order=1,
                                     offset=(0.0, centre * (1 - scale) + shift * n),
                                     mode="nearest")
    moved[np.abs(moved) < 1e-9] = 0
    return sparse.csr_matrix(moved.T)


@functools.lru_cache(maxsize=8)
def _operator(height: int, width: int, warps: tuple[Warp, ...] = WARPS
              ) -> tuple[sparse.csr_matrix, np.ndarray]:
    """Every warp of ``warps`` as one sparse ``(len(warps) * h*w, h*w)`` matrix (bilinear
    resampling is separable: the Kronecker product of the two axes'), and
    ``(len(warps), h*w)``: what each input pixel adds to each warp's pixel sum."""
    ops = [sparse.kron(_axis_operator(height, s, dy), _axis_operator(width, s, dx), format="csr")
           for s, dy, dx in warps]
    sums = np.stack([np.asarray(op.sum(axis=0)).ravel() for op in ops]).astype(np.float32)
    return sparse.vstack(ops, format="csr").astype(np.float32), sums


@functools.lru_cache(maxsize=8)
def _operator_blocks(height: int, width: int, warps: tuple[Warp, ...] = WARPS,
                     per: int = 32) -> tuple[sparse.csr_matrix, ...]:
    """:func:`_operator`'s rows ``per`` warps at a time."""
    op, _ = _operator(height, width, warps)
    size = height * width
    return tuple(op[t * size:(t + per) * size] for t in range(0, len(warps), per))


def standardise(v: np.ndarray) -> np.ndarray:
    """Along the last axis, as float32: minus the mean, over the norm (a constant vector
    stays zero)."""
    v = v.astype(np.float32)
    v -= v.mean(axis=-1, keepdims=True)
    v /= np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
    return v


def _one_way(a: np.ndarray, zb: np.ndarray, shape: tuple[int, int],
             warps: tuple[Warp, ...] = WARPS) -> tuple[np.ndarray, np.ndarray]:
    """For each pair, the best correlation of a warp of ``a[i]`` (``(m, h*w)``) with
    ``zb[i]`` (standardised), ``(m,)``, and that warp's index in ``warps``, ``(m,)``."""
    _, warp_sums = _operator(*shape, warps)
    size = shape[0] * shape[1]
    x = standardise(a)  # (a warp of a constant is that constant: no cancellation below)
    xt, zt = np.ascontiguousarray(x.T), zb.T
    # Pearson with a standardised zb: <moved, zb> / |moved - mean| (zb sums to 0), a few warps
    # at a time: (T, p, m) products small enough for the cache (3-5x faster than all at once)
    dots = np.empty((len(warps), len(x)), np.float32)  # (T, m)
    squares = np.empty((len(warps), len(x)), np.float32)
    t = 0
    for op in _operator_blocks(*shape, warps):
        moved = np.asarray(op @ xt).reshape(-1, size, len(x))  # (warps of the block, p, m)
        dots[t:t + len(moved)] = np.einsum("tpm,pm->tm", moved, zt)
        squares[t:t + len(moved)] = np.einsum("tpm,tpm->tm", moved, moved)
        t += len(moved)
    sums = warp_sums @ x.T  # (T, m)
    spread = squares - sums * sums / size
    corr = dots / np.sqrt(np.maximum(spread, 1e-12))
    best = corr.argmax(axis=0)
    return corr[best, np.arange(len(x))], best


#: The refinement also scores the pictures without this many pixels at each edge, and keeps
#: the better of the two: a date stamp in a corner, a crop that went a little past the other
#: picture's frame, the edge the resampling repeats (on the benchmark the ring lifted the
#: stamped copies' lowest score from 0.971 to 0.998 and the distinct pairs' highest from 0.972
#: to 0.974).
RING = 2


@functools.lru_cache(maxsize=4096)
def _axis_dense(n: int, scale: float, shift: float) -> np.ndarray:
    return np.asarray(_axis_operator(n, scale, shift).toarray(), dtype=np.float32)


def _refine(a: np.ndarray, zb: np.ndarray, shape: tuple[int, int], warp: np.ndarray,
            rounds: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(m,)``: the best correlation of ``a[i]`` warped by ``warp[i]`` (``(m, 3)``: scale,
    shifts) or a warp near it, found by ``rounds`` of local search (steps of half the grid's,
    then a quarter...) with ``zb[i]``; ``(m, h*w)``: those best warps of ``a``; and
    ``(m, 3)``: the warps themselves."""
    h, w = shape
    x = standardise(a).reshape(len(a), h, w)
    current = warp.astype(np.float64)
    best = np.full(len(a), -np.inf, dtype=np.float32)
    best_moved = np.zeros((len(a), h * w), dtype=np.float32)
    ring = np.zeros((h, w), dtype=bool)
    ring[RING:h - RING, RING:w - RING] = True
    inner = ring.ravel()
    zin = standardise(zb[:, inner])
    scale_step = (SCALES[0] - SCALES[1]) / 2
    shift_step = SHIFT_STEP / 2
    for _ in range(rounds):
        start = current.copy()
        for ds, dy, dx in itertools.product((-1, 0, 1), repeat=3):
            cand = start + np.array([ds * scale_step, dy * shift_step, dx * shift_step])
            cand[:, 0] = np.minimum(cand[:, 0], 1.0)
            cand = np.round(cand, 5)
            rows = np.stack([_axis_dense(h, s, y) for s, y in cand[:, :2]])
            cols = np.stack([_axis_dense(w, s, z) for s, z in cand[:, [0, 2]]])
            moved = np.matmul(np.matmul(rows, x), cols.transpose(0, 2, 1)).reshape(len(a), -1)
            corr = np.maximum(np.einsum("mp,mp->m", standardise(moved[:, inner]), zin),
                              np.einsum("mp,mp->m", standardise(moved), zb))
            better = corr > best
            best[better] = corr[better]
            best_moved[better] = standardise(moved[better])
            current[better] = cand[better]
        scale_step, shift_step = scale_step / 2, shift_step / 2
    return best, best_moved, current


def _half(thumbs: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """2x2 block means (an odd side's last row or column joins the block before it)."""
    h, w = shape[0] // 2, shape[1] // 2
    pool = _pooling(shape[0], shape[1], h, w)
    return thumbs.astype(np.float32) @ pool, (h, w)


@functools.lru_cache(maxsize=8)
def _pooling(height: int, width: int, rows: int, cols: int) -> np.ndarray:
    """``(h*w, rows*cols)``: the means of a ``rows`` x ``cols`` grid of blocks as a matrix."""
    ys = np.minimum(np.arange(height) * rows // height, rows - 1)
    xs = np.minimum(np.arange(width) * cols // width, cols - 1)
    cell = (ys[:, None] * cols + xs[None, :]).ravel()
    pool = np.zeros((height * width, rows * cols), np.float32)
    pool[np.arange(height * width), cell] = 1
    return pool / pool.sum(axis=0, keepdims=True)


def _blocks(thumbs: np.ndarray, shape: tuple[int, int], side: int = 8) -> np.ndarray:
    """Means of a ``side`` x ``side`` grid of blocks, ``(n, side*side)`` (a matrix product:
    a strided mean over two axes is many times slower)."""
    return thumbs.astype(np.float32) @ _pooling(shape[0], shape[1], side, side)  # type: ignore[no-any-return]


#: The cascade's gate: the plain correlation of 8x8 block means, which every copy on the
#: benchmark's wallpapers reaches (their lowest: 0.56; docs/benchmarks.md "duplicates").
GATE = 0.5
#: A copy's score on the half-size grid is at most 0.088 below its refined score on the
#: benchmark's wallpapers: pairs further below the near threshold are not refined.
HALF_MARGIN = 0.1


def _both_ways(a: np.ndarray, b: np.ndarray, shape: tuple[int, int],
               warps: tuple[Warp, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best warp of either over the other: scores ``(m,)`` and each way's best warp."""
    one, w1 = _one_way(a, standardise(b), shape, warps)
    two, w2 = _one_way(b, standardise(a), shape, warps)
    return np.maximum(one, two), w1, w2


def pair_scores(thumbs_a: np.ndarray, thumbs_b: np.ndarray, shape: tuple[int, int],
                floor: float | None = None, refine_above: float | None = None,
                chunk: int = 256) -> np.ndarray:
    """``float32 (m,)``: the aligned correlation of each pair ``(thumbs_a[i], thumbs_b[i])``
    (``uint8 (m, h*w)`` of pictures ``shape``): the best zoom and shift of either one laid
    over the other (:data:`WARPS` at half size, refined at full size).

    A cascade, each stage on the pairs the last one left: with ``floor``, a pair whose 8x8
    block means correlate below :data:`GATE` keeps that correlation (below ``floor``); with
    ``refine_above``, a pair whose half-size score is below it keeps that score, unrefined.
    Constant pictures score 0 against anything but a constant picture (1).
    """
    a = thumbs_a.astype(np.float32)
    b = thumbs_b.astype(np.float32)
    flat_a, flat_b = np.ptp(a, axis=1) == 0, np.ptp(b, axis=1) == 0
    todo = np.flatnonzero(~flat_a & ~flat_b)
    score = np.zeros(len(a), np.float32)
    if floor is not None:  # the gate; a pair that fails it keeps its block correlation
        gate = np.einsum("mp,mp->m", standardise(_blocks(a[todo], shape)),
                         standardise(_blocks(b[todo], shape)))
        score[todo] = np.minimum(gate, floor - 1e-3)
        todo = todo[gate >= GATE]
    score[todo] = np.einsum("mp,mp->m", standardise(a[todo]), standardise(b[todo]))
    if shape[0] < 16 or shape[1] < 16:  # too small for a cascade: the grid at full size
        for start in range(0, len(todo), chunk):
            pick = todo[start:start + chunk]
            score[pick] = np.maximum(score[pick], _both_ways(a[pick], b[pick], shape, WARPS)[0])
    else:
        grid = np.asarray(WARPS)
        for start in range(0, len(todo), chunk):
            pick = todo[start:start + chunk]
            (ha, hshape), (hb, _) = _half(a[pick], shape), _half(b[pick], shape)
            half, w1, w2 = _both_ways(ha, hb, hshape, WARPS)
            score[pick] = np.maximum(score[pick], half)
            fine = np.ones(len(pick), bool) if refine_above is None else half >= refine_above
            p = pick[fine]
            if len(p):
                score[p] = np.maximum(_refine(a[p], standardise(b[p]), shape, grid[w1[fine]])[0],
                                      _refine(b[p], standardise(a[p]), shape, grid[w2[fine]])[0])
    score[flat_a | flat_b] = 0.0
    score[flat_a & flat_b] = 1.0
    return score.astype(np.float32)
