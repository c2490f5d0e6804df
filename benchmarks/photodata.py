"""A folder of large, distinct colour JPEG photos for time-and-memory benchmarks of indexing.

    python benchmarks/photodata.py --out /tmp/photos10k                 # 10,000 photos of >= 10 MP
    python benchmarks/photodata.py --out /tmp/photos100 --count 100 --megapixels 2
    python benchmarks/photodata.py --out /tmp/photos10k-03 --shrink /tmp/photos10k --megapixels 0.3

Every file is made from one of the photographic wallpapers that Debian ships in main (so
DFSG-free; each package's licence is in ``/usr/share/doc/<package>/copyright``): the
``nature`` photos of ``mate-backgrounds`` and the photos among ``plasma-workspace-wallpapers``
(see :data:`PHOTOS`). Install them with ``apt-get install mate-backgrounds
plasma-workspace-wallpapers``; this module never installs anything.

Each photo is a random crop of a source (60-100 % of the largest crop of the target's aspect
ratio), optionally mirrored, with mild brightness, contrast and saturation changes, scaled up
(bicubic) to at least ``megapixels`` and given a mild sensor-like grain (so the JPEG files
carry about the detail of camera files), then saved at quality 90. The plan of every file is
drawn from one seeded random stream in the parent process and no two files share a plan
(source, crop box, mirroring, size), so no two files have the same pixels and the folder is
the same for a seed whatever the number of workers. About 10 % of the files are portrait;
the aspect ratios are mixed (:data:`ASPECTS`).

Files go to ``out/000/photo_000000.jpg``, 1,000 per subfolder (note that
``lookalike``'s ``load_folder`` takes first-level subfolders as labels). ``out/meta.json``
records the settings, the counts, the source files, the sizes and the build time; a second
call with the same settings returns it without work when every file is still there, and an
interrupted build resumes (each file is written under a temporary name and renamed).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from glob import glob
from multiprocessing import Pool
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

VERSION = 1
QUALITY = 90
PER_FOLDER = 1000
PORTRAIT_SHARE = 0.10
#: Landscape aspect ratios (width, height) and their shares.
ASPECTS: tuple[tuple[int, int, float], ...] = ((3, 2, 0.50), (4, 3, 0.30), (16, 9, 0.15), (1, 1, 0.05))
CROP_SCALE = (0.6, 1.0)
ENHANCE = (0.9, 1.1)
GRAIN_SIGMA = 3.0
GRAIN_PAD = 256
META = "meta.json"
STATE = ".photodata-build.json"
#: Debian packages (main) and globs of their photographic wallpapers; with ``True`` each glob
#: is one picture in several resolutions, of which the largest is used.
PHOTOS: tuple[tuple[str, str, bool], ...] = (
    ("mate-backgrounds", "/usr/share/backgrounds/mate/nature/*.jpg", False),
    *(("plasma-workspace-wallpapers", f"/usr/share/wallpapers/{name}/contents/images/*.jpg", True)
      for name in ("BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
                   "Grey", "Kite", "OneStandsOut", "Path", "summer_1am")),
)
PACKAGES = tuple(dict.fromkeys(pkg for pkg, _, _ in PHOTOS))
MIN_SOURCE_PIXELS = 1_000_000


class MissingWallpapers(RuntimeError):
    """No source photo is installed."""


@dataclass(frozen=True)
class Source:
    """A source photo: path, size in pixels and the Debian package that ships it."""

    path: str
    width: int
    height: int
    package: str


@dataclass(frozen=True)
class Job:
    """The plan of one output file: everything needed to make its pixels."""

    index: int
    rel: str
    source: int
    box: tuple[int, int, int, int]
    size: tuple[int, int]
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    grain_xy: tuple[int, int]


# --- sources ---------------------------------------------------------------------------------


def _image_size(path: str) -> tuple[int, int] | None:
    """Width and height from the file's header, ``None`` when Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except OSError:
        return None


