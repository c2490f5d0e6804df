"""What a change costs as a collection grows (issue 13): adding one image and removing one
item, as a CLI process (start-up included) and in-process; opening a collection and
answering one query as a CLI process; the peak RSS of the ``add`` process.

    python benchmarks/lifecycle.py                     # 10,000 and 1,000,000 items
    python benchmarks/lifecycle.py --sizes 10000 200000 --work /tmp/lifecycle

The collections hold fashion-mnist's training images (repeated to the size) with codes of
the articles' conv-16-8-8 model (128-d at 28x28; untrained: the cost of a change does not
depend on the weights). The codes of the large collection are random vectors given to
``Collection.create(codes=...)``, so nothing is encoded to build it; the added image is
encoded. ``auto`` picks the index: exact up to 100,000 codes, IVF above. Each size is built
once and cached in ``--work``; an invocation measures a fresh copy of it, and each of its
runs adds new pictures (random pixels, new file names) and removes other items, so the
collection changes as in use (new segments, deletion records, merges by the policy).

Writes the table to docs/benchmarks.md (section "lifecycle") and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine, now, table, write_section  # noqa: E402


def _model(work: Path) -> Path:
    from lookalike.config import InputSpec, ModelConfig
    from lookalike.models.modelio import save_model
    from lookalike.models.networks import build_model

    path = work / "model"
    if not (path / "config.json").is_file():
        save_model(path, build_model(ModelConfig(arch="conv-16-8-8", input=InputSpec(1, 28, 28))))
    return path


def _collection(work: Path, n: int) -> Path:
    from lookalike.data.datasets import Dataset, load_dataset
    from lookalike.models.modelio import load_model
    from lookalike.search.collection import Collection

    path = work / f"built-{n}"
    if (path / "manifest.json").is_file():
        return path
    model = load_model(_model(work))
    base = load_dataset("fashion-mnist", "database")
    rows = np.arange(n) % len(base)
    ds = Dataset("bench", "database", base.images[rows], None,
                 tuple(f"item{i}" for i in range(n)))
    if n <= 60_000:
        codes = None
    else:  # random codes at the scale of real ones
        real = Collection.create(work / "probe", model, base.subset(np.arange(2000), "database"),
                                 overwrite=True)
        emb = np.asarray(real.embeddings)
        rng = np.random.default_rng(0)
        codes = (rng.standard_normal((n, emb.shape[1]), dtype=np.float32) * emb.std(0)
                 + emb.mean(0)).astype(np.float32)
    start = time.perf_counter()
    Collection.create(path, model, ds, codes=codes, overwrite=True)
    print(f"built {n:,} items in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


#: Runs each CLI process for the benchmark and reports its wall time, CPU time and peak
#: RSS. It is a process of its own, started before this one grows: Linux carries a
#: process's peak RSS over into the children it forks and executes, so the children of
#: this process (which builds and opens million-item collections) would report at least its
#: size as theirs.
_RUNNER = """
import json, os, subprocess, sys, time
for line in sys.stdin:
    argv = json.loads(line)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    print(json.dumps([time.perf_counter() - start, usage.ru_utime + usage.ru_stime,
                      usage.ru_maxrss / 2**20, os.waitstatus_to_exitcode(status), err]),
          flush=True)
"""
_runner: subprocess.Popen[str] | None = None


def _start_runner() -> None:
    global _runner
    _runner = subprocess.Popen([sys.executable, "-c", _RUNNER], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONWARNINGS": "ignore"})


def _cli(args: list[str]) -> tuple[float, float, float]:
    """Run the CLI; ``(wall seconds, CPU seconds, peak RSS in GB)`` of that process (the CPU
    time tells what the process costs when the machine is shared)."""
    assert _runner is not None and _runner.stdin is not None and _runner.stdout is not None
    _runner.stdin.write(json.dumps([sys.executable, "-m", "lookalike.app.cli", "-q", *args]) + "\n")
    _runner.stdin.flush()
    wall, cpu, rss, code, err = json.loads(_runner.stdout.readline())
    if code != 0:
        raise RuntimeError(f"lookalike {' '.join(args)} failed: {err}")
    return wall, cpu, rss


def _png(folder: Path, seed: int) -> Path:
    """A new picture (random pixels) under a new name: never in the collection already."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"new{seed}-{time.time_ns()}.png"
    img = np.random.default_rng().integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(img).save(path)
    return path


