"""Metadata filters: which items a search may return, by what their files tell.

A :class:`Filter` is data (a frozen dataclass, as datasette's query parameters are);
:func:`passing_ids` turns it into the ids of the items that pass, with ONE SQL query over
``items`` and the catalogue ``files`` of ``metadata.sqlite`` (:mod:`lookalike.search.files`),
and :func:`nearest_among` finds the true nearest codes among them by an exact scan of just
their codes. A filtered search therefore returns exactly the ``k`` nearest passing items
whenever at least ``k`` pass (never a post-filtered, shorter or approximate list), whatever
the index (an inverted file, Milvus): the codes are the segments' own.

What each field means:

* ``paths``: globs (SQLite ``GLOB``: ``*`` also crosses ``/``, case-sensitive) matched
  against the absolute paths of the item's catalogued files, or for an item with none (one
  added before the catalogue, until ``lookalike sync`` fills it) against its source; an
  item passes when one of them matches. ``[...]`` is a set of characters (``[[]`` is a
  literal ``[``); a ``[`` with no closing ``]`` is an error.
  A pattern starting with ``/`` or ``~`` is absolute, one starting with ``./`` or ``../``
  is taken from the current directory, any other matches the end of the path
  (``trips/2024/*`` passes ``/home/me/photos/trips/2024/a.jpg``). A pattern with no
  ``*?[`` names a folder or a file: it passes that file and everything under that folder;
* ``after`` / ``before``: the date taken (EXIF), else the file's modification time, at or
  after ``after`` and before ``before`` (``after="2024-03", before="2024-04"``: March 2024);
  dates are ``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]``, local time;
* ``labels``: label names (the collection's label names, e.g. folder names) or numbers;
* ``camera``: a piece of the camera's make or model (case-insensitive);
* ``has_gps``: ``True`` only photos with a GPS position, ``False`` only those without.

Every condition must hold. An item with no catalogued file (a built-in dataset's, an
upload through the service, one added before the catalogue) passes only ``labels`` and
``paths`` (by its source).
"""

from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import LookalikeError
from . import files as catalogue
from . import metadata

if TYPE_CHECKING:
    from .collection import Collection
    from .segments import SegmentStore

_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?)?)?")
_GLOB_CHARS = re.compile(r"[*?\[]")


def parse_date(text: str) -> datetime:
    """``YYYY``, ``YYYY-MM``, ``YYYY-MM-DD`` or ``YYYY-MM-DDTHH:MM[:SS]`` as the first moment
    it names (naive, local time).

    Raises:
        LookalikeError: another form, or no such date.
    """
    m = _DATE.fullmatch(str(text).strip())
    if m is None:
        raise LookalikeError(f"bad date {text!r}: expected YYYY, YYYY-MM, YYYY-MM-DD or "
                             "YYYY-MM-DDTHH:MM[:SS]")
    parts = [int(p) if p else d for p, d in zip(m.groups(), (0, 1, 1, 0, 0, 0), strict=True)]
    try:
        return datetime(*parts)  # type: ignore[arg-type]
    except ValueError as exc:
        raise LookalikeError(f"bad date {text!r}: {exc}") from None


