"""What telling the changed items costs ``duplicates --since last`` (lookalike.search.dupsince),
beside the ``--since`` pass itself, at scale.

Items: the synthetic ones of the scale rows of benchmarks/duplicates.py (random 128-d codes,
smooth 32x32 thumbnails, 1% edited copies), the last 1,000 of them new. The store is a
stand-in with the calls dupsince makes (``ids``, ``segments``, ``locate``, ``codes_at``), its
codes an array in memory: the old items in one segment, the new ones in a second. Rows, each
timed once in one process, side by side:

* the ``--since`` pass's scan (``duppass.scan`` with the 1,000 new rows as queries, the
  settings ``find_groups`` gives it), as in benchmarks/duplicates.py;
* the record a full pass makes (every code digested);
* the record of a ``--since`` pass after 1,000 items were added (their segment digested, the
  rest taken from the last record) and the ids that changed;
* the same after a ``compact`` (one new segment: every code digested again);
* writing and reading the record (``last-pairs.npz``, with no pairs).

Run: ``python benchmarks/dupsince.py [--items 1000000]``.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from duplicates_synthetic import items  # noqa: E402

from lookalike.search import dupsince  # noqa: E402
from lookalike.search.alignment import HALF_MARGIN  # noqa: E402
from lookalike.search.duplicates import NEAR_THRESHOLD, SIMILAR_THRESHOLD  # noqa: E402
from lookalike.search.duppass import PassSettings, scan  # noqa: E402
from lookalike.search.segments import Segment  # noqa: E402

NEW = 1000


class Store:
    """The calls of a SegmentStore that dupsince makes, over codes in memory; ``cuts``: the
    first row of each segment after the first."""

    def __init__(self, codes: np.ndarray, names: list[str], cuts: list[int]) -> None:
        self.codes, self.ids = codes, np.arange(len(codes), dtype=np.int64)
        self.segments = [Segment(name, 0, {"ids": f"{name}.ids", "codes": f"{name}.codes"},
                                 {f"{name}.ids": {"sha256": name * 2}, f"{name}.codes": {"sha256": name}})
                         for name in names]
        self._seg = np.searchsorted(np.array(cuts), np.arange(len(codes)), side="right").astype(np.int32)

    def __len__(self) -> int:
        return len(self.codes)

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._seg[rows], rows

    def codes_at(self, rows: np.ndarray) -> np.ndarray:
        return self.codes[rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    n = ap.parse_args().items
    load = os.getloadavg()[0]
    codes, thumbs, _ = items(n, 0)
    rows: list[tuple[str, float]] = []

    def timed(what: str, call):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        out = call()
        rows.append((what, time.perf_counter() - start))
        return out

    settings = PassSettings(k=10, floor=SIMILAR_THRESHOLD, items=n, fingerprint="synthetic",
                            refine_above=NEAR_THRESHOLD - HALF_MARGIN)
    timed(f"--since pass: duppass.scan of the {NEW:,} new items", lambda: scan(
        codes, thumbs.__getitem__, (32, 32), settings, queries=np.arange(n - NEW, n)))
    before = Store(codes[:n - NEW], ["000001"], [])
    last = timed(f"record of a full pass over the {n - NEW:,} old items (every code digested)",
                 lambda: dupsince.current(before))
    added = Store(codes, ["000001", "000002"], [n - NEW])

    def since() -> tuple[dupsince.ItemRecord, np.ndarray]:
        record = dupsince.current(added, last)
        return record, dupsince.changed(last, record)

    now, again = timed(f"record of the --since pass ({NEW:,} added in a new segment) and the ids "
                       "changed", since)
    assert len(again) == NEW
    compacted = Store(codes, ["000003"], [])
    moved = timed("the same after a compact (every code digested again)",
                  lambda: dupsince.current(compacted, now))
    assert len(dupsince.changed(now, moved)) == 0
    buf = io.BytesIO()

    def write_read() -> None:
        np.savez(buf, **moved.arrays())
        buf.seek(0)
        with np.load(buf, allow_pickle=False) as z:
            assert dupsince.ItemRecord.from_arrays(z) is not None  # type: ignore[arg-type]

    timed("writing and reading the record (in memory)", write_read)
    print(f"{n:,} items, 128-d codes; load average (1 min) {load:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end; record {buf.getbuffer().nbytes / 2**20:.1f} MiB\n")
    print("| step | seconds |\n|---|---|")
    for what, seconds in rows:
        print(f"| {what} | {seconds:.2f} |")


if __name__ == "__main__":
    main()
