"""A collection's metadata: ``metadata.sqlite``, table ``items(id, source, label, hash)``,
one row per image, indexed by hash and by source.

Rows are written before the commit that adds their items and deleted after the commit that
removes them, so a crash leaves at most rows whose id is not in the collection, which
readers ignore (:meth:`lookalike.search.collection.Collection.find`).

The file is in write-ahead-log mode (``metadata.sqlite-wal`` beside it): a write never
blocks the reads of a search (the service's), and a transaction cut short by a crash is
simply not in the log's committed part.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CollectionError

FILE = "metadata.sqlite"


@contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection to the metadata file ``path`` whose statements in the block are one
    SQLite transaction (committed at its end, rolled back on an error); the file is switched
    to write-ahead logging first when a collection made before that is written."""
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        with db:
            yield db
    finally:
        db.close()


def create(path: Path, rows: Iterable[tuple[int, str, int, str]]) -> None:
    """A new metadata file at ``path`` holding ``rows`` ``(id, source, label, hash)``."""
    with transaction(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, source TEXT NOT NULL,"
                   " label INTEGER NOT NULL, hash TEXT NOT NULL)")
        db.execute("CREATE INDEX items_hash ON items(hash)")
        db.execute("CREATE INDEX items_source ON items(source)")
        db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", rows)


def write(path: Path, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
    """Run ``sql`` for every row in one SQLite transaction (:func:`transaction`)."""
    with transaction(path) as db:
        db.executemany(sql, rows)


def has_table(path: Path, name: str) -> bool:
    """Whether the metadata file ``path`` holds table ``name`` (the catalogue's and the
    unreadable files' are made on first use)."""
    return bool(query(path, "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)))


#: read connections a thread keeps open (the most recently used files)
READERS_PER_THREAD = 8
_readers = threading.local()


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read. A thread keeps a connection per file (up to
    :data:`READERS_PER_THREAD`, reopened when the file is replaced), so a search does not
    pay SQLite's connect each time (it connects again after the file changes)."""
    return _reader(path).execute(sql, params).fetchall()


def _reader(path: Path) -> sqlite3.Connection:
    conns: OrderedDict[str, tuple[sqlite3.Connection, tuple[int, ...]]] = getattr(
        _readers, "conns", None) or OrderedDict()
    _readers.conns = conns
    key = os.fspath(path)
    try:
        st = os.stat(key)
        stamp: tuple[int, ...] = (st.st_dev, st.st_ino, st.st_mtime_ns)  # (a new file, or changed)
    except OSError:
        stamp = ()  # (connecting raises SQLite's own error)
    held = conns.pop(key, None)
    if held is not None and held[1] != stamp:
        held[0].close()
        held = None
    if held is None:
        held = (sqlite3.connect(f"file:{path}?mode=rw", uri=True), stamp)
    conns[key] = held
    while len(conns) > READERS_PER_THREAD:
        conns.popitem(last=False)[1][0].close()
    return held[0]


def check(path: Path, full: bool = False) -> None:
    """Read the metadata table (with ``full``, SQLite's own quick consistency check of the
    whole file, O(rows): ``lookalike verify``). The connection may write: a process killed
    inside a metadata transaction leaves a hot journal (a collection not yet in WAL mode),
    which SQLite rolls back on this first read (a read-only connection would refuse to)."""
    if not path.is_file():
        raise CollectionError(f"{path} is missing; rebuild with 'lookalike index'")
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0] if full else "ok"
            db.execute("SELECT id FROM items LIMIT 1").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise CollectionError(f"{path} is damaged ({exc}); rebuild the collection with "
                              "'lookalike index'") from None
    if result != "ok":
        raise CollectionError(f"{path} is damaged ({result}); rebuild the collection with "
                              "'lookalike index'")
