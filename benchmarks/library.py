"""A photo library that keeps itself current (issue 19): what ``sync`` and ``serve --watch``
cost against indexing.

    python benchmarks/library.py                        # 100,000 files, a burst of 10,000
    python benchmarks/library.py --files 20000 --burst 2000 --work /tmp/library

The folder holds ``--files`` small PNGs (16x16 grey, random pixels, 100 to a subfolder),
indexed with the articles' conv-16-8-8 model (untrained: what a sync costs does not depend
on the weights) so that indexing them is feasible on two cores. Measured, each in this run:

* **index**: ``lookalike index FOLDER --model M --out C`` in-process (decode, encode, the
  catalogue of every file: stat, header, digest);
* **idle sync**: ``sync`` with nothing changed (median of 3), and the files it opened,
  counted by wrapping ``open`` for the folder's paths;
* **1% changed**: a quarter each added, edited, deleted and moved (renamed into another
  subfolder); the sync's time against "their encode time + the idle sync", their encode
  time being decoding and encoding the added and edited files alone; the rows encoded;
* **watch**: ``lookalike serve C --watch`` as a process; 100 files copied one by one, each
  timed until a search by its id answers 200 over HTTP (ids are given in order); then
  ``--burst`` files copied at once while a client searches without pause: the time until
  all are indexed, how many are, and the searches' latency meanwhile.

Writes the table to docs/benchmarks.md (section "library") and prints it.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
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
        save_model(path, build_model(ModelConfig(arch="conv-16-8-8", input=InputSpec(1, 16, 16))))
    return path


def _write(paths: list[Path], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(p)


def _names(n: int, prefix: str = "p") -> list[str]:
    return [f"{prefix}{i // 100:04d}/{prefix}{i:06d}.png" for i in range(n)]


class Opens:
    """Counts the files opened below a folder (any read: digest, header, decode)."""

    def __init__(self, root: Path) -> None:
        self.root, self.count, self._open = str(root), 0, builtins.open

    def __enter__(self) -> Opens:
        def counting(file: object, *args: object, **kwargs: object) -> object:
            if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(self.root):
                self.count += 1
            return self._open(file, *args, **kwargs)  # type: ignore[call-overload]

        builtins.open = counting  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        builtins.open = self._open


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def _post(url: str, body: dict[str, object]) -> int:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)


def _count(url: str) -> int:
    with urllib.request.urlopen(url + "api/stats", timeout=30) as r:
        return int(json.loads(r.read())["count"])


def measure(work: Path, n: int, burst: int, singles: int) -> dict[str, object]:
    from lookalike.app.cli import main
    from lookalike.data.images import load_images
    from lookalike.search.collection import Collection
    from lookalike.search.sync import sync

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model = _model(work)
    folder = work / "photos"
    paths = [folder / s for s in _names(n)]
    _write(paths, 0)
    out = work / "coll"
    index_s, code = _timed(lambda: main(["-q", "index", str(folder), "--model", str(model),
                                         "--out", str(out)]))
    assert code == 0
    coll = Collection.open(out)
    coll.encoder  # noqa: B018 - loaded before the timings, as a watching service has it
    idle = []
    for _ in range(3):
        with Opens(folder) as opens:
            t, rep = _timed(lambda: sync(coll))
        assert rep.unchanged == n and rep.read == 0  # type: ignore[attr-defined]
        idle.append((t, opens.count))
    idle_s = statistics.median(t for t, _ in idle)
    idle_reads = max(c for _, c in idle)
    # 1% changed, a quarter each: added, edited, deleted, moved
    q = max(1, n // 400)
    rng = np.random.default_rng(1)
    picked = [paths[i] for i in rng.choice(n, 3 * q, replace=False)]
    edited, deleted, moved = picked[:q], picked[q:2 * q], picked[2 * q:]
    added = [folder / s for s in _names(q, "new")]
    _write(added, 2)
    _write(edited, 3)
    for p in deleted:
        os.remove(p)
    (folder / "moved").mkdir()
    for p in moved:
        os.rename(p, folder / "moved" / p.name)
    encode_s, _ = _timed(lambda: coll.encoder.encode(
        np.stack(load_images(added + edited, coll.encoder.spec)[0])))
    with Opens(folder) as opens:
        changed_s, rep = _timed(lambda: sync(coll))
    assert (rep.added, rep.updated, rep.removed, rep.moved) == (q, q, q, q), rep  # type: ignore[attr-defined]
    changed_encoded = rep.encoded  # type: ignore[attr-defined]
    changed_reads = opens.count
    coll.close()
    watch = _watch(work, out, folder, singles, burst)
    return {"files": n, "index_s": index_s, "idle_s": idle_s, "idle_reads": idle_reads,
            "changed": 4 * q, "changed_s": changed_s, "encode_s": encode_s,
            "changed_encoded": changed_encoded, "changed_reads": changed_reads, **watch}


def _watch(work: Path, coll: Path, folder: Path, singles: int, burst: int) -> dict[str, object]:
    from lookalike.search.collection import Collection

    staging = work / "staging"
    singles_src = [staging / f"s{i:04d}.png" for i in range(singles)]
    burst_src = [staging / "burst" / f"b{i:06d}.png" for i in range(burst)]
    _write(singles_src, 4)
    _write(burst_src, 5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.app.cli", "-q", "serve", str(coll),
                             "--port", "0", "--watch"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split()[0]
                break
        else:
            raise RuntimeError("lookalike serve exited")
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        time.sleep(2.0)  # the watcher's first (idle) sync and watch in place
        next_id = int(Collection.open(coll).manifest["next_id"])
        latencies = []
        (folder / "incoming").mkdir()
        for src in singles_src:
            start = time.perf_counter()
            shutil.copy(src, folder / "incoming" / src.name)
            while _post(url + "api/search", {"id": next_id, "k": 1}) != 200:
                time.sleep(0.01)
                if time.perf_counter() - start > 60:
                    raise RuntimeError(f"{src.name} not searchable within 60 s")
            latencies.append(time.perf_counter() - start)
            next_id += 1
        before = _count(url)
        searches: list[float] = []
        done = threading.Event()

        def client() -> None:
            while not done.is_set():
                t = time.perf_counter()
                assert _post(url + "api/search", {"id": 0, "k": 10}) == 200
                searches.append(time.perf_counter() - t)

        searcher = threading.Thread(target=client, daemon=True)
        searcher.start()
        start = time.perf_counter()
        (folder / "burst").mkdir()
        for src in burst_src:
            shutil.copy(src, folder / "burst" / src.name)
        copied_s = time.perf_counter() - start
        while _count(url) < before + burst and time.perf_counter() - start < 1800:
            time.sleep(0.2)
        burst_s = time.perf_counter() - start
        done.set()
        searcher.join(60)
        indexed = _count(url) - before
    finally:
        proc.terminate()
        proc.wait(60)
    lat = np.array(latencies)
    s = np.array(searches)
    return {"singles": singles, "watch_p50": float(np.percentile(lat, 50)),
            "watch_p95": float(np.percentile(lat, 95)), "watch_max": float(lat.max()),
            "burst": burst, "burst_indexed": indexed, "burst_s": burst_s, "copied_s": copied_s,
            "searches": len(s), "search_p50": float(np.percentile(s, 50)),
            "search_p99": float(np.percentile(s, 99)), "search_max": float(s.max())}


def render(r: dict[str, object], argv: list[str]) -> str:
    f = {k: v for k, v in r.items()}
    target = float(f["encode_s"]) + float(f["idle_s"])  # type: ignore[arg-type]
    rows = [
        ["index the folder", f"{f['files']:,} files", f"{f['index_s']:.1f} s", "", ""],
        ["idle sync (median of 3)", "0 changed", f"{f['idle_s']:.2f} s",
         f"{float(f['idle_s']) / float(f['index_s']):.1%} of index (target ≤ 2%)",  # type: ignore[arg-type]
         f"{f['idle_reads']} files opened (target 0)"],
        ["1% changed: added, edited, deleted, moved", f"{f['changed']:,} files",
         f"{f['changed_s']:.2f} s",
         f"{float(f['changed_s']) / target:.2f}x (their encode {f['encode_s']:.2f} s + idle sync; "  # type: ignore[arg-type]
         "target ≤ 1.2x)",
         f"{f['changed_encoded']} encoded = added + edited (moves: 0); {f['changed_reads']} files opened"],
        ["serve --watch: one file copied until searchable", f"{f['singles']} files, one by one",
         f"p50 {f['watch_p50']:.2f} s, p95 {f['watch_p95']:.2f} s", "target p95 ≤ 2 s",
         f"max {f['watch_max']:.2f} s"],
        ["serve --watch: a burst copied at once", f"{f['burst']:,} files",
         f"all indexed in {f['burst_s']:.1f} s (copying took {f['copied_s']:.1f} s)",
         f"{f['burst_indexed']:,} of {f['burst']:,} indexed",
         f"{f['searches']:,} searches meanwhile: p50 {float(f['search_p50']) * 1000:.0f} ms, "  # type: ignore[arg-type]
         f"p99 {float(f['search_p99']) * 1000:.0f} ms (target ≤ 500 ms)"],
    ]
    head = (f"## A photo library kept current: sync and watch\n\nMeasured {now()} at commit "
            f"{commit()} on {machine()}, by `python benchmarks/library.py {' '.join(argv)}`. "
            "Small PNGs (16x16 grey, random pixels) indexed with the articles' conv-16-8-8 "
            "(untrained); one run, each ratio measured side by side in it.\n\n")
    notes = ("\n\nThe 1% sync's time beyond \"their encode time + the idle sync\" is what each "
             "changed file costs besides its encoding, which this tiny model makes nearly free "
             "(0.2 ms an image): a cProfile of the same sync on the same 100,000-file folder "
             "(2026-12-05) put 0.8 s in the three commits (storing each new picture as PNG, "
             "writing segments and deletion records, fsyncs) and 0.3 s in reading the "
             "changed files' headers and digests for the catalogue. That is 2.2 ms a changed file, "
             "against the 7-10 ms EfficientNet-Lite0 alone takes to encode a photo at 192 px on "
             "these cores (100-145 images/s, the photo-folder section above) and the 25 ms a "
             "10-MP JPEG takes to decode: on real photos the same overhead is well under 20% of "
             "their encode time, while here the encode is nearly free and the target is missed. "
             "Moves cost no decode and no encode; the watch's "
             "latency is the 100 ms quiet time that ends a burst plus one sync of the new path.")
    return head + table(["what", "size", "time", "against", "work"], rows) + notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--burst", type=int, default=10_000)
    ap.add_argument("--singles", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lookalike-library-bench"))
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    result = measure(args.work, args.files, args.burst, args.singles)
    print(json.dumps(result, indent=2))
    text = render(result, sys.argv[1:] if argv is None else argv)
    print(text)
    if not args.no_write:
        write_section("library", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