def _folder(folder: Path, seed: int, n: int) -> Path:
    """``n`` new pictures in a new folder."""
    for i in range(n):
        _png(folder, seed * 100_000 + i)
    return folder


def measure(path: Path, scratch: Path, seed: int) -> dict[str, float]:
    from lookalike.search.collection import Collection

    out: dict[str, float] = {}
    out["add_cli"], out["add_cpu"], out["add_rss"] = _cli(
        ["add", str(path), str(_png(scratch / "a", seed))])
    out["add1000_cli"], out["add1000_cpu"], _ = _cli(
        ["add", str(path), str(_folder(scratch / f"k{seed}-{time.time_ns()}", seed, 1000))])
    victim = int(Collection.open(path).ids[seed])
    out["remove_cli"], out["remove_cpu"], _ = _cli(["remove", str(path), str(victim)])
    out["query_cli"], out["query_cpu"], _ = _cli(["search", str(path), "id:7", "-k", "10"])
    start = time.perf_counter()
    coll = Collection.open(path)
    out["open"] = time.perf_counter() - start
    image = np.asarray(Image.open(_png(scratch / "b", seed + 1)))[None, :, :, None]
    start = time.perf_counter()
    coll.add(image, ["in-process.png"])  # the first encodes: it loads the model (PyTorch too)
    out["first_add"] = time.perf_counter() - start
    image = np.asarray(Image.open(_png(scratch / "b", seed + 2)))[None, :, :, None]
    start = time.perf_counter()
    coll.add(image, ["in-process-2.png"])
    out["add"] = time.perf_counter() - start
    start = time.perf_counter()
    coll.remove([int(coll.ids[seed + 1])])
    out["remove"] = time.perf_counter() - start
    out["segments"] = len(coll.store.segments)
    coll.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--work", type=Path,
                        default=Path(tempfile.gettempdir()) / "lookalike-lifecycle")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (the median)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    _start_runner()  # first, while this process is small
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        # the runs change a copy of the collection as built: every invocation starts at n
        path = args.work / "in-use"
        shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(_collection(args.work, n), path)
        runs = [measure(path, args.work / "scratch", 100 + 2 * r) for r in range(args.repeat)]
        med = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        rows.append([f"{n:,}", f"{size / 2**30:.2f} GB",
                     f"{med['add_cli']:.2f} s ({med['add_cpu']:.2f} s)",
                     f"{med['remove_cli']:.2f} s ({med['remove_cpu']:.2f} s)",
                     f"{med['query_cli']:.2f} s ({med['query_cpu']:.2f} s)",
                     f"{med['add1000_cli']:.2f} s ({med['add1000_cpu']:.2f} s)",
                     f"{med['add_rss']:.2f} GB", f"{med['open'] * 1000:.0f} ms",
                     f"{med['first_add'] * 1000:.0f} ms",
                     f"{med['add'] * 1000:.0f} ms", f"{med['remove'] * 1000:.0f} ms"])
        print(rows[-1], file=sys.stderr)
        shutil.rmtree(path)
    shutil.rmtree(args.work / "scratch", ignore_errors=True)
    body = "\n\n".join([
        "## Lifecycle: what one change costs (`benchmarks/lifecycle.py`)",
        f"{machine()}; {now()}, commit {commit()}. conv-16-8-8 codes (128-d) of fashion-mnist "
        "pictures; CLI columns are one `lookalike` process each (start-up included): wall "
        "time (CPU time), median "
        f"of {args.repeat}; in-process columns time `Collection.open`, the first `add` of one "
        "image (it loads the model), a second `add` of one image (the model "
        "loaded, as in the service) and `remove` of one item. *open + query*: "
        "`lookalike search COLL id:7 -k 10` (a stored "
        "item's query needs no model, so PyTorch is not imported); *add 1,000*: `lookalike add` "
        "of a folder of 1,000 new 28x28 PNGs. Targets at 1,000,000 items: add/remove <= 1.0 s "
        "(CLI), <= 0.1 s (in-process); open + query <= 1.5 s; add 1,000 within 2x its cost "
        "at 10,000.",
        table(["items", "on disk", "add 1 (CLI)", "remove 1 (CLI)", "open + query (CLI)",
               "add 1,000 (CLI)", "peak RSS of add", "open", "first add 1", "add 1", "remove 1"],
              rows),
    ])
    print(body)
    if not args.no_write:
        write_section("lifecycle", body)


if __name__ == "__main__":
    main()
