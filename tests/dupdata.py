"""A small photo folder with planted duplicates, for the tests of acting on duplicates
(tests/test_dupmove.py, tests/test_dupservice.py, tests/test_duppage.py): real files written
with Pillow, EXIF dates written with Pillow, indexed with a small model trained on them.

Each planted group, and the keeper the default rule (``best``) must choose:

* ``a``: ``2019/a.png`` (64x64, kept: most pixels), ``phone/a-small.jpg`` (48x48);
* ``b``: ``2019/b.png`` (PNG, kept: lossless), ``phone/b.jpg`` (JPEG, same size);
* ``c``: ``2019/c-q95.jpg`` (kept: least compressed), ``phone/c-q60.jpg``;
* ``d``: the same JPEG pixels twice, EXIF dates 2018 (``phone/d-2018.jpg``, kept: oldest
  date taken) and 2021 (``2019/d-2021.jpg``), files of the same length;
* ``e``: one file's bytes three times: ``2019/e.jpg`` (kept: shortest path),
  ``2019/e-copy.jpg``, ``phone/e-copy-2.jpg``.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

SIDE = 64
DISTINCT = 24  # other distinct digits, no copies


def _digits(count: int, seed: int = 0) -> list[Image.Image]:
    data = load_digits()
    pick = np.random.default_rng(seed).choice(len(data.images), count, replace=False)
    pixels = np.clip(np.rint(data.images[pick] * (255 / 16)), 0, 255).astype(np.uint8)
    return [Image.fromarray(p).resize((SIDE, SIDE), Image.Resampling.BICUBIC).convert("RGB")
            for p in pixels]


def _exif(date: str) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = date  # DateTimeOriginal
    return exif


def _jpeg(im: Image.Image, quality: int, date: str | None = None) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, **({"exif": _exif(date)} if date else {}))
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


#: group -> (file, is the keeper under 'best')
GROUPS = {
    "a": [("2019/a.png", True), ("phone/a-small.jpg", False)],
    "b": [("2019/b.png", True), ("phone/b.jpg", False)],
    "c": [("2019/c-q95.jpg", True), ("phone/c-q60.jpg", False)],
    "d": [("phone/d-2018.jpg", True), ("2019/d-2021.jpg", False)],
    "e": [("2019/e.jpg", True), ("2019/e-copy.jpg", False), ("phone/e-copy-2.jpg", False)],
}


def write_photos(root: Path) -> dict[str, bytes]:
    """Write the folder; returns each file's path relative to ``root`` -> its bytes."""
    digits = _digits(5)
    a, b, c, d, e = digits[:5]
    files = {
        "2019/a.png": _png(a),
        "phone/a-small.jpg": _jpeg(a.resize((48, 48), Image.Resampling.BICUBIC), 85),
        "2019/b.png": _png(b),
        "phone/b.jpg": _jpeg(b, 90),
        "2019/c-q95.jpg": _jpeg(c, 95),
        "phone/c-q60.jpg": _jpeg(c, 60),
        "phone/d-2018.jpg": _jpeg(d, 85, "2018:06:01 12:00:00"),
        "2019/d-2021.jpg": _jpeg(d, 85, "2021:06:01 12:00:00"),
        "2019/e.jpg": _jpeg(e, 85),
        "2019/e-copy.jpg": _jpeg(e, 85),
        "phone/e-copy-2.jpg": _jpeg(e, 85),
    }
    # the distinct pictures: random 4x4 colour blocks, nothing alike (two different digits
    # drawn from 8x8 can be as alike as a copy once scaled up: no tier should call them apart)
    rng = np.random.default_rng(1)
    for i in range(DISTINCT):
        im = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(
            (SIDE, SIDE), Image.Resampling.NEAREST)
        files[f"{('2019', 'phone')[i % 2]}/other-{i:02d}.png"] = _png(im)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return files


def index_photos(root: Path) -> Path:
    """``root/photos`` written and indexed into ``root/coll`` with a model trained on it
    (1 epoch, 32x32 grey); returns the collection's path."""
    from conftest import _one_thread, _run_quietly

    write_photos(root / "photos")
    with _one_thread():
        _run_quietly(["-q", "train", "--dataset", str(root / "photos"), "--epochs", "1",
                      "--arch", "contrastive", "--size", "32", "--channels", "1",
                      "--device", "cpu", "--seed", "0", "--out", str(root / "model")])
        _run_quietly(["-q", "index", "--model", str(root / "model"), "--dataset",
                      str(root / "photos"), "--out", str(root / "coll")])
    return root / "coll"


def reset(root: Path, master: Path) -> Path:
    """``root`` as :func:`index_photos` left it: the photos written again (the same bytes),
    the collection copied from ``master``, no ``root/dups``; returns the collection's path."""
    for name in ("photos", "coll", "dups"):
        shutil.rmtree(root / name, ignore_errors=True)
    write_photos(root / "photos")
    shutil.copytree(master, root / "coll")
    return root / "coll"


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> SHA-256 of its bytes)."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def expected_groups(photos: Path) -> list[set[str]]:
    return [{str(photos / rel) for rel, _ in files} for files in GROUPS.values()]
