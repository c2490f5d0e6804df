"""What ``lookalike duplicates`` prints: the groups as text, JSON or CSV.

``keepers`` maps a group's ids to ``(keeper id, reason)`` where a keep rule chose one; a
group without an entry has no keeper (``null`` in JSON, empty in CSV).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any

from ..search.duplicates import TIERS, DuplicateGroup

Keepers = Mapping[tuple[int, ...], tuple[int, str]]
CSV_COLUMNS = ("group", "tier", "score", "id", "source", "keeper", "reason")


def counts(groups: list[DuplicateGroup]) -> dict[str, int]:
    """Groups per tier, every tier listed (strongest first)."""
    return {t: sum(g.tier == t for g in groups) for t in TIERS}


def as_json(groups: list[DuplicateGroup], sources: Mapping[int, str], *, items: int,
            settings: Mapping[str, Any], keepers: Keepers | None = None) -> dict[str, Any]:
    keepers = keepers or {}
    out = []
    for number, g in enumerate(groups, start=1):
        keeper, reason = keepers.get(g.ids, (None, None))
        out.append({"group": number, "tier": g.tier, "score": g.score, "keeper": keeper,
                    "reason": reason,
                    "items": [{"id": i, "source": sources.get(i)} for i in g.ids],
                    "pairs": [{"a": p.a, "b": p.b, "tier": p.tier, "score": p.score}
                              for p in g.links]})
    return {**settings, "items": items, "tiers": counts(groups), "groups": out}


def as_csv(groups: list[DuplicateGroup], sources: Mapping[int, str],
           keepers: Keepers | None = None) -> str:
    """One row per item of each group (:data:`CSV_COLUMNS`), for spreadsheets."""
    keepers = keepers or {}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for number, g in enumerate(groups, start=1):
        keeper, reason = keepers.get(g.ids, (None, None))
        for i in g.ids:
            writer.writerow([number, g.tier, f"{g.score:.6f}", i, sources.get(i, ""),
                             "" if keeper is None else str(i == keeper).lower(),
                             reason if i == keeper and reason else ""])
    return buf.getvalue()
