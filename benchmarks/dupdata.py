"""A folder of photos with planted copies and similar-but-distinct pictures, made from the
wallpapers Debian ships (``apt-get install gnome-backgrounds plasma-workspace-wallpapers
ukui-wallpapers desktop-base mate-backgrounds``; each package's licence is in
``/usr/share/doc/<package>/copyright``; this module installs nothing).

    python benchmarks/dupdata.py --out /tmp/dupbench

*Sources*: each wallpaper once (a plasma wallpaper's largest landscape file, GNOME's light
variants, MATE's files without the ``_WxH`` copies, desktop-base's 16:9 GRUB pictures),
reduced to one of every set of sources that are alike at a loose setting of either method
(pHash Hamming <= 20 or aligned correlation >= 0.9, see :func:`distinct_sources`), so that
the only duplicates are the planted ones.

*Photos*: from each landscape source three windows of 40% of its width and 80% of its height:
``a`` at the left, ``c`` at the right (disjoint from ``a``), and ``b`` overlapping ``a`` by
30-50% of its area (and ``c`` by at most 20%): ``a``-``b`` and ``b``-``c`` are
*similar but distinct* (one scene, overlapping by at most half). Each window is saved at
1024 px on its long side, JPEG quality 92.

*Copies*: every window gets one or two copies, each of one edit kind (:data:`KINDS`, in
turn): JPEG re-encoded at quality 50-80, resized to 55-85%, borders cropped 2-10% a side
(each side drawn on its own), brightness +-6-10%, a date stamp in a corner. ``truth.json``
lists every file with its window (source, window letter) and edit.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

KINDS = ("jpeg", "resize", "crop", "brightness", "stamp")
LONG_SIDE = 1024


def candidate_sources() -> list[Path]:
    """Every wallpaper once, by the naming rules of its package (see the module docstring)."""
    found: list[Path] = []
    plasma = Path("/usr/share/wallpapers")
    for d in sorted(plasma.glob("*/contents/images")):
        files = [f for f in d.iterdir() if f.suffix.lower() in (".jpg", ".png", ".jpeg")]
        sized = [(int(m[1]) * int(m[2]), f) for f in files
                 if (m := re.match(r"(\d+)x(\d+)", f.stem)) and int(m[1]) > int(m[2])]
        if sized:
            found.append(max(sized)[1])
    backgrounds = Path("/usr/share/backgrounds")
    found += sorted(f for f in backgrounds.glob("*") if f.suffix.lower() in (".jpg", ".png"))
    found += sorted(backgrounds.glob("gnome/*-l.webp"))
    found += sorted(f for f in backgrounds.glob("mate/*/*")
                    if f.suffix.lower() in (".jpg", ".png") and not re.search(r"_\d+x\d+$", f.stem))
    found += sorted(Path("/usr/share/desktop-base").glob("*-theme/grub/grub-16x9.png"))
    return found


def _load(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as im:
            im.draft("RGB", (2048, 2048))
            rgb = im.convert("RGB")
    except OSError:
        return None
    if rgb.width < 1.2 * rgb.height or rgb.height < 400:
        return None  # landscape sources only, large enough for three windows
    scale = min(1.0, 2560 / rgb.width)
    return rgb.resize((round(rgb.width * scale), round(rgb.height * scale)),
                      Image.Resampling.LANCZOS) if scale < 1 else rgb


def distinct_sources(images: list[Image.Image]) -> list[int]:
    """Indices of the sources kept: in order, each one unless it is alike an earlier kept one
    by pHash (Hamming <= 20) or by aligned correlation of the stored-size grey pictures (>= 0.9)."""
    import imagehash

    from lookalike.config import InputSpec
    from lookalike.data.images import conform
    from lookalike.search.alignment import pair_scores, thumbnails

    hashes = [imagehash.phash(im) for im in images]
    stored = conform([np.asarray(im) for im in images], InputSpec(3, 96, 96))
    thumbs = thumbnails(stored)
    kept: list[int] = []
    for i in range(len(images)):
        if kept:
            corr = pair_scores(np.repeat(thumbs[i:i + 1], len(kept), 0), thumbs[kept], (32, 32))
            if corr.max() >= 0.9 or min(hashes[i] - hashes[j] for j in kept) <= 20:
                continue
        kept.append(i)
    return kept


def _stamp(im: Image.Image, rng: random.Random) -> Image.Image:
    out = im.copy()
    draw = ImageDraw.Draw(out)
    size = max(12, im.height // 22)
    font = ImageFont.load_default(size=size)
    text = f"{rng.randint(2001, 2024)}/{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}"
    box = draw.textbbox((0, 0), text, font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    m = size
    x = rng.choice((m, im.width - w - m))
    y = rng.choice((m, im.height - h - m))
    draw.text((x, y), text, fill=rng.choice(((255, 160, 40), (255, 255, 255))), font=font)
    return out


def make_copy(im: Image.Image, kind: str, rng: random.Random) -> tuple[Image.Image, int, str]:
    """``(copy, JPEG quality, description)`` of ``im`` by one edit of ``kind``."""
    quality = 90
    if kind == "jpeg":
        quality = rng.randint(50, 80)
        return im, quality, f"JPEG quality {quality}"
    if kind == "resize":
        f = rng.uniform(0.55, 0.85)
        return im.resize((round(im.width * f), round(im.height * f)),
                         Image.Resampling.LANCZOS), quality, f"resized to {f:.0%}"
    if kind == "crop":
        left, t, r, b = (rng.uniform(0.02, 0.10) for _ in range(4))
        box = (round(left * im.width), round(t * im.height), round((1 - r) * im.width),
               round((1 - b) * im.height))
        return (im.crop(box), quality,
                f"cropped {left:.0%} left, {t:.0%} top, {r:.0%} right, {b:.0%} bottom")
    if kind == "brightness":
        f = rng.choice((-1, 1)) * rng.uniform(0.06, 0.10)
        return ImageEnhance.Brightness(im).enhance(1 + f), quality, f"brightness {f:+.0%}"
    if kind == "stamp":
        return _stamp(im, rng), quality, "date stamp"
    raise ValueError(kind)


def build(out: Path, seed: int = 0, log: Callable[[str], None] = print) -> dict[str, object]:
    """Write the folder (``out/photos``) and ``out/truth.json``; returns the truth."""
    truth_file = out / "truth.json"
    if truth_file.is_file():
        return json.loads(truth_file.read_text())  # type: ignore[no-any-return]
    rng = random.Random(seed)
    paths = candidate_sources()
    loaded = [(p, _load(p)) for p in paths]
    usable = [(p, im) for p, im in loaded if im is not None]
    kept = distinct_sources([im for _, im in usable])
    log(f"{len(paths)} wallpaper files, {len(usable)} landscape, {len(kept)} distinct sources")
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict[str, object]] = {}
    turn = 0
    for s, index in enumerate(kept):
        src_path, src = usable[index]
        w, h = src.size
        ww, hh = round(0.4 * w), round(0.8 * h)
        top = rng.randint(0, h - hh)
        start_b = rng.uniform(0.2, 0.28)
        windows = {"a": 0, "b": round(start_b * w), "c": w - ww}
        for letter, left in windows.items():
            crop = src.crop((left, top, left + ww, top + hh))
            scale = LONG_SIDE / max(crop.size)
            photo = crop.resize((round(crop.width * scale), round(crop.height * scale)),
                                Image.Resampling.LANCZOS)
            name = f"s{s:03d}{letter}"
            photo.save(photos / f"{name}.jpg", quality=92)
            span = (left / w, (left + ww) / w)
            files[f"{name}.jpg"] = {"window": name, "source": str(src_path), "span": span,
                                    "edit": "original"}
            for c in range(1 + (rng.random() < 0.5)):
                kind = KINDS[turn % len(KINDS)]
                turn += 1
                copy, quality, what = make_copy(photo, kind, rng)
                cname = f"{name}_copy{c}.jpg"
                copy.save(photos / cname, quality=quality)
                files[cname] = {"window": name, "source": str(src_path), "span": span,
                                "edit": kind, "detail": what}
    truth = {"seed": seed, "sources": len(kept), "files": files}
    truth_file.write_text(json.dumps(truth, indent=1))
    return truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    truth = build(Path(args.out), args.seed)
    print(f"{len(truth['files'])} files from {truth['sources']} sources")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
