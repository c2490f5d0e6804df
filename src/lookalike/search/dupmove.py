"""Move the copies a duplicate review decided against into a folder, and put them back.

:func:`move` moves each group's non-keepers into ``DIR``, each under its path relative to
the files' common folder (``/photos/2019/a.jpg`` -> ``DIR/2019/a.jpg`` when every file
lies under ``/photos``), and :func:`undo` puts them back. Nothing is ever deleted and no
existing file is ever overwritten: a file whose destination exists stays where it is.

The common folder is that of every file in the groups that move, keepers included.

**The manifest** (``DIR/lookalike-moves-<UTC time>.json``, JSON a user can read) lists every
planned move, with each file's size and SHA-256, the item it was, and its group's keeper.
It is written (atomically, synced) *before* the first file moves, and its ``status`` says
what was under way: ``moving``, ``moved``, ``undoing``, ``undone``.

**The file system is the journal.** One file moves as a hard link at the destination
(``link`` fails rather than replace a file), then the unlink of the source; across file
systems as a copy into a hidden temporary file beside the destination, synced and checked
against the SHA-256, linked into place, then the unlink of the source. A SIGKILL between
any two steps leaves the file at its source, at its destination, or at both with the
same bytes; never at neither, never half-written under its name. :func:`move` and
:func:`undo` each look at both places of every entry and finish what was under way, so
running either again after a crash completes it: ``--move-to DIR`` first completes any
manifest in ``DIR`` left ``moving`` or ``undoing``; ``--undo MANIFEST`` undoes whatever
part of a move was done, or finishes an interrupted undo.

**The collection follows.** Once the files have moved, their items leave the collection
(:meth:`Collection.remove`, one commit), so that searches and the next duplicate pass no
longer meet them. An undo adds the files back as ``lookalike add`` does (encoded again,
under their old source and label; new ids, as ids are never reused); a file whose
picture is still stored under another item (a copy with the same stored pixels) stays
represented by that item. A crash between the moves and the commit is finished by the
rerun: removing and adding are both driven by what the collection holds at that moment.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LookalikeError
from ..fsutil import atomic_write_json, file_sha256, fsync_dir, read_json
from . import files as catalogue
from .dupreview import Decision

if TYPE_CHECKING:
    from .collection import Collection

log = logging.getLogger(__name__)

FORMAT = "lookalike-moves"
PREFIX = "lookalike-moves-"
LOCK = "lookalike-moves-lock"
STATUSES = ("planned", "moving", "moved", "undoing", "undone")
_PART = ".lookalike-part"
#: ``link`` errors that mean "no hard link here" (another file system, or none supported).
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK}
ADD_BATCH = 256


@dataclass
class Outcome:
    """What a :func:`move` or :func:`undo` did: the manifest, and per entry what happened."""

    manifest: Path
    status: str
    done: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    removed: int = 0
    added: int = 0
    kept_by_content: int = 0


# ---------------------------------------------------------------------------- one file
class _Changed(Exception):
    """A file's bytes changed while it was copied."""


def _sha(path: Path) -> str:
    return file_sha256(path)


def _same(a: Path, b: Path, sha: str) -> bool:
    """Whether ``a`` and ``b`` hold the same bytes, ``sha``: one file (hard links), or both
    hashing to it."""
    with contextlib.suppress(OSError):
        if os.path.samefile(a, b):
            return True
    return _sha(a) == sha and _sha(b) == sha


def _part(dst: Path) -> Path:
    return dst.with_name(f".{dst.name}{_PART}")


def _copy_into_place(src: Path, dst: Path, sha: str) -> None:
    """``src`` copied to ``dst`` (another file system): written to a hidden file beside it,
    synced, checked, then linked (or, where links are not supported, renamed) into place."""
    part = _part(dst)
    part.unlink(missing_ok=True)  # (a crashed copy's; ours by its name)
    shutil.copyfile(src, part)
    shutil.copystat(src, part)
    with open(part, "rb+") as fh:
        os.fsync(fh.fileno())
    if _sha(part) != sha:
        part.unlink()
        raise _Changed(f"{src} changed while it was copied")
    try:
        os.link(part, dst)
        part.unlink()
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        if os.path.lexists(dst):  # (no atomic no-replace rename without links: checked first)
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        os.replace(part, dst)


