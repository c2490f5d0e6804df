"""A folder of bad (and awkward but valid) image files, built by the tests themselves.

:func:`build` writes the corpus and returns one :class:`Case` per entry, saying whether
indexing must keep it or skip it and with what reason. Good images are scikit-learn digits
upscaled with Pillow, so a model trained on digits sees familiar pixels.
"""

from __future__ import annotations

import io
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

from lookalike.data.images import MAX_PIXELS

AS_ROOT = os.geteuid() == 0  # root reads files and folders whatever their permissions


@dataclass(frozen=True)
class Case:
    name: str  # path relative to the corpus folder
    what: str
    reason: str | None  # None: indexed; else a regular expression its skip reason matches
    listed: bool = True  # False: not an image candidate at all (neither indexed nor reported)
    digit: int | None = None  # the digit (index in scikit-learn's digits) its pixels show

    @property
    def indexed(self) -> bool:
        return self.reason is None and self.listed


def digit(i: int, size: int = 32) -> Image.Image:
    """Digit ``i`` of scikit-learn's digits, 0..255 grey, upscaled to ``size`` (bicubic)."""
    pixels = np.clip(np.rint(load_digits().images[i] * (255 / 16)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="L").resize((size, size), Image.Resampling.BICUBIC)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_header(width: int, height: int) -> bytes:
    """A well-formed PNG (IHDR with a correct CRC) claiming ``width`` x ``height`` grey
    pixels, with a few bytes of pixel data: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))


def _encoded(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def build(root: Path) -> list[Case]:
    """Write the corpus into ``root`` (created) and return its cases."""
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, data: bytes | Image.Image, what: str, reason: str | None = None,
            shows: int | None = None, **save: object) -> Path:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, Image.Image):
            data.save(path, **save)
        else:
            path.write_bytes(data)
        cases.append(Case(name, what, reason, digit=shows))
        return path

    for i in range(5):
        add(f"good_{i}.png", digit(i), "a digit, grey PNG", shows=i)
    add("sub/good_5.png", digit(5), "a digit in a subfolder", shows=5)
    os.symlink("..", root / "sub" / "up")  # sub/up -> the corpus folder: a loop
    cases.append(Case("sub/up", "folder symlink to its parent (a loop)", None, listed=False))

    png = _encoded(digit(6), "PNG")
    jpeg = _encoded(digit(7).convert("RGB"), "JPEG", quality=90)
    damaged = "image data is damaged|not a readable image"  # (where Pillow notices differs)
    add("truncated.png", png[: len(png) // 2], "PNG cut in half", damaged)
    add("truncated.jpg", jpeg[: len(jpeg) // 2], "JPEG cut in half", damaged)
    add("empty.png", b"", "zero bytes", "not a readable image")
    add("text.png", b"this is not an image\n" * 10, "a text file named .png",
        "not a readable image")
    add("bomb.png", png_header(100_000, 100_000), "header claims 100000x100000 pixels",
        "too large")
    add("ppm.png", _encoded(digit(8), "PPM"), "a PPM (not a supported format) named .png",
        "not a readable image")
    add("cmyk.jpg", digit(9).convert("CMYK"), "CMYK JPEG", shows=9, quality=90)
    deep = np.asarray(digit(10), dtype=np.uint16) * 257
    add("deep16.png", Image.fromarray(deep), "16-bit grey PNG", shows=10)
    # (transparent colour 0 is the digit's black background: it turns white)
    add("palette.png", digit(11).convert("P"), "palette PNG with a transparent colour",
        transparency=0)
    grey = digit(12)
    add("alpha_la.png", Image.merge("LA", (grey, Image.new("L", grey.size, 200))),
        "grey + alpha PNG", shows=12)
    add("alpha_rgba.png", digit(13).convert("RGBA"), "RGBA PNG", shows=13)
    frames = [digit(14).convert("RGB"), digit(15).convert("RGB"), digit(16).convert("RGB")]
    add("animated.gif", frames[0], "animated GIF, 3 frames", shows=14, save_all=True,
        append_images=frames[1:], duration=100, loop=0)
    side = math.isqrt(MAX_PIXELS)  # just within the pixel limit
    add("huge.png", digit(17, size=8).resize((side, side), Image.Resampling.NEAREST),
        f"{side}x{side} PNG, {side * side:,} pixels (the limit is {MAX_PIXELS:,})", shows=17)

    locked = add("locked.png", digit(18), "permissions 000",
                 None if AS_ROOT else "permission denied", shows=18)
    locked.chmod(0)
    hidden = add("closed/good_19.png", digit(19), "a digit in a folder with permissions 000",
                 None if AS_ROOT else "folder cannot be read", shows=19)
    hidden.parent.chmod(0)
    if not AS_ROOT:  # the report names the folder, not the file it could not see
        cases[-1] = Case("closed", cases[-1].what, "folder cannot be read")

    os.symlink("selfloop.png", root / "selfloop.png")
    cases.append(Case("selfloop.png", "file symlink to itself", "cannot be read"))
    os.symlink("nowhere.png", root / "dangling.png")
    cases.append(Case("dangling.png", "symlink to a missing file", "file not found"))
    (root / "notes.txt").write_text("not an image extension: never read\n")
    cases.append(Case("notes.txt", "a text file named .txt", None, listed=False))
    return cases


def unlock(root: Path) -> None:
    """Give back the permissions :func:`build` took (so the folder can be deleted)."""
    for name in ("locked.png", "closed"):
        path = root / name
        if path.exists():
            path.chmod(0o755)
