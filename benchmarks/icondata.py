"""Icon-theme retrieval benchmark: find the same icon as drawn by other desktop themes.

    python benchmarks/icondata.py --out /tmp/icons64 [--size 64] [--progress]

A public colour benchmark built from Debian's icon-theme packages: every icon *name* of the
freedesktop naming scheme (``folder``, ``edit-copy``, ``audio-x-generic``...) is drawn by
several themes in very different styles. Queries are one set of themes' drawings; the
database is the other themes' drawings; a database item is **relevant** to a query when it
has the same icon name (main metric), and belongs to the same **category** when it has the
same context (the label a folder loader reads, see below).

Requirements (nothing is installed by this module; :func:`install_hint` gives the command):

* Debian packages: adwaita-icon-theme breeze-icon-theme elementary-xfce-icon-theme
  faenza-icon-theme gnome-icon-theme mate-icon-theme numix-icon-theme oxygen-icon-theme
  papirus-icon-theme tango-icon-theme (built with Debian 12 "bookworm"'s versions, recorded
  in meta.json), and libcairo2 for the renderer;
* PyPI: cairosvg (SVG rendering; pulls cairocffi, cssselect2, tinycss2, defusedxml);
  Pillow and NumPy, which lookalike already needs.

Split (fixed, deterministic, by theme; chosen so that related art stays on one side: gnome,
mate, tango and Adwaita's full-colour icons share the GNOME/Tango lineage):

* database: breeze, faenza, numix, oxygen, papirus (about 6,700 icons);
* queries: adwaita, elementary (elementary-xfce), gnome, mate, tango (about 2,050 icons).

Selection, per theme (folder under /usr/share/icons, as listed in its index.theme):

* each icon name is drawn once: the file of the largest nominal size (``MaxSize`` for a
  scalable folder, times ``Scale``), an SVG before a PNG of the same size;
* symbolic icons (``-symbolic`` names, ``symbolic`` folders), ``panel`` folders (tray icons
  drawn light for dark panels), dangling links and sprite-sheet/flag contexts (animations,
  international) are skipped;
* names that are links to one file count as one icon: the name drawn by the most themes is
  kept (then the file's own name, then the alphabetically first);
* contexts: index.theme's ``Context=`` is mapped to apps, places, devices, mimetypes,
  categories, status, emblems, emotes, actions (``Applications``/``apps``,
  ``MimeTypes``/``mimes``, ``FileSystems``->places...). A name gets ONE context for all
  themes: the majority vote of the themes that draw it (ties in that order), so a query and
  its same-name items always share a category; contexts without a mapping (Adwaita's
  ``Legacy``, Faenza's ``Stock``) only inherit the vote of other themes, else are dropped;
* only names drawn by at least 2 of the 10 themes are kept; queries without a same-name
  database item are dropped; only contexts that both splits have are kept.

Rendering: ``size`` x ``size`` RGB PNGs, the drawing fitted with its aspect ratio kept and
centred, transparency composited over white (SVGs rendered at twice the size with CairoSVG,
then Lanczos-resampled by Pillow). A file that fails to render is skipped and listed; so is a
*blank* one (fewer than 0.5% of its pixels more than 32 levels below white: light icons for
dark panels, mostly Numix status icons).

Layout of ``out`` (lookalike's folder loader labels by the first-level subfolder, so load
``out/database`` and ``out/queries`` separately: both have the same context subfolders)::

    out/database/<context>/<theme>__<iconname>.png
    out/queries/<context>/<theme>__<iconname>.png
    out/meta.json

meta.json: ``settings`` (a build with equal settings is reused without rendering),
``database_themes``, ``query_themes``, ``packages`` (Debian versions), ``contexts``,
``counts`` (per split, context and theme; ``mean_relevant`` same-name items per query),
``skipped`` and, per split, the items ``{"path", "theme", "name", "context", "source"}``
sorted like :func:`lookalike.data.images.find_images` sorts the files (``path`` is relative to
``out``). :func:`relevant_by_name` and :func:`relevant_by_context` give, per query, the
indices of its relevant database items.
"""

