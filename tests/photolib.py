"""A small photo library for the tests of filters and richer queries: real JPEGs with EXIF
written by Pillow (tests/test_files.py's ``photo``), indexed with the CLI."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import _run_quietly
from test_files import photo

#: The modification time of the photos in old/ (June 2019), which have no EXIF date.
OLD_MTIME = 1_560_000_000


def make_library(root: Path, model: Path) -> Path:
    """``root/photos``: trips/2024 (Canon, GPS, taken 2024-01..06), home (Apple, 2021),
    old (no EXIF: its file times say 2019), six of each; indexed into ``root/coll``."""
    folder = root / "photos"
    for n in range(6):
        photo(folder / "trips" / "2024" / f"t{n}.jpg", n, f"2024:0{n + 1}:10 12:00:00",
              ("Canon", "EOS 80D"), (48.5, -2.25))
        photo(folder / "home" / f"h{n}.jpg", 10 + n, f"2021:07:0{n + 1} 08:00:00", ("Apple", "iPhone 12"))
        old = photo(folder / "old" / f"o{n}.jpg", 20 + n)
        os.utime(old, (OLD_MTIME + n, OLD_MTIME + n))
    _run_quietly(["-q", "index", "--model", str(model), "--dataset", str(folder),
                  "--out", str(root / "coll")])
    return root
