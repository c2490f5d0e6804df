"""The report of files passed over while building a collection.

JSON lines, one object per skipped file::

    {"path": "photos/cut.jpg", "reason": "image data is damaged (OSError: ...)",
     "command": "index", "time": "2026-11-21T10:00:00+00:00"}

``lookalike index`` writes it afresh (``COLLECTION/skipped.jsonl`` unless ``--report``),
``lookalike add`` appends to it, so it lists every file a collection's building skipped.
After ``index`` the file always exists (empty when nothing was skipped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import LookalikeError
from ..fsutil import atomic_write

REPORT_NAME = "skipped.jsonl"


def _lines(skipped: Iterable[tuple[str, str]], command: str) -> str:
    when = datetime.now(UTC).isoformat(timespec="seconds")
    return "".join(json.dumps({"path": str(path), "reason": reason, "command": command,
                               "time": when}) + "\n" for path, reason in skipped)


def write_report(path: str | os.PathLike[str], skipped: Iterable[tuple[str, str]],
                 command: str, append: bool = False) -> Path:
    """Write ``(path, reason)`` pairs to the report at ``path`` (atomically), or append them.

    Raises:
        LookalikeError: the report cannot be written (its message names the file).
    """
    target = Path(path)
    text = _lines(skipped, command)
    try:
        if append:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "a", encoding="utf-8") as fh:
                fh.write(text)
        else:
            atomic_write(target, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    except OSError as exc:
        raise LookalikeError(f"cannot write the report {target}: {exc.strerror or exc}") from None
    return target


def read_report(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The entries of a report, in order (an absent file has none).

    Raises:
        LookalikeError: a line is not a JSON object.
    """
    target = Path(path)
    if not target.exists():
        return []
    entries: list[dict[str, Any]] = []
    for number, line in enumerate(target.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if not isinstance(entry, dict):
            raise LookalikeError(f"{target}:{number}: not a report line (a JSON object)")
        entries.append(entry)
    return entries
