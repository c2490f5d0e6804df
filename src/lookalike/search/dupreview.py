"""Duplicate groups decided: in each, the copy to keep (:mod:`lookalike.search.keeper`) and
the others, which :mod:`lookalike.search.dupmove` may move away.

A group comes from detection as its item ids and its tier; here each item's files are
looked up in the file catalogue (:mod:`lookalike.search.files`: absolute paths, never the
stored source resolved against the working folder), and each file's facts read from its
header. An item may show several files (byte-identical copies share one): each file is a
member of its own, kept or moved on its own. A file takes part only while it is still the
one catalogued (the same size, modification time and inode, or else the same digest).
Items with no catalogued file (a dataset's rows, uploads to the service, a collection not
yet synced) and files that are gone, changed, unreadable or symbolic links take no part:
they are neither kept nor moved, and a group left with fewer than two files is decided
as nothing to do.
"""

from __future__ import annotations

import logging
from collections.abc import Collection as Collection_
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..data.filefacts import Stat, digest
from ..errors import LookalikeError
from . import files as catalogue
from .keeper import FileFacts, KeepRule, choose, file_facts

if TYPE_CHECKING:
    from .collection import Collection

log = logging.getLogger(__name__)


class GroupLike(Protocol):
    """What detection gives for one group: its item ids and its tier."""

    @property
    def ids(self) -> Sequence[int]: ...

    @property
    def tier(self) -> str: ...


@dataclass(frozen=True)
class Member:
    """One file of a group (or an item with none): ``path`` the file's absolute path from
    the catalogue ("" when none), ``facts`` None when it is not a movable file (``problem``
    says why)."""

    id: int
    source: str
    label: int
    facts: FileFacts | None
    problem: str | None = None
    path: str = ""

    @property
    def shown(self) -> str:
        """What names it to a user: its path, else the item's source."""
        return self.path or self.source

    def to_dict(self) -> dict[str, Any]:
        facts = self.facts.to_dict() if self.facts else {}
        facts.pop("path", None)
        return {"id": self.id, "source": self.source, "path": self.path or None, **facts,
                "problem": self.problem}


@dataclass(frozen=True)
class Decision:
    """One group decided: ``keeper`` is the item id of the file kept, ``keeper_path`` that
    file (None: nothing to do, fewer than two files), ``reason`` why it was chosen."""

    tier: str
    members: tuple[Member, ...]
    keeper: int | None
    reason: str
    keeper_path: str | None = None

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(m.id for m in self.members))

    @property
    def movers(self) -> tuple[Member, ...]:
        """The files to move away: every file of the group but the keeper (a file showing
        the keeper's item too, when it is another path)."""
        if self.keeper is None:
            return ()
        return tuple(m for m in self.members if m.facts is not None and m.path != self.keeper_path)

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "keeper": self.keeper, "keeper_path": self.keeper_path,
                "reason": self.reason, "members": [m.to_dict() for m in self.members]}


def _same_file(row: catalogue.FileRow) -> bool:
    """Whether the file at ``row.path`` is still the one catalogued: the same stat, or else
    the same bytes (a file written again, copied back)."""
    if Stat.of(row.path) == row.stat:
        return True
    return row.digest is not None and digest(row.path) == row.digest


def _file_member(item_id: int, source: str, label: int, row: catalogue.FileRow) -> Member:
    path = Path(row.path)

    def no(problem: str) -> Member:
        return Member(item_id, source, label, None, problem, row.path)

    try:
        if path.is_symlink():
            return no("a symbolic link (not moved)")
        if not path.is_file():
            return no("no such file" if not path.exists() else "not a regular file")
        if not _same_file(row):
            return no("changed since it was catalogued (lookalike sync reads it again)")
        facts = file_facts(path)
    except OSError as exc:
        return no(f"unreadable ({exc.strerror or exc})")
    if not facts.pixels:
        return no("not a readable image")
    return Member(item_id, source, label, facts, None, row.path)


def _members(item_id: int, source: str | None, label: int,
             rows: Sequence[catalogue.FileRow]) -> list[Member]:
    """The members of one item: one per catalogued file of it."""
    if source is None:
        return [Member(item_id, "", label, None, "not in the collection")]
    if not rows:
        return [Member(item_id, source, label, None,
                       "no file in the catalogue (lookalike sync catalogues the files)")]
    return [_file_member(item_id, source, label, r) for r in rows]


def decide(coll: Collection, groups: Sequence[GroupLike], rule: KeepRule | None = None,
           chosen: Collection_[int] = (), chosen_paths: Collection_[str] = ()) -> list[Decision]:
    """Each group decided under ``rule`` (default ``best``), in the order given.

    ``chosen`` are keepers chosen by hand (the review page): a group holding one of them
    keeps it ("chosen by hand"; of an item showing several files, the one of
    ``chosen_paths``, else the one ``rule`` puts first).

    Raises:
        LookalikeError: a chosen id that is not a file of its group.
    """
    rule = rule or KeepRule()
    wanted = sorted({int(i) for g in groups for i in g.ids})
    items = {it.id: it for it in coll.items(wanted) if it is not None}
    paths = catalogue.of_ids(catalogue.db(coll), wanted)
    out = []
    for g in groups:
        members = tuple(m for i in dict.fromkeys(int(i) for i in g.ids) for m in _members(
            i, items[i].source if i in items else None, items[i].label if i in items else -1,
            paths.get(i, [])))
        files = [m for m in members if m.facts is not None]
        hand = [m for m in files if m.id in chosen]
        hand = [m for m in hand if m.path in chosen_paths] or hand
        if {m.id for m in members if m.id in chosen} and len({m.id for m in hand}) != 1:
            raise LookalikeError(f"choose one file of the group of item {members[0].id} to keep")
        if len(files) < 2:
            decision = Decision(g.tier, members, None, "fewer than two files: nothing to move")
        else:
            among = hand or files
            at, reason = choose([m.facts for m in among if m.facts is not None], rule)
            decision = Decision(g.tier, members, among[at].id, "chosen by hand" if hand else reason,
                                among[at].path)
        out.append(decision)
    return out
