"""Alternatives to the frame check of near pairs (lookalike.search.dupgeometry), measured as
ablation rows by benchmarks/duplicates.py. Each takes the pairs that pass the fine check of
the pixels and says which to take out of ``near``:

* ``edit_warp``: the best warp *an edit can make* (one whose frames leave borders of at most
  ``MAX_BORDER``), over the 645 zooms and shifts of the grid at 32 px both ways, must itself
  reach the near threshold (the frame check judges the one best warp instead). With
  ``refine``, the best such warp of the grid at 16 px is refined at 32 px as the pass refines
  (a local search that may move it by up to about 2% of a side), and its borders are given:
  run as a script, this module prints it for the benchmark's pairs (see :func:`main`);
* ``hires``: two measures on the source files read at 256 px (the stored pictures' frame,
  scaled up), laid over each other by the warp found at 32 px and refined there by whole
  pixels (+-2) and zooms (+-0.3%): ``detail``, the correlation of their band-pass detail
  (difference of Gaussians, sigma 1 and 4 px); ``peak``, how much better the alignment is than
  the same one moved by 4-6 px (``(best - moved) / (1 - moved)``, grey): a flat picture
  matches at every offset, so its match proves nothing.

A pair with a file that cannot be read gets ``nan`` (kept).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from lookalike.config import InputSpec
from lookalike.data.images import conform, load_image
from lookalike.errors import ImageError
from lookalike.search.alignment import (
    WARPS,
    _axis_dense,
    _half,
    _operator,
    _refine,
    standardise,
    thumbnails,
)
from lookalike.search.dupgeometry import MAX_BORDER, largest_border
from lookalike.search.finecheck import aligned

HIRES = 256
MARGIN = 8  # pixels of the 256-px frame left out at each edge (the warp repeats the edge)


def _all_warps(a: np.ndarray, b: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``(T, m)``: the correlation of every grid warp of ``a[i]`` with ``b[i]`` at 32 px."""
    op, sums = _operator(*shape, WARPS)
    x, zb = standardise(a), standardise(b)
    size = shape[0] * shape[1]
    moved = np.asarray(op @ x.T).reshape(len(WARPS), size, len(x))
    dots = (moved * zb.T[None]).sum(axis=1)
    s = sums @ x.T
    return dots / np.sqrt(np.maximum((moved * moved).sum(axis=1) - s * s / size, 1e-12))  # type: ignore[no-any-return]


def edit_warp(pics_a: np.ndarray, pics_b: np.ndarray, sizes_a: np.ndarray,
              sizes_b: np.ndarray) -> np.ndarray:
    """``(m,)``: the best correlation at 32 px over the grid's warps, either way, whose
    frames leave borders of at most MAX_BORDER (``nan`` where a size is unknown)."""
    h, w = pics_a.shape[1:3]
    shape = (min(h, 32), min(w, 32))
    ta, tb = thumbnails(pics_a).astype(np.float32), thumbnails(pics_b).astype(np.float32)
    grid = np.asarray(WARPS)
    out = np.full(len(ta), np.nan)
    for k in range(len(ta)):
        if np.isnan(sizes_a[k]).any() or np.isnan(sizes_b[k]).any():
            continue
        best = -1.0
        for x, y, sx, sy in ((ta, tb, sizes_a, sizes_b), (tb, ta, sizes_b, sizes_a)):
            corr = _all_warps(x[k:k + 1], y[k:k + 1], shape)[:, 0]
            border = largest_border(np.repeat(sx[k:k + 1], len(grid), 0),
                                    np.repeat(sy[k:k + 1], len(grid), 0), (h, w), grid)
            if (border <= MAX_BORDER).any():
                best = max(best, float(corr[border <= MAX_BORDER].max()))
        out[k] = best
    return out