from __future__ import annotations

import argparse
import configparser
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

#: Where Debian's icon-theme packages install their themes.
ICON_ROOT = Path("/usr/share/icons")

#: Theme slug (used in file names) -> (folder under :data:`ICON_ROOT`, Debian package).
THEMES: dict[str, tuple[str, str]] = {
    "adwaita": ("Adwaita", "adwaita-icon-theme"),
    "breeze": ("breeze", "breeze-icon-theme"),
    "elementary": ("elementary-xfce", "elementary-xfce-icon-theme"),
    "faenza": ("Faenza", "faenza-icon-theme"),
    "gnome": ("gnome", "gnome-icon-theme"),
    "mate": ("mate", "mate-icon-theme"),
    "numix": ("Numix", "numix-icon-theme"),
    "oxygen": ("oxygen", "oxygen-icon-theme"),
    "papirus": ("Papirus", "papirus-icon-theme"),
    "tango": ("Tango", "tango-icon-theme"),
}

DATABASE_THEMES: tuple[str, ...] = ("breeze", "faenza", "numix", "oxygen", "papirus")
QUERY_THEMES: tuple[str, ...] = ("adwaita", "elementary", "gnome", "mate", "tango")

#: The common contexts, in the order that breaks ties of the context vote.
CONTEXTS: tuple[str, ...] = ("apps", "places", "devices", "mimetypes", "categories", "status",
                             "emblems", "emotes", "actions")

#: Lower-cased ``Context=`` of index.theme -> common context; ``DROP``: the icon is left out
#: (sprite sheets, flags); a context not listed votes for nothing (see :func:`vote_contexts`).
DROP = "-"
CONTEXT_ALIASES: dict[str, str] = {
    "actions": "actions", "applications": "apps", "apps": "apps", "categories": "categories",
    "devices": "devices", "emblems": "emblems", "emotes": "emotes", "mimetypes": "mimetypes",
    "mimes": "mimetypes", "places": "places", "filesystems": "places", "status": "status",
    "notifications": "status", "animations": DROP, "international": DROP,
}

#: Folder names never read: monochrome variants, and tray icons drawn light for dark panels.
SKIP_FOLDERS = frozenset({"symbolic", "panel"})

#: A rendered icon is *blank* (drawn light for a dark panel, invisible over white) when
#: fewer than ``MIN_INK`` of its pixels are more than ``INK_LEVEL`` below white in a channel.
INK_LEVEL = 32
MIN_INK = 0.005
BLANK = "blank"

FORMAT = 2
MIN_THEMES = 2
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


class MissingThemes(RuntimeError):
    """Some icon themes the benchmark is defined on are not installed."""


@dataclass(frozen=True)
class IconDir:
    """One ``Directories=`` entry of an index.theme."""

    path: str
    pixels: int
    vector: bool
    context: str | None


@dataclass(frozen=True)
class Drawing:
    """The file a theme draws one icon name with, and its raw context."""

    theme: str
    name: str
    source: Path
    rank: tuple[int, bool]
    context: str | None


@dataclass(frozen=True)
class Icon:
    """One benchmark item: an icon name drawn by a theme, in its common context."""

    theme: str
    name: str
    source: Path
    context: str

    def relpath(self, split: str) -> str:
        """Where the rendered icon lies in ``split``, relative to the output folder."""
        return f"{split}/{self.context}/{self.theme}__{_SAFE.sub('_', self.name)}.png"


# ----------------------------------------------------------------------------- themes


