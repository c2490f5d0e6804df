"""Whether the alignment found for a near pair is one an edit can make, judged on the two
files' frames (their widths and heights), where the pixels cannot tell.

A near edit keeps the frame (re-encoding, resizing, brightness, a stamp) or takes a border of
at most :data:`~lookalike.search.alignment.MAX_CROP` of a side off it (a crop). So the frames
of the two files of a near pair, laid over each other by the warp found on their stored
pictures, each cover their union but for a border of at most :data:`MAX_BORDER` of the
union's side at each of its four sides. Two windows of one scene that overlap by half or less
can match at a wrong offset where their overlap holds nothing to align on (flat colour, a
straight edge, a smooth gradient): every offset matches as well, and the zoom and shift that
the search keeps put one frame well past the other (docs/duplicates.md gives the figures).

A stored picture is its file scaled to cover the stored frame and centre-cropped (or, for a
model that squashes, scaled to it), so a file's width and height say where its stored
picture lies in it. They come from the collection's catalogue of files (recorded when the
file was read) or, for an item with no catalogue row, from the header of its source file;
an item with neither (a dataset's, an upload's, a file gone) has no frame, and its pairs
keep the decision of the pixels alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..data.images import image_size, preview_spec
from ..errors import ImageError
from . import files
from .alignment import MAX_CROP

if TYPE_CHECKING:
    from .collection import Collection

#: The widest border (a fraction of the union's side) a near pair's frame may leave at a side
#: of the union of both frames: two copies each cropped by up to MAX_CROP a side, on opposite
#: sides, leave MAX_CROP / (1 - 2 MAX_CROP) = 0.125; plus 0.01 for the warp's precision (0.3%
#: of a side in shift, 0.6% in zoom). On the benchmark every copy stayed within 0.103, the
#: windows matched at a wrong offset went to 0.18-0.22.
MAX_BORDER = MAX_CROP / (1 - 2 * MAX_CROP) + 0.01


def largest_border(src_size: np.ndarray, dst_size: np.ndarray, stored: tuple[int, int],
                   warps: np.ndarray, squash: bool = False) -> np.ndarray:
    """``float64 (m,)``: for each pair, the widest border that either frame leaves at a side
    of the union of both frames, as a fraction of the union's side along that axis (0 for
    equal frames; ``nan`` where a size is unknown).

    ``src_size``, ``dst_size``: ``(m, 2)`` files' ``(width, height)`` (``nan``: unknown);
    ``stored``: the stored pictures' ``(height, width)``; ``warps``: ``(m, 3)``
    ``(scale, shift_y, shift_x)`` as in :mod:`lookalike.search.alignment`: the region of the
    source's stored picture of side ``scale`` (a fraction of each side) centred ``shift``
    (fractions of each side) off its centre is the destination's whole stored picture.
    ``squash``: the stored pictures were scaled to the frame on each axis, not cropped.
    """
    src = np.asarray(src_size, np.float64).reshape(-1, 2)
    dst = np.asarray(dst_size, np.float64).reshape(-1, 2)
    warps = np.asarray(warps, np.float64).reshape(-1, 3)
    h, w = stored
    frame = np.array([w, h], np.float64)

    def per_pixel(size: np.ndarray) -> np.ndarray:  # stored pixels per file pixel, per axis
        ratio = frame / size
        return ratio if squash else np.repeat(ratio.max(axis=1, keepdims=True), 2, axis=1)

    cs, cd = per_pixel(src), per_pixel(dst)
    scale, shift = warps[:, :1], warps[:, [2, 1]]  # (x, y) order, as the sizes
    # in the source file's pixels, from its centre: the destination file's frame
    centre = shift * frame / cs
    half = scale * cd / cs * dst / 2
    lo = np.minimum(-src / 2, centre - half)
    hi = np.maximum(src / 2, centre + half)
    side = hi - lo
    borders = np.concatenate([(-src / 2 - lo) / side, (hi - src / 2) / side,
                              (centre - half - lo) / side, (hi - centre - half) / side], axis=1)
    return borders.max(axis=1)  # type: ignore[no-any-return]


def _header_size(path: str) -> tuple[float, float]:
    try:
        height, width, _ = image_size(path)
    except ImageError:
        return np.nan, np.nan
    return float(width), float(height)


def frame_sizes(coll: Collection, ids: np.ndarray) -> np.ndarray:
    """``float64 (m, 2)``: each item's file ``(width, height)``, as the catalogue recorded it
    (an item shown by several files: its first catalogued file with a size) or else read from
    the header of its source file; ``nan`` for an item with neither."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    out = np.full((len(ids), 2), np.nan)
    wanted = np.unique(ids)
    known: dict[int, tuple[float, float]] = {}
    for item, rows in files.of_ids(files.db(coll), wanted.tolist()).items():
        sized = [r for r in rows if r.width and r.height]
        if sized:
            known[item] = (float(sized[0].width), float(sized[0].height))  # type: ignore[arg-type]
    rest = [int(v) for v in wanted if int(v) not in known]
    for it in coll.items(rest) if rest else []:
        if it is not None and os.path.isabs(it.source) and os.path.isfile(it.source):
            known[it.id] = _header_size(it.source)
    for r, v in enumerate(ids.tolist()):
        if v in known:
            out[r] = known[v]
    return out


@dataclass(frozen=True)
class Frames:
    """What :func:`lookalike.search.finecheck.fine_check` needs to judge the frames:
    ``sizes(rows)``, the ``float64 (m, 2)`` file sizes of rows of the stored pictures
    (:func:`frame_sizes`), and whether the pictures were stored squashed (not cropped)."""

    sizes: Callable[[np.ndarray], np.ndarray]
    squash: bool = False


def frames_of(coll: Collection) -> Frames:
    """The :class:`Frames` of a collection's rows (``coll.ids[rows]``)."""
    ids = coll.ids
    return Frames(lambda rows: frame_sizes(coll, ids[np.asarray(rows, np.int64)]),
                  preview_spec(coll.input_spec).resize == "squash")
