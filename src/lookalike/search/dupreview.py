"""Duplicate groups decided: in each, the copy to keep (:mod:`lookalike.search.keeper`) and
the others, which :mod:`lookalike.search.dupmove` may move away.

A group comes from detection as its item ids and its tier; here each item is looked up in
the collection (its source) and, when the source is a file, its facts are read from the
file's header. Items that are not files (a dataset's rows, uploads to the service) or
whose file is gone, unreadable or a symbolic link take no part: they are neither kept nor
moved, and a group left with fewer than two files is decided as nothing to do.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection as Collection_
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import LookalikeError
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
class NearGroup:
    """A group from :func:`lookalike.search.duplicates.find_duplicates`: all of tier near."""

    ids: tuple[int, ...]
    tier: str = "near"


def as_groups(groups: Sequence[GroupLike] | Sequence[Sequence[int]]) -> list[GroupLike]:
    """Groups as detection gives them today (lists of ids, tier "near") or already with a
    tier. (lead: switch to find_groups on merge: then every group has its tier.)"""
    out: list[GroupLike] = []
    for g in groups:
        if isinstance(g, Sequence):
            out.append(NearGroup(tuple(int(i) for i in g)))
        else:
            out.append(g)
    return out


def _groups(coll: Collection) -> list[GroupLike]:
    """The collection's duplicate groups at the default settings."""
    # lead: switch to find_groups on merge
    from .duplicates import find_duplicates

    return as_groups(find_duplicates(coll))


@dataclass(frozen=True)
class Member:
    """One item of a group: ``facts`` None when it is not a movable file (``problem`` says why)."""

    id: int
    source: str
    label: int
    facts: FileFacts | None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        facts = self.facts.to_dict() if self.facts else {}
        facts.pop("path", None)
        return {"id": self.id, "source": self.source, **facts, "problem": self.problem}


@dataclass(frozen=True)
class Decision:
    """One group decided: ``keeper`` is an item id (None: nothing to do, fewer than two
    files), ``reason`` why it was chosen."""

    tier: str
    members: tuple[Member, ...]
    keeper: int | None
    reason: str

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(m.id for m in self.members)

    @property
    def movers(self) -> tuple[Member, ...]:
        """The files to move away: every file of the group but the keeper."""
        if self.keeper is None:
            return ()
        return tuple(m for m in self.members if m.facts is not None and m.id != self.keeper)

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "keeper": self.keeper, "reason": self.reason,
                "members": [m.to_dict() for m in self.members]}


def _member(item_id: int, source: str | None, label: int) -> Member:
    if source is None:
        return Member(item_id, "", label, None, "not in the collection")
    path = Path(source)
    try:
        if path.is_symlink():
            return Member(item_id, source, label, None, "a symbolic link (not moved)")
        if not path.is_file():
            return Member(item_id, source, label, None,
                          "no such file" if not path.exists() else "not a regular file")
        facts = file_facts(path)
    except OSError as exc:
        return Member(item_id, source, label, None, f"unreadable ({exc.strerror or exc})")
    if not facts.pixels:
        return Member(item_id, source, label, None, "not a readable image")
    return Member(item_id, source, label, facts)


def decide(coll: Collection, groups: Sequence[GroupLike], rule: KeepRule | None = None,
           chosen: Collection_[int] = ()) -> list[Decision]:
    """Each group decided under ``rule`` (default ``best``), in the order given.

    ``chosen`` are keepers chosen by hand (the review page): a group holding one of them
    keeps it ("chosen by hand").

    Raises:
        LookalikeError: a chosen id that is not a file of its group.
    """
    rule = rule or KeepRule()
    wanted = sorted({int(i) for g in groups for i in g.ids})
    items = {it.id: it for it in coll.items(wanted) if it is not None}
    out = []
    for g in groups:
        members = tuple(_member(int(i), items[i].source if i in items else None,
                                items[i].label if i in items else -1) for i in g.ids)
        files = [m for m in members if m.facts is not None]
        hand = [m for m in members if m.id in chosen]
        if hand and (len(hand) > 1 or hand[0].facts is None):
            raise LookalikeError(f"choose one file of the group of item {members[0].id} to keep")
        if len(files) < 2:
            decision = Decision(g.tier, members, None, "fewer than two files: nothing to move")
        elif hand:
            decision = Decision(g.tier, members, hand[0].id, "chosen by hand")
        else:
            at, reason = choose([m.facts for m in files if m.facts is not None], rule)
            decision = Decision(g.tier, members, files[at].id, reason)
        out.append(decision)
    return out


def absolute(source: str) -> str:
    """A source path made absolute (a relative one was given from the working folder)."""
    return os.path.abspath(source)
