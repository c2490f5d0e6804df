"""What a collection's catalogued files span (``lookalike info``): the dates, from the
earliest to the latest (date taken, else modification time, as filters read them), and the
folders with their counts."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import files, metadata

if TYPE_CHECKING:
    from .collection import Collection


def summary(coll: Collection) -> dict[str, Any]:
    """``{"files": n, "dates": [first, last] or None, "folders": {folder: files}}``
    (folders by count, most first; dates ``YYYY-MM-DDTHH:MM:SS``, local time)."""
    db = files.db(coll)
    if not files.has_table(db):
        return {"files": 0, "dates": None, "folders": {}}
    join = "FROM files f JOIN items i ON i.id = f.id"
    (n, first, last), = metadata.query(db, f"SELECT count(*), min(f.taken), max(f.taken) {join}")
    (lo, hi), = metadata.query(db, f"SELECT min(f.mtime_ns), max(f.mtime_ns) {join} WHERE f.taken IS NULL")
    dates = [d for d in (first, last) if d is not None]
    dates += [datetime.fromtimestamp(t / 1e9).isoformat(timespec="seconds")
              for t in (lo, hi) if t is not None]
    folders = metadata.query(db, f"SELECT f.folder, count(*) AS c {join} GROUP BY f.folder "
                                 "ORDER BY c DESC, f.folder")
    return {"files": int(n), "dates": [min(dates), max(dates)] if dates else None,
            "folders": {str(f): int(c) for f, c in folders}}
