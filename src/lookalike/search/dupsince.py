"""What changed since the last duplicate pass: the record of the items a pass saw, and the ids
added, changed in place or removed since (what ``duplicates --since last`` checks again).

An item changed in place (``add --update``, ``sync`` of an edited file) keeps its id, so ids
alone cannot tell it; its code can. A pass records, for every item it saw, its id and a
*digest* of its code (the first 8 bytes of the BLAKE2b of the code's bytes, ``uint64``), and
the *segments* it saw, each keyed by its name and the SHA-256 of its ids and codes files (from
the manifest). A segment never changes once written (a deletion is recorded beside it; an
updated item gets a row in a new segment), so a row in a segment the last pass saw holds what
it held then: only the rows of other segments (items added or updated since, and rows that a
merge or ``compact`` moved) are read and digested now. An id is *changed* when the last pass
did not record it or recorded another digest; *removed* when it is gone.

Why the code and not the ``items`` table's hash: :meth:`Changes.update` commits the new code
(the manifest) before it writes the new hash, so a crash between the two would leave a changed
item with its old hash, and a record made of hashes would check less. The code is what the
manifest commits. And why not a row's segment alone: a merge or ``compact`` moves rows without
changing them, and would send every moved item back to the pass.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .segments import Segment, SegmentStore

#: Rows whose codes are read at a time while they are digested.
CHUNK = 65536


@dataclass(frozen=True)
class ItemRecord:
    """The items a pass saw: ``ids`` (``int64 (n,)``, sorted), the digest of each one's code
    (``uint64 (n,)``) and the keys of the segments it saw (:func:`segment_key`)."""

    ids: np.ndarray
    digests: np.ndarray
    segments: frozenset[str]

    def __post_init__(self) -> None:
        if self.ids.shape != self.digests.shape or self.ids.ndim != 1:
            raise ValueError(f"one digest per id: ids {self.ids.shape}, digests {self.digests.shape}")

    def arrays(self) -> dict[str, np.ndarray]:
        """The record as arrays for an ``.npz`` (read back by :meth:`from_arrays`)."""
        return {"item_ids": self.ids, "item_digests": self.digests,
                "item_segments": np.array(sorted(self.segments), dtype=np.str_)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ItemRecord | None:
        """The record in ``arrays`` (an opened ``.npz``), or None when they hold none (a pass
        recorded before items were, or a damaged one)."""
        try:
            ids = np.asarray(arrays["item_ids"], dtype=np.int64)
            digests = np.asarray(arrays["item_digests"], dtype=np.uint64)
            segments = frozenset(str(s) for s in np.asarray(arrays["item_segments"]).ravel())
            record = cls(ids, digests, segments)
        except (KeyError, ValueError, TypeError):
            return None
        return record if bool(np.all(ids[1:] > ids[:-1])) else None


def segment_key(segment: Segment) -> str | None:
    """``NAME:SHA-256 of ids:SHA-256 of codes``; None when the manifest has no checksum of
    either file (such a segment's rows are digested by every pass)."""
    sums = [segment.checksums.get(segment.files.get(role, ""), {}).get("sha256")
            for role in ("ids", "codes")]
    return None if None in sums else f"{segment.name}:{sums[0]}:{sums[1]}"


def digests(store: SegmentStore, rows: np.ndarray) -> np.ndarray:
    """``uint64 (len(rows),)``: the digest of each row's code (module docstring)."""
    out = []
    for start in range(0, len(rows), CHUNK):
        codes = np.ascontiguousarray(store.codes_at(rows[start:start + CHUNK]), dtype=np.float32)
        out += [hashlib.blake2b(row.tobytes(), digest_size=8).digest() for row in codes]
    return np.frombuffer(b"".join(out), dtype="<u8").astype(np.uint64)


def current(store: SegmentStore, last: ItemRecord | None = None) -> ItemRecord:
    """The record of ``store`` now. The digests of rows in segments that ``last`` saw are taken
    from it; the other rows' codes are read and digested."""
    keys = [segment_key(s) for s in store.segments]
    n = len(store)
    order = np.argsort(store.ids, kind="stable")
    ids = store.ids[order]
    out = np.zeros(n, np.uint64)
    todo = np.ones(n, bool)
    if last is not None and n:
        seen = np.array([k is not None and k in last.segments for k in keys] or [False])
        part, _ = store.locate(order)
        pos = np.minimum(np.searchsorted(last.ids, ids), max(len(last.ids) - 1, 0))
        known = seen[part] & (last.ids[pos] == ids) if len(last.ids) else np.zeros(n, bool)
        out[known] = last.digests[pos[known]]
        todo = ~known
    out[todo] = digests(store, order[todo])
    return ItemRecord(ids, out, frozenset(k for k in keys if k is not None))


def changed(last: ItemRecord, now: ItemRecord) -> np.ndarray:
    """``int64``, sorted: the ids of ``now`` that ``last`` did not hold or held with another
    digest (added or changed in place since)."""
    pos = np.minimum(np.searchsorted(last.ids, now.ids), max(len(last.ids) - 1, 0))
    same = (last.ids[pos] == now.ids) & (last.digests[pos] == now.digests) if len(last.ids) \
        else np.zeros(len(now.ids), bool)
    return now.ids[~same]