def _transfer(src: Path, dst: Path, sha: str, check: bool, back: bool = False) -> str | None:
    """Bring the file at ``src`` to ``dst`` from whatever state a crash left (see the module
    docstring); None when it is at ``dst`` (only), else why it was left alone. ``check``:
    a file still at ``src`` must still hash to ``sha`` (it was not edited since the plan).
    ``back`` (an undo): a file is brought back as it is now, edited or not."""
    _part(dst).unlink(missing_ok=True)
    at_src, at_dst = os.path.lexists(src), os.path.lexists(dst)
    if at_dst and not at_src:
        return None
    if not at_src:
        return f"missing: neither {src} nor {dst} exists"
    if at_dst:
        if not _same(src, dst, sha):
            return f"{dst} exists and is another file (never overwritten)"
    else:
        if check and _sha(src) != sha:
            return f"{src} changed since the move was planned"
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except FileExistsError:
            return f"{dst} exists (never overwritten)"
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            try:
                _copy_into_place(src, dst, _sha(src) if back else sha)
            except FileExistsError:
                return f"{dst} exists (never overwritten)"
            except _Changed as changed:
                return str(changed)
        fsync_dir(dst.parent)
    os.unlink(src)
    fsync_dir(src.parent)
    return None


# ---------------------------------------------------------------------------- the manifest
def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Busy(LookalikeError):
    """Another process is moving files into, or out of, the folder."""


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process at a time works on a move folder's manifests: an exclusive ``flock`` on
    ``folder/lookalike-moves-lock`` (a file never replaced, unlike the manifests, which are
    written atomically; the kernel lets go when the process dies). Every manifest is read,
    and written, only while it is held."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Busy(f"another process is moving files in {folder}") from None
        yield
    finally:
        os.close(fd)


def _check_moves(p: Path, moves: Any, key: str) -> None:
    if not isinstance(moves, list):
        raise LookalikeError(f"{p} is not a lookalike moves manifest ({key!r} is not a list)")
    types: dict[str, type] = (
        {"id": int, "from": str, "to": str, "why": str} if key == "skipped" else
        {"id": int, "source": str, "label": int, "from": str, "to": str, "sha256": str, "bytes": int})
    for number, e in enumerate(moves):
        bad = ([k for k, t in types.items() if not isinstance(e.get(k), t) or isinstance(e.get(k), bool)]
               if isinstance(e, dict) else ["the entry itself"])
        if not bad and key == "moves" and not (os.path.isabs(e["from"]) and os.path.isabs(e["to"])):
            bad = ["from/to (not absolute paths)"]
        if bad:
            raise LookalikeError(f"{p} is not a lookalike moves manifest ({key} entry {number}: "
                                 f"{', '.join(bad)})")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A manifest, checked. Raises :class:`LookalikeError` when it is not one."""
    p = Path(path)
    try:
        data = read_json(p)
    except FileNotFoundError:
        raise LookalikeError(f"manifest {p} does not exist") from None
    except (OSError, ValueError) as exc:
        raise LookalikeError(f"{p} is not a readable moves manifest ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise LookalikeError(f"{p} is not a lookalike moves manifest")
    if data.get("status") not in STATUSES:
        raise LookalikeError(f"{p} is not a lookalike moves manifest (status {data.get('status')!r})")
    _check_moves(p, data.get("moves"), "moves")
    _check_moves(p, data.get("skipped", []), "skipped")
    made = data.get("made_folders", [])
    if not isinstance(made, list) or not all(isinstance(f, str) for f in made):
        raise LookalikeError(f"{p} is not a lookalike moves manifest (made_folders)")
    for key in ("collection", "dir", "root"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise LookalikeError(f"{p} is not a lookalike moves manifest ({key})")
    return data


def _save(path: Path, manifest: dict[str, Any], status: str) -> None:
    manifest["status"] = status
    manifest["updated"] = _now()
    atomic_write_json(path, manifest)


def plan(decisions: Sequence[Decision], target: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of moving every decision's non-keepers into ``target`` (nothing moved;
    the files hashed now). Files whose destination exists are listed under ``skipped``.

    Raises:
        LookalikeError: ``target`` is an existing file, or lies inside one (a file to move,
            say).
    """
    dest = Path(catalogue.absolute(str(target)))
    if dest.exists() and not dest.is_dir():
        raise LookalikeError(f"--move-to {dest} is a file, not a folder")
    for parent in dest.parents:
        if parent.exists():
            if not parent.is_dir():
                raise LookalikeError(f"--move-to {dest} lies inside the file {parent}")
            break
    movers = [(d, m) for d in decisions for m in d.movers]
    paths = [m.path for _, m in movers]  # absolute, from the catalogue
    # the common folder of every file of the groups, keepers too: the same library gives
    # the same layout in DIR from one run to the next
    every = [m.path for d in decisions if d.movers for m in d.members if m.facts]
    root = os.path.commonpath([os.path.dirname(p) for p in every]) if every else str(dest)
    moves, skipped, made, seen = [], [], set(), set()
    for number, (decision, member) in enumerate(movers):
        src = paths[number]
        if src in seen:  # (a group given twice)
            continue
        seen.add(src)
        dst = dest / os.path.relpath(src, root)
        if os.path.lexists(dst):
            skipped.append({"id": member.id, "from": src, "to": str(dst),
                            "why": f"{dst} exists (never overwritten)"})
            continue
        try:
            sha = _sha(Path(src))
        except OSError as exc:
            skipped.append({"id": member.id, "from": src, "to": str(dst),
                            "why": f"{src}: {exc.strerror or exc}"})
            continue
        for parent in dst.parents:
            if parent == dest.parent or parent.exists():
                break
            made.add(str(parent))
        assert member.facts is not None
        moves.append({"id": member.id, "source": member.source, "label": member.label,
                      "from": src, "to": str(dst), "bytes": member.facts.bytes,
                      "sha256": sha, "tier": decision.tier,
                      "keeper": decision.keeper, "reason": decision.reason})
    return {"format": FORMAT, "version": 1, "status": "planned", "created": _now(),
            "root": root, "dir": str(dest), "moves": moves, "skipped": skipped,
            "made_folders": sorted(made, key=lambda p: -p.count(os.sep))}