def parse_index(theme_dir: Path) -> list[IconDir]:
    """The non-symbolic directories of a theme's index.theme, with their nominal pixel size
    (``MaxSize`` for a scalable directory, times ``Scale``) and mapped context."""
    cp = configparser.RawConfigParser(strict=False)
    cp.read(theme_dir / "index.theme", encoding="utf-8")
    head = cp["Icon Theme"] if cp.has_section("Icon Theme") else {}
    names = [d.strip() for key in ("Directories", "ScaledDirectories")
             for d in head.get(key, "").split(",") if d.strip()]
    out = []
    for name in dict.fromkeys(names):
        if not cp.has_section(name) or SKIP_FOLDERS & set(name.split("/")):
            continue
        sec = cp[name]
        scalable = sec.get("Type", "Threshold").strip().lower() == "scalable"
        size = _int(sec.get("MaxSize")) if scalable and sec.get("MaxSize") else _int(sec.get("Size"))
        context = CONTEXT_ALIASES.get(sec.get("Context", "").strip().lower())
        out.append(IconDir(name, size * max(1, _int(sec.get("Scale", "1"))), scalable, context))
    return out


def _int(text: str | None) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        return 0


def is_symbolic(name: str) -> bool:
    """Whether an icon name is a symbolic (monochrome, recolourable) variant."""
    return name.endswith(("-symbolic", ".symbolic")) or "-symbolic-" in name


def scan_theme(theme: str, theme_dir: Path) -> dict[str, Drawing]:
    """Icon name -> its best drawing in one theme: the largest nominal size, an SVG before
    a PNG of that size. Symbolic icons and dangling links are skipped."""
    best: dict[str, Drawing] = {}
    for d in parse_index(theme_dir):
        folder = theme_dir / d.path
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.suffix not in (".png", ".svg") or is_symbolic(f.stem) or not f.is_file():
                continue
            drawing = Drawing(theme, f.stem, f, (d.pixels, f.suffix == ".svg"), d.context)
            old = best.get(f.stem)
            if old is None or drawing.rank > old.rank:
                best[f.stem] = drawing
    return best


def dedupe_links(drawings: Mapping[str, Drawing], popularity: Counter[str]) -> dict[str, Drawing]:
    """One name per real file: of the names whose chosen file resolves to one file, keep the
    one drawn by the most themes (then the file's own name, then alphabetical)."""
    groups: dict[Path, list[Drawing]] = defaultdict(list)
    for d in drawings.values():
        groups[d.source.resolve()].append(d)
    kept = {}
    for real, group in groups.items():
        best = min(group, key=lambda d: (-popularity[d.name], d.name != real.stem, d.name))
        kept[best.name] = best
    return kept


def vote_contexts(drawings: Iterable[Drawing]) -> dict[str, str]:
    """Icon name -> its common context: the most frequent mapped context among the themes
    that draw it (ties broken in :data:`CONTEXTS` order); names with no vote are absent."""
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    for d in drawings:
        if d.context in CONTEXTS:
            votes[d.name][d.context] += 1
    return {name: min(c, key=lambda k: (-c[k], CONTEXTS.index(k))) for name, c in votes.items()}


def missing_themes(themes: Iterable[str], root: Path = ICON_ROOT) -> list[str]:
    """The theme slugs whose index.theme is absent below ``root``."""
    return [t for t in themes if not (root / THEMES[t][0] / "index.theme").is_file()]


def install_hint(themes: Iterable[str] | None = None) -> str:
    """The command that installs the Debian packages of ``themes`` (default: all used)."""
    chosen = list(themes) if themes is not None else [*DATABASE_THEMES, *QUERY_THEMES]
    packages = " ".join(sorted(THEMES[t][1] for t in chosen))
    return f"sudo apt-get install --no-install-recommends {packages}"