def edit_warp_refined(pics_a: np.ndarray, pics_b: np.ndarray, sizes_a: np.ndarray,
                      sizes_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(score, border)``, each ``(m,)``: :func:`edit_warp` with ``refine`` (module
    docstring), and the borders its refined warp leaves (``nan``: no size, a blank picture)."""
    h, w = pics_a.shape[1:3]
    shape = (min(h, 32), min(w, 32))
    ta, tb = thumbnails(pics_a).astype(np.float32), thumbnails(pics_b).astype(np.float32)
    grid = np.asarray(WARPS)
    score, border = np.full(len(ta), np.nan), np.full(len(ta), np.nan)
    for k in range(len(ta)):
        if (np.isnan(sizes_a[k]).any() or np.isnan(sizes_b[k]).any() or np.ptp(ta[k]) == 0
                or np.ptp(tb[k]) == 0):
            continue
        for x, y, sx, sy in ((ta, tb, sizes_a, sizes_b), (tb, ta, sizes_b, sizes_a)):
            corr = _all_warps(_half(x[k:k + 1], shape)[0], _half(y[k:k + 1], shape)[0],
                              (shape[0] // 2, shape[1] // 2))[:, 0]
            borders = largest_border(np.repeat(sx[k:k + 1], len(grid), 0),
                                     np.repeat(sy[k:k + 1], len(grid), 0), (h, w), grid)
            ok = np.flatnonzero(borders <= MAX_BORDER)
            if not len(ok):
                continue
            got, _, warp = _refine(x[k:k + 1], standardise(y[k:k + 1]), shape,
                                   grid[ok[corr[ok].argmax()]][None])
            if not got[0] <= score[k]:  # (nan: the first)
                score[k] = float(got[0])
                border[k] = float(largest_border(sx[k:k + 1], sy[k:k + 1], (h, w), warp)[0])
    return score, border


def main() -> None:
    """For the benchmark's pairs that pass the fine check of the pixels: the warp the pass
    keeps (score, borders) and the refined best warp an edit can make, for every pair of
    distinct windows; and how many copies that best edit warp leaves below the threshold."""
    import argparse
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from duplicates import lookalike_groups

    from lookalike.search.collection import Collection
    from lookalike.search.dupgeometry import frame_sizes
    from lookalike.search.duplicates import NEAR_THRESHOLD
    from lookalike.search.finecheck import frame_borders

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--work", required=True, help="benchmarks/duplicates.py's --work")
    args = ap.parse_args()
    work = Path(args.work)
    truth = json.loads((work / "truth.json").read_text())["files"]
    coll = Collection.open(work / "coll")
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def record(c: object, i: np.ndarray, j: np.ndarray, score: np.ndarray,
               threshold: float) -> np.ndarray:
        seen.append((i, j, score))
        return score

    lookalike_groups(work / "coll", frames=False, after=record)
    i, j, score = seen[-1]
    keep = score >= NEAR_THRESHOLD
    i, j, score = i[keep], j[keep], score[keep]
    pics_a = np.stack([coll.store.picture(int(r)) for r in i])
    pics_b = np.stack([coll.store.picture(int(r)) for r in j])
    sa, sb = frame_sizes(coll, coll.ids[i]), frame_sizes(coll, coll.ids[j])
    found = frame_borders(pics_a, pics_b, sa, sb, aligned(pics_a, pics_b))
    edit, edit_border = edit_warp_refined(pics_a, pics_b, sa, sb)
    names = {it.id: Path(it.source).name for it in coll.items(coll.ids) if it}
    a_names, b_names = [names[int(x)] for x in coll.ids[i]], [names[int(x)] for x in coll.ids[j]]
    distinct = np.array([truth[a]["window"] != truth[b]["window"]
                         for a, b in zip(a_names, b_names, strict=True)])
    print(f"{len(i)} pairs pass the fine check of the pixels, {distinct.sum()} of distinct windows")
    print("pair | score kept | its borders | best edit warp, refined | its borders")
    for k in np.flatnonzero(distinct):
        print(f"{a_names[k]} {b_names[k]} | {score[k]:.4f} | {found[k]:.3f} | {edit[k]:.4f} | "
              f"{edit_border[k]:.3f}")
    copies = ~distinct & ~np.isnan(edit)
    print(f"copies: the warp kept leaves at most {np.nanmax(found[~distinct]):.3f}; the best edit "
          f"warp is below the threshold for {(edit[copies] < NEAR_THRESHOLD).sum()} of "
          f"{copies.sum()} (lowest {edit[copies].min():.4f})")


def _hires(path: str, shape: tuple[int, int]) -> np.ndarray | None:
    try:
        image = load_image(path, size=shape)
    except ImageError:
        return None
    return conform([image], InputSpec(3, *shape))[0].astype(np.float32).mean(axis=-1)  # type: ignore[no-any-return]


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum() + 1e-9))


def _band(z: np.ndarray) -> np.ndarray:
    return ndimage.gaussian_filter(z, 1) - ndimage.gaussian_filter(z, 4)  # type: ignore[no-any-return]


def _at(x: np.ndarray, y: np.ndarray, oy: int, ox: int, inner: int = MARGIN + 6) -> float:
    """The correlation of ``x`` moved by ``(oy, ox)`` with ``y``, inside a frame of
    ``inner`` pixels (room for the moves)."""
    h, w = y.shape
    return _corr(x[inner + oy:h - inner + oy, inner + ox:w - inner + ox],
                 y[inner:h - inner, inner:w - inner])


def hires(pics_a: np.ndarray, pics_b: np.ndarray, paths_a: list[str | None],
          paths_b: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
    """``(detail, peak)``, each ``(m,)`` (module docstring)."""
    h, w = pics_a.shape[1:3]
    shape = (round(HIRES * h / max(h, w)), round(HIRES * w / max(h, w)))
    one, warps = aligned(pics_a, pics_b)
    detail = np.full(len(pics_a), np.nan)
    peak = np.full(len(pics_a), np.nan)
    m = MARGIN
    for k in range(len(pics_a)):
        pa, pb = paths_a[k], paths_b[k]
        a = _hires(pa, shape) if pa else None
        b = _hires(pb, shape) if pb else None
        if a is None or b is None:
            continue
        src, dst = (a, b) if one[k] else (b, a)
        s, dy, dx = (round(float(v), 5) for v in warps[k])
        best = (-2.0, np.zeros(0), 0, 0)
        for ds in (-0.003, 0.0, 0.003):
            zoom = round(min(1.0, s + ds), 5)
            moved = _axis_dense(shape[0], zoom, dy) @ src @ _axis_dense(shape[1], zoom, dx).T
            for ty in range(-2, 3):
                for tx in range(-2, 3):
                    c = _corr(moved[m + ty:shape[0] - m + ty, m + tx:shape[1] - m + tx],
                              dst[m:shape[0] - m, m:shape[1] - m])
                    if c > best[0]:
                        best = (c, moved, ty, tx)
        _, moved, ty, tx = best
        bm, bd = _band(moved), _band(dst)
        near = [(ty + u, tx + v) for u in (-1, 0, 1) for v in (-1, 0, 1)]
        far = [(ty + u, tx + v) for u in range(-6, 7) for v in range(-6, 7) if max(abs(u), abs(v)) >= 4]
        detail[k] = max(_at(bm, bd, oy, ox) for oy, ox in near)
        here = max(_at(moved, dst, oy, ox) for oy, ox in near)
        ring = max(_at(moved, dst, oy, ox) for oy, ox in far)
        peak[k] = (here - ring) / max(1 - ring, 1e-4)
    return detail, peak


if __name__ == "__main__":
    main()
