"""Filtered search at scale (issue 19): a collection of 1,000,000 items whose catalogue
(``files`` in metadata.sqlite) says where each file lies and when it was taken, searched
with filters that pass 1% and 0.01% of the items.

    python benchmarks/filters.py                       # 1,000,000 items, 100 queries
    python benchmarks/filters.py --n 200000 --work /tmp/filters

The items are fashion-mnist's training pictures (repeated to the size) with codes drawn
from a mixture of 1,024 Gaussian clusters (128-d, the conv-16-8-8 model's size; nothing
is encoded), indexed as ``auto`` chooses (IVF1024, nprobe 16). Item ``i``'s file is
``/photos/aXX/bYYYY/p{i}.jpg`` (``XX = i % 100``, ``YYYY = i % 10000``), taken at a
pseudo-random second of 2015-2024. The filters: a folder glob (``--in a07/*``: 1%;
``--in b0107``: 0.01%) and a date range (36.5 days: 1%; 8.8 hours: 0.01%).

For each filter: the first query (its SQL over the catalogue, the passing items' codes
gathered), then the median and p95 over ``--queries`` queries (random codes from the same
mixture, k = 10, no re-ranking) with the passing set cached; recall@10 and the share of
queries whose ranking is identical, against a brute-force float64 search over the passing
items; and, for contrast, the recall of the naive post-filter (the index's 100 nearest,
then the filter). Writes the table to docs/benchmarks.md (section "filters").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine, now, table, write_section  # noqa: E402

YEARS_S = 10 * 365 * 86400
START = np.datetime64("2015-01-01T00:00:00")


def _mixture(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    pick = rng.integers(0, len(centres), n)
    return (centres[pick] + 0.35 * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
            ).astype(np.float32)


def _taken_s(i: np.ndarray) -> np.ndarray:
    return (i.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(YEARS_S)


def build(work: Path, n: int) -> Path:
    from lookalike.config import InputSpec, ModelConfig
    from lookalike.data.datasets import Dataset, load_dataset
    from lookalike.models.modelio import load_model, save_model
    from lookalike.models.networks import build_model
    from lookalike.search import files
    from lookalike.search.collection import Collection

    path = work / f"filters-{n}"
    if (path / "manifest.json").is_file():
        return path
    model_dir = work / "model"
    if not (model_dir / "config.json").is_file():
        save_model(model_dir, build_model(ModelConfig(arch="conv-16-8-8", input=InputSpec(1, 28, 28))))
    model = load_model(model_dir)
    base = load_dataset("fashion-mnist", "database")
    ids = np.arange(n)
    paths = [f"/photos/a{i % 100:02d}/b{i % 10000:04d}/p{i}.jpg" for i in range(n)]
    ds = Dataset("bench", "database", base.images[ids % len(base)], None, tuple(paths))
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1024, model.module.code_dim), dtype=np.float32)
    start = time.perf_counter()
    coll = Collection.create(path, model, ds, codes=_mixture(rng, centres, n), overwrite=True)
    taken = (START + _taken_s(ids).astype("timedelta64[s]")).astype(str)
    files.put(files.db(coll), (files.FileRow(p, int(i), p.rsplit("/", 1)[0], 1000, 0, int(i), None, 28,
                                             28, str(t), "Canon", "EOS", None, None)
                               for i, p, t in zip(ids, paths, taken, strict=True)))
    np.save(work / "centres.npy", centres)
    print(f"built {n:,} items in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return path


def _window(share: float, n: int) -> tuple[str, str]:
    """A date range of about ``share`` of the ten years, from 2016-03-01."""
    lo = np.datetime64("2016-03-01T00:00:00")
    hi = lo + np.timedelta64(int(round(share * YEARS_S)), "s")
    return str(lo), str(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lookalike-filters"))
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    from lookalike.search import filters, queries
    from lookalike.search.collection import Collection
    from lookalike.search.filters import Filter

    path = build(args.work, args.n)
    coll = Collection.open(path)
    n = len(coll)
    centres = np.load(args.work / "centres.npy")
    q = _mixture(np.random.default_rng(1), centres, args.queries)
    ids = np.arange(n)
    seconds = _taken_s(ids).astype(np.int64)

    def within(lo: str, hi: str) -> np.ndarray:
        a = (np.datetime64(lo) - START).astype("timedelta64[s]").astype(np.int64)
        b = (np.datetime64(hi) - START).astype("timedelta64[s]").astype(np.int64)
        return ids[(seconds >= a) & (seconds < b)]

    cases = [("folder `--in a07/*`", Filter(paths=("a07/*",)), ids[ids % 100 == 7])]
    cases.append(("folder `--in b0107`", Filter(paths=("b0107",)), ids[ids % 10000 == 107]))
    for share in (0.01, 0.0001):
        lo, hi = _window(share, n)
        cases.append((f"date `--after {lo[:16]} --before {hi[:16]}`", Filter(after=lo, before=hi),
                      within(lo, hi)))

    times = []
    for r in range(len(q)):
        t = time.perf_counter()
        coll.search(q[r:r + 1], 10, rerank=False)
        times.append(time.perf_counter() - t)
    index = " ".join(v for v in (coll.manifest["backend"]["factory"],
                                 coll.manifest["backend"].get("search_params")) if v)
    rows = [[f"none (the index, {index})", f"{n:,}", "100%", "",
             f"{statistics.median(times) * 1e3:.1f}", f"{np.percentile(times, 95) * 1e3:.1f}", "", "", ""]]
    for name, where, want in cases:
        got = filters.passing_ids(coll, where)
        assert np.array_equal(got, want), (name, len(got), len(want))
        cold = []
        for _ in range(3):
            filters._cache.clear()
            t = time.perf_counter()
            queries.search(coll, q[:1], 10, where=where, rerank=False)
            cold.append(time.perf_counter() - t)
        times, found = [], []
        for r in range(len(q)):
            t = time.perf_counter()
            _, i = queries.search(coll, q[r:r + 1], 10, where=where, rerank=False)
            times.append(time.perf_counter() - t)
            found.append(i[0])
        codes = coll.store.codes_at(coll.store.rows(want)).astype(np.float64)
        dist = ((q[:, None, :].astype(np.float64) - codes[None]) ** 2).sum(-1)
        brute = want[np.argsort(dist, axis=1, kind="stable")[:, :10]]
        m = min(10, len(want))  # (fewer pass than k: all of them, then -1 padding)
        recall = np.mean([len(set(f[:m]) & set(b[:m])) / m for f, b in zip(found, brute, strict=True)])
        same = np.mean([np.array_equal(f[:m], b[:m]) and (f[m:] == -1).all()
                        for f, b in zip(found, brute, strict=True)])
        _, approx = coll.search(q, 100, rerank=False)
        keep = set(want.tolist())
        post = np.mean([len({i for i in row if i in keep} & set(b[:m])) / m
                        for row, b in zip(approx, brute, strict=True)])
        rows.append([name, f"{len(want):,}", f"{len(want) / n:.2%}", f"{statistics.median(cold) * 1e3:.0f}",
                     f"{statistics.median(times) * 1e3:.1f}",
                     f"{np.percentile(times, 95) * 1e3:.1f}", f"{recall:.3f}", f"{same:.0%}", f"{post:.3f}"])
        print(rows[-1], file=sys.stderr)
    header = ["filter", "passing", "share", "first query ms (SQL)", "median ms", "p95 ms",
              "recall@10 vs brute force", "identical rankings", "post-filter recall@10"]
    body = (f"### Filtered search ({n:,} items)\n\n"
            f"`python benchmarks/filters.py --n {args.n} --queries {args.queries}` "
            f"({now()}, commit {commit()}; {machine()}). One query at a time, k = 10, no "
            "re-ranking; the first query of a filter runs its SQL over the catalogue and "
            "gathers the passing items' codes (median of 3, cache cleared), the others find them "
            "cached (the same filter, the collection unchanged). Brute force: float64 over the "
            "passing items' codes. Post-filter: the index's 100 nearest, then the filter "
            "(what a search without filter support returns).\n\n" + table(header, rows))
    print(body)
    if not args.no_write:
        print(f"written to {write_section('filters', body)}", file=sys.stderr)


if __name__ == "__main__":
    main()
