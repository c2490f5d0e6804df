"""A collection that many threads use at once (the service's): snapshot isolation for
readers, group commit for changes, batched searches.

A :class:`~lookalike.search.collection.Collection` is not thread-safe; :class:`SharedCollection`
gives readers the snapshot of the last commit and commits queued changes together, one
commit at a time, on a collection of its own: a search sees the collection before or after
a change, never half of one, and never waits for a commit or a compaction.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from ..data.images import conform
from ..errors import LookalikeError
from ..search.collection import Collection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    """One search result: ``label`` is -1 when unknown."""

    id: int
    distance: float
    label: int
    source: str


class UnknownItem(LookalikeError):
    """No item with that id."""


class Refused(LookalikeError):
    """A change the collection cannot make (e.g. emptying a re-ranking collection)."""


class SharedCollection:
    """A :class:`Collection` that many threads may use at once, with snapshot isolation.

    Reads (searches, metadata, images) use :attr:`snapshot`, the collection as of the last
    commit: a view whose manifest, segments and index no later commit changes (a commit
    makes new ones, and a segment a merge deletes stays mapped while a reader holds it).
    Changes run one commit at a time on the writer's own collection; changes that queue up
    during a commit share the next one; the new snapshot replaces the old in one
    assignment once the commit is done. A search never waits for a change. If a change
    fails half-way the collection is opened again from disk, whose manifest is the commit
    point, so memory never drifts from what is stored.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._coll = Collection.open(self.path)
        self._changes: _Grouped[_Change] = _Grouped(self._apply)
        self._searches: _Grouped[_Query] = _Grouped(_nearest)
        self._installing = threading.Lock()  # guards snapshot and _stamp together
        self._reading = threading.Lock()  # one reader at a time reads another's commit
        self.snapshot = self._coll
        self._stamp = -1
        self._publish()

    def _publish(self) -> None:
        """Load what readers would otherwise load on first use (the model, the whitening),
        then hand them the committed state."""
        coll = self._coll
        stamp = self._manifest_stamp()
        if len(coll):
            coll.encoder  # noqa: B018
            if coll.reranks:
                coll.whitening  # noqa: B018
                from ..search import rerank  # noqa: F401 - imported now, not by the first search
        self._install(coll.snapshot(), stamp)

    def _install(self, snapshot: Collection, stamp: int) -> None:
        """Make ``snapshot`` the readers' unless they already have a later commit (another
        process's, read by a reader meanwhile)."""
        with self._installing:
            if snapshot.generation >= self.snapshot.generation:
                self.snapshot, self._stamp = snapshot, stamp

    def _manifest_stamp(self) -> int:
        try:
            return os.stat(self.path / "manifest.json").st_mtime_ns
        except OSError:
            return -1

    def _current(self) -> Collection:
        """The snapshot for a read, brought up to date first when another process (a second
        service worker, a ``lookalike add`` beside the service) has committed a change
        since. The reader reads that commit itself (the segments already read are kept):
        it waits for no change of this process, and a client that changed the collection
        through another process then reads its change here."""
        stamp = self._manifest_stamp()
        if stamp != self._stamp:
            with self._reading:
                if stamp != self._stamp:
                    fresh = self.snapshot.snapshot()
                    fresh.refresh()
                    self._install(fresh, stamp)
        return self.snapshot

    def current(self) -> Collection:
        """The snapshot a read uses now (another process's commit read first)."""
        return self._current()

    @property
    def reranks(self) -> bool:
        return self.snapshot.reranks

    def stats(self) -> dict[str, Any]:
        coll = self._current()
        m = coll.manifest
        spec = coll.encoder.spec
        return {"count": len(coll), "dimension": coll.dim,
                "model": {"arch": m["model"]["arch"], "fingerprint": m["model"]["fingerprint"]},
                "input": {"channels": spec.channels, "height": spec.height, "width": spec.width},
                "index": dict(m["backend"]),
                "rerank": coll.retrieval.rerank, "reranks": coll.reranks,
                "dataset": m.get("dataset"), "label_names": coll.label_names,
                "updated": m.get("updated")}

    @staticmethod
    def _hits(coll: Collection, dist: np.ndarray, ids: np.ndarray) -> list[Hit]:
        items = coll.items(ids)
        return [Hit(it.id, float(d), it.label, it.source)
                for d, it in zip(dist, items, strict=True) if it is not None]

    def search_image(self, image: np.ndarray, k: int, rerank: bool | None) -> list[Hit]:
        """Results for ``uint8 (H, W, C)``, nearest first (padding dropped); an image whose
        pixels (as stored) are a stored item's does not find itself."""
        coll = self._current()
        return self._search(_Query(coll, k, coll.reranked(rerank), int(coll.stored_ids([image])[0]),
                                   image=conform([image], coll.input_spec)[0]))

    def search_id(self, item_id: int, k: int, rerank: bool | None) -> list[Hit]:
        """Results for a stored item, itself excluded. Raises :class:`UnknownItem`."""
        coll = self._current()
        self._check(coll, item_id)
        return self._search(_Query(coll, k, coll.reranked(rerank), item_id,
                                   code=coll.vector(item_id)))

    # Batched searches. The index search and the encoding cost about as much for fifty
    # queries as for one (one pass over the codes, one forward pass), so queries that
    # arrive while a batch runs wait for it and then go in together; each thread then
    # drops its excluded id and re-ranks its own candidates, in parallel.
    def _search(self, query: _Query) -> list[Hit]:
        if not isinstance(query.k, int) or query.k <= 0:
            raise LookalikeError(f"k must be a positive integer, got {query.k}")
        self._searches.submit(query)
        if query.error is not None:
            raise query.error
        coll = query.coll
        assert query.code is not None and query.found is not None
        dist, ids = coll.refine(query.code[None], query.found[0][None], query.found[1][None],
                                query.k, np.array([query.exclude]), query.reranked)
        return self._hits(coll, dist[0], ids[0])

    @staticmethod
    def _check(coll: Collection, item_id: int) -> None:
        try:
            coll.vector(item_id)
        except LookalikeError:
            raise UnknownItem(f"no item with id {item_id}") from None

    def item(self, item_id: int) -> tuple[int, str, int, str]:
        """``(id, source, label, hash)``. Raises :class:`UnknownItem`."""
        coll = self._current()
        self._check(coll, item_id)
        found = coll.items([item_id])[0]
        if found is None:  # removed by a commit after this snapshot
            raise UnknownItem(f"no item with id {item_id}")
        return found.id, found.source, found.label, found.hash

    def image(self, item_id: int) -> tuple[np.ndarray, str]:
        """The stored image ``uint8 (H, W, C)`` and its content hash."""
        coll = self._current()
        self._check(coll, item_id)
        found = coll.items([item_id])[0]
        return np.array(coll.image(item_id)), found.hash if found else ""

    def label_names(self) -> list[str] | None:
        return self.snapshot.label_names

    def add(self, images: list[np.ndarray], sources: list[str]) -> tuple[np.ndarray, np.ndarray, int]:
        """Add images; returns ``(ids int64 (n,), new bool (n,), count)``; ``new`` is False
        where the content was already stored, or came earlier in the same commit (the
        existing id is returned)."""
        out: tuple[np.ndarray, np.ndarray, int] = self._submit(_Change("add", images, sources))
        return out

    def remove(self, item_id: int) -> int:
        """Remove one item; returns the count after the commit. Raises :class:`UnknownItem`,
        or :class:`Refused` for the last item of a re-ranking collection."""
        count: int = self._submit(_Change("remove", item_id=item_id))
        return count

    # Group commit. A commit writes a segment or a deletion record (fsynced) and the
    # manifest, which costs about the same for one item as for fifty; so changes that
    # arrive while a commit runs wait for it and then go in together, in one commit. A
    # caller returns once its own change is committed and visible to searches.
    def _submit(self, change: _Change) -> Any:
        self._changes.submit(change)
        if change.error is not None:
            raise change.error
        return change.result

    def _apply(self, batch: list[_Change]) -> None:
        """Apply the changes queued together: removes first (so an add in the batch never
        returns an id removed in it), then every add in one call; each change gets its
        result or its own error. The collection is read again first if another process has
        committed since, so that the checks see its changes (an item it added)."""
        try:
            self._change(lambda coll: coll.refresh())
            removes = [c for c in batch if c.kind == "remove"]
            adds = [c for c in batch if c.kind == "add"]
            gone: list[int] = []
            for c in removes:
                try:
                    self._check(self._coll, c.item_id)
                    if c.item_id in gone:
                        raise UnknownItem(f"no item with id {c.item_id}")
                    if self._coll.reranks and len(self._coll) - len(gone) <= 1:
                        raise Refused("cannot remove the last item of a re-ranking collection")
                    gone.append(c.item_id)
                except LookalikeError as exc:
                    c.error = exc
            if gone:
                try:
                    self._change(lambda coll: coll.remove(gone))
                except Exception as exc:
                    for c in removes:
                        c.error = c.error or exc
            for c in removes:
                if c.error is None:
                    c.result = len(self._coll)
            if len(adds) > 1:
                try:
                    self._add(adds)
                except Exception:  # find the bad one: each alone
                    for c in adds:
                        self._add_alone(c)
            elif adds:
                self._add_alone(adds[0])
            self._publish()
        except BaseException as exc:
            for c in batch:
                if c.result is None:
                    c.error = c.error or exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for c in batch:
                c.done = True

    def _add_alone(self, change: _Change) -> None:
        try:
            self._add([change])
        except Exception as exc:
            change.error = exc

    def _add(self, changes: list[_Change]) -> None:
        images = [im for c in changes for im in c.images]
        sources = [s for c in changes for s in c.sources]
        before = self._coll.ids
        ids = self._change(lambda coll: coll.add(images, sources))
        first = np.zeros(len(ids), dtype=bool)
        first[np.unique(ids, return_index=True)[1]] = True
        new = first & ~np.isin(ids, before)
        count = len(self._coll)
        at = 0
        for c in changes:
            n = len(c.images)
            c.result = (ids[at:at + n], new[at:at + n], count)
            at += n

    def _change(self, fn: Callable[[Collection], Any]) -> Any:
        try:
            return fn(self._coll)
        except BaseException:
            log.exception("a change to %s failed; reopening it from disk", self.path)
            self._coll = Collection.open(self.path)
            self._publish()
            raise