def check_glob(pattern: str) -> None:
    """Raise :class:`LookalikeError` when a ``[`` of ``pattern`` opens a set that no ``]``
    closes (SQLite's GLOB would match nothing, silently). As in SQLite, a ``]`` right after
    ``[`` or ``[^`` belongs to the set."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            j = i + 1 + (pattern[i + 1:i + 2] == "^")
            j += pattern[j:j + 1] == "]"
            end = pattern.find("]", j)
            if end < 0:
                raise LookalikeError(f"bad path pattern {pattern!r}: a '[' with no closing ']' "
                                     "(write [[] for a literal '[')")
            i = end
        i += 1


def _tuple(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int)):
        value = [value]
    out = tuple(str(v) for v in value)
    if any(not v.strip() for v in out):
        raise LookalikeError(f"{what}: an empty value")
    return out


@dataclass(frozen=True)
class Filter:
    """Which items a search may return (see the module docstring); the default passes all.

    Raises:
        LookalikeError: a bad date, an empty or malformed glob (:func:`check_glob`), an
        empty camera, ``after`` not before ``before``.
    """

    paths: tuple[str, ...] = ()
    after: str | None = None
    before: str | None = None
    labels: tuple[str, ...] = ()
    camera: str | None = None
    has_gps: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "paths", _tuple(self.paths, "paths"))
        object.__setattr__(self, "labels", _tuple(self.labels, "labels"))
        for pattern in self.paths:
            check_glob(pattern)
        for name in ("after", "before"):
            value = getattr(self, name)
            if value is not None:
                parse_date(value)
        if self.after is not None and self.before is not None \
                and parse_date(self.after) >= parse_date(self.before):
            raise LookalikeError(f"after ({self.after}) must come before before ({self.before})")
        if self.camera is not None and not str(self.camera).strip():
            raise LookalikeError("camera: an empty value")
        if self.has_gps is not None and not isinstance(self.has_gps, bool):
            raise LookalikeError(f"has_gps must be true or false, got {self.has_gps!r}")

    def __bool__(self) -> bool:
        """Whether it filters anything out."""
        return any(getattr(self, f.name) not in (None, ()) for f in fields(self))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in fields(self) if getattr(self, f.name) not in (None, ())}

    @property
    def files_only(self) -> bool:
        """Whether a condition needs a catalogued file (a date, camera or GPS)."""
        return any(v is not None for v in (self.after, self.before, self.camera, self.has_gps))


# ---------------------------------------------------------------------------- SQL
def glob_pattern(pattern: str, cwd: str | None = None) -> list[str]:
    """The SQLite GLOB patterns over absolute paths that ``pattern`` stands for (see the
    module docstring): one, or two for a folder or file named without wildcards."""
    p = os.path.expanduser(pattern.strip())
    if p.startswith(("./", "../")) or p in (".", ".."):
        p = os.path.normpath(os.path.join(cwd or os.getcwd(), p))
    elif not p.startswith("/"):
        p = "*/" + p
    if _GLOB_CHARS.search(pattern):
        return [p]
    p = p.rstrip("/") or "/"
    return [p, p.rstrip("/") + "/*"]


def _label_values(labels: Sequence[str], names: list[str] | None) -> list[int]:
    out = []
    for name in labels:
        if names and name in names:
            out.append(names.index(name))
        elif re.fullmatch(r"-?\d+", name):
            out.append(int(name))
        else:
            known = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "") if names else "none"
            raise LookalikeError(f"no label named {name!r} in this collection (labels: {known})")
    return out


def _epoch_ns(when: datetime) -> int:
    return int(when.timestamp() * 1_000_000_000)


def query_sql(f: Filter, label_names: list[str] | None, has_table: bool = True,
              cwd: str | None = None) -> tuple[str, tuple[Any, ...]]:
    """``(sql, params)`` selecting the ids of the items that pass ``f``, decided per item:
    an item with catalogue rows by its rows, one with none (``has_table`` false: the
    metadata file has no ``files`` table yet) by its source. A row of an item no longer in
    the collection may remain after a change cut short: the caller drops ids the collection
    does not hold."""
    conds: list[str] = []
    params: list[Any] = []
    globs = [g for p in f.paths for g in glob_pattern(p, cwd)]
    if f.after is not None:
        start = parse_date(f.after)
        conds.append("(f.taken >= ? OR (f.taken IS NULL AND f.mtime_ns >= ?))")
        params += [start.isoformat(), _epoch_ns(start)]
    if f.before is not None:
        end = parse_date(f.before)
        conds.append("(f.taken < ? OR (f.taken IS NULL AND f.mtime_ns < ?))")
        params += [end.isoformat(), _epoch_ns(end)]
    if f.camera is not None:
        like = "%" + re.sub(r"([%_\\])", r"\\\1", f.camera.strip()) + "%"
        conds.append("(f.make LIKE ? ESCAPE '\\' OR f.model LIKE ? ESCAPE '\\')")
        params += [like, like]
    if f.has_gps is not None:
        conds.append("f.lat IS NOT NULL" if f.has_gps else "f.lat IS NULL")
    path_cond = "(" + " OR ".join(["{col} GLOB ?"] * len(globs)) + ")" if globs else ""
    selects: list[str] = []
    sel_params: list[Any] = []
    if has_table and (globs or conds):
        where = [path_cond.format(col="f.path")] if globs else []
        selects.append("SELECT f.id FROM files f WHERE " + " AND ".join(where + conds))
        sel_params += [*globs, *params]
    if globs and not f.files_only:  # the items with no catalogued file: their sources
        # (the GLOB first: the probe of files' id index runs only for the sources that match)
        uncatalogued = " AND NOT EXISTS (SELECT 1 FROM files f WHERE f.id = i.id)" if has_table else ""
        selects.append(f"SELECT i.id FROM items i WHERE {path_cond.format(col='i.source')}{uncatalogued}")
        sel_params += globs
    if (globs or conds) and not selects:  # a file condition, and no catalogue yet
        return "SELECT id FROM items WHERE 0", ()
    labels = _label_values(f.labels, label_names)
    label_cond = f"label IN ({', '.join('?' * len(labels))})" if labels else ""
    if not selects:
        return f"SELECT id FROM items WHERE {label_cond or 1}", tuple(labels)
    if not label_cond:  # (ids of rows left by a change cut short are dropped by the caller)
        return " UNION ".join(selects), tuple(sel_params)
    sql = f"SELECT id FROM items WHERE id IN ({' UNION '.join(selects)}) AND {label_cond}"
    return sql, (*sel_params, *labels)


# ---------------------------------------------------------------------------- passing items
#: Filters whose passing rows (and, for a small subset, codes) are kept per collection:
#: the same filter searched again costs no SQL. An entry holds while the metadata file
#: and the collection's commit are unchanged.
CACHED_FILTERS = 16
#: A passing subset up to this many codes keeps its codes gathered (32 MB of 128-d codes)...
CACHED_CODES = 65_536
#: ... while the cache's codes take at most this many bytes (the oldest entries go first).
CACHED_BYTES = 256 * 2**20
_cache: OrderedDict[tuple[Any, ...], tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
_cache_lock = threading.Lock()


def _stamp(path: Path) -> tuple[int, ...]:
    out: list[int] = []
    for p in (path, Path(f"{path}-wal")):
        try:
            st = os.stat(p)
            out += [st.st_ino, st.st_mtime_ns, st.st_size]
        except OSError:
            out += [0, 0, 0]
    return tuple(out)


def passing_ids(coll: Collection, f: Filter, cwd: str | None = None) -> np.ndarray:
    """The ids of the collection's items that pass ``f``, ``int64``, sorted."""
    db = coll.path / metadata.FILE
    sql, params = query_sql(f, coll.label_names, catalogue.has_table(db), cwd)
    ids = np.fromiter((r[0] for r in metadata.query(db, sql, params)), np.int64)
    ids.sort()
    return ids[coll.store.rows(ids) >= 0]