def plan(root: Path = ICON_ROOT, database: Sequence[str] = DATABASE_THEMES,
         queries: Sequence[str] = QUERY_THEMES) -> tuple[list[Icon], list[Icon]]:
    """The database and query icons (not yet rendered), sorted by their output path."""
    missing = missing_themes([*database, *queries], root)
    if missing:
        raise MissingThemes(f"icon themes not installed under {root}: {', '.join(missing)}; "
                            f"install them with: {install_hint(missing)}")
    scans = {t: scan_theme(t, root / THEMES[t][0]) for t in [*database, *queries]}
    popularity = Counter(name for s in scans.values() for name in s)
    scans = {t: dedupe_links(s, popularity) for t, s in scans.items()}
    every = [d for s in scans.values() for d in s.values() if d.context != DROP]
    drawn = Counter(d.name for d in every)
    contexts = vote_contexts(every)
    kept = [Icon(d.theme, d.name, d.source, contexts[d.name]) for d in every
            if drawn[d.name] >= MIN_THEMES and d.name in contexts]
    db = [i for i in kept if i.theme in database]
    names = {i.name for i in db}
    qs = [i for i in kept if i.theme in queries and i.name in names]
    return _sorted(db, "database"), _sorted(qs, "queries")


def _sorted(icons: list[Icon], split: str) -> list[Icon]:
    return sorted(icons, key=lambda i: Path(i.relpath(split)))


# ----------------------------------------------------------------------------- rendering


def check_renderer() -> None:
    """Raise a RuntimeError naming what to install when CairoSVG cannot be imported."""
    try:
        import cairosvg  # noqa: F401
    except (ImportError, OSError) as exc:
        raise RuntimeError("rendering the icon SVGs needs CairoSVG and the Cairo library: "
                           "pip install cairosvg; apt-get install libcairo2 "
                           f"({type(exc).__name__}: {exc})") from exc


def load_icon(source: Path, size: int) -> Image.Image:
    """An icon file as an RGB image of ``size`` pixels square: the drawing fitted (aspect
    kept, centred), its transparency composited over white. SVGs render at twice the size."""
    if source.suffix == ".svg":
        import cairosvg

        data = cairosvg.svg2png(url=str(source), output_width=2 * size)
        image = Image.open(io.BytesIO(data))
    else:
        image = Image.open(source)
    image.load()
    rgba = image.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    flat = flat.convert("RGB")
    scale = size / max(flat.size)
    w, h = (max(1, round(v * scale)) for v in flat.size)
    canvas = Image.new("RGB", (size, size), (255, 255, 255))
    canvas.paste(flat.resize((w, h), Image.Resampling.LANCZOS), ((size - w) // 2, (size - h) // 2))
    return canvas


def ink_fraction(image: Image.Image) -> float:
    """The fraction of pixels more than :data:`INK_LEVEL` below white in some channel."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    return float((255 - pixels.min(axis=2) > INK_LEVEL).mean())


def render_icon(job: tuple[str, str, int]) -> str | None:
    """Render ``(source, target, size)`` (see :func:`load_icon`) to a PNG file; ``None`` when
    it worked, else the reason (a failure is reported, never raised; a blank icon is not
    written and its reason starts with :data:`BLANK`)."""
    source, target, size = job
    try:
        image = load_icon(Path(source), size)
        ink = ink_fraction(image)
        if ink < MIN_INK:
            return f"{BLANK}: {ink:.4f} of the pixels differ from white"
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        image.save(target, format="PNG")
    except Exception as exc:  # noqa: BLE001 - any decoder or renderer failure skips the icon
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


def render_all(icons: Sequence[Icon], out: Path, split: str, size: int,
               progress: bool = False) -> tuple[list[Icon], list[dict[str, str]]]:
    """Render the icons of one split under ``out`` in parallel: the icons rendered, in order,
    and ``{"source", "error"}`` for each that failed or came out blank (failures logged)."""
    jobs = [(str(i.source), str(out / i.relpath(split)), size) for i in icons]
    workers = max(1, min(os.cpu_count() or 1, 8))
    with ProcessPoolExecutor(workers) as pool:
        results = pool.map(render_icon, jobs, chunksize=16)
        if progress:
            from tqdm.auto import tqdm

            results = tqdm(results, total=len(jobs), desc=f"rendering {split}", unit="icon")
        errors = list(results)
    done, failed = [], []
    for icon, error in zip(icons, errors, strict=True):
        if error is None:
            done.append(icon)
        else:
            if not error.startswith(BLANK):
                log.warning("skipped %s: %s", icon.source, error)
            failed.append({"source": str(icon.source), "error": error})
    return done, failed


# ----------------------------------------------------------------------------- building


def settings(size: int) -> dict[str, Any]:
    """What a built benchmark depends on; a cached build is reused when these match."""
    return {"format": FORMAT, "size": size, "database_themes": list(DATABASE_THEMES),
            "query_themes": list(QUERY_THEMES), "min_themes": MIN_THEMES,
            "icon_root": str(ICON_ROOT)}


def cached(out: Path, size: int) -> dict[str, Any] | None:
    """The meta.json of a complete earlier build with the same settings, else ``None``."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("settings") != settings(size):
        return None
    items = [*meta.get("database", []), *meta.get("queries", [])]
    if not all((out / item["path"]).is_file() for item in items):
        return None
    return meta


def package_versions(themes: Iterable[str]) -> dict[str, str]:
    """Debian package -> installed version (``"?"`` when dpkg cannot tell)."""
    versions = {}
    for theme in themes:
        package = THEMES[theme][1]
        try:
            run = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package],
                                 capture_output=True, text=True, check=True, timeout=30)
            versions[package] = run.stdout.strip() or "?"
        except (OSError, subprocess.SubprocessError):
            versions[package] = "?"
    return versions


