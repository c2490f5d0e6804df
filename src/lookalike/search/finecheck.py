"""The fine check of the pairs that pass the 32-px aligned correlation: their stored pictures
at full size (at most 96 px a side), in colour, laid over each other by the warp found at
32 px, must agree block by block.

Two pictures of one scene can correlate above the near threshold at 32 px grey while a part
of one is not in the other (a horizon's reflections seen from another place); a copy made by
re-encoding, resizing, cropping or a brightness change agrees everywhere once aligned and
fitted for brightness and contrast. The check: after a brightness and contrast fit of each
colour channel over the aligned frame (without its ring), the absolute difference, largest
over the channels, averaged in each block of 1/:data:`BLOCKS` of the side (8x8 px of a
96-px picture), stays within :data:`MAX_BLOCK_RESIDUAL` grey levels in every block. Only
the near pairs are checked. docs/duplicates.md gives the figures behind the thresholds.

Given the files' sizes, :func:`fine_check` also applies the frame check of
:mod:`lookalike.search.dupgeometry` to the same warp: the files' frames it lays over each
other must leave no border wider than an edit's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .alignment import (
    RING,
    WARPS,
    _axis_dense,
    _both_ways,
    _half,
    _refine,
    standardise,
    thumb_shape,
    thumbnails,
)
from .dupgeometry import MAX_BORDER, Frames, largest_border

#: A block's side is the picture's side over this (8 px of a 96-px picture); the frame
#: without its ring holds 10 x 10 of them.
BLOCKS = 12
#: The most a block may differ (mean absolute difference, grey levels of 255) once aligned
#: and fitted: on the benchmark's wallpapers every copy stayed within 16.1, the overlapping
#: windows of a horizon went to 24.2-26.6 (docs/duplicates.md).
MAX_BLOCK_RESIDUAL = 20.0


def _warps(ta: np.ndarray, tb: np.ndarray, shape: tuple[int, int]
           ) -> tuple[np.ndarray, np.ndarray]:
    """For each pair of 32-px thumbnails: whether ``a`` is the one warped, and the warp."""
    grid = np.asarray(WARPS)
    (ha, hs), (hb, _) = _half(ta, shape), _half(tb, shape)
    _, w1, w2 = _both_ways(ha, hb, hs, WARPS)
    s1, _, v1 = _refine(ta, standardise(tb), shape, grid[w1])
    s2, _, v2 = _refine(tb, standardise(ta), shape, grid[w2])
    one = s1 >= s2
    return one, np.where(one[:, None], v1, v2)


def aligned(pics_a: np.ndarray, pics_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each pair of stored pictures ``uint8 (m, H, W, C)``: whether ``a`` is the one
    warped, ``bool (m,)``, and the warp found at 32 px, ``float64 (m, 3)`` (scale, shifts)."""
    h, w = pics_a.shape[1:3]
    return _warps(thumbnails(pics_a).astype(np.float32), thumbnails(pics_b).astype(np.float32),
                  thumb_shape(h, w))


def block_residuals(pics_a: np.ndarray, pics_b: np.ndarray,
                    warped: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``float32 (m,)``: for each pair of stored pictures ``uint8 (m, H, W, C)``, the largest
    block difference of the fine check (module docstring), in grey levels; ``warped``: the
    pairs' :func:`aligned` when known."""
    m, h, w, c = pics_a.shape
    out = np.zeros(m, np.float32)
    if not m:
        return out
    shape = thumb_shape(h, w)
    one, warps = aligned(pics_a, pics_b) if warped is None else warped
    ry, rx = RING * h // shape[0], RING * w // shape[1]
    by, bx = max(1, h // BLOCKS), max(1, w // BLOCKS)
    ny, nx = (h - 2 * ry) // by, (w - 2 * rx) // bx
    for n in range(m):
        src, dst = (pics_a[n], pics_b[n]) if one[n] else (pics_b[n], pics_a[n])
        s, dy, dx = (round(float(v), 5) for v in warps[n])
        rows, cols = _axis_dense(h, s, dy), _axis_dense(w, s, dx)
        moved = np.stack([rows @ src[..., k].astype(np.float32) @ cols.T for k in range(c)], -1)
        x = moved[ry:h - ry, rx:w - rx].reshape(-1, c)
        y = dst[ry:h - ry, rx:w - rx].reshape(-1, c).astype(np.float32)
        x, y = x - x.mean(0), y - y.mean(0)
        gain = (x * y).sum(0) / np.maximum((x * x).sum(0), 1e-6)
        res = np.abs(y - gain * x).max(axis=1).reshape(h - 2 * ry, w - 2 * rx)
        blocks = res[:ny * by, :nx * bx].reshape(ny, by, nx, bx).mean(axis=(1, 3))
        out[n] = blocks.max()
    return out


def frame_borders(pics_a: np.ndarray, pics_b: np.ndarray, sizes_a: np.ndarray,
                  sizes_b: np.ndarray, warped: tuple[np.ndarray, np.ndarray],
                  squash: bool = False) -> np.ndarray:
    """``float64 (m,)``: :func:`lookalike.search.dupgeometry.largest_border` of each pair of
    stored pictures laid over each other by ``warped`` (:func:`aligned`), given their files'
    ``(width, height)`` ``(m, 2)``; ``nan`` where a size is unknown or a picture is flat (a
    flat picture has no alignment to judge)."""
    one, warps = warped
    src = np.where(one[:, None], sizes_a, sizes_b)
    dst = np.where(one[:, None], sizes_b, sizes_a)
    out = largest_border(src, dst, pics_a.shape[1:3], warps, squash)
    flat = (np.ptp(pics_a.reshape(len(pics_a), -1), axis=1) == 0) | (
        np.ptp(pics_b.reshape(len(pics_b), -1), axis=1) == 0)
    out[flat] = np.nan
    return out


def fine_check(pictures: Callable[[np.ndarray], np.ndarray], i: np.ndarray, j: np.ndarray,
               score: np.ndarray, threshold: float, chunk: int = 256,
               frames: Frames | None = None) -> np.ndarray:
    """``score`` with each pair ``(i, j)`` (rows) at or above ``threshold`` that fails the
    fine check set to ``threshold - 1e-5`` (below it once rounded to the 6 digits a pair
    keeps); ``pictures(rows)``: the rows' stored pictures, ``uint8 (m, H, W, C)``. With
    ``frames``, a pair whose files' frames, laid over each other by the warp, leave a
    border wider than :data:`~lookalike.search.dupgeometry.MAX_BORDER` fails too (a pair
    with a frame of unknown size is judged on its pixels alone)."""
    out = score.astype(np.float32).copy()
    todo = np.flatnonzero(out >= threshold)
    for start in range(0, len(todo), chunk):
        pick = todo[start:start + chunk]
        pa, pb = pictures(i[pick]), pictures(j[pick])
        warped = aligned(pa, pb)
        bad = block_residuals(pa, pb, warped) > MAX_BLOCK_RESIDUAL
        if frames is not None:
            borders = frame_borders(pa, pb, frames.sizes(i[pick]), frames.sizes(j[pick]), warped,
                                    frames.squash)
            bad |= borders > MAX_BORDER  # (nan: unknown, not bad)
        out[pick[bad]] = threshold - 1e-5
    return out
