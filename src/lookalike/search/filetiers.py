"""Whether two image files are the same file (``identical``: equal bytes) or hold the same
picture (``same-pixels``: equal decoded pixels, another format or other metadata)."""

from __future__ import annotations

import functools
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..fsutil import file_sha256


@functools.lru_cache(maxsize=65536)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """(cached by the file's size and modification time)"""
    return file_sha256(path)


def file_digest(path: str) -> str | None:
    """SHA-256 of a file's bytes, or ``None`` when it cannot be read."""
    try:
        st = os.stat(path)
        return _digest(path, st.st_size, st.st_mtime_ns)
    except OSError:
        return None


def _pixels(path: str) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            im.load()
            mode = "RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB"
            return np.asarray(im.convert(mode))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def file_tier(a: str, b: str) -> str | None:
    """``"identical"`` when files ``a`` and ``b`` have equal bytes, ``"same-pixels"`` when
    they decode (Pillow, as RGB, or RGBA where either has transparency) to equal arrays,
    else ``None`` (also when either cannot be read)."""
    da, db = file_digest(a), file_digest(b)
    if da is None or db is None:
        return None
    if da == db:
        return "identical"
    pa, pb = _pixels(a), _pixels(b)
    if pa is None or pb is None:
        return None
    if pa.shape[-1] != pb.shape[-1]:  # one has an alpha channel: compare as RGBA
        pa = pa if pa.shape[-1] == 4 else np.dstack([pa, np.full(pa.shape[:2], 255, np.uint8)])
        pb = pb if pb.shape[-1] == 4 else np.dstack([pb, np.full(pb.shape[:2], 255, np.uint8)])
    return "same-pixels" if pa.shape == pb.shape and np.array_equal(pa, pb) else None