def move(coll: Collection, decisions: Sequence[Decision], target: str | os.PathLike[str]
         ) -> Outcome:
    """Move the non-keepers of ``decisions`` into ``target``, the manifest written first,
    and remove the moved items from ``coll``. Decide after :func:`finish_pending`: an
    interrupted run left in ``target`` is refused.

    Raises:
        LookalikeError: ``target`` holds an interrupted run, or is a file.
    """
    dest = Path(catalogue.absolute(str(target)))
    plan((), dest)  # (the target checked before anything is made)
    dest.mkdir(parents=True, exist_ok=True)
    with _locked(dest):
        unfinished = pending(dest)
        if unfinished:  # (decisions made before it is finished would be out of date)
            raise LookalikeError(f"{unfinished[0]} is an interrupted run: finish it first "
                                 "(finish_pending)")
        manifest = plan(decisions, dest)
        manifest["collection"] = str(coll.path.resolve())
        path = _create(dest)
        _save(path, manifest, "moving")  # before the first file moves
        out = _forward(coll, path, manifest, resuming=False)
    out.skipped += [(e, e["why"]) for e in manifest["skipped"]]
    return out


def _create(dest: Path) -> Path:
    """A new manifest's path in ``dest``, the file created there (exclusively: never one
    that exists)."""
    while True:
        path = dest / f"{PREFIX}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}.json"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            return path
        except FileExistsError:
            continue


def _forward(coll: Collection, path: Path, manifest: dict[str, Any], resuming: bool) -> Outcome:
    out = Outcome(path, "moved")
    for entry in manifest["moves"]:
        why = _transfer(Path(entry["from"]), Path(entry["to"]), entry["sha256"], check=resuming)
        if why is None:
            out.done.append(entry)
        else:
            log.warning("not moved: %s", why)
            out.skipped.append((entry, why))
    out.removed = _remove(coll, out.done)
    manifest["moved"] = [e["id"] for e in out.done]
    manifest["not_moved"] = [{"id": e["id"], "why": why} for e, why in out.skipped]
    _save(path, manifest, "moved")
    return out


def _remove(coll: Collection, done: list[dict[str, Any]]) -> int:
    """The moved files leave the catalogue; their items leave the collection, those that no
    longer show any catalogued file (an item may show a file that stayed)."""
    if not done:
        return 0
    where = catalogue.db(coll)
    catalogue.drop(where, [e["from"] for e in done])
    ids = sorted({int(e["id"]) for e in done})
    still = catalogue.of_ids(where, ids)
    return coll.remove([i for i in ids if i not in still])


def undo(coll: Collection, manifest_path: str | os.PathLike[str], progress: bool = False
         ) -> Outcome:
    """Put back every file a manifest moved (or began to), add them to ``coll`` again, and
    remove the folders the move made (when empty). Running it again does nothing more.

    Raises:
        LookalikeError: not a manifest, or one made for another collection.
    """
    path = Path(catalogue.absolute(str(manifest_path)))
    read_manifest(path)  # (not one: said before the lock file is made beside it)
    with _locked(path.parent):
        manifest = read_manifest(path)
        made_for = manifest.get("collection")
        if made_for and Path(made_for) != coll.path.resolve():
            raise LookalikeError(f"{path} moved items of the collection {made_for}, not {coll.path}")
        if manifest["status"] != "undone":
            _save(path, manifest, "undoing")
        return _backward(coll, path, manifest, progress)


