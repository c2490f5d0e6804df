"""The speed benchmark runs end to end (a smoke run on small data) and reports the
figures the speed issue names."""

from __future__ import annotations

import json
import os
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
