"""Duplicates on public pictures: pair precision and recall per edit kind of lookalike's tiers,
a perceptual-hash peer and ablations; and the time and peak memory of the pass at scale.

    python benchmarks/duplicates.py                       # quality (~5-15 min on 2 busy cores)
    python benchmarks/duplicates.py --scale 100000 300000 # + scale rows (synthetic items)
    python benchmarks/duplicates.py --reuse ...           # reuse the folder, model, collection

*Quality*: the folder of :mod:`dupdata` (Debian's wallpapers: distinct windows, their copies
by every edit kind, similar-but-distinct overlapping windows), indexed with the default
model for a colour folder (``lookalike train`` then ``index``, as a new user would). A *true
pair* is two files of one window. lookalike's pairs are every pair inside one of its groups
(what a user would act on); the peer's are the pairs within Hamming distance 10 of the
``imagehash`` package's 64-bit pHash (imagededup's default), taken alone and as groups.
Recall is given per edit kind of the pair (``two edits``: two copies of one window);
"similar as near" counts the similar-but-distinct pairs (overlapping windows) called near.

*Scale*: synthetic items (:mod:`duplicates_synthetic`): random 128-d codes (a copy's: its
original's plus noise) and smooth 32x32 grey thumbnails, 1% of them edited copies of others
(shifted, zoomed, noised). The pass
(:func:`lookalike.search.duppass.scan`) runs in a fresh process: wall time and peak RSS
(``VmHWM``) of the whole process; then ``--since`` with 1,000 added items.

Writes section "duplicates" of docs/benchmarks.md and prints it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine, now, table, write_section  # noqa: E402

from dupdata import build  # noqa: E402
from lookalike.app.cli import main as cli  # noqa: E402

Pair = tuple[str, str]
WORK = "benchmarks/out/duplicates"


def truth_pairs(truth: dict[str, dict[str, object]]) -> tuple[dict[Pair, str], set[Pair]]:
    """``{pair: edit kind}`` of the true pairs, and the similar-but-distinct pairs."""
    names = sorted(truth)
    true: dict[Pair, str] = {}
    similar: set[Pair] = set()
    for a, b in itertools.combinations(names, 2):
        ta, tb = truth[a], truth[b]
        if ta["window"] == tb["window"]:
            edits = [str(t["edit"]) for t in (ta, tb)]
            others = [e for e in edits if e != "original"]
            true[(a, b)] = others[0] if len(others) == 1 else "two edits"
        elif ta["source"] == tb["source"]:
            (a0, a1), (b0, b1) = ta["span"], tb["span"]  # type: ignore[misc]
            if min(a1, b1) > max(a0, b0):
                similar.add((a, b))
    return true, similar


def group_closure(groups: list[list[str]]) -> set[Pair]:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}  # type: ignore[misc]


def score_row(name: str, found: set[Pair], true: dict[Pair, str], similar: set[Pair],
              kinds: list[str], seconds: float | None = None) -> list[str]:
    hits = found & set(true)
    precision = len(hits) / len(found) if found else 1.0
    per_kind = []
    for kind in kinds:
        of = [p for p, k in true.items() if k == kind]
        per_kind.append(f"{sum(p in found for p in of) / len(of):.3f}")
    return [name, str(len(found)), f"{precision:.3f}", f"{len(hits) / len(true):.3f}", *per_kind,
            str(len(found & similar)), "" if seconds is None else f"{seconds:.1f}"]


def phash_pairs(photos: Path, names: list[str], within: int = 10) -> tuple[set[Pair], float]:
    import imagehash
    from PIL import Image

    start = time.perf_counter()
    hashes = []
    for n in names:
        with Image.open(photos / n) as im:
            hashes.append(imagehash.phash(im))
    bits = np.array([h.hash.ravel() for h in hashes], dtype=np.uint8)
    dist = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    i, j = np.nonzero(np.triu(dist <= within, 1))
    return {(names[a], names[b]) for a, b in zip(i, j, strict=True)}, time.perf_counter() - start


def components(pairs: set[Pair]) -> list[list[str]]:
    parent: dict[str, str] = {}

    def root(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    for a, b in pairs:
        parent[root(a)] = root(b)
    out: dict[str, list[str]] = {}
    for a in parent:
        out.setdefault(root(a), []).append(a)
    return list(out.values())


After = Callable[..., np.ndarray]


def lookalike_groups(coll_dir: Path, scorer: Callable[..., np.ndarray] | None = None,
                     every_pair: bool = False, fine: bool = True, frames: bool = True,
                     max_block: float | None = None, after: After | None = None
                     ) -> tuple[dict[str, list[list[str]]], float]:
    """Groups by tier (names), with the pass's own scorer or ``scorer`` in its place; without
    the fine check unless ``fine``, without the frame check unless ``frames``, with the fine
    check's block limit ``max_block``, and ``after(coll, i, j, score, threshold)`` (rows,
    scores after the checks) giving the scores the pass keeps."""
    from lookalike.search import duplicates, duppass, finecheck
    from lookalike.search.collection import Collection

    coll = Collection.open(coll_dir)
    saved = duppass.pair_scores
    saved_k = duplicates.DEFAULT_K
    saved_fine = duplicates.fine_check
    saved_block = finecheck.MAX_BLOCK_RESIDUAL

    def checks(pictures: Callable[[np.ndarray], np.ndarray], i: np.ndarray, j: np.ndarray,
               score: np.ndarray, threshold: float, **kwargs: object) -> np.ndarray:
        if not frames:
            kwargs.pop("frames", None)
        out = saved_fine(pictures, i, j, score, threshold, **kwargs) if fine else score  # type: ignore[arg-type]
        return out if after is None else after(coll, i, j, out, threshold)

    try:
        duplicates.fine_check = checks  # type: ignore[assignment]
        if max_block is not None:
            finecheck.MAX_BLOCK_RESIDUAL = max_block
        if scorer is not None:
            duppass.pair_scores = scorer  # type: ignore[assignment]
        start = time.perf_counter()
        groups = duplicates.find_groups(coll, similar=True, resume=False,
                                        k=len(coll) - 1 if every_pair else saved_k)
        seconds = time.perf_counter() - start
    finally:
        duppass.pair_scores = saved  # type: ignore[assignment]
        duplicates.fine_check = saved_fine
        finecheck.MAX_BLOCK_RESIDUAL = saved_block
    sources = {it.id: Path(it.source).name for it in coll.items(coll.ids) if it}
    by_tier: dict[str, list[list[str]]] = {}
    for g in groups:
        by_tier.setdefault(g.tier, []).append([sources[i] for i in g.ids])
    # pairs of near or stronger: the groups without the similar links
    strong = duplicates.group_pairs([p for g in groups for p in g.links if p.tier != "similar"])
    by_tier["near or stronger"] = [[sources[i] for i in g.ids] for g in strong]
    return by_tier, seconds


class Alternatives:
    """The measures of benchmarks/dupalternatives.py for the pairs that pass the fine check
    of the pixels (``record`` as the ``after`` of a pass without the frame check), keyed by
    item ids; ``reject(name, limit)``: an ``after`` that takes out of near the pairs whose
    measure is below ``limit``."""

    def __init__(self) -> None:
        self.measures: dict[tuple[int, int], dict[str, float]] = {}
        self.seconds = {"frames": 0.0, "edit_warp": 0.0, "hires": 0.0}

    def record(self, coll: object, i: np.ndarray, j: np.ndarray, score: np.ndarray,
               threshold: float) -> np.ndarray:
        import dupalternatives as alt

        from lookalike.search.dupgeometry import frame_sizes, largest_border
        from lookalike.search.finecheck import aligned

        rows = np.flatnonzero(score >= threshold)
        ids = coll.ids  # type: ignore[attr-defined]
        a, b = ids[i[rows]], ids[j[rows]]
        pics_a = np.stack([coll.store.picture(int(r)) for r in i[rows]])  # type: ignore[attr-defined]
        pics_b = np.stack([coll.store.picture(int(r)) for r in j[rows]])  # type: ignore[attr-defined]
        one, warps = aligned(pics_a, pics_b)
        start = time.perf_counter()  # the frame check's own cost: sizes read, borders
        sa, sb = frame_sizes(coll, a), frame_sizes(coll, b)  # type: ignore[arg-type]
        largest_border(np.where(one[:, None], sa, sb), np.where(one[:, None], sb, sa),
                       pics_a.shape[1:3], warps)
        self.seconds["frames"] = time.perf_counter() - start
        start = time.perf_counter()
        edit = alt.edit_warp(pics_a, pics_b, sa, sb)
        self.seconds["edit_warp"] = time.perf_counter() - start
        items = {it.id: it.source for it in coll.items(np.unique(np.r_[a, b])) if it}  # type: ignore[attr-defined]
        start = time.perf_counter()
        detail, peak = alt.hires(pics_a, pics_b, [items.get(int(x)) for x in a],
                                 [items.get(int(x)) for x in b])
        self.seconds["hires"] = time.perf_counter() - start
        for n, key in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
            self.measures[key] = {"edit_warp": float(edit[n]), "detail": float(detail[n]),
                                  "peak": float(peak[n])}
        return score

    def reject(self, name: str, limit: float) -> After:
        def after(coll: object, i: np.ndarray, j: np.ndarray, score: np.ndarray,
                  threshold: float) -> np.ndarray:
            out = score.copy()
            ids = coll.ids  # type: ignore[attr-defined]
            for r in np.flatnonzero(score >= threshold):
                value = self.measures.get((int(ids[i[r]]), int(ids[j[r]])), {}).get(name, np.nan)
                if value < limit:  # (nan: not measured, kept)
                    out[r] = threshold - 1e-5
            return out

        return after


def plain_scorer(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], **_: object) -> np.ndarray:
    from lookalike.search.alignment import standardise

    return np.einsum("mp,mp->m", standardise(a), standardise(b)).astype(np.float32)


def grid_scorer(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], chunk: int = 64,
                **_: object) -> np.ndarray:
    """The grid of zooms and shifts at 32 px, no refinement, no ring."""
    from lookalike.search.alignment import _one_way, standardise

    out = np.empty(len(a), np.float32)
    for s in range(0, len(a), chunk):
        x, y = a[s:s + chunk], b[s:s + chunk]
        out[s:s + chunk] = np.maximum(_one_way(x, standardise(y), shape)[0],
                                      _one_way(y, standardise(x), shape)[0])
    return out


def no_ring_scorer(*args: object, **kwargs: object) -> np.ndarray:
    from lookalike.search import alignment

    saved = alignment.RING
    alignment.RING = 0
    try:
        return alignment.pair_scores(*args, **kwargs)  # type: ignore[arg-type]
    finally:
        alignment.RING = saved


def quality(work: Path, reuse: bool) -> str:
    truth = build(work)["files"]  # type: ignore[index]
    photos = work / "photos"
    model, coll = work / "model", work / "coll"
    if not (reuse and (model / "config.json").is_file()):
        cli(["-q", "train", "--dataset", str(photos), "--seed", "0", "--out", str(model)])
    if not (reuse and (coll / "manifest.json").is_file()):
        cli(["-q", "index", "--model", str(model), "--dataset", str(photos), "--out", str(coll),
             "--overwrite"])
    true, similar = truth_pairs(truth)  # type: ignore[arg-type]
    kinds = ["jpeg", "resize", "crop", "brightness", "stamp", "two edits"]
    names = sorted(truth)
    rows = []
    from lookalike.search.dupgeometry import MAX_BORDER
    from lookalike.search.duplicates import NEAR_THRESHOLD

    groups, seconds = lookalike_groups(coll)
    strong = group_closure(groups["near or stronger"])
    rows.append(score_row(f"**lookalike, near or stronger** (>= {NEAR_THRESHOLD})", strong, true,
                          similar, kinds, seconds))
    for tier in ("identical", "same-pixels"):
        rows.append(score_row(f"lookalike, {tier} groups", group_closure(groups.get(tier, [])),
                              true, similar, kinds))
    every = group_closure([g for t, gs in groups.items() if t != "near or stronger" for g in gs])
    rows.append(score_row("lookalike with --similar (every group)", every, true, similar, kinds))
    found, secs = phash_pairs(photos, names)
    rows.append(score_row("pHash, Hamming <= 10 (imagehash), pairs", found, true, similar, kinds,
                          secs))
    rows.append(score_row("pHash, Hamming <= 10, as groups", group_closure(components(found)),
                          true, similar, kinds))
    g, secs = lookalike_groups(coll, frames=False)
    rows.append(score_row("ablation: no frame check (the fine check of the pixels only)",
                          group_closure(g["near or stronger"]), true, similar, kinds, secs))
    g, secs = lookalike_groups(coll, max_block=float("inf"))
    rows.append(score_row("ablation: the frame check without the fine check's block limit",
                          group_closure(g["near or stronger"]), true, similar, kinds, secs))
    alts = Alternatives()
    lookalike_groups(coll, frames=False, after=alts.record)
    from lookalike.search.collection import Collection

    opened = Collection.open(coll)
    window = {it.id: truth[Path(it.source).name]["window"]  # type: ignore[index]
              for it in opened.items(opened.ids) if it}
    wrong = [m for (a, b), m in alts.measures.items() if window[a] != window[b]]
    limits = {"edit_warp": NEAR_THRESHOLD,  # (not tuned: an edit's warp must reach near)
              **{k: max(m[k] for m in wrong) + 1e-6 if wrong else -1.0 for k in ("detail", "peak")}}
    for name, label in (
            ("edit_warp", "alternative to the frame check: the best warp an edit can make (borders "
             "<= {:.3f}) reaches the threshold ({:.3f}), 32 px grid"),
            ("detail", "alternative: detail (band-pass) correlation at 256 px from the files "
             ">= {1:.3f} (the lowest that takes out every wrong pair)"),
            ("peak", "alternative: distinct peak at 256 px from the files, (best - moved 4-6 px) / "
             "(1 - moved) >= {1:.3f} (the lowest that takes out every wrong pair)")):
        g, secs = lookalike_groups(coll, frames=False, after=alts.reject(name, limits[name]))
        rows.append(score_row(label.format(MAX_BORDER, limits[name]),
                              group_closure(g["near or stronger"]), true, similar, kinds))
    for label, scorer, every_pair, fine in (
            ("ablation: no fine check, no frame check (32 px grey only)", None, False, False),
            ("ablation: plain correlation, no alignment", plain_scorer, False, True),
            ("ablation: grid of zooms and shifts only (no refinement, no ring)", grid_scorer, False,
             True),
            ("ablation: no ring", no_ring_scorer, False, True),
            ("ablation: every pair a candidate (no codes)", None, True, True)):
        g, secs = lookalike_groups(coll, scorer, every_pair, fine)
        rows.append(score_row(label, group_closure(g["near or stronger"]), true, similar, kinds,
                              secs))
    counts = {k: sum(v == k for v in true.values()) for k in kinds}
    header = ["method", "pairs found", "precision", "recall",
              *[f"recall {k} ({counts[k]})" for k in kinds], "similar as near", "seconds"]
    n = max(len(alts.measures), 1)
    costs = (f"The checks' own cost per pair that passes the fine check of the pixels "
             f"({len(alts.measures)} pairs, {len(wrong)} of them of distinct windows): the frame "
             f"check {1e3 * alts.seconds['frames'] / n:.2f} ms (reading the two files' sizes and "
             f"the borders), the best warp an edit can make {1e3 * alts.seconds['edit_warp'] / n:.1f}"
             f" ms, the two measures at 256 px {1e3 * alts.seconds['hires'] / n:.0f} ms (reading both "
             "files).")
    return (f"{len(names)} files ({len(set(t['window'] for t in truth.values()))} windows of "  # type: ignore[index]
            f"{build(work)['sources']} wallpapers), {len(true)} true pairs, {len(similar)} "
            f"similar-but-distinct pairs.\n\n" + table(header, rows) + "\n\n" + costs)


SCALE = """
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[4])
from duplicates_synthetic import items
from lookalike.search.alignment import HALF_MARGIN
from lookalike.search.duplicates import NEAR_THRESHOLD, SIMILAR_THRESHOLD
from lookalike.search.duppass import PassSettings, scan
n, since, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
codes, thumbs, copies = items(n, seed)
# the settings find_groups gives a pass at the default threshold
settings = PassSettings(k=10, floor=SIMILAR_THRESHOLD, items=n, fingerprint="synthetic",
                        refine_above=NEAR_THRESHOLD - HALF_MARGIN)
