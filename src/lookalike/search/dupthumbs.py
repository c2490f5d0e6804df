"""The grey thumbnails the duplicate pass compares (:func:`lookalike.search.alignment.thumbnails`
of the stored pictures), kept on disk a segment at a time and read memory-mapped.

A collection's segments never change once written (a deletion is recorded beside one; a changed
picture goes to a new segment), so the thumbnails of a segment's pictures, made once, serve
every later pass: ``COLLECTION/duplicates/thumbs/SEGMENT-HxW.npy``, ``uint8 (pictures, h*w)``
in the segment's own order (deleted pictures included), each written atomically. Files of
segments the collection no longer has are removed when the files are brought up to date.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..fsutil import atomic_write
from .alignment import thumb_shape, thumbnails

if TYPE_CHECKING:
    from .segments import SegmentStore

log = logging.getLogger(__name__)

#: Pictures decoded at a time while a segment's thumbnails are made.
BATCH = 4096


def _name(segment: str, shape: tuple[int, int]) -> str:
    return f"{segment.replace('/', '_')}-{shape[0]}x{shape[1]}.npy"


def _save(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:  # (np.save given a name would add ".npy" to it)
        np.save(fh, array, allow_pickle=False)


def _make(store: SegmentStore, part: int) -> np.ndarray:
    count = store.segment_pictures(part)
    h, w = thumb_shape(*store.shape[:2])
    out = np.empty((count, h * w), np.uint8)
    for start in range(0, count, BATCH):
        stop = min(count, start + BATCH)
        out[start:stop] = thumbnails(np.stack([store.picture_at(part, k)
                                               for k in range(start, stop)]))
    return out


def segment_thumbs(store: SegmentStore, folder: Path, *, write: bool = True,
                   progress: Callable[[int], object] | None = None
                   ) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[int, int]]:
    """``(thumbs, shape)``: ``thumbs(rows)`` gives the rows' ``uint8 (m, h*w)`` thumbnails of
    the collection's pictures, ``shape`` their ``(h, w)``.

    With ``write``, each segment without its file gets one (decoding its pictures once), and
    files of segments gone are removed; a segment whose file cannot be written or read has its
    thumbnails made when asked for. ``progress(pictures)`` is called as files are made.
    """
    shape = thumb_shape(*store.shape[:2])
    cache = folder / "thumbs"
    parts: list[np.ndarray | None] = []
    wanted = set()
    for i, seg in enumerate(store.segments):
        path = cache / _name(seg.name, shape)
        wanted.add(path.name)
        got = None
        try:
            got = np.load(path, mmap_mode="r", allow_pickle=False)
            if got.shape != (store.segment_pictures(i), shape[0] * shape[1]) or got.dtype != np.uint8:
                got = None
        except (OSError, ValueError):
            got = None
        if got is None and write:
            made = _make(store, i)
            try:
                atomic_write(path, lambda tmp, a=made: _save(tmp, a))  # type: ignore[misc]
                got = np.load(path, mmap_mode="r", allow_pickle=False)
            except OSError as exc:  # a read-only collection: this pass keeps them in memory
                log.warning("could not keep the thumbnails in %s (%s)", cache, exc)
                got = made
            if progress is not None:
                progress(len(made))
        parts.append(got)
    if write and cache.is_dir():
        for old in cache.glob("*.npy"):
            if old.name not in wanted:
                old.unlink(missing_ok=True)

    def thumbs(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        seg, off = store.locate(rows)
        out = np.empty((len(rows), shape[0] * shape[1]), np.uint8)
        for i in np.unique(seg).tolist():
            pick = np.flatnonzero(seg == i)
            part = parts[i]
            if part is not None:
                out[pick] = part[off[pick]]
            else:
                out[pick] = thumbnails(np.stack([store.picture_at(i, int(k)) for k in off[pick]]))
        return out

    return thumbs, shape
