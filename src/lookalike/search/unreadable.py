"""The files ``sync`` could not read, with the ``stat`` they had: table ``unreadable`` of a
collection's ``metadata.sqlite``::

    unreadable(path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, inode INTEGER,
               reason TEXT)

A file listed with its stat unchanged is skipped again without being read (so an idle sync
of a folder holding a damaged file reads nothing); once its stat changes (it was replaced,
or finished copying) it is tried again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ..data.filefacts import Stat
from . import metadata

SCHEMA = ("CREATE TABLE IF NOT EXISTS unreadable (path TEXT PRIMARY KEY, size INTEGER NOT NULL,"
          " mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL, reason TEXT NOT NULL)")


def marks(db: Path, where: str = "", params: tuple[object, ...] = ()) -> dict[str, tuple[Stat, str]]:
    """``{path: (stat, reason)}`` of the files listed, narrowed by an SQL ``where`` over the
    columns (the table is aliased ``f``)."""
    if not metadata.has_table(db, "unreadable"):
        return {}
    sql = "SELECT f.path, f.size, f.mtime_ns, f.inode, f.reason FROM unreadable f"
    rows = metadata.query(db, sql + (f" WHERE {where}" if where else ""), params)
    return {p: (Stat(size, mtime, inode), reason) for p, size, mtime, inode, reason in rows}


def change(db: Path, listed: Iterable[tuple[str, Stat, str]] = (), cleared: Iterable[str] = ()) -> None:
    """List files ``(path, stat, reason)`` and clear others by path, in one transaction."""
    listed, cleared = list(listed), list(cleared)
    if not listed and not (cleared and metadata.has_table(db, "unreadable")):
        return
    with metadata.transaction(db) as conn:
        conn.execute(SCHEMA)
        conn.executemany("DELETE FROM unreadable WHERE path = ?", ((p,) for p in cleared))
        conn.executemany("INSERT OR REPLACE INTO unreadable VALUES (?, ?, ?, ?, ?)", (
            (p, s.size, s.mtime_ns, s.inode, r) for p, s, r in listed))
