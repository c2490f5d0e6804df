"""Make a collection mirror its folders (``lookalike sync``): a :func:`plan` read from the
disk and the catalogue (:mod:`lookalike.search.files`), then :func:`apply`.

What each file on disk is, compared with its catalogue row:

* **unchanged**: same ``stat`` (size, mtime in ns, inode); nothing is read;
* **updated**: its stat changed and so did its bytes (digest): decoded and re-encoded
  under the same id (:meth:`Collection.update`); when other paths still show that item,
  the edited file becomes an item of its own instead;
* **moved**: a path not in the catalogue whose stat (a rename keeps the inode) or digest
  (a copy elsewhere, then the original deleted) is a vanished path's: the item keeps its
  id, code and picture, only its path changes (the row, and ``items.source``), with no
  decode and no encode;
* **added**: any other new path; decoded and encoded, or, when its bytes are a live item's
  file, catalogued as another path of that item without a decode;
* **removed**: a catalogued path gone from disk; its item is removed when no path shows it
  any more, otherwise its source is pointed at a path that does.

:func:`apply` is crash-safe as ``add`` is: each batch is one commit, rows are written after
the commit that adds their items and deleted after the one that removes them, a move is one
SQLite transaction over the row and the source; running the same sync again finishes the
job (an item committed whose row was not written yet is recognised by its source).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data import filefacts
from ..data.filefacts import Stat
from ..data.images import IMAGE_EXTENSIONS, is_image_path
from ..data.pipeline import Batch, stream
from ..errors import LookalikeError
from ..fsutil import atomic_write_json
from . import files as catalogue
from . import metadata, unreadable
from .files import FileRow

if TYPE_CHECKING:
    from .collection import Collection

log = logging.getLogger(__name__)

#: Files decoded and encoded per commit.
BATCH = 256


@dataclass(frozen=True)
class Plan:
    """What a sync would do. Paths are absolute; ``unchanged`` counts the files recognised
    by their stat alone; ``reads`` the files read to make the plan (digests)."""

    folders: tuple[str, ...]
    added: tuple[str, ...] = ()
    linked: tuple[tuple[str, int], ...] = ()  # (new path, the live item its bytes show)
    moved: tuple[tuple[FileRow, str], ...] = ()  # (the vanished path's row, its new path)
    updated: tuple[tuple[str, int], ...] = ()  # (path, item) re-encoded under the id
    removed: tuple[tuple[str, int], ...] = ()  # (vanished path, its item)
    touched: tuple[FileRow, ...] = ()  # rows whose file's stat changed, not its bytes
    adopted: tuple[tuple[str, int], ...] = ()  # (path, item): an item's source with no row
    split: tuple[tuple[str, int], ...] = ()  # (path, item): edited, added, the item stays
    stale: tuple[str, ...] = ()  # rows of items no longer in the collection
    unreadable: tuple[tuple[str, str], ...] = ()  # (path, reason): as it was when it failed
    unmarked: tuple[str, ...] = ()  # files listed unreadable that are gone
    unchanged: int = 0
    reads: int = 0
    digests: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    stats: dict[str, Stat] = field(default_factory=dict, compare=False, repr=False)

    @property
    def empty(self) -> bool:
        return not (self.added or self.linked or self.moved or self.updated or self.removed
                    or self.touched or self.adopted or self.stale or self.unmarked)

    def describe(self) -> list[str]:
        """One line per change, for ``--dry-run``."""
        return ([f"add     {p}" for p in self.added]
                + [f"add     {p} (same bytes as item {i}: no decode)" for p, i in self.linked]
                + [f"move    {r.path} -> {p} (item {r.id})" for r, p in self.moved]
                + [f"update  {p} (item {i})" for p, i in self.updated]
                + [f"remove  {p} (item {i})" for p, i in self.removed])


@dataclass
class Report:
    """What a sync did: counts of files (paths), plus the work it took."""

    added: int = 0
    removed: int = 0
    moved: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    items_removed: int = 0
    encoded: int = 0
    decoded: int = 0
    read: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"added {self.added}, removed {self.removed}, moved {self.moved}, updated "
                f"{self.updated}, unchanged {self.unchanged}, skipped {len(self.skipped)}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        out["seconds"] = round(self.seconds, 6)
        return out


# ---------------------------------------------------------------------------- folders
def folders_of(coll: Collection) -> list[str]:
    """The folders the collection mirrors (remembered in its manifest)."""
    return [str(f) for f in coll.manifest.get("folders") or []]


def remember_folders(coll: Collection, folders: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Add ``folders`` (made absolute) to those the manifest remembers, in one commit (the
    generation moves on, so that every writer reads the new list before its next change);
    returns the list."""
    with coll.writing():
        known = folders_of(coll)
        wanted = known + [f for f in dict.fromkeys(catalogue.absolute(f) for f in folders)
                          if f not in known]
        if wanted != known:
            manifest = {**coll.manifest, "folders": wanted, "generation": coll.generation + 1,
                        "updated": datetime.now(UTC).isoformat(timespec="seconds")}
            atomic_write_json(coll.path / "manifest.json", manifest)
            coll.manifest = manifest
    return wanted


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def _ranges(roots: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """SQL over ``f.path`` for the paths equal to or below ``roots`` (a range scan of the
    primary key: ``'/'`` sorts just before ``'0'``)."""
    parts, params = [], []
    for r in roots:
        base = r.rstrip(os.sep)
        parts.append("(f.path = ? OR (f.path > ? AND f.path < ?))")
        params += [base, base + os.sep, base + chr(ord(os.sep) + 1)]
    return " OR ".join(parts) or "0", tuple(params)


# ---------------------------------------------------------------------------- plan
_EXTENSIONS = tuple(IMAGE_EXTENSIONS)
_Key = tuple[int, int, int]  # (size, mtime_ns, inode): a Stat, cheaper by the 100,000


def _scan(scope: Sequence[str]) -> tuple[dict[str, _Key], list[str]]:
    """``(size, mtime_ns, inode)`` of every image file at or below the paths of ``scope``
    (absolute), and the folders that could not be listed. Symlinked folders are followed,
    each real folder once (as :func:`lookalike.data.images.find_images` does), with
    ``os.scandir``: a folder of 100,000 files is listed in a fraction of a second."""
    found: dict[str, _Key] = {}
    unlisted: list[str] = []
    seen: set[str] = set()
    for root in scope:
        if not os.path.isdir(root):
            if os.path.isfile(root) and is_image_path(Path(root)):
                try:
                    st = os.stat(root)
                    found[root] = (st.st_size, st.st_mtime_ns, st.st_ino)
                except OSError:
                    pass
            continue
        stack = [(root, os.path.realpath(root))]
        while stack:
            folder, real = stack.pop()
            if real in seen:
                continue
            seen.add(real)
            try:
                with os.scandir(folder) as entries:
                    for e in entries:
                        try:
                            if e.name.lower().endswith(_EXTENSIONS):
                                if e.is_file():
                                    st = e.stat()
                                    found[e.path] = (st.st_size, st.st_mtime_ns, st.st_ino)
                            elif e.is_dir():  # (a link's real folder is its target's)
                                stack.append((e.path, os.path.realpath(e.path) if e.is_symlink()
                                              else os.path.join(real, e.name)))
                        except OSError:  # gone meanwhile, or a dangling link
                            continue
            except OSError as exc:
                log.warning("cannot list %s (%s): its files are left as they are", folder,
                            exc.strerror or exc)
                unlisted.append(folder)
    return found, unlisted


def _live(coll: Collection, ids: Sequence[int]) -> np.ndarray:
    return np.asarray(coll.store.rows(np.asarray(ids, dtype=np.int64)) >= 0, dtype=bool)


def plan(coll: Collection, folders: Sequence[str | os.PathLike[str]],
         within: Sequence[str | os.PathLike[str]] | None = None) -> Plan:
    """What :func:`apply` would do to make the collection mirror ``folders``. ``within``
    (paths a watcher saw change) narrows the look to those files and folders; the
    default looks at everything below ``folders``.

    Only files whose stat differs from their row are read (their digest), and new files
    that no vanished file's stat matches; an idle folder is planned from ``stat`` alone.
    """
    roots = [catalogue.absolute(f) for f in folders]
    scope = roots if within is None else [
        p for p in (catalogue.absolute(w) for w in within) if _under(p, roots)]
    disk, unlisted = _scan(scope)
    db = catalogue.db(coll)
    where, params = _ranges(scope)
    found = metadata.query(db, "SELECT f.path, f.id, f.size, f.mtime_ns, f.inode FROM files f "
                           f"JOIN items i ON i.id = f.id WHERE {where}", params
                           ) if scope and catalogue.has_table(db) else []
    live = _live(coll, [r[1] for r in found])
    known = {r[0]: r for r, ok in zip(found, live, strict=True) if ok}
    stale = tuple(r[0] for r, ok in zip(found, live, strict=True) if not ok)
    legacy = _uncatalogued(coll, scope)
    marked = unreadable.marks(db, where, params) if scope else {}
    bad: list[tuple[str, str]] = []

    def still_bad(p: str) -> bool:
        """Listed unreadable, and not changed since: skipped without a read."""
        mark = marked.get(p)
        if mark is not None and (mark[0].size, mark[0].mtime_ns, mark[0].inode) == disk[p]:
            bad.append((p, mark[1]))
            return True
        return False

    reads = 0
    digests: dict[str, str] = {}

    def digest_of(p: str) -> str | None:
        nonlocal reads
        if p not in digests:
            try:
                digests[p] = filefacts.digest(p)
            except OSError:
                return None
            reads += 1
        return digests[p]

    if within is None:
        for root in roots:  # an unmounted drive leaves its mount point, empty
            if known and not any(_under(p, [root]) for p in disk) and any(
                    _under(p, [root]) for p in known):
                raise LookalikeError(f"folder {root} is empty but the collection holds its files "
                                     "(a drive not mounted?); nothing was changed. To drop them, "
                                     f"lookalike remove {coll.path} --source '{root}/*'")
    unchanged = 0
    gone: list[str] = []
    differ: list[str] = []
    for path, (_, _, size, mtime_ns, inode) in known.items():
        st = disk.get(path)
        if st is None:
            if not _under(path, unlisted):
                gone.append(path)
            else:
                unchanged += 1
        elif st == (size, mtime_ns, inode):
            unchanged += 1
        else:
            differ.append(path)
    full = catalogue.of_paths(db, gone + differ)  # every column, for these few
    vanished = {p: full[p] for p in gone}
    changed = [full[p] for p in differ]
    adopted = [(p, i) for p, i in legacy.items() if p in disk and p not in known]
    touched: list[FileRow] = []
    removed = [(p, i) for p, i in legacy.items() if p not in disk and p not in known]
    updated: list[tuple[str, int]] = []
    added: list[str] = []
    for row in changed:
        if still_bad(row.path):
            continue
        d = digest_of(row.path)
        if d is None:  # gone meanwhile: the next sync sees it gone
            unchanged += 1
        elif d == row.digest:
            touched.append(row)
        else:
            updated.append((row.path, row.id))
    # a changed file whose item other paths still show (unchanged) becomes its own item
    kept_paths = {i: [p for r in rs if (p := r.path) not in vanished]
                  for i, rs in catalogue.of_ids(db, [i for _, i in updated]).items()}
    edited = {p for p, _ in updated}
    seen: set[int] = set()
    split: list[tuple[str, int]] = []
    for path, item in list(updated):
        others = [p for p in kept_paths.get(item, []) if p != path]
        if item in seen or any(o not in edited for o in others):
            updated.remove((path, item))
            added.append(path)
            split.append((path, item))
        seen.add(item)

    by_stat = {(r.size, r.mtime_ns, r.inode): r for r in vanished.values()}
    by_digest: dict[str, FileRow] = {}
    for r in vanished.values():
        if r.digest is not None:
            by_digest.setdefault(r.digest, r)
    moved: list[tuple[FileRow, str]] = []
    linked: list[tuple[str, int]] = []
    unknown: list[tuple[str, str]] = []  # (new path, digest) no vanished file explains
    for path in sorted(disk.keys() - known.keys() - legacy.keys()):
        if still_bad(path):
            continue
        old = by_stat.get(disk[path])
        d = None
        if old is None:
            d = digest_of(path)
            if d is None:
                continue
            old = by_digest.get(d)
        if old is not None and old.path in vanished:
            del vanished[old.path]
            by_stat.pop((old.size, old.mtime_ns, old.inode), None)
            if old.digest is not None:
                by_digest.pop(old.digest, None)
            moved.append((old, path))
        elif d is not None:
            unknown.append((path, d))
    shown = _items_with_digests(coll, {d for _, d in unknown}, {i for _, i in updated})
    for path, d in unknown:
        if d in shown:
            linked.append((path, shown[d]))
        else:
            added.append(path)
    removed += [(p, r.id) for p, r in vanished.items()]
    stats = {p: Stat(*disk[p]) for p in [*(p for _, p in moved), *(r.path for r in touched),
                                         *(p for p, _ in updated), *added, *(p for p, _ in linked)]}
    return Plan(tuple(roots), tuple(sorted(added)), tuple(linked), tuple(moved), tuple(updated),
                tuple(sorted(removed)), tuple(touched), tuple(adopted), tuple(split), stale,
                tuple(bad), tuple(p for p in marked if p not in disk), unchanged, reads, digests,
                stats)


def _uncatalogued(coll: Collection, scope: Sequence[str]) -> dict[str, int]:
    """``{path: id}`` of the live items whose source is a path in ``scope`` but which have no
    catalogue row: a collection made before the catalogue, or an add whose rows a crash cut
    off (their file is recorded without a decode)."""
    if not scope:
        return {}
    db = catalogue.db(coll)
    rows = metadata.query(db, "SELECT id, source FROM items" + (
        " WHERE id NOT IN (SELECT id FROM files)" if catalogue.has_table(db) else ""))
    pairs = [(p, int(i)) for i, s in rows if _under(p := catalogue.absolute(s), scope)]
    live = _live(coll, [i for _, i in pairs])
    return {p: i for (p, i), ok in zip(pairs, live, strict=True) if ok}


def _items_with_digests(coll: Collection, digests: set[str], changing: set[int]) -> dict[str, int]:
    """For each of ``digests`` the bytes of a live item's catalogued file have, that item
    (not one of ``changing``, whose rows tell the bytes they had)."""
    db, wanted = catalogue.db(coll), sorted(digests)
    out: dict[str, int] = {}
    if not wanted or not catalogue.has_table(db):
        return {}
    for start in range(0, len(wanted), 500):
        part = tuple(wanted[start:start + 500])
        rows = metadata.query(db, "SELECT f.digest, f.id FROM files f JOIN items i ON i.id = f.id "
                              f"WHERE f.digest IN ({', '.join('?' * len(part))})", part)
        rows = [(d, int(i)) for d, i in rows if int(i) not in changing]
        for (d, i), ok in zip(rows, _live(coll, [i for _, i in rows]), strict=True):
            if ok:
                out.setdefault(d, i)
    return out


# ---------------------------------------------------------------------------- apply
def _row(path: str, item: int, plan: Plan) -> FileRow | None:
    """The catalogue row of ``path`` showing ``item``: its header read, and its digest from
    the plan unless the file changed since (then read again)."""
    try:
        facts = filefacts.read_facts(path)
        known = plan.digests.get(path)
        fresh = known is not None and plan.stats.get(path) == facts.stat
        return FileRow.made(path, item, facts, known if fresh else filefacts.digest(path))
    except OSError:
        return None


def apply(coll: Collection, plan: Plan, *, batch: int = BATCH,
          progress: Callable[[int], None] | None = None) -> Report:
    """Carry out ``plan`` (:func:`plan`) on ``coll``; ``progress`` is called with the
    number of files decoded after each batch. Moves and rows first (metadata only), then
    removals, then re-encoded and new files, ``batch`` per commit."""
    start = time.perf_counter()
    rep = Report(unchanged=plan.unchanged + len(plan.touched) + len(plan.adopted), read=plan.reads)
    db = catalogue.db(coll)
    # 1. what changes only the catalogue: moves, rows of files whose bytes are known
    put: list[FileRow] = []
    for old, new in plan.moved:
        st = plan.stats[new]
        put.append(dataclasses.replace(old, path=new, folder=os.path.dirname(new), size=st.size,
                                       mtime_ns=st.mtime_ns, inode=st.inode,
                                       digest=old.digest or plan.digests.get(new)))
    for old in plan.touched:
        st = plan.stats[old.path]
        put.append(dataclasses.replace(old, size=st.size, mtime_ns=st.mtime_ns, inode=st.inode))
    for path, item in [*plan.adopted, *plan.linked]:
        row = _row(path, item, plan)
        rep.read += path not in plan.digests
        if row is not None:
            put.append(row)
    sources = _sources_after_moves(coll, plan.moved)
    if put or plan.stale or sources:
        with coll.writing():
            catalogue.relink(db, put, [o.path for o, _ in plan.moved] + list(plan.stale), sources)
    rep.moved, rep.added = len(plan.moved), len(plan.linked)
    rep.skipped += list(plan.unreadable)
    unreadable.change(db, cleared=plan.unmarked)
    # 2. vanished files: an item no path shows any more goes; another keeps a live source
    if plan.removed:
        gone_paths = {p for p, _ in plan.removed}
        rows_of = catalogue.of_ids(db, sorted({i for _, i in plan.removed}))
        orphans = sorted({i for _, i in plan.removed
                          if not [r for r in rows_of.get(i, []) if r.path not in gone_paths]})
        if orphans:
            rep.items_removed = coll.remove(orphans)
        catalogue.relink(db, dropped=sorted(gone_paths),
                         sources=_live_sources(coll, [i for _, i in plan.removed if i not in orphans],
                                               gone_paths, rows_of))
        rep.removed = len(plan.removed)
    # 3. changed and new files: each read once (decoded, digested, its header's facts) in
    #    the pipeline's threads while the batch before is encoded (as index does); a commit
    #    per batch
    if plan.updated or plan.added:
        from ..models.atonce import batches_at_once

        with batches_at_once(coll.encoder):
            _encode_files(coll, plan, batch, db, rep, progress)
    if plan.split:  # an edited file that became its own item was its old item's source
        catalogue.relink(db, sources=_live_sources(coll, [i for _, i in plan.split],
                                                   {p for p, _ in plan.split}))
    rep.seconds = time.perf_counter() - start
    return rep


def _encode_files(coll: Collection, plan: Plan, batch: int, db: Path, rep: Report,
                  progress: Callable[[int], None] | None) -> None:
    """Step 3 of :func:`apply`: the changed files' items updated, the new files added."""
    of = dict(plan.updated)
    for part in stream([p for p, _ in plan.updated], coll.encoder.spec, batch=batch, ahead=1):
        kept = _decoded(db, part, rep)
        if kept:
            rep.encoded += coll.update([of[p] for p in kept], part.inputs)
            catalogue.record(coll, kept, [of[p] for p in kept], part.facts)
        rep.updated += len(kept)
        rep.read += len(part.paths) + len(part.skipped)
        if progress:
            progress(part.stop - part.start)
    for part in stream(plan.added, coll.encoder.spec, batch=batch, ahead=1):
        kept = _decoded(db, part, rep)
        if kept:
            before = len(coll)
            new_ids = coll.add(part.inputs, kept)
            rep.encoded += len(coll) - before
            catalogue.record(coll, kept, new_ids, part.facts)
        rep.added += len(kept)
        rep.read += len(part.paths) + len(part.skipped)
        if progress:
            progress(part.stop - part.start)


def _decoded(db: Path, part: Batch, rep: Report) -> list[str]:
    """The paths of ``part`` decoded (its skipped files listed unreadable, reported)."""
    kept = [str(p) for p in part.paths]
    _mark(db, list(part.skipped), kept)
    rep.skipped += part.skipped
    rep.decoded += len(kept)
    return kept


def _mark(db: Path, bad: list[tuple[str, str]], kept: Sequence[str]) -> None:
    """List the files that could not be read (with their stat now), clear those that were."""
    listed = []
    for path, reason in bad:
        try:
            listed.append((path, Stat.of(path), reason))
        except OSError:
            continue
    unreadable.change(db, listed, [str(p) for p in kept])


def _sources_after_moves(coll: Collection, moved: Sequence[tuple[FileRow, str]]) -> dict[int, str]:
    """The new source of each moved item whose source was the path that moved."""
    if not moved:
        return {}
    items = {it.id: it for it in coll.items([o.id for o, _ in moved]) if it is not None}
    return {o.id: new for o, new in moved
            if o.id in items and catalogue.absolute(items[o.id].source) == o.path}


def _live_sources(coll: Collection, ids: Sequence[int], gone: set[str],
                  rows_of: dict[int, list[FileRow]] | None = None) -> dict[int, str]:
    """For each of ``ids`` whose source is among ``gone``, a path that still shows it
    (``rows_of``: the catalogue rows of ``ids`` when the caller has read them already)."""
    if not ids:
        return {}
    if rows_of is None:
        rows_of = catalogue.of_ids(catalogue.db(coll), sorted(set(ids)))
    out: dict[int, str] = {}
    for it in coll.items(sorted(set(ids))):
        if it is None or catalogue.absolute(it.source) not in gone:
            continue
        left = sorted(r.path for r in rows_of.get(it.id, []) if r.path not in gone)
        if left:
            out[it.id] = left[0]
    return out


def sync(coll: Collection, folders: Sequence[str | os.PathLike[str]] | None = None, *,
         within: Sequence[str | os.PathLike[str]] | None = None, batch: int = BATCH,
         progress: Callable[[int], None] | None = None) -> Report:
    """Plan and apply (the step a manual ``sync`` and a watcher's batch both run):
    ``folders`` default to the remembered ones.

    Raises:
        LookalikeError: no folder to mirror, or one that does not exist (a drive not
            mounted must not empty the collection).
    """
    start = time.perf_counter()
    roots = check_folders(coll, folders)
    report = apply(coll, plan(coll, roots, within), batch=batch, progress=progress)
    report.seconds = time.perf_counter() - start
    return report


def check_folders(coll: Collection, folders: Sequence[str | os.PathLike[str]] | None) -> list[str]:
    """``folders`` (absolute), or the remembered ones; each must be an existing folder."""
    roots = [catalogue.absolute(f) for f in folders] if folders else folders_of(coll)
    if not roots:
        raise LookalikeError(f"{coll.path} remembers no folder to mirror; give one: "
                             f"lookalike sync {coll.path} FOLDER")
    for r in roots:
        if not os.path.isdir(r):
            raise LookalikeError(f"folder {r} is missing or not a folder (a drive not mounted?); "
                                 "nothing was changed")
    return roots