stats = {}
start, cpu = time.perf_counter(), time.process_time()
queries = None if since == 0 else np.arange(n - since, n)
import inspect
extra = {"stats": stats} if "stats" in inspect.signature(scan).parameters else {}  # (a baseline)
i, j, s = scan(codes, thumbs.__getitem__, (32, 32), settings, queries=queries, **extra)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
near = {p for p, v in zip(zip(i.tolist(), j.tolist()), s.tolist()) if v >= NEAR_THRESHOLD}
planted = [(min(a, b), max(a, b)) for a, b in copies if queries is None or max(a, b) >= n - since]
with open("/proc/self/status") as fh:
    hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
print(json.dumps({"n": n, "since": since, "seconds": seconds, "cpu_s": cpu, "peak_rss_mib": hwm,
                  "pairs": len(i), "planted": len(planted),
                  "planted_near": sum(p in near for p in planted), **stats}))
"""


def scale(sizes: list[int], baseline: str | None = None) -> tuple[str, list[str]]:
    rows = []
    loads = [load()]
    here = str(Path(__file__).resolve().parent)
    runs: list[tuple[int, int, str | None]] = []
    for n in sizes:  # with a baseline: the first size's full pass with another checkout's too
        before = [(n, 0, baseline)] if baseline and n == sizes[0] else []
        runs += [(n, 0, None), *before, (n, 1000, None)]
    for n, since, src in runs:
        env = dict(os.environ, PYTHONPATH=src) if src else None
        out = subprocess.run([sys.executable, "-c", SCALE, str(n), str(since), "0", here],
                             check=True, capture_output=True, text=True, env=env).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(r, flush=True)
        label = "full pass" if since == 0 else "--since, 1,000 new items"
        if src:
            label += f", before (`{src}` at commit {_commit_of(src)})"
        stages = ("–" if "search_s" not in r else
                  f"{r['search_s']:.0f} / {r['features_s']:.0f} / {r['gate_s']:.0f} / "
                  f"{r['pixels_s']:.0f}")
        rows.append([f"{n:,}", label, f"{r['seconds']:.0f}", f"{r['cpu_s']:.0f}",
                     f"{r['peak_rss_mib']:.0f}", f"{r['planted_near']}/{r['planted']}",
                     f"{r['candidates']:,}" if "candidates" in r else "–",
                     f"{r['scored']:,}" if "scored" in r else "–", stages])
        loads.append(load())
    return table(["items", "pass", "seconds", "CPU seconds", "peak RSS (MiB)",
                  "planted copies found near", "candidate pairs", "scored on pixels",
                  "seconds: search / block means / gate / pixels"], rows), loads


def _commit_of(src: str) -> str:
    return subprocess.run(["git", "-C", src, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip() or "unknown"


def load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=WORK, help="folder, model, collection")
    ap.add_argument("--reuse", action="store_true", help="reuse what --work already holds")
    ap.add_argument("--scale", type=int, nargs="*", default=[], metavar="N",
                    help="also the scale rows at these numbers of synthetic items")
    ap.add_argument("--no-quality", action="store_true", help="only the scale rows")
    ap.add_argument("--baseline", metavar="SRC", help="also the first size's full pass with the "
                    "lookalike package under SRC (another checkout's src/), side by side")
    args = ap.parse_args()
    work = Path(args.work)
    stamp = f"{now()}, commit {commit()}, {machine()}"
    if not args.no_quality:
        command = ("python benchmarks/duplicates.py" + (f" --work {args.work}" if args.work != WORK else "")
                   + (" --reuse" if args.reuse else ""))
        body = (f"## Duplicates: pair precision and recall (Debian wallpapers)\n\n`{command}` — "
                f"{stamp}.\n\n" + quality(work, args.reuse))
        print(body)
        print(f"written to {write_section('duplicates', body)}")
    if args.scale:
        command = ("python benchmarks/duplicates.py --no-quality --scale "
                   + " ".join(map(str, args.scale))
                   + (f" --baseline {args.baseline}" if args.baseline else ""))
        rows, loads = scale(args.scale, args.baseline)
        body = (f"## Duplicates: time and memory at scale (synthetic items)\n\n`{command}` — "
                f"{stamp}; load average (1 min) {', '.join(loads)} at the start and after each "
                f"row.\n\n" + SCALE_TEXT + "\n\n" + rows)
        print(body)
        print(f"written to {write_section('duplicates-scale', body)}")


SCALE_TEXT = """Each row is its own process: `duppass.scan` (the pass `lookalike duplicates` runs, with
its settings: k = 10, the similar floor, refinement above the near threshold less the
margin) over synthetic items of `benchmarks/duplicates_synthetic.py` (random 128-d codes,
smooth 32x32 grey thumbnails, 1% planted edited copies); wall time of the pass and peak RSS
(VmHWM) of the whole process, the items' own codes and thumbnails (1.5 KiB an item)
included. Candidates: exact search up to 2e9 query-item products (a full pass of ~44,000
items), above it an inverted file `IVF(2·sqrt n),SQ8`, 32 probes. *--since*: the last 1,000
rows are the new items, checked against all (exact). *scored on pixels*: the candidate pairs
that pass the gate (8x8 block means) and meet `pair_scores`."""


if __name__ == "__main__":
    main()
