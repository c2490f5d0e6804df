"""read_facts on a 3000x3000 PNG whose eXIf chunk follows its pixels: the header-only read
(:func:`lookalike.data.filefacts.read_facts`, which skips such an eXIf) against Pillow's
``getexif()``, which decodes the whole image to reach it. Best of 5, side by side::

    python benchmarks/late_exif_png.py
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import time
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

from lookalike.data import filefacts


def _late_exif_png(path: str, side: int = 3000) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(
        buf, format="PNG", compress_level=1)
    data = buf.getvalue()
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:05:01 10:11:12"
    raw = exif.tobytes()
    chunk = struct.pack(">I", len(raw)) + b"eXIf" + raw + struct.pack(">I", zlib.crc32(b"eXIf" + raw))
    end = data.rindex(b"IEND") - 4
    with open(path, "wb") as f:
        f.write(data[:end] + chunk + data[end:])


def _getexif(path: str) -> object:
    with Image.open(path) as im:
        return im.size, im.getexif()


def _best(fn: Callable[[str], object], path: str, n: int = 5) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn(path)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "late.png")
        _late_exif_png(path)
        guarded, decoded = _best(filefacts.read_facts, path), _best(_getexif, path)
    print(f"read_facts: {guarded * 1e3:.2f} ms; Image.open + getexif(): {decoded * 1e3:.1f} ms; "
          f"ratio {decoded / guarded:.0f}x")


if __name__ == "__main__":
    main()
