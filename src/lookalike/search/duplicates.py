"""Duplicate images in a collection, in tiers: ``identical``, ``same-pixels``, ``near`` and
(asked for) ``similar``. docs/duplicates.md says what each tier means and how it is decided.

1. **Candidates from the codes**: each item's ``k`` nearest items by cosine of the codes
   (:mod:`lookalike.search.duppass`, block by block, memory O(n·k), resumable). Codes only
   choose which pairs to look at; no threshold is on the codes.
2. **Checked on the pixels**: each candidate pair's stored pictures, grey, 32 px a side,
   scored by their *aligned correlation* (:mod:`lookalike.search.alignment`): the best
   Pearson correlation once a zoom of either picture (down to 80% of its side, anywhere
   within reach) is laid over the other. A pair reaching :data:`NEAR_THRESHOLD` is ``near``
   if it also passes the fine check (:mod:`lookalike.search.finecheck`: the stored pictures at
   full size, in colour, aligned, agree block by block; a pair that fails keeps a score just
   below the threshold); between :data:`SIMILAR_THRESHOLD` and that it is ``similar``.
3. **Files**: a near pair whose stored pictures are equal (the same content hash) and whose
   sources are readable files is ``identical`` when the files' bytes are equal, and
   ``same-pixels`` when their decoded pixels are (:mod:`lookalike.search.filetiers`).

Groups are the connected components of the pairs (near and above; with ``similar`` also
the similar ones). A group's tier is the strongest tier whose pairs alone still hold the
whole group together, its score the weakest aligned correlation among the pairs that do
(the links of a maximum spanning tree by tier, then score).

``since``: the pairs of the last pass (kept in ``COLLECTION/duplicates/``) whose items are still
there and unchanged, plus those of the items added or changed in place since (told by
:mod:`lookalike.search.dupsince`) checked against every item.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..config import DUPLICATE_K, DUPLICATE_THRESHOLD
from ..errors import LookalikeError
from ..fsutil import atomic_write, atomic_write_json
from . import dupsince
from .alignment import COMPARE_SIZE, HALF_MARGIN
from .dupgeometry import frames_of
from .duppass import Checkpoint, PassSettings, scan
from .dupthumbs import segment_thumbs
from .filetiers import file_tier
from .finecheck import fine_check

if TYPE_CHECKING:
    from .collection import Collection
    from .segments import SegmentStore

log = logging.getLogger(__name__)

#: Aligned correlation of a ``near`` pair (docs/duplicates.md: on the benchmark's wallpapers
#: every distinct pair scored below 0.972, 97% of the copies above 0.975).
NEAR_THRESHOLD = DUPLICATE_THRESHOLD
#: Aligned correlation of a ``similar`` pair (same scene, not an edit).
SIMILAR_THRESHOLD = 0.85
DEFAULT_THRESHOLD = NEAR_THRESHOLD
DEFAULT_K = DUPLICATE_K
DEFAULT_BLOCK = 1024
#: Strongest first.
TIERS = ("identical", "same-pixels", "near", "similar")
#: The folder of a collection that holds the pass's checkpoint and the last pass's pairs.
STATE_DIR = "duplicates"


@dataclass(frozen=True)
class DuplicatePair:
    """Two item ids (``a < b``), their tier and aligned correlation."""

    a: int
    b: int
    tier: str
    score: float


@dataclass(frozen=True)
class DuplicateGroup:
    """Item ids (sorted) that are copies of each other; ``tier``: the strongest tier whose
    pairs hold the whole group together; ``score``: the weakest aligned correlation among
    those pairs (``links``, a spanning tree of the group)."""

    ids: tuple[int, ...]
    tier: str
    score: float
    links: tuple[DuplicatePair, ...] = ()


def _rank(tier: str) -> int:
    return TIERS.index(tier)


def group_pairs(pairs: list[DuplicatePair]) -> list[DuplicateGroup]:
    """Connected components of ``pairs`` as groups (see :class:`DuplicateGroup`), sorted by
    their first id."""
    if not pairs:
        return []
    ids = np.unique([p.a for p in pairs] + [p.b for p in pairs])
    where = {int(v): r for r, v in enumerate(ids)}
    parent = list(range(len(ids)))

    def root(r: int) -> int:
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    tree: list[DuplicatePair] = []
    for p in sorted(pairs, key=lambda p: (_rank(p.tier), -p.score, p.a, p.b)):  # Kruskal
        ra, rb = root(where[p.a]), root(where[p.b])
        if ra != rb:
            parent[ra] = rb
            tree.append(p)
    members: dict[int, list[int]] = {}
    for r, v in enumerate(ids):
        members.setdefault(root(r), []).append(int(v))
    links: dict[int, list[DuplicatePair]] = {}
    for p in tree:
        links.setdefault(root(where[p.a]), []).append(p)
    groups = [DuplicateGroup(tuple(sorted(m)), TIERS[max(_rank(p.tier) for p in links[key])],
                             float(min(p.score for p in links[key])),
                             tuple(sorted(links[key], key=lambda p: (p.a, p.b))))
              for key, m in members.items()]
    return sorted(groups, key=lambda g: g.ids)


class _StoreCodes:
    """A collection's codes read by rows from each segment's mapped file (a collection of
    several segments has no one array of them; assembling it would take n·d·4 bytes)."""

    def __init__(self, store: SegmentStore) -> None:
        self.store = store
        self.shape = (len(store), store.dim)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice | np.ndarray) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(len(self)))
        return self.store.codes_at(np.asarray(rows, dtype=np.int64))


def _pictures(coll: Collection) -> Callable[[np.ndarray], np.ndarray]:
    return lambda rows: np.stack([coll.store.picture(int(r)) for r in rows])


def _tiered(coll: Collection, i: np.ndarray, j: np.ndarray, score: np.ndarray,
            near: float) -> list[DuplicatePair]:
    """Pairs of ids with their tiers (files checked for the near pairs of equal pictures)."""
    ids = coll.ids
    a, b = ids[i], ids[j]
    swap = a > b
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    close = score >= near
    wanted = np.unique(np.concatenate([a[close], b[close]]))
    items = {it.id: it for it in coll.items(wanted) if it}
    out = []
    for x, y, s, c in zip(a.tolist(), b.tolist(), score.tolist(), close.tolist(), strict=True):
        tier = "near" if c else "similar"
        ix, iy = items.get(x), items.get(y)
        if c and ix and iy and ix.hash == iy.hash:
            tier = file_tier(ix.source, iy.source) or tier
        out.append(DuplicatePair(x, y, tier, round(float(s), 6)))
    return out


def _state(coll: Collection) -> Path:
    return coll.path / STATE_DIR


def _fingerprint(coll: Collection) -> str:
    return f"generation {coll.generation}, {len(coll)} items"


def _save_last(coll: Collection, pairs: list[DuplicatePair], floor: float, k: int,
               items: dupsince.ItemRecord) -> None:
    folder = _state(coll)
    try:
        folder.mkdir(exist_ok=True)
        arr = np.array([(p.a, p.b) for p in pairs], dtype=np.int64).reshape(-1, 2)
        score = np.array([p.score for p in pairs], dtype=np.float32)
        arrays = {"a": arr[:, 0], "b": arr[:, 1], "score": score,
                  "meta": np.array(json.dumps({"k": k, "floor": floor})), **items.arrays()}

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]

        # the pairs and the items they were found among in one file, the whole record of the
        # pass (a crash before it is replaced leaves the older one: the next --since checks
        # more items, never fewer); last.json, after it, a summary a user can read
        atomic_write(folder / "last-pairs.npz", write)
        atomic_write_json(folder / "last.json", {
            "next_id": int(coll.ids.max()) + 1 if len(coll) else 0, "floor": floor, "k": k,
            "fingerprint": _fingerprint(coll), "items": len(items.ids), "pairs": len(pairs)})
    except OSError as exc:  # a read-only collection: the pass stands, --since cannot follow
        log.warning("could not record this pass in %s (%s); --since will need a full pass",
                    folder, exc)


def _load_last(coll: Collection, floor: float, k: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dupsince.ItemRecord | None] | None:
    """The last pass's pairs ``(a, b, score)`` and the record of its items; None for the
    record of a pass recorded before items were (then its settings are not checked). None
    for all of it when the file is damaged (unreadable, truncated), with a warning: a full
    pass then, recorded anew."""
    folder = _state(coll)
    path = folder / "last-pairs.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            a, b, s = z["a"], z["b"], z["score"]
            items = dupsince.ItemRecord.from_arrays(z)  # type: ignore[arg-type]
            meta = json.loads(str(z["meta"])) if items is not None else {}
    except FileNotFoundError:
        raise LookalikeError(f"--since last: no earlier duplicate pass recorded in {folder}; "
                             "run 'lookalike duplicates' once without --since") from None
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, KeyError, OSError) as exc:
        log.warning("--since last: the record of the last pass, %s, is damaged or unreadable (%s); "
                    "checking every item this once", path, str(exc).splitlines()[0] if str(exc) else
                    type(exc).__name__)
        return None
    if items is not None and (meta.get("k") != k or meta.get("floor") != floor):
        raise LookalikeError(f"--since last: the last pass used k={meta.get('k')} and threshold "
                             f"{meta.get('floor')}, not k={k} and {floor}; run a full pass")
    return a, b, s, items


def find_groups(collection: Collection, *, similar: bool = False, progress: bool = False,
                since: int | str | None = None, threshold: float = NEAR_THRESHOLD,
                k: int = DEFAULT_K, block: int = DEFAULT_BLOCK, resume: bool = True
                ) -> list[DuplicateGroup]:
    """Groups of duplicate items of ``collection``, each with its tier (module docstring),
    sorted by first id. Near and stronger groups; with ``similar``, similar pairs join too.

    ``since``: ``"last"`` checks only the items added or changed in place since the last
    recorded pass (:mod:`lookalike.search.dupsince`) against every item, and adds that pass's
    pairs whose items are still there and unchanged: the groups a full pass would give (but
    for a pair that only the other item's ``k`` nearest would have found). A pass recorded
    before items were, or a damaged record, makes it a full pass, with a warning. An ``int``:
    the items whose id is at least that, without any earlier pairs (such a pass is not
    recorded). ``resume``: a pass interrupted on these very items and settings starts after
    its last saved block. Every full pass and every ``"last"`` pass is recorded for the next;
    ``progress`` shows a bar (tqdm).
    """
    if not -1.0 <= threshold <= 1.0:
        raise LookalikeError(f"threshold must be a correlation in [-1, 1], got {threshold}")
    if k <= 0 or block <= 0:
        raise LookalikeError(f"k and block must be positive, got k={k}, block={block}")
    floor = min(SIMILAR_THRESHOLD, threshold)
    ids = collection.ids
    old: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    queries = None
    items: dupsince.ItemRecord | None = None  # the items of this pass, recorded with its pairs
    if since == "last":
        loaded = _load_last(collection, floor, k)
        last = None if loaded is None else loaded[3]
        if loaded is None or last is None:  # damaged (warned), or recorded before items were
            if loaded is not None:
                log.warning("--since last: the last pass was recorded before items changed in "
                            "place were tracked; checking every item this once")
            items = dupsince.current(collection.store)
        else:
            a, b, s, _ = loaded
            items = dupsince.current(collection.store, last)
            again = dupsince.changed(last, items)
            keep = ~(np.isin(a, again) | np.isin(b, again)) & np.isin(a, ids) & np.isin(b, ids)
            old = (a[keep], b[keep], s[keep])
            queries = np.sort(collection.store.rows(again))
            log.info("--since last: %d items added or changed since the last pass", len(again))
    elif since is None:
        items = dupsince.current(collection.store)
    elif isinstance(since, int) or (isinstance(since, str) and since.isdigit()):
        queries = np.flatnonzero(ids >= int(since))
    else:
        raise LookalikeError(f"--since takes 'last' or an item id, got {since!r}")
    from tqdm.auto import tqdm

    with tqdm(desc="thumbnails", unit="item", disable=not progress) as bar:
        thumbs, shape = segment_thumbs(collection.store, _state(collection), progress=bar.update)
    # (a checkpoint resumes only the pass over the same queries)
    asked = "all" if queries is None else hashlib.blake2b(queries.tobytes(), digest_size=8).hexdigest()
    settings = PassSettings(k=k, floor=floor, items=len(collection),
                            fingerprint=_fingerprint(collection) + f", since {since}, queries {asked}",
                            refine_above=threshold - HALF_MARGIN)
    checkpoint = Checkpoint(_state(collection), settings) if resume else None
    total = len(collection) if queries is None else len(queries)
    with tqdm(total=total, desc="duplicates", unit="item", disable=not progress) as bar:
        try:
            i, j, score = scan(_StoreCodes(collection.store), thumbs, shape, settings,
                               queries=queries, block=block, checkpoint=checkpoint,
                               progress=bar.update)
        except OSError as exc:
            raise LookalikeError(f"duplicate pass: {exc}") from None
    score = fine_check(_pictures(collection), i, j, score, threshold, frames=frames_of(collection))
    pairs = _tiered(collection, i, j, score, threshold)
    if old is not None:
        fresh = {(p.a, p.b) for p in pairs}
        a, b, s = old
        keep = np.array([(x, y) not in fresh for x, y in zip(a.tolist(), b.tolist(), strict=True)],
                        dtype=bool).reshape(-1)
        rows = collection.store.rows
        pairs += _tiered(collection, rows(a[keep]), rows(b[keep]), s[keep], threshold)
    if items is not None:
        _save_last(collection, pairs, floor, k, items)
    if checkpoint is not None:
        checkpoint.clear()
    wanted = pairs if similar else [p for p in pairs if p.tier != "similar"]
    log.info("%d duplicate pairs among %d items (k=%d)", len(wanted), len(collection), k)
    return group_pairs(wanted)


def find_duplicates(collection: Collection, threshold: float = DEFAULT_THRESHOLD,
                    k: int = DEFAULT_K, block: int = DEFAULT_BLOCK) -> list[list[int]]:
    """Groups of near-duplicate (or stronger) item ids: each group sorted, groups sorted."""
    return [list(g.ids) for g in find_groups(collection, threshold=threshold, k=k, block=block)]


__all__ = ["COMPARE_SIZE", "DEFAULT_BLOCK", "DEFAULT_K", "DEFAULT_THRESHOLD", "NEAR_THRESHOLD",
           "SIMILAR_THRESHOLD", "TIERS", "DuplicateGroup", "DuplicatePair", "find_duplicates",
           "find_groups", "group_pairs"]