class _Item(Protocol):
    done: bool


_T = TypeVar("_T", bound=_Item)


class _Grouped(Generic[_T]):
    """Items worked on in batches, one batch at a time: items that arrive while a batch
    runs wait for it, then go together in the next, run by the thread of one of them.
    ``run`` marks every item of its batch ``done``, whatever fails."""

    def __init__(self, run: Callable[[list[_T]], None]) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queued: list[_T] = []
        self._running = False
        self._run = run

    def __len__(self) -> int:
        """How many items wait for the next batch."""
        with self._cond:
            return len(self._queued)

    def submit(self, item: _T) -> None:
        """Return once ``item``'s batch has run."""
        with self._cond:
            self._queued.append(item)
            while not item.done:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                batch, self._queued = self._queued, []
                self._cond.release()
                try:
                    self._run(batch)
                finally:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()


@dataclass(eq=False)
class _Query:
    """One queued search: a stored item's ``code`` or an ``image`` at the model's input;
    ``found`` the index's nearest ``(distances, ids)`` once its batch has run."""

    coll: Collection
    k: int
    reranked: bool
    exclude: int
    image: np.ndarray | None = None
    code: np.ndarray | None = None
    found: tuple[np.ndarray, np.ndarray] | None = None
    error: BaseException | None = None
    done: bool = False


def _nearest(batch: list[_Query]) -> None:
    """Encode the images of ``batch`` and search the index for every query, one call for
    all the queries on one snapshot; each query gets its result or the batch's error."""
    groups: dict[int, list[_Query]] = {}
    for q in batch:
        groups.setdefault(id(q.coll), []).append(q)
    for group in groups.values():
        coll = group[0].coll
        try:
            images = [q for q in group if q.code is None]
            if images:
                codes = coll.encoder.encode(np.stack([np.asarray(q.image) for q in images]))
                for q, code in zip(images, codes, strict=True):
                    q.code = code
            wide = max(coll.breadth(q.k, q.reranked) + (q.exclude >= 0) for q in group)
            dist, ids = coll.backend.search(np.stack([np.asarray(q.code) for q in group]), wide)
            for q, d, i in zip(group, dist, ids, strict=True):
                q.found = (d, i)
        except Exception as exc:
            for q in group:
                q.error = exc
        finally:
            for q in group:
                q.done = True


@dataclass(eq=False)
class _Change:
    """One queued change and, once committed, its result or error."""

    kind: str  # "add" or "remove"
    images: list[np.ndarray] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    item_id: int = -1
    result: Any = None
    error: BaseException | None = None
    done: bool = False
