"""Shared by the benchmark scripts: machine description and the docs/benchmarks.md writer."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    import torch

    return f"{cpu}, {os.cpu_count()} cores{mem}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=DOC.parent.parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(name: str, body: str, doc: Path = DOC) -> Path:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in the doc
    (appending the section when absent), so each benchmark script owns its section."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    intro = ("# Benchmarks\n\nEvery figure here is written by a script in `benchmarks/`; "
             "each section says how to re-run it.\n")
    text = doc.read_text() if doc.exists() else intro
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    return doc


def table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def cli_peak(argv: list[str], what: str) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """``lookalike -q ARGV`` as its own process: the finished process (its output captured),
    its wall time in seconds and its peak RSS in bytes (``VmHWM``, read as it exits). A
    failure ends the benchmark with ``what`` and the end of its error output."""
    script = ("import atexit, re, sys\n"
              "atexit.register(lambda: print('VmHWM', re.search(r'VmHWM:\\s+(\\d+)', "
              "open('/proc/self/status').read()).group(1), file=sys.stderr))\n"
              "from lookalike.app.cli import main\n"
              f"sys.exit(main(['-q', *{argv!r}]))\n")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed: {proc.stderr[-2000:]}")
    return proc, seconds, int(re.findall(r"VmHWM (\d+)", proc.stderr)[-1]) * 1024