def item(icon: Icon, split: str) -> dict[str, str]:
    """The meta.json record of one rendered icon."""
    return {"path": icon.relpath(split), "theme": icon.theme, "name": icon.name,
            "context": icon.context, "source": str(icon.source)}


def finish(database: list[Icon], queries: list[Icon]) -> tuple[list[Icon], list[Icon]]:
    """Keep the names still drawn by :data:`MIN_THEMES` themes, the queries with a same-name
    database icon, then the contexts both splits have (a folder loader numbers the sorted
    subfolder names, so both splits must have the same set)."""
    drawn = Counter(i.name for i in [*database, *queries])  # a theme draws a name once
    database = [i for i in database if drawn[i.name] >= MIN_THEMES]
    names = {i.name for i in database}
    queries = [q for q in queries if q.name in names]
    both = {i.context for i in database} & {i.context for i in queries}
    return [i for i in database if i.context in both], [i for i in queries if i.context in both]


def summary(database: Sequence[Icon], queries: Sequence[Icon]) -> dict[str, Any]:
    """Counts per split, per context and per theme, and the relevant items per query."""
    per_name = Counter(i.name for i in database)
    relevant = [per_name[q.name] for q in queries]
    return {
        "database": len(database), "queries": len(queries),
        "names": len({i.name for i in [*database, *queries]}),
        "query_names": len({q.name for q in queries}),
        "mean_relevant": round(sum(relevant) / max(1, len(relevant)), 3),
        "per_context": {"database": dict(sorted(Counter(i.context for i in database).items())),
                        "queries": dict(sorted(Counter(i.context for i in queries).items()))},
        "per_theme": {"database": dict(sorted(Counter(i.theme for i in database).items())),
                      "queries": dict(sorted(Counter(i.theme for i in queries).items()))},
    }


def clear(out: Path) -> None:
    """Remove what an earlier build wrote under ``out`` (only the files this module owns)."""
    (out / "meta.json").unlink(missing_ok=True)
    for split in ("database", "queries"):
        shutil.rmtree(out / split, ignore_errors=True)