def _backward(coll: Collection, path: Path, manifest: dict[str, Any], progress: bool) -> Outcome:
    out = Outcome(path, "undone")
    for entry in manifest["moves"]:
        why = _transfer(Path(entry["to"]), Path(entry["from"]), entry["sha256"], check=False,
                        back=True)
        if why is None:  # (back now, back already, or never moved)
            out.done.append(entry)
        else:
            log.warning("not put back: %s", why)
            out.skipped.append((entry, why))
    out.added, out.kept_by_content = _add_back(coll, out.done, progress)
    home = str(path.parent)
    for folder in manifest.get("made_folders") or []:
        folder = os.path.normpath(folder)
        if os.path.dirname(folder) == folder or os.path.commonpath([home, folder]) != home:
            log.warning("not removed: %s is not under %s", folder, home)
            continue
        with contextlib.suppress(OSError):  # not empty: something else is in it
            os.rmdir(folder)
    manifest["not_put_back"] = [{"id": e["id"], "why": why} for e, why in out.skipped]
    _save(path, manifest, "undone")
    return out


def _add_back(coll: Collection, entries: list[dict[str, Any]], progress: bool) -> tuple[int, int]:
    """Add the entries' files to ``coll`` under their old source and label, those it does
    not hold already (by source; one item per source, several files may have shown it), a
    batch per commit as ``lookalike add``, and catalogue every file put back as showing its
    item; returns (added, held already under another item by content)."""
    from tqdm.auto import tqdm

    from ..data.images import load_images

    by_source: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_source.setdefault(e["source"], []).append(e)
    present = coll.sources(by_source)
    held = [(e["from"], present[e["source"]][0]) for e in entries if e["source"] in present]
    if held:
        catalogue.catalogue(coll, [p for p, _ in held], [i for _, i in held])
    todo = [es[0] for src, es in by_source.items() if src not in present]
    added = by_content = 0
    with tqdm(total=len(todo), desc="adding back", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), ADD_BATCH):
            batch = todo[start:start + ADD_BATCH]
            images, kept, bad = load_images([e["from"] for e in batch], coll.encoder.spec)
            for p, why in bad:
                log.warning("not added back to the collection: %s: %s", p, why)
            by_path = {e["from"]: e for e in batch}
            rows = [by_path[str(p)] for p in kept]
            before = set(coll.ids.tolist())
            if rows:
                ids = coll.add(images, [e["source"] for e in rows], [int(e["label"]) for e in rows])
                new = {int(i) for i in ids} - before
                added += len(new)
                by_content += len(rows) - len(new)
                shown = [(e["from"], int(i)) for r, i in zip(rows, ids, strict=True)
                         for e in by_source[r["source"]]]
                catalogue.catalogue(coll, [p for p, _ in shown], [i for _, i in shown])
            bar.update(len(batch))
    return added, by_content


def pending(target: str | os.PathLike[str]) -> list[Path]:
    """The manifests in ``target`` left ``moving`` or ``undoing`` by an interrupted run."""
    dest = Path(target)
    if not dest.is_dir():
        return []
    found = []
    for p in sorted(dest.glob(f"{PREFIX}*.json")):
        try:
            status = read_manifest(p).get("status")
        except LookalikeError:
            continue
        if status in ("moving", "undoing"):
            found.append(p)
    return found


def finish_pending(coll: Collection, target: str | os.PathLike[str]) -> list[Outcome]:
    """Complete each run that ``target``'s manifests say was interrupted: a move is
    finished, an undo too. Returns what each did."""
    outcomes: list[Outcome] = []
    dest = Path(catalogue.absolute(str(target)))
    if not dest.is_dir():
        return outcomes
    with _locked(dest):  # (before any manifest is read)
        for p in pending(dest):
            manifest = read_manifest(p)  # (read again under the lock: another run may have
            if manifest["status"] not in ("moving", "undoing"):  # finished it meanwhile)
                continue
            log.warning("completing the interrupted %s of %s",
                        {"moving": "move", "undoing": "undo"}[manifest["status"]], p)
            if manifest["status"] == "moving":
                outcomes.append(_forward(coll, p, manifest, resuming=True))
            else:
                outcomes.append(_backward(coll, p, manifest, progress=False))
    return outcomes