def find_sources(photos: Iterable[tuple[str, str, bool]] | None = None) -> list[Source]:
    """The installed source photos of ``photos`` (default :data:`PHOTOS`) of at least 1 MP,
    in a fixed order."""
    found: list[Source] = []
    for package, pattern, largest in PHOTOS if photos is None else photos:
        sized = [(p, s) for p in sorted(glob(pattern)) if (s := _image_size(p))]
        sized = [(p, s) for p, s in sized if s[0] * s[1] >= MIN_SOURCE_PIXELS]
        if largest and sized:
            sized = [max(sized, key=lambda ps: ps[1][0] * ps[1][1])]
        found += [Source(p, s[0], s[1], package) for p, s in sized]
    return found


def given_sources(paths: Sequence[str | os.PathLike[str]]) -> list[Source]:
    """Sources from explicit image files (``package`` empty); unreadable files are an error."""
    out = []
    for p in paths:
        size = _image_size(os.fspath(p))
        if size is None:
            raise MissingWallpapers(f"{p}: not a readable image")
        out.append(Source(os.fspath(p), size[0], size[1], ""))
    return out


def require_sources(sources: list[Source]) -> list[Source]:
    """``sources``, or :class:`MissingWallpapers` with the one line that says what to install."""
    if not sources:
        raise MissingWallpapers("no wallpaper photos found; install them with: apt-get install "
                                + " ".join(PACKAGES))
    return sources


# --- the plan --------------------------------------------------------------------------------


def target_size(megapixels: float, aw: int, ah: int) -> tuple[int, int]:
    """Width and height (multiples of 16) of aspect ``aw:ah`` with at least ``megapixels``."""
    pixels = megapixels * 1e6
    h = math.ceil(math.sqrt(pixels * ah / aw) / 16) * 16
    w = math.ceil(h * aw / ah / 16) * 16
    while w * h < pixels:
        w += 16
    return w, h


def shapes(megapixels: float) -> list[tuple[str, tuple[int, int], float]]:
    """Every output shape as (name, (width, height), share): landscape and portrait."""
    out = []
    for aw, ah, share in ASPECTS:
        w, h = target_size(megapixels, aw, ah)
        if aw == ah:
            out.append((f"{aw}:{ah}", (w, h), share))
            continue
        out.append((f"{aw}:{ah}", (w, h), share * (1 - PORTRAIT_SHARE)))
        out.append((f"{ah}:{aw}", (h, w), share * PORTRAIT_SHARE))
    return out


def rel_path(index: int) -> str:
    """The file's path below ``out``: 1,000 files a subfolder."""
    return f"{index // PER_FOLDER:03d}/photo_{index:06d}.jpg"


