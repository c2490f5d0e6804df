"""Peak memory and time of ``lookalike index`` of 10,000 photos of 10 MP (the issue's target:
peak RSS under 2 GB).

    python benchmarks/index_memory.py --make /tmp/photos10k --count 10000        # ~9 GB of JPEGs
    python benchmarks/index_memory.py --measure /tmp/photos10k --model MODEL --out /tmp/coll10k
    python benchmarks/index_memory.py --delete /tmp/photos10k

``--make`` writes ``count`` distinct JPEGs (quality 80) from the 10-MP folder that
``benchmarks/pipeline.py`` builds (``--base``, :mod:`photodata`'s photos): file ``k`` is base
photo ``k % len(bases)`` with a 64x64 patch of its own colour at a position of its own
(``k // len(bases)`` on a grid), so no two files have the same pixels; each base is decoded
once and only re-encoded, which makes 10,000 files in minutes where :mod:`photodata`'s
build of as many would take an hour. ``--measure`` runs ``lookalike index`` of the folder as
its own process and records its peak RSS (``VmHWM``, PyTorch included) and wall time in the
section "index-memory" of docs/benchmarks.md (``--no-write``: print only). ``--delete``
removes a folder ``--make`` wrote (it checks the marker file first).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cli_peak, commit, machine, now, write_section  # noqa: E402

MARK = "index_memory.json"
PATCH = 64
QUALITY = 80


def _variants(job: tuple[str, list[int], int, str]) -> int:
    """Write the variants ``ks`` of one base photo; returns how many were written."""
    import numpy as np
    from PIL import Image

    base, ks, bases, out = job
    with Image.open(base) as im:
        pixels = np.array(im.convert("RGB"))
    h, w = pixels.shape[:2]
    cols = max(1, w // PATCH)
    made = 0
    for k in ks:
        target = Path(out) / f"{k // 1000:03d}" / f"v_{k:06d}.jpg"
        if target.exists():
            continue
        slot = k // bases
        y, x = (slot // cols) * PATCH % (h - PATCH), (slot % cols) * PATCH
        keep = pixels[y:y + PATCH, x:x + PATCH].copy()
        pixels[y:y + PATCH, x:x + PATCH] = ((k * 37) % 256, (k * 91) % 256, (k * 53) % 256)
        tmp = target.with_suffix(".tmp")
        Image.fromarray(pixels).save(tmp, "JPEG", quality=QUALITY)
        os.replace(tmp, target)
        pixels[y:y + PATCH, x:x + PATCH] = keep
        made += 1
    return made


def make(out: Path, count: int, base: Path, workers: int) -> dict[str, Any]:
    bases = sorted(str(p) for p in base.rglob("*.jpg"))
    if not bases:
        raise SystemExit(f"no JPEG under {base}: run benchmarks/pipeline.py first (it builds it)")
    for k in range(0, count, 1000):
        (out / f"{k // 1000:03d}").mkdir(parents=True, exist_ok=True)
    jobs = [(b, list(range(i, count, len(bases))), len(bases), str(out)) for i, b in enumerate(bases)
            if i < count]
    t = time.perf_counter()
    with Pool(workers) as pool:
        made = sum(pool.imap_unordered(_variants, jobs))
    files = list(out.rglob("*.jpg"))
    meta = {"count": len(files), "made": made, "seconds": time.perf_counter() - t,
            "bytes": sum(f.stat().st_size for f in files), "base": str(base), "quality": QUALITY}
    (out / MARK).write_text(json.dumps(meta, indent=2))
    return meta


def measure(folder: Path, model: Path, out: Path) -> dict[str, Any]:
    load = [os.getloadavg()[0]]
    proc, seconds, peak = cli_peak(["index", "--model", str(model), str(folder), "--out", str(out),
                                    "--overwrite"], "index")
    load.append(os.getloadavg()[0])
    count = int(re.search(r": (\d+) images", proc.stdout).group(1))  # type: ignore[union-attr]
    shutil.rmtree(out, ignore_errors=True)
    return {"files": len(list(folder.rglob("*.jpg"))), "indexed": count, "seconds": seconds,
            "peak_rss_bytes": peak, "load": load,
            "when": now(), "commit": commit(), "machine": machine(),
            "folder_bytes": json.loads((folder / MARK).read_text())["bytes"]}


def _placeholders(argv: list[str]) -> str:
    """The command as a reader can re-run it: this machine's paths named PHOTOS, MODEL, COLL."""
    names = {"--measure": "PHOTOS", "--model": "MODEL", "--out": "COLL"}
    return " ".join(names.get(argv[i - 1], a) if i else a for i, a in enumerate(argv))


def section(res: dict[str, Any], argv: list[str]) -> str:
    gib = res["peak_rss_bytes"] / 2**30
    return "\n".join([
        "## Peak memory of `lookalike index` of 10,000 photos of 10 MP",
        "",
        f"`python benchmarks/index_memory.py {_placeholders(argv)}` (PHOTOS made by `--make`, MODEL the "
        f"pipeline benchmark's) — {res['when']}, commit {res['commit']}, "
        f"{res['machine']}; load average {res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at "
        f"the end. The folder: `--make` from the 100 photos of 10 MP of `benchmarks/pipeline.py` "
        f"(each file a base photo with a 64x64 patch of its own, JPEG quality 80; "
        f"{res['folder_bytes'] / 1e9:.1f} GB), deleted afterwards. `lookalike index --model "
        "MODEL FOLDER --out OUT` (EfficientNet-Lite0 at 192 px, not adapted) as its own process.",
        "",
        "| files | indexed | peak RSS (VmHWM) | target | wall time | images/s |",
        "|---|---|---|---|---|---|",
        f"| {res['files']:,} | {res['indexed']:,} | **{gib:.2f} GiB** | < 2 GB | {res['seconds']:.0f} s "
        f"| {res['indexed'] / res['seconds']:.1f} |",
        *(["", res["note"]] if res.get("note") else []),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make", type=Path, help="folder to fill with distinct 10-MP JPEGs")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--base", type=Path, default=Path("benchmarks/out/pipeline/photos_100x10mp"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--measure", type=Path, help="folder to index")
    ap.add_argument("--model", type=Path, default=Path("benchmarks/out/pipeline/model"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/index_memory_coll"))
    ap.add_argument("--delete", type=Path, help="a folder --make wrote, to remove")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--record", type=Path, help="with --measure: also save the result as JSON here; "
                    "alone: write the section from such a file")
    args = ap.parse_args()
    if args.record and not args.measure:
        saved = json.loads(args.record.read_text())
        write_section("index-memory", section(saved["result"], saved["argv"]))
        return
    if args.make:
        print(json.dumps(make(args.make, args.count, args.base, args.workers)), flush=True)
    if args.measure:
        res = measure(args.measure, args.model, args.out)
        print(json.dumps(res), flush=True)
        argv = [a for a in sys.argv[1:] if a != "--no-write"]
        if args.record:
            argv = argv[:argv.index("--record")] + argv[argv.index("--record") + 2:]
            args.record.write_text(json.dumps({"result": res, "argv": argv}, indent=2))
        body = section(res, argv)
        print(body)
        if not args.no_write:
            write_section("index-memory", body)
    if args.delete:
        if not (args.delete / MARK).is_file():
            raise SystemExit(f"{args.delete} has no {MARK}: not a folder this script made; not deleted")
        shutil.rmtree(args.delete)


if __name__ == "__main__":
    main()
