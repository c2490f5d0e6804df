"""The speed benchmark runs end to end (a smoke run on small data) and reports the
figures the speed issue names."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_speed_benchmark_smoke_run() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--tiny", "--json"],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1",
                              "PYTHONWARNINGS": "ignore"}).stdout
    figures = json.loads(out[out.index("\n{") + 1:])
    for key in ("search_ratio_vs_faiss_flat", "search_ratio_vs_sklearn", "ann_recall_at_10", "ann_qps"):
        assert figures[key] > 0, key
    assert figures["ann_recall_at_10"] == 1.0  # small collections are searched exactly
    assert {r["n"] for r in figures["ann"]} == {1000, 3000}
    assert "### Exact search" in out and "recall@10" in out


def test_service_benchmark_smoke_run(trained) -> None:  # noqa: ANN001 - conftest's Trained
    """The service load test runs end to end on a small collection with two server
    processes: no error, every added item found at the end (not a timing test)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "service.py"), "--clients", "4",
                          "--requests", "60", "--writes", "0.3", "--workers", "2",
                          "--collection", str(trained.collection), "--no-write"],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}).stdout
    row = next(line for line in out.splitlines() if line.startswith("| 2 | 30% |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "60" and cells[11] == "0", row  # requests done, errors
    found = re.fullmatch(r"yes \((\d+)/(\d+) found, (\d+) deleted left\)", cells[12])
    assert found is not None, row
    assert int(found[1]) == int(found[2]) > 0 and found[3] == "0", row  # items were added, all found


def test_filters_benchmark_smoke_run(tmp_path: Path) -> None:
    """The filtered-search benchmark on 20,000 items: every filter's passing set is the one
    its data was made with, and every ranking equals the brute force (not a timing test)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "filters.py"), "--n", "20000",
                          "--queries", "5", "--no-write", "--work", str(tmp_path)],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}).stdout
    rows = [line for line in out.splitlines() if line.startswith(("| folder", "| date"))]
    assert len(rows) == 4, out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] in ("200", "2") and cells[6] == "1.000" and cells[7] == "100%", row



def test_library_benchmark_smoke_run(tmp_path: Path) -> None:
    """The photo-library benchmark runs end to end on 400 files (not a timing test): an idle
    sync opens no file, the 1% sync encodes only the added and edited files, every file
    copied into the watched folder is indexed."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "library.py"), "--files", "400",
                          "--burst", "40", "--singles", "3", "--work", str(tmp_path / "w"),
                          "--no-write"], capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}).stdout
    figures = json.loads(out[out.index("\n{") + 1:out.index("\n}") + 2])
    assert figures["idle_reads"] == 0 and figures["changed"] == 4
    assert figures["changed_encoded"] == 2  # one added, one edited; the move and the deletion: none
    assert figures["burst_indexed"] == 40 and figures["watch_p95"] > 0