def build(out: Path, size: int = 64, progress: bool = False) -> dict[str, Any]:
    """Render the benchmark into ``out`` (see the module docstring) and return its meta.json
    content; an earlier complete build with the same settings is returned as it is.

    Raises :class:`MissingThemes` (with the apt-get command) when a theme is not installed
    and RuntimeError when CairoSVG is missing. Installs nothing.
    """
    out = Path(out)
    meta = cached(out, size)
    if meta is not None:
        log.info("%s: reusing the build of %s icons", out, meta["counts"]["database"])
        return meta
    start = time.perf_counter()
    database, queries = plan()
    check_renderer()
    clear(out)
    out.mkdir(parents=True, exist_ok=True)
    database, skipped = render_all(database, out, "database", size, progress)
    names = {i.name for i in database}
    queries, skipped_q = render_all([q for q in queries if q.name in names], out, "queries", size,
                                    progress)
    skipped += skipped_q
    database, queries = prune(out, database, queries)
    blank = sum(s["error"].startswith(BLANK) for s in skipped)
    meta = {
        "settings": settings(size),
        "database_themes": list(DATABASE_THEMES), "query_themes": list(QUERY_THEMES),
        "packages": package_versions([*DATABASE_THEMES, *QUERY_THEMES]),
        "contexts": sorted({i.context for i in database}),
        "counts": {**summary(database, queries), "failed": len(skipped) - blank, "blank": blank},
        "skipped": skipped,
        "seconds": round(time.perf_counter() - start, 1),
        "database": [item(i, "database") for i in database],
        "queries": [item(i, "queries") for i in queries],
    }
    tmp = out / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out / "meta.json")
    return meta


def prune(out: Path, database: list[Icon], queries: list[Icon]) -> tuple[list[Icon], list[Icon]]:
    """:func:`finish` the rendered splits, deleting the files of the icons it drops."""
    kept_db, kept_q = finish(database, queries)
    keep = {id(i) for i in [*kept_db, *kept_q]}
    for split, icons in (("database", database), ("queries", queries)):
        for icon in icons:
            if id(icon) not in keep:
                (out / icon.relpath(split)).unlink(missing_ok=True)
    return kept_db, kept_q


# ----------------------------------------------------------------------------- relevance


def load_meta(out: Path) -> dict[str, Any]:
    """The meta.json of a build."""
    return json.loads((Path(out) / "meta.json").read_text())


def relevant_by_name(meta: Mapping[str, Any]) -> list[list[int]]:
    """For each query (meta order), the indices of the database items with its icon name."""
    index: dict[str, list[int]] = defaultdict(list)
    for k, entry in enumerate(meta["database"]):
        index[entry["name"]].append(k)
    return [index[q["name"]] for q in meta["queries"]]


def relevant_by_context(meta: Mapping[str, Any]) -> list[list[int]]:
    """For each query (meta order), the indices of the database items in its context."""
    index: dict[str, list[int]] = defaultdict(list)
    for k, entry in enumerate(meta["database"]):
        index[entry["context"]].append(k)
    return [index[q["context"]] for q in meta["queries"]]


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Build the benchmark and print a short summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--size", type=int, default=64, help="side of the square PNGs (64)")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        meta = build(args.out, args.size, args.progress)
    except (MissingThemes, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = meta["counts"]
    print(f"{args.out}: {args.size}x{args.size} RGB PNGs, built in {meta['seconds']} s")
    print(f"database themes: {', '.join(meta['database_themes'])}")
    print(f"query themes:    {', '.join(meta['query_themes'])}")
    print(f"database {counts['database']}, queries {counts['queries']}, icon names {counts['names']}, "
          f"mean relevant per query {counts['mean_relevant']}")
    print(f"skipped: {counts['failed']} failed to render, {counts['blank']} blank over white")
    for ctx in meta["contexts"]:
        print(f"  {ctx:<11} database {counts['per_context']['database'].get(ctx, 0):>5}"
              f"   queries {counts['per_context']['queries'].get(ctx, 0):>5}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
