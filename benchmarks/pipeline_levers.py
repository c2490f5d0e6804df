"""Levers tried to make ``index`` of small photos run at the model's speed, measured so that
nobody retries them blindly (issue 21, item 1):

    python benchmarks/pipeline_levers.py --work /tmp/pl22_work

* **OpenMP's wait policy**: PyTorch's CPU wheel runs its intra-op threads on libgomp, whose
  idle threads spin (``GOMP_SPINCOUNT``, 300,000 spins by default) before they sleep, on
  cores the decoder threads want. ``OMP_WAIT_POLICY=PASSIVE`` (read when libgomp loads, so
  set for a whole process) makes them sleep at once. Each policy in its own processes,
  alternated: images/s of the bare model (one batch at a time, PyTorch on every core) and of
  ``index`` one batch at a time and with batches at once
  (:data:`lookalike.models.encoders.BATCHES_AT_ONCE`);
* **previews compressed in two threads**: the 96-px previews a new collection stores are
  compressed (:func:`lookalike.search.segments.encode_picture`) after the stream, in one
  thread, while the other core idles: the wall time of the folder's previews in one thread
  and in two.

The folders and model are those of ``benchmarks/pipeline.py`` (same ``--work``). Writes the
section "pipeline-levers" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline as bench  # noqa: E402
from _common import commit, machine, now, table, write_section  # noqa: E402

from lookalike.config import InputSpec  # noqa: E402
from lookalike.data.pipeline import FolderFiles, decode_file  # noqa: E402
from lookalike.models import encoders  # noqa: E402
from lookalike.models.encoders import ModelEncoder  # noqa: E402
from lookalike.search.collection import Collection  # noqa: E402
from lookalike.search.segments import encode_picture  # noqa: E402

POLICIES = ("default", "PASSIVE")


def child(work: Path, small: int, rounds: int) -> dict[str, list[float]]:
    """In this process (its OpenMP policy set by the parent): images/s of the bare model and
    of ``index`` (one batch at a time, batches at once), ``rounds`` alternated rounds after
    an untimed one."""
    folder = work / f"photos_{small}x0.3mp"  # (made by benchmarks/pipeline.py)
    model = bench.the_model(work, folder)
    encoder = ModelEncoder(model)
    out = work / "coll-levers"

    def index(at_once: bool) -> float:
        shutil.rmtree(out, ignore_errors=True)
        default = encoders.BATCHES_AT_ONCE
        encoders.BATCHES_AT_ONCE = default if at_once else 0
        try:
            t = time.perf_counter()
            coll = Collection.create(out, model, FolderFiles.of(folder))
            seconds = time.perf_counter() - t
        finally:
            encoders.BATCHES_AT_ONCE = default
        n = len(coll)
        coll.close()
        shutil.rmtree(out, ignore_errors=True)
        return n / seconds

    res: dict[str, list[float]] = {"model": [], "one_batch": [], "at_once": []}
    bench.bare_model(encoder, small)  # untimed: one-off costs
    index(False)
    index(True)
    for _ in range(rounds):
        res["model"].append(bench.bare_model(encoder, small))
        res["one_batch"].append(index(False))
        res["at_once"].append(index(True))
    return res


def wait_policy(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """:func:`child` in its own process for each policy, ``--processes`` times each, alternated."""
    out: dict[str, dict[str, list[float]]] = {p: {} for p in POLICIES}
    for _ in range(args.processes):
        for policy in POLICIES:
            env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
            if policy != "default":
                env["OMP_WAIT_POLICY"] = policy
            proc = subprocess.run([sys.executable, __file__, "--child", "--work", str(args.work),
                                   "--small", str(args.small), "--rounds", str(args.rounds)],
                                  env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"child failed: {proc.stderr[-2000:]}")
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            for key, values in got.items():
                out[policy].setdefault(key, []).extend(values)
            print(policy, json.dumps(got), flush=True)
    return out


def previews_in_threads(folder: Path, rounds: int) -> dict[str, Any]:
    """Wall ms to compress the previews of ``folder`` in one thread and in two (best of
    ``rounds``), and whether the bytes are the same."""
    spec = InputSpec(3, bench.SIZE, bench.SIZE)
    previews = [decode_file(p, spec).preview for p in sorted(folder.rglob("*.jpg"))]
    one_ms, two_ms, same = [], [], True
    for _ in range(rounds):
        t = time.perf_counter()
        a = [encode_picture(p) for p in previews]
        one_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            b = list(pool.map(encode_picture, previews, chunksize=16))
        two_ms.append((time.perf_counter() - t) * 1000)
        same &= a == b
    return {"previews": len(previews), "one_ms": min(one_ms), "two_ms": min(two_ms), "same": same}


def section(res: dict[str, Any], argv: list[str]) -> str:
    med = statistics.median
    rows = []
    for policy, got in res["policy"].items():
        rows.append([policy, f"{med(got['model']):.1f}", f"{med(got['one_batch']):.1f}",
                     f"{med(i / m for i, m in zip(got['one_batch'], got['model'], strict=True)):.2f}x",
                     f"{med(got['at_once']):.1f}",
                     f"{med(i / m for i, m in zip(got['at_once'], got['model'], strict=True)):.2f}x"])
    base = res["policy"]["default"]
    pic = res["previews"]
    return "\n".join([
        "## Levers tried for indexing at the model's speed",
        "",
        f"`python benchmarks/pipeline_levers.py {' '.join(argv)}`".replace(" `", "`")
        + f" — {res['when']}, commit {res['commit']}, {res['machine']}. The 0.3-MP folder and "
        "the model of \"Indexing at the model's speed\". Load average "
        f"{res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at the end.",
        "",
        "OpenMP's wait policy: each policy in its own processes (libgomp reads it when it loads), "
        f"{res['processes']} processes each, alternated, {res['rounds']} alternated rounds in each "
        "after an untimed one; the median over all rounds (images/s; ratios per round). "
        "*default*: libgomp's idle threads spin 300,000 times before they sleep; *PASSIVE*: "
        "`OMP_WAIT_POLICY=PASSIVE`, they sleep at once.",
        "",
        table(["policy", "model images/s", "index, one batch at a time", "/ model",
               "index, batches at once (now)", "/ model"], rows),
        "",
        "Each round (images/s): " + "; ".join(
            f"{policy}: model {', '.join(f'{v:.0f}' for v in got['model'])}, one batch at a time "
            f"{', '.join(f'{v:.0f}' for v in got['one_batch'])}, batches at once "
            f"{', '.join(f'{v:.0f}' for v in got['at_once'])}"
            for policy, got in res["policy"].items()) + ".",
        "",
        f"Previews compressed after the stream ({pic['previews']} previews of 96 px, wall time, best "
        f"of {res['rounds']}): one thread {pic['one_ms']:.0f} ms, two threads {pic['two_ms']:.0f} ms "
        f"({pic['one_ms'] / pic['two_ms']:.2f}x; the same bytes: {pic['same']}); against an index of "
        f"the folder in {pic['previews'] / med(base['at_once']) * 1000:.0f} ms (batches at once, "
        "default policy).",
        "",
        verdict(res),
    ])


def verdict(res: dict[str, Any]) -> str:
    """Which lever is kept, from the figures."""
    med = statistics.median
    pol, pic = res["policy"], res["previews"]
    model = med(pol["PASSIVE"]["model"]) / med(pol["default"]["model"])
    one = med(pol["PASSIVE"]["one_batch"]) / med(pol["default"]["one_batch"])
    now_ = med(pol["PASSIVE"]["at_once"]) / med(pol["default"]["at_once"])
    saved = (pic["one_ms"] - pic["two_ms"]) / (pic["previews"] / med(pol["default"]["at_once"]) * 1000)
    return (f"`OMP_WAIT_POLICY=PASSIVE` makes the bare model {model:.2f}x as fast, the index one batch "
            f"at a time {one:.2f}x and the index with batches at once {now_:.2f}x (PyTorch on one "
            "thread there: no team of threads to wait in; see the spread of its rounds); it is not "
            "set: the model's own two-thread passes (searches, the bare model) lose more than the "
            "index could gain. "
            f"Previews compressed in two threads would save {saved:.1%} of the index time: "
            "under the 5% that a thread pool in the segment writer would be worth.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/pipeline"))
    ap.add_argument("--small", type=int, default=400, help="photos of 0.3 MP (the folder of pipeline.py)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--processes", type=int, default=2, help="processes for each wait policy")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--rewrite", action="store_true",
                    help="only write the section again from the last run's --work/pipeline_levers.json")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.work, args.small, args.rounds)))
        return
    if args.rewrite:
        res = json.loads((args.work / "pipeline_levers.json").read_text())
        body = section(res, res["argv"])
        print(body)
        if not args.no_write:
            write_section("pipeline-levers", body)
        return
    res: dict[str, Any] = {"load": [os.getloadavg()[0]], "when": now(), "commit": commit(),
                           "machine": machine(), "rounds": args.rounds, "processes": args.processes}
    res["policy"] = wait_policy(args)
    res["previews"] = previews_in_threads(args.work / f"photos_{args.small}x0.3mp", args.rounds)
    res["load"].append(os.getloadavg()[0])
    res["argv"] = sys.argv[1:]
    (args.work / "pipeline_levers.json").write_text(json.dumps(res, indent=2))
    body = section(res, sys.argv[1:])
    print(body)
    if not args.no_write:
        write_section("pipeline-levers", body)


if __name__ == "__main__":
    main()
