"""Helpers for tests that run ``lookalike serve`` as users do: in a subprocess, on a free
loopback port (tests/test_browser.py, tests/test_fuzz.py)."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 120


@contextlib.contextmanager
def serving(path: Path, *options: str) -> Iterator[str]:
    """``lookalike serve PATH OPTIONS`` on a free loopback port; yields the page's URL."""
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_TOKEN"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.cli", "-q", "serve", str(path),
                             "--host", "127.0.0.1", "--port", "0", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        seen = []
        while True:
            line = lines.get(timeout=START_TIMEOUT_S)
            assert line is not None, f"lookalike serve exited: {''.join(seen)}"
            seen.append(line)
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split()[0]
                break
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        reader.join(timeout=15)
        assert proc.stdout is not None
        proc.stdout.close()
