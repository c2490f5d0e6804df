"""The catalogue of a collection's files: table ``files`` of ``metadata.sqlite``, one row per
file **path**, saying which item shows it and what the file told when it was last read
(:mod:`lookalike.data.filefacts`)::

    files(path TEXT PRIMARY KEY,  -- absolute (os.path.abspath, links not resolved)
          id INTEGER NOT NULL,    -- the item; several paths may show one item
          folder TEXT NOT NULL,   -- the path's parent folder
          size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, inode INTEGER NOT NULL,
          digest TEXT,            -- BLAKE2b-128 of the bytes (NULL: not read yet)
          width INTEGER, height INTEGER,
          taken TEXT,             -- EXIF date taken, 'YYYY-MM-DDTHH:MM:SS', or NULL
          make TEXT, model TEXT,  -- EXIF camera
          lat REAL, lon REAL)     -- EXIF GPS, decimal degrees

A user can open and query it with ``sqlite3``. Rows whose item is not in the collection
(left by a change cut short) are ignored by readers, which join ``items``: the table is
written before the commit that adds items and after the one that removes them, as
``items`` is (:mod:`lookalike.search.metadata`).

Collections made before this table have none; it is created on their first write, and
their items have no rows until ``lookalike sync`` reads their files.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.filefacts import FileFacts, Stat, digest, read_facts
from . import metadata

if TYPE_CHECKING:
    from .collection import Collection

COLUMNS = ("path", "id", "folder", "size", "mtime_ns", "inode", "digest", "width", "height",
           "taken", "make", "model", "lat", "lon")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, id INTEGER NOT NULL,"
    " folder TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
    " inode INTEGER NOT NULL, digest TEXT, width INTEGER, height INTEGER, taken TEXT,"
    " make TEXT, model TEXT, lat REAL, lon REAL)",
    "CREATE INDEX IF NOT EXISTS files_id ON files(id)",
    "CREATE INDEX IF NOT EXISTS files_digest ON files(digest)",
    "CREATE INDEX IF NOT EXISTS files_taken ON files(taken)",
)
#: Threads reading file headers and digests (I/O bound; hashlib and Pillow release the GIL).
READERS = 4


@dataclass(frozen=True)
class FileRow:
    """One row of the catalogue (see the module docstring)."""

    path: str
    id: int
    folder: str
    size: int
    mtime_ns: int
    inode: int
    digest: str | None
    width: int | None
    height: int | None
    taken: str | None
    make: str | None
    model: str | None
    lat: float | None
    lon: float | None

    @property
    def stat(self) -> Stat:
        return Stat(self.size, self.mtime_ns, self.inode)

    @classmethod
    def made(cls, path: str, item_id: int, facts: FileFacts, file_digest: str | None) -> FileRow:
        """The row of ``path`` showing ``item_id``: ``facts`` and the digest ``file_digest``."""
        return cls(path, int(item_id), os.path.dirname(path), facts.stat.size, facts.stat.mtime_ns,
                   facts.stat.inode, file_digest, facts.width, facts.height, facts.taken, facts.make,
                   facts.model, facts.lat, facts.lon)

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in COLUMNS)


def db(coll: Collection | Path) -> Path:
    """The metadata file of a collection (or of a collection directory)."""
    return (coll if isinstance(coll, Path) else coll.path) / metadata.FILE


def _write(path: Path, run: Callable[[sqlite3.Connection], object] = lambda conn: None) -> None:
    """One connection to the metadata file ``path`` and one transaction: the table created
    if it has none, then ``run``."""
    with metadata.transaction(path) as conn:
        for statement in SCHEMA:
            conn.execute(statement)
        run(conn)


def ensure(path: Path) -> None:
    """Create the table in the metadata file ``path`` if it has none."""
    _write(path)


def has_table(path: Path) -> bool:
    """Whether the metadata file ``path`` has the catalogue (made on first use)."""
    return metadata.has_table(path, "files")


def absolute(path: str | os.PathLike[str]) -> str:
    """The form a path has in the catalogue."""
    return os.path.abspath(os.fspath(path))


def put(path: Path, rows: Iterable[FileRow]) -> None:
    """Insert or replace ``rows`` (by path) in one transaction."""
    _write(path, lambda conn: conn.executemany(
        f"INSERT OR REPLACE INTO files VALUES ({', '.join('?' * len(COLUMNS))})", (r.row() for r in rows)))


def drop(path: Path, paths: Iterable[str]) -> None:
    """Delete the rows of ``paths`` (absolute) in one transaction."""
    _write(path, lambda conn: conn.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in paths)))


def drop_ids(path: Path, ids: Iterable[int]) -> None:
    """Delete every row of the items ``ids`` (nothing to do in a collection with no catalogue)."""
    if not has_table(path):
        return
    metadata.write(path, "DELETE FROM files WHERE id = ?", ((int(i),) for i in ids))


def rows(path: Path, where: str = "", params: tuple[Any, ...] = ()) -> list[FileRow]:
    """Rows whose item is in the collection, optionally narrowed by an SQL ``where`` over
    the columns of ``files`` (``params`` bound to its ``?``)."""
    if not has_table(path):
        return []
    cols = ", ".join(f"f.{c}" for c in COLUMNS)
    sql = f"SELECT {cols} FROM files f JOIN items i ON i.id = f.id"
    if where:
        sql += f" WHERE {where}"
    return [FileRow(*r) for r in metadata.query(path, sql + " ORDER BY f.path", params)]


def of_ids(path: Path, ids: Sequence[int]) -> dict[int, list[FileRow]]:
    """The rows of each of ``ids`` (an item may show several files; none for an item with
    no file, e.g. one from a built-in dataset)."""
    out: dict[int, list[FileRow]] = {}
    wanted = [int(i) for i in ids]
    for start in range(0, len(wanted), 500):
        part = wanted[start:start + 500]
        for r in rows(path, f"f.id IN ({', '.join('?' * len(part))})", tuple(part)):
            out.setdefault(r.id, []).append(r)
    return out


def of_paths(path: Path, paths: Iterable[str]) -> dict[str, FileRow]:
    """The rows of those of ``paths`` (absolute) that the catalogue holds, by path."""
    wanted = list(paths)
    out: dict[str, FileRow] = {}
    for start in range(0, len(wanted), 500):
        part = tuple(wanted[start:start + 500])
        out.update((r.path, r) for r in rows(path, f"f.path IN ({', '.join('?' * len(part))})", part))
    return out


def unchanged(path: Path, paths: Iterable[str | os.PathLike[str]]) -> set[str]:
    """Those of ``paths`` (as given) whose catalogue row has their ``stat`` now: files
    recorded as they are, known without reading them."""
    given = {absolute(p): os.fspath(p) for p in paths}
    out = set()
    for full, row in of_paths(path, given).items():
        try:
            if Stat.of(full) == row.stat:
                out.add(given[full])
        except OSError:
            continue
    return out


def original(coll: Collection, item_id: int) -> str | None:
    """The file ``item_id`` was read from: a catalogued path of it that is still a file
    (the first by path), else its source when that is an absolute path to a file; ``None``
    otherwise (an unknown item, a dataset's or an upload's, a file gone). The only paths it
    looks at are the collection's own, never one a caller names: the service serves what
    it returns."""
    for r in of_ids(db(coll), [int(item_id)]).get(int(item_id), []):
        if os.path.isfile(r.path):
            return r.path
    found = coll.items([int(item_id)])[0]
    if found is not None and os.path.isabs(found.source) and os.path.isfile(found.source):
        return found.source
    return None


def describe(paths: Sequence[str], ids: Sequence[int], with_digest: bool = True,
             threads: int = READERS) -> list[FileRow | None]:
    """A row for each file of ``paths`` (shown by ``ids``), its facts read from disk
    (``None`` for a file that vanished meanwhile)."""

    def one(pair: tuple[str, int]) -> FileRow | None:
        p, i = pair
        try:
            facts = read_facts(p)
            return FileRow.made(absolute(p), i, facts, digest(p) if with_digest else None)
        except OSError:
            return None

    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(one, zip(paths, ids, strict=True)))


def catalogue(coll: Collection | Path, paths: Sequence[str | os.PathLike[str]],
              ids: Sequence[int] | np.ndarray) -> int:
    """Read and record the files ``paths`` as showing the items ``ids`` (row-aligned);
    returns how many rows were written. Paths that are not files (a dataset's
    ``name:split:i`` sources) are passed over."""
    pairs = [(os.fspath(p), int(i)) for p, i in zip(paths, ids, strict=True) if os.path.isfile(p)]
    found = [r for r in describe([p for p, _ in pairs], [i for _, i in pairs]) if r is not None]
    if found:
        put(db(coll), found)
    return len(found)


def record(coll: Collection | Path, paths: Sequence[str | os.PathLike[str]],
           ids: Sequence[int] | np.ndarray, facts: Sequence[FileFacts | None]) -> int:
    """Record the files ``paths`` as showing the items ``ids`` of ``coll`` (a collection or
    its directory) with ``facts``, what was read
    of them as they were decoded (:func:`lookalike.data.pipeline.read_file`: stat, header,
    EXIF and digest; nothing is read again); a file with no facts (``None``) is read as
    :func:`catalogue` reads it. All row-aligned; returns how many rows were written."""
    made: list[FileRow] = []
    unread: list[tuple[str | os.PathLike[str], int]] = []
    for p, i, f in zip(paths, ids, facts, strict=True):
        if f is None:
            unread.append((p, int(i)))
        else:
            made.append(FileRow.made(absolute(p), int(i), f, f.digest))
    if made:
        put(db(coll), made)
    return len(made) + (catalogue(coll, [p for p, _ in unread], [i for _, i in unread]) if unread else 0)


def relink(path: Path, put_rows: Sequence[FileRow] = (), dropped: Sequence[str] = (),
           sources: dict[int, str] | None = None) -> None:
    """One transaction over the catalogue and ``items``: the rows of ``dropped`` paths
    deleted, ``put_rows`` inserted or replaced, and each item of ``sources`` (id -> path)
    given that path as its source. What a moved file changes: its item keeps its id, code
    and picture; only where it is found changes, all at once or not at all."""
    def run(conn: sqlite3.Connection) -> None:
        conn.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in dropped))
        conn.executemany(f"INSERT OR REPLACE INTO files VALUES ({', '.join('?' * len(COLUMNS))})",
                         (r.row() for r in put_rows))
        conn.executemany("UPDATE items SET source = ? WHERE id = ?",
                         ((s, int(i)) for i, s in (sources or {}).items()))

    _write(path, run)


def catalogue_items(coll: Collection) -> int:
    """Read and record the file of every item whose source is a file (after ``index``: the
    items a folder was read into); returns how many rows were written."""
    items = [it for it in coll.items(coll.ids) if it is not None]
    return catalogue(coll, [it.source for it in items], [it.id for it in items])
