"""The changes of a :class:`~lookalike.search.collection.Collection` (adding, updating,
removing, compacting and their commit), apart from its reading and searching: a mixin
the collection class takes, so every change keeps running as a method of the open collection.

A change is made by one writer at a time across processes (:meth:`Changes.writing`) and is
committed when the manifest is replaced (:meth:`Changes._commit`): a crash before leaves the
collection as it was.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..config import RetrievalConfig
from ..data.images import conform, content_hash
from ..errors import LookalikeError
from ..fsutil import atomic_write_json
from . import files as catalogue
from . import metadata, state
from . import segments as seg
from .backends import IndexBackend

if TYPE_CHECKING:
    from ..models.encoders import ModelEncoder
    from ..models.runtime import OnnxEncoder
    from .collection import Item
    from .rerank import Diffusion

log = logging.getLogger(__name__)

_T = TypeVar("_T")
UNREAD: Any = object()  # a lazily read attribute not read yet


def _exclusive(method: Callable[..., _T]) -> Callable[..., _T]:
    """A change: made by one writer at a time across processes (:meth:`Changes.writing`)."""
    @functools.wraps(method)
    def change(self: Changes, *args: Any, **kwargs: Any) -> _T:
        with self.writing():
            return method(self, *args, **kwargs)
    return change


class Changes:
    """The writing half of :class:`~lookalike.search.collection.Collection` (see the module)."""

    # what the reading half holds and answers
    path: Path
    manifest: dict[str, Any]
    backend: IndexBackend
    store: seg.SegmentStore
    retrieval: RetrievalConfig
    _writers: int
    _diffusion: Diffusion | None
    _whitening: Any

    if TYPE_CHECKING:
        @property
        def encoder(self) -> ModelEncoder | OnnxEncoder: ...
        @property
        def ids(self) -> np.ndarray: ...
        @property
        def dim(self) -> int: ...
        @property
        def files(self) -> dict[str, str]: ...
        @property
        def generation(self) -> int: ...
        @property
        def _local(self) -> bool: ...
        @property
        def reranks(self) -> bool: ...
        def stored_form(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray: ...
        def find(self, *, source: str | None = None, hash: str | None = None) -> int | None: ...
        def items(self, ids: np.ndarray | list[int]) -> list[Item | None]: ...
        def _has(self, item_id: int) -> bool: ...

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One writer at a time, across processes (every change, and the sync's moves): an
        exclusive ``flock`` on the directory (the kernel releases it when a process dies),
        then the state read again if another process committed since this one read it."""
        if self._writers:
            self._writers += 1
            try:
                yield
            finally:
                self._writers -= 1
            return
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._writers = 1
            self.refresh()
            yield
        finally:
            self._writers = 0
            os.close(fd)  # (releases the lock)

    def refresh(self) -> bool:
        """Read the collection again if another process has committed a change since this
        object read it (segments already read are kept); whether it had. The whitening is
        read too, while the files of that commit are sure to be there."""
        if state.stamp(state.read_manifest(self.path)) == state.stamp(self.manifest):
            return False
        log.info("%s was changed by another process: reading it again", self.path)
        manifest, store, whitening = state.read_committed(self.path, loaded=self.store.loaded,
                                                          whitening=self.reranks)
        self.manifest, self.store = manifest, store
        if self._local:
            self.backend = seg.SegmentedIndex(store)
        self._diffusion = None
        self._whitening = UNREAD if whitening is None else whitening
        return True

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        metadata.write(self.path / metadata.FILE, sql, rows)

    def _next_id(self) -> int:
        """The smallest id never given out: ids only grow, so a removed id is never given
        to another image."""
        return max(int(self.manifest.get("next_id", 0)),
                   int(self.ids.max()) + 1 if len(self.ids) else 0)

    @_exclusive
    def add(self, images: np.ndarray | list[np.ndarray], sources: list[str],
            labels: np.ndarray | list[int] | None = None) -> np.ndarray:
        """Encode and add images (``uint8 (n, H, W, C)`` or a list of ``(H, W, C)`` of any
        size); returns the id of each, ``int64 (n,)``. An image whose pixels (as stored, see
        :attr:`store_spec`) are already stored is not added again: its existing id is returned.

        The change is committed when the manifest is replaced: a crash before leaves the
        collection as it was.
        """
        if len(sources) != len(images):
            raise LookalikeError("give one source per image")
        conformed = self.stored_form(images)
        lab = (np.full(len(conformed), -1, np.int64) if labels is None
               else np.asarray(labels, dtype=np.int64))
        hashes = [content_hash(im) for im in conformed]
        out = np.empty(len(conformed), dtype=np.int64)
        new_rows: list[int] = []
        seen: dict[str, int] = {}
        next_id = self._next_id()
        for i, h in enumerate(hashes):
            existing = seen.get(h)
            existing = self.find(hash=h) if existing is None else existing
            if existing is None:
                existing = next_id
                next_id += 1
                new_rows.append(i)
                seen[h] = existing
            out[i] = existing
        if not new_rows:
            return out
        rows = np.array(new_rows)
        new_ids = out[rows]
        codes = self._encode(images, rows)
        if not self._local:  # an index kept elsewhere is written first, then committed here
            self.backend.add(new_ids, codes)
        self._write("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", (
            (int(new_ids[j]), sources[r], int(lab[r]), hashes[r]) for j, r in enumerate(rows)))
        segment = seg.write_segment(self.path, self._new_segment, new_ids, codes, conformed[rows],
                                    self.store.spec)
        self._commit([*self.store.segments, segment], next_id=next_id)
        self._merge_if_due()
        return out

    @_exclusive
    def update(self, ids: np.ndarray | list[int], images: np.ndarray | list[np.ndarray]) -> int:
        """Give stored items new images (a changed file): each keeps its id, source and
        label; its pixels, hash and code are replaced, in one commit (its old row deleted,
        the new one in a new segment). Returns how many changed (an image equal to the
        stored one changes nothing).

        Raises:
            LookalikeError: an unknown id, or not one image per id.
        """
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        if len(wanted) != len(images):
            raise LookalikeError("give one image per id")
        unknown = [i for i in wanted if not self._has(i)]
        if unknown:
            raise LookalikeError(f"no item with id {unknown[0]} in {self.path}")
        conformed = self.stored_form(images)
        stored = {it.id: it.hash for it in self.items(wanted) if it is not None}
        changed = [j for j, i in enumerate(wanted) if content_hash(conformed[j]) != stored.get(i)]
        if not changed:
            return 0
        change_ids = np.array([wanted[j] for j in changed], dtype=np.int64)
        codes = self._encode(images, np.array(changed))
        if not self._local:
            self.backend.remove(change_ids)
            self.backend.add(change_ids, codes)
        segments = self.store.with_deleted(change_ids, self.generation + 1)
        segment = seg.write_segment(self.path, self._new_segment, change_ids, codes,
                                    conformed[changed], self.store.spec)
        self._commit([*segments, segment])
        self._write("UPDATE items SET hash = ? WHERE id = ?", (
            (content_hash(conformed[j]), wanted[j]) for j in changed))
        self._merge_if_due()
        return len(changed)

    def _encode(self, images: np.ndarray | list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        """Codes of ``images[rows]``, each taken at the model's input spec."""
        return self.encoder.encode(conform([images[int(r)] for r in rows], self.encoder.spec))

    @_exclusive
    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove items by id; unknown ids are ignored. Returns how many were removed. Their
        rows are marked deleted (a small file per segment touched); :meth:`compact` drops them."""
        asked = np.unique(np.asarray(ids, dtype=np.int64).ravel())
        gone = asked[self.store.rows(asked) >= 0]
        if not len(gone):
            return 0
        if not self._local:
            self.backend.remove(gone)
        self._commit(self.store.with_deleted(gone, self.generation + 1))
        self._write("DELETE FROM items WHERE id = ?", ((int(i),) for i in gone))
        catalogue.drop_ids(self.path / metadata.FILE, gone)  # (their catalogue rows, likewise after)
        self._merge_if_due()
        return len(gone)

    @_exclusive
    def compact(self) -> bool:
        """Merge every segment into one, deleted rows dropped and pictures compressed, with
        the collection's index factory; one commit. Returns whether anything changed. Files a
        killed commit left behind are deleted either way."""
        segs = self.store.segments
        if len(segs) <= 1 and not any(s.deleted or s.pictures != "png" for s in segs):
            self._sweep()
            return False
        self._commit(self.store.merged(0, self._new_segment))
        return True

    @_exclusive
    def migrate(self) -> bool:
        """Rewrite a format 1 collection as segments (:meth:`compact`); ``False`` when it is
        already in the current format."""
        if int(self.manifest.get("format_version", 1)) >= state.FORMAT_VERSION:
            self._sweep()
            return False
        self._commit(self.store.merged(0, self._new_segment))
        return True

    @property
    def _new_segment(self) -> str:
        """The name of a segment written by the next commit."""
        return f"{self.generation + 1:06d}"

    def _merge_if_due(self) -> None:
        """The merge policy (:func:`lookalike.search.segments.plan_merge`), after a commit."""
        start = seg.plan_merge(self.store.segments)
        if start is not None:
            log.info("merging segments %d.. of %s", start, self.path)
            self._commit(self.store.merged(start, self._new_segment))

    def _commit(self, segments: list[seg.Segment], next_id: int | None = None) -> None:
        """Switch the manifest to ``segments`` (their files already written): the commit
        point. Then delete the files the previous generation had and this one has not."""
        old = set(self.files.values()) | seg.segment_files(self.store.segments)
        generation = self.generation + 1
        store = seg.SegmentStore(self.path, segments, self.dim, self.store.shape, self.store.spec,
                                 self.store.loaded)
        refit = self.retrieval.rerank == "diffusion" and not (
            "whitened_on" in self.manifest
            and self.manifest["whitened_on"] / 2 <= len(store) < self.manifest["whitened_on"] * 2)
        whitening = state.fit_whitening(store, self.retrieval) if refit else None
        files = state.write_state(self.path, generation, None if self._local else self.backend, whitening)
        if not refit and "whitening" in self.files:  # the fit carries over
            files["whitening"] = self.files["whitening"]
        manifest = {**self.manifest, "format_version": state.FORMAT_VERSION, "count": len(store),
                    "generation": generation, "pictures": list(store.shape),
                    "segments": [s.to_dict() for s in segments], "files": files,
                    "checksums": seg.checksums(self.path, files), "updated": state.now(),
                    "next_id": max(self._next_id(), next_id or 0),
                    "whitened_on": len(store) if refit else self.manifest.get("whitened_on", 0)}
        atomic_write_json(self.path / "manifest.json", manifest)
        self.manifest, self.store = manifest, store
        if self._local:
            self.backend = seg.SegmentedIndex(store)
        self._diffusion = None
        if refit:
            self._whitening = UNREAD
        for name in old - self._sweep():
            (self.path / name).unlink(missing_ok=True)

    def _sweep(self) -> set[str]:
        """Delete the segment files the manifest does not list (a killed commit's); returns
        the files it lists."""
        keep = set(self.files.values()) | seg.segment_files(self.store.segments)
        seg.sweep(self.path, keep)
        return keep