def crop_box(rng: random.Random, src: Source, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A random crop of ``src`` with the aspect ratio of ``size``."""
    aspect = size[0] / size[1]
    if src.width / src.height > aspect:
        cw, ch = src.height * aspect, float(src.height)
    else:
        cw, ch = float(src.width), src.width / aspect
    scale = rng.uniform(*CROP_SCALE)
    cw, ch = max(16, round(cw * scale)), max(16, round(ch * scale))
    x, y = rng.randint(0, src.width - cw), rng.randint(0, src.height - ch)
    return x, y, x + cw, y + ch


def draw_job(rng: random.Random, index: int, sources: Sequence[Source],
             kinds: Sequence[tuple[str, tuple[int, int], float]]) -> Job:
    """One file's plan from the random stream."""
    _, size, _ = rng.choices(kinds, weights=[k[2] for k in kinds])[0]
    si = rng.randrange(len(sources))

    def factor() -> float:
        return round(rng.uniform(*ENHANCE), 3)

    return Job(index, rel_path(index), si, crop_box(rng, sources[si], size), size,
               rng.random() < 0.5, factor(), factor(), factor(),
               (rng.randrange(GRAIN_PAD), rng.randrange(GRAIN_PAD)))


def plan(count: int, megapixels: float, sources: Sequence[Source], seed: int) -> list[Job]:
    """Every file's plan, drawn in order from one stream, none the same as another."""
    rng = random.Random(seed)
    kinds = shapes(megapixels)
    jobs: list[Job] = []
    seen: set[tuple[Any, ...]] = set()
    while len(jobs) < count:
        job = draw_job(rng, len(jobs), sources, kinds)
        key = (job.source, job.box, job.size, job.flip)
        if key not in seen:
            seen.add(key)
            jobs.append(job)
    return jobs


# --- making one file (in the worker processes) -----------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(paths: list[str], seed: int, side: int) -> None:
    """Remember the source paths and the seed of the grain field (made on first use)."""
    _WORKER.update(paths=paths, seed=seed, side=side, grain=None)


@cache
def _source_image(index: int) -> Any:
    """The decoded RGB pixels of source ``index`` (kept for the worker's life)."""
    from PIL import Image

    with Image.open(_WORKER["paths"][index]) as im:
        return im.convert("RGB")


def _grain_field() -> Any:
    """A square of seeded Gaussian grain (mean 32) shared by every file; each file takes a
    window of it at its own offset."""
    if _WORKER["grain"] is None:
        import numpy as np
        from PIL import Image

        side = _WORKER["side"]
        rng = np.random.default_rng(_WORKER["seed"])
        rows = []
        for start in range(0, side, 512):
            block = rng.standard_normal((min(512, side - start), side, 3), dtype=np.float32)
            rows.append(np.clip(block * GRAIN_SIGMA + 32, 0, 64).astype(np.uint8))
        _WORKER["grain"] = Image.fromarray(np.concatenate(rows))
    return _WORKER["grain"]


def render(job: Job) -> Any:
    """The RGB image of ``job``: crop, mirror, colour, scale up, grain."""
    from PIL import Image, ImageChops, ImageEnhance

    im = _source_image(job.source).crop(job.box)
    if job.flip:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    im = ImageEnhance.Brightness(im).enhance(job.brightness)
    im = ImageEnhance.Contrast(im).enhance(job.contrast)
    im = ImageEnhance.Color(im).enhance(job.saturation)
    im = im.resize(job.size, Image.Resampling.BICUBIC)
    if GRAIN_SIGMA > 0:
        x, y = job.grain_xy
        grain = _grain_field().crop((x, y, x + job.size[0], y + job.size[1]))
        im = ImageChops.add(im, grain, 1.0, -32)
    return im


def make_file(args: tuple[Job, str]) -> tuple[str, int, int, int]:
    """Write ``job``'s JPEG below ``out`` (atomically); its relative path, bytes and size."""
    job, out = args
    path = Path(out) / job.rel
    im = render(job)
    tmp = path.with_name(path.name + ".tmp")
    im.save(tmp, "JPEG", quality=QUALITY)
    os.replace(tmp, path)
    return job.rel, path.stat().st_size, job.size[0], job.size[1]


# --- the folder ------------------------------------------------------------------------------


def settings_of(count: int, megapixels: float, seed: int, sources: Sequence[Source]) -> dict[str, Any]:
    """Everything that decides the folder's pixels (compared to reuse a folder)."""
    return {"version": VERSION, "count": count, "megapixels": megapixels, "seed": seed, "quality": QUALITY,
            "portrait_share": PORTRAIT_SHARE, "aspects": [list(a) for a in ASPECTS],
            "crop_scale": list(CROP_SCALE), "enhance": list(ENHANCE), "grain_sigma": GRAIN_SIGMA,
            "per_folder": PER_FOLDER,
            "sources": [[s.path, s.width, s.height, os.path.getsize(s.path)] for s in sources]}


def _read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, ``None`` when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cached(out: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """``out/meta.json`` when it has ``settings`` and every file it lists has its size."""
    meta = _read_json(out / META)
    if not meta or meta.get("settings") != settings or len(meta.get("files", ())) != settings["count"]:
        return None
    for rel, size, _, _ in meta["files"]:
        try:
            if (out / rel).stat().st_size != size:
                return None
        except OSError:
            return None
    return meta


def _clear(out: Path) -> None:
    """Remove the files an earlier build (other settings) left: only this module's names."""
    for pattern in ("[0-9][0-9][0-9]/photo_*.jpg", "[0-9][0-9][0-9]/photo_*.jpg.tmp", META, STATE):
        for p in out.glob(pattern):
            p.unlink()


def prepare(out: Path, settings: dict[str, Any], jobs: Sequence[Job]) -> list[Job]:
    """Make the folders; the jobs still to do (a build with the same settings resumes)."""
    out.mkdir(parents=True, exist_ok=True)
    if _read_json(out / STATE) != settings:
        _clear(out)
        (out / STATE).write_text(json.dumps(settings))
    for folder in sorted({Path(j.rel).parent for j in jobs}):
        (out / folder).mkdir(exist_ok=True)
    for p in out.glob("[0-9][0-9][0-9]/photo_*.jpg.tmp"):
        p.unlink()
    return [j for j in jobs if not (out / j.rel).is_file()]


def warn_disk(out: Path, todo: int, megapixels: float) -> None:
    """Log a warning when the free space looks short (about 0.15 bytes a pixel)."""
    need = todo * megapixels * 1e6 * 0.15
    free = shutil.disk_usage(out).free
    if free < need * 1.2:
        log.warning("%s: %.1f GB free, the files may need about %.1f GB", out, free / 1e9, need / 1e9)


def run_jobs(out: Path, todo: Sequence[Job], sources: Sequence[Source], seed: int, workers: int,
             progress: bool) -> None:
    """Make the files of ``todo`` over ``workers`` processes, logging progress if asked."""
    if not todo:
        return
    side = max(max(j.size) for j in todo) + GRAIN_PAD
    start, every = time.monotonic(), max(50, len(todo) // 20)
    args = [(j, str(out)) for j in todo]
    with Pool(max(1, workers), _init_worker, ([s.path for s in sources], seed, side)) as pool:
        for done, _ in enumerate(pool.imap_unordered(make_file, args, chunksize=4), 1):
            if progress and (done % every == 0 or done == len(todo)):
                rate = done / (time.monotonic() - start)
                log.info("%d/%d photos, %.1f/s, %.0f s to go", done, len(todo), rate,
                         (len(todo) - done) / rate)


def file_rows(out: Path, jobs: Sequence[Job]) -> list[list[Any]]:
    """``[relative path, bytes, width, height]`` of every file."""
    return [[j.rel, (out / j.rel).stat().st_size, j.size[0], j.size[1]] for j in jobs]


def summarise(settings: dict[str, Any], jobs: Sequence[Job], rows: list[list[Any]],
              sources: Sequence[Source], seconds: float, made: int) -> dict[str, Any]:
    """The contents of ``meta.json``."""
    sizes = [r[1] for r in rows]
    orient = Counter("portrait" if w < h else "square" if w == h else "landscape" for _, _, w, h in rows)
    used = Counter(j.source for j in jobs)
    return {
        "settings": settings,
        "created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "count": len(rows),
        "made_this_run": made,
        "build_seconds": round(seconds, 1),
        "total_bytes": sum(sizes),
        "min_bytes": min(sizes),
        "max_bytes": max(sizes),
        "mean_bytes": round(sum(sizes) / len(sizes)),
        "min_megapixels": round(min(w * h for _, _, w, h in rows) / 1e6, 3),
        "total_megapixels": round(sum(w * h for _, _, w, h in rows) / 1e6, 1),
        "orientation": dict(orient),
        "sizes": {f"{w}x{h}": n for (w, h), n in sorted(Counter((r[2], r[3]) for r in rows).items())},
        "packages": sorted({s.package for s in sources if s.package}),
        "licence_note": "Debian main (DFSG-free); see /usr/share/doc/<package>/copyright",
        "sources": [{"path": s.path, "package": s.package, "width": s.width, "height": s.height,
                     "files": used[i]} for i, s in enumerate(sources)],
        "files": rows,
    }


def build(out: Path, count: int = 10000, megapixels: float = 10.0, workers: int = 2, progress: bool = False,
          *, seed: int = 0, sources: Sequence[str | os.PathLike[str]] | None = None) -> dict[str, Any]:
    """Write ``count`` distinct JPEG photos of at least ``megapixels`` into ``out`` (see the module
    doc) and return ``out/meta.json``'s contents (plus ``"cached"``: whether nothing was made).
    ``sources`` replaces the Debian wallpapers by given image files. Raises
    :class:`MissingWallpapers` when there is no source photo."""
    if count < 1 or megapixels <= 0:
        raise ValueError("count must be >= 1 and megapixels > 0")
    out = Path(out)
    srcs = require_sources(given_sources(sources) if sources is not None else find_sources())
    settings = settings_of(count, megapixels, seed, srcs)
    if (meta := cached(out, settings)) is not None:
        log.info("%s: %d photos already built", out, count)
        return {**meta, "cached": True}
    started = time.monotonic()
    jobs = plan(count, megapixels, srcs, seed)
    todo = prepare(out, settings, jobs)
    log.info("%s: making %d of %d photos from %d sources with %d workers", out, len(todo), count,
             len(srcs), workers)
    warn_disk(out, len(todo), megapixels)
    run_jobs(out, todo, srcs, seed, workers, progress)
    meta = summarise(settings, jobs, file_rows(out, jobs), srcs, time.monotonic() - started, len(todo))
    tmp = out / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / META)
    return {**meta, "cached": False}


def _shrink_one(task: tuple[str, str, float]) -> None:
    from PIL import Image

    src, dst, megapixels = task
    with Image.open(src) as im:
        scale = math.sqrt(megapixels * 1e6 / (im.width * im.height))
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im.draft("RGB", size)
        small = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    tmp = dst + ".tmp"
    small.save(tmp, "JPEG", quality=QUALITY)
    os.replace(tmp, dst)


def shrink(source: Path, out: Path, megapixels: float, workers: int = 2) -> dict[str, Any]:
    """A folder of the same photos as ``source`` (a built folder) at about ``megapixels``
    each (Lanczos, JPEG quality 90), same names and subfolders: the same pictures at an
    everyday size, made in minutes instead of hours. Returns ``out/meta.json``'s contents."""
    src_meta = json.loads((source / META).read_text())
    rels = [row[0] for row in src_meta["files"]]
    settings = {"count": len(rels), "megapixels": megapixels, "shrunk_from": str(source),
                "source_settings": src_meta["settings"]}
    if (meta := cached(out, settings)) is not None:
        return {**meta, "cached": True}
    started = time.monotonic()
    for rel in rels:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
    tasks = [(str(source / rel), str(out / rel), megapixels) for rel in rels if not (out / rel).is_file()]
    with Pool(workers) as pool:
        for _ in pool.imap_unordered(_shrink_one, tasks, chunksize=16):
            pass
    rows = [[rel, (out / rel).stat().st_size, *(_image_size(str(out / rel)) or (0, 0))] for rel in rels]
    sizes = [row[1] for row in rows]
    meta = {"version": VERSION, "settings": settings, "count": len(rels),
            "build_seconds": round(time.monotonic() - started, 1), "total_bytes": sum(sizes),
            "mean_bytes": round(sum(sizes) / len(sizes)), "files": rows}
    (out / META).write_text(json.dumps(meta, indent=1))
    return {**meta, "cached": False}


# --- command line ----------------------------------------------------------------------------


def summary(out: Path, meta: dict[str, Any]) -> str:
    """A few lines about a built folder."""
    how = "already built" if meta.get("cached") else f"built in {meta['build_seconds']:.0f} s"
    return "\n".join([
        f"{out}: {meta['count']} photos, {how} ({meta['made_this_run']} made by the last build)",
        f"  {meta['total_bytes'] / 1e9:.2f} GB; files {meta['min_bytes'] / 1e6:.2f}"
        f"-{meta['max_bytes'] / 1e6:.2f} MB (mean {meta['mean_bytes'] / 1e6:.2f});"
        f" >= {meta['min_megapixels']} MP each",
        f"  orientation {meta['orientation']}; sizes {meta['sizes']}",
        f"  from {len(meta['sources'])} photos of {', '.join(meta['packages']) or 'given files'}",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/photodata.py --out DIR [--count N] [--megapixels M]``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, required=True, help="folder to fill")
    ap.add_argument("--count", type=int, default=10000, help="number of photos (default 10000)")
    ap.add_argument("--megapixels", type=float, default=10.0, help="least size of each (default 10)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")
    ap.add_argument("--shrink", type=Path, metavar="BUILT",
                    help="instead, shrink the photos of a built folder to --megapixels each")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.shrink:
        meta = shrink(args.shrink, args.out, args.megapixels, args.workers)
        print(f"{args.out}: {meta['count']} photos of about {args.megapixels} MP, "
              f"{meta['total_bytes'] / 1e9:.2f} GB, {meta['build_seconds']:.0f} s")
        return 0
    try:
        meta = build(args.out, args.count, args.megapixels, args.workers, not args.quiet, seed=args.seed)
    except MissingWallpapers as exc:
        print(f"photodata: {exc}", file=sys.stderr)
        return 2
    print(summary(args.out, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