def passing(coll: Collection, f: Filter, cwd: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """``(rows, codes)``: the store rows of the items passing ``f`` (``int64``, sorted) and,
    for a subset of at most :data:`CACHED_CODES`, their codes (``None`` above). Cached
    (see :data:`CACHED_FILTERS`)."""
    key = (str(coll.path), coll.generation, _stamp(coll.path / metadata.FILE), f,
           cwd or os.getcwd() if f.paths else None)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    rows = np.sort(coll.store.rows(passing_ids(coll, f, cwd)))
    codes = coll.store.codes_at(rows) if len(rows) <= CACHED_CODES else None
    with _cache_lock:
        _cache[key] = (rows, codes)
        while len(_cache) > CACHED_FILTERS or (len(_cache) > 1 and sum(
                c.nbytes + r.nbytes for r, c in _cache.values() if c is not None) > CACHED_BYTES):
            _cache.popitem(last=False)
    return rows, codes


# ---------------------------------------------------------------------------- exact search
#: Codes scanned at a time by :func:`nearest_among` (bounds its memory: 32 MB of 128-d codes).
SCAN_CHUNK = 65_536


def nearest_among(store: SegmentStore, rows: np.ndarray, queries: np.ndarray, k: int,
                  codes: np.ndarray | None = None, skip: Iterable[int] = ()
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The exact ``k`` nearest of ``store``'s ``rows`` to ``queries`` ``float32 (m, d)``:
    ``(squared distances float32 (m, k), ids int64 (m, k))``, nearest first, ties by id,
    padded with +inf / -1 when fewer than ``k`` rows. ``codes``: those rows' codes when
    already gathered; ``skip``: ids never returned (the query's own items)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    ids_all = store.ids[rows] if len(rows) else np.empty(0, np.int64)
    drop = np.asarray(list(skip), np.int64)
    keep = ~np.isin(ids_all, drop) if len(drop) else np.ones(len(rows), bool)
    best_d = np.full((len(q), 0), np.inf, np.float32)
    best_i = np.full((len(q), 0), -1, np.int64)
    for start in range(0, len(rows), SCAN_CHUNK):
        part = slice(start, start + SCAN_CHUNK)
        ok = keep[part]
        if not ok.any():
            continue
        chunk = np.asarray(codes[part] if codes is not None else store.codes_at(rows[part]),
                           np.float32)[ok]
        ids = ids_all[part][ok]
        d, i = _knn(q, chunk, k)
        best_d = np.concatenate([best_d, d], axis=1)
        best_i = np.concatenate([best_i, ids[i]], axis=1)
        order = np.lexsort((best_i, best_d), axis=1)[:, :k]
        best_d = np.take_along_axis(best_d, order, 1)
        best_i = np.take_along_axis(best_i, order, 1)
    out_d = np.full((len(q), k), np.inf, np.float32)
    out_i = np.full((len(q), k), -1, np.int64)
    out_d[:, :best_d.shape[1]], out_i[:, :best_i.shape[1]] = best_d, best_i
    return out_d, out_i


#: From this many queries at once, :func:`_knn` takes its dot products from BLAS.
BLAS_QUERIES = 8
#: Candidates beyond ``k`` whose distances :func:`_knn` computes exactly (the fast form's
#: rounding cannot reorder items this far apart).
EXACT_MARGIN = 16


def _knn(q: np.ndarray, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``min(k, n)`` nearest rows of ``x`` ``(n, d)`` to each of ``q`` ``(m, d)``:
    squared distances and row numbers, nearest first (ties by row). Ranked by
    ``|x|² - 2 x·q`` (one matrix product), then the best ``k +`` :data:`EXACT_MARGIN`
    measured exactly as ``sum((x - q)²)``. (Not ``faiss.knn``: for a query or a few, its
    OpenMP threads cost ~60 ms on a busy 2-core machine where this costs 0.3 ms.)"""
    n = len(x)
    # a few queries: numpy's own loop; BLAS's threads (OpenBLAS) cost ~30 ms a call on a
    # busy machine whatever the size, which only a batch of queries amortises
    dots = np.einsum("ij,kj->ik", q, x) if len(q) < BLAS_QUERIES else q @ x.T
    fast = np.einsum("ij,ij->i", x, x)[None, :] - 2 * dots
    wide = min(n, k + EXACT_MARGIN)
    cand = (np.argpartition(fast, wide - 1, axis=1)[:, :wide] if wide < n
            else np.broadcast_to(np.arange(n), (len(q), n)))
    exact = ((x[cand] - q[:, None, :]) ** 2).sum(-1, dtype=np.float32)
    order = np.lexsort((cand, exact), axis=1)[:, :min(k, n)]
    return np.take_along_axis(exact, order, 1), np.take_along_axis(cand, order, 1)


__all__ = ["Filter", "check_glob", "glob_pattern", "nearest_among", "parse_date", "passing", "passing_ids",
           "query_sql"]
