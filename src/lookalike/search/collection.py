"""A collection is a directory holding a searchable database of images:

* ``manifest.json``: format version, model fingerprint, dataset, count, dimension, backend
  settings, label names, library versions, timestamps, and the list of segments with the
  size and SHA-256 of each of their files: the commit point of every change;
* ``segments/``: the items' ids, codes, compressed pictures and FAISS index, written once
  per commit that adds items, plus small deletion records (:mod:`lookalike.search.segments`);
* ``metadata.sqlite``: table ``items(id, source, label, hash)`` (:mod:`lookalike.search.metadata`);
* for the milvus backend a JSON pointer to the remote collection (``index.milvus.json``,
  see :mod:`lookalike.search.milvus_backend`), which holds the vectors;
* with diffusion re-ranking (the model's retrieval config): the whitening of the codes,
  ``whitening.npy`` (``float32 (d + 1, d)``: the mean, then the projection), fitted on a
  sample of the codes and fitted again when the collection has doubled or halved since;
  a search re-ranks its index's nearest items (:func:`lookalike.search.rerank.rerank_candidates`),
  so there is no graph to store or update;
* ``model/``: a copy of the model that made the codes, so a collection is self-contained.

A new collection is built in ``.<name>.partial/`` beside it and renamed into place, so a
crash never leaves a half-written one under its name. Its codes are checkpointed there
chunk by chunk: running the same ``create`` again (same model, same images) resumes from
the last finished chunk. Replacing a collection (``overwrite``) first moves the old one to
``.<name>.old``, which :meth:`Collection.open` and :meth:`Collection.create` move back if
a crash came between the two renames.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..config import InputSpec, RetrievalConfig
from ..data.datasets import Dataset
from ..data.images import conform, content_hash, preview_spec
from ..data.pipeline import FolderFiles
from ..errors import CollectionError, LookalikeError
from ..fsutil import atomic_write_json, fsync_dir
from ..models.runtime import ONNX, export_encoder, open_encoder, torch_chosen
from ..versions import versions
from . import files as catalogue
from . import metadata, state
from . import segments as seg
from .backends import FaissBackend, IndexBackend, choose_factory, discard_backend, new_backend, open_backend
from .checkpoint import encode_files_resumable, encode_resumable

if TYPE_CHECKING:  # PyTorch (encoders, modelio) and scikit-learn (rerank) load on first use:
    # a command that encodes nothing (remove, search id:N, info) never imports them
    from ..models.encoders import ModelEncoder
    from ..models.modelio import LoadedModel
    from ..models.runtime import OnnxEncoder
    from .rerank import Diffusion

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_UNREAD: Any = object()  # a lazily read attribute not read yet


def _exclusive(method: Callable[..., _T]) -> Callable[..., _T]:
    """A change: made by one writer at a time across processes (:meth:`Collection.writing`)."""
    @functools.wraps(method)
    def change(self: Collection, *args: Any, **kwargs: Any) -> _T:
        with self.writing():
            return method(self, *args, **kwargs)
    return change


def _abandon(index: IndexBackend) -> None:
    """Delete what a new collection's backend wrote outside the directory (a remote
    collection) when the collection is not created after all, and let go of it."""
    try:
        index.drop()
    except Exception as exc:  # the first error is the one to report
        log.warning("could not delete the new index's remote data: %s", exc)
    finally:
        index.close()


def _whitening(codes: np.ndarray | seg.SegmentStore, retrieval: RetrievalConfig
               ) -> np.ndarray | None:
    """The whitening of a re-ranking collection's codes (:func:`lookalike.search.rerank.fit_whitening`
    on a sample spread over them) as one array ``float32 (d + 1, d)``, mean first; None when
    it does not re-rank or whiten, or the codes give no fit."""
    if retrieval.rerank != "diffusion" or not retrieval.diffusion.whiten or not len(codes):
        return None
    from .rerank import fit_whitening, sample_rows

    rows = sample_rows(len(codes))
    picked = codes.codes_at(rows) if isinstance(codes, seg.SegmentStore) else codes[rows]
    fit = fit_whitening(picked, retrieval.diffusion.whiten, None)
    return None if fit is None else np.concatenate([fit[0][None], fit[1]]).astype(np.float32)


@dataclass(frozen=True)
class Item:
    """One database row: ``label`` is -1 when unknown."""

    id: int
    source: str
    label: int
    hash: str


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Collection:
    """An open collection. Create one with :meth:`create`, open one with :meth:`open`."""

    def __init__(self, path: Path, manifest: dict[str, Any], backend: IndexBackend,
                 store: seg.SegmentStore, model: LoadedModel | Path) -> None:
        self.path = path
        self.manifest = manifest
        self.backend = backend
        self.store = store
        # the model, or its directory: loaded (with PyTorch) when something is encoded
        self._model: LoadedModel | None = None if isinstance(model, Path) else model
        self._model_dir = model if isinstance(model, Path) else None
        self._encoder: ModelEncoder | OnnxEncoder | None = None
        #: what a picture is stored (and hashed) as: the model's input up to 96 px a side
        self.store_spec = InputSpec(store.shape[2], store.shape[0], store.shape[1])
        self.retrieval = RetrievalConfig.from_dict(manifest.get("retrieval") or {})
        self._diffusion: Diffusion | None = None
        self._whitening: Any = _UNREAD  # (mean, projection) or None, read on first use
        self._writers = 0  # depth of writing() in this object (a change calls another)

    def snapshot(self) -> Collection:
        """This collection as committed now, for readers: a commit replaces the manifest,
        segments and index of ``self`` with new ones and never changes the snapshot's."""
        return copy.copy(self)

    @property
    def model(self) -> LoadedModel:
        """The model that made the codes, loaded on first use.

        Raises:
            CollectionError: it is not the model the manifest names (another fingerprint).
        """
        if self._model is None:
            from ..models.modelio import load_model

            assert self._model_dir is not None
            model = load_model(self._model_dir)
            if model.fingerprint != self.manifest["model"]["fingerprint"]:
                raise CollectionError(
                    f"{self.path} was made by another model (fingerprint "
                    f"{self.manifest['model']['fingerprint'][:12]}, this model is "
                    f"{model.fingerprint[:12]}); re-index with this model")
            self._model = model
        return self._model

    @property
    def encoder(self) -> ModelEncoder | OnnxEncoder:
        """The model's encoder: ONNX Runtime's when the model directory has its
        ``encoder.onnx`` (no PyTorch imported; :mod:`lookalike.models.runtime`), else PyTorch's
        (see :attr:`model`), which then writes ``encoder.onnx`` into the collection's copy of
        the model for the next process."""
        if self._encoder is None and self._model is None and self._model_dir is not None:
            self._encoder = open_encoder(self._model_dir, self.manifest["model"]["fingerprint"])
        if self._encoder is None:
            from ..models.encoders import ModelEncoder

            model = self.model
            own = self.path / "model"  # its copy's ONNX file missing or unusable: write it
            if model.path is not None and model.path.resolve() == own.resolve() \
                    and not torch_chosen():
                export_encoder(model.module, model.config.input, model.fingerprint, own)
            self._encoder = ModelEncoder(model)
        return self._encoder

    @property
    def input_spec(self) -> InputSpec:
        """What the model takes (from the manifest: known without loading the model)."""
        return InputSpec.from_dict(self.manifest["model"]["input"])

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | os.PathLike[str], model: LoadedModel, dataset: Dataset | FolderFiles, *,
               backend: str = "faiss", factory: str = "auto", search_params: str | None = None,
               overwrite: bool = False, progress: bool = False, chunk: int = 8192,
               backend_options: dict[str, Any] | None = None,
               codes: np.ndarray | None = None) -> Collection:
        """Encode ``dataset`` with ``model`` and write a collection at ``path``.

        ``factory`` is a FAISS index factory string, or ``"auto"`` to choose by size
        (:func:`lookalike.search.backends.choose_factory`); ``search_params`` (``"nprobe=64"``)
        override the chosen ones. Codes are checkpointed every ``chunk`` images: after a
        crash, the same call resumes. ``backend_options`` go to the backend (the milvus
        backend's ``uri`` and ``collection``); ``codes`` (``float32 (n, d)``, row-aligned
        with ``dataset``), when given, are the dataset's codes already made by this model
        (``lookalike.models.ray_engine``), and nothing is encoded here. A folder's
        :class:`~lookalike.data.pipeline.FolderFiles` are decoded and encoded in one stream
        (:func:`~lookalike.search.checkpoint.encode_files_resumable`), unreadable files skipped.

        Raises:
            CollectionError: ``path`` exists (and not ``overwrite``), or the dataset is empty.
        """
        target = Path(path)
        state.recover(target)
        if target.exists() and not overwrite:
            raise CollectionError(f"{target} already exists; choose another --out or pass --overwrite")
        if len(dataset) == 0:
            raise CollectionError("cannot index an empty dataset")
        if model.path is None:
            raise CollectionError("the model must be saved (have a directory) before indexing")
        if chunk <= 0:
            raise LookalikeError(f"chunk must be a positive integer, got {chunk}")
        from ..models.encoders import ModelEncoder

        encoder = ModelEncoder(model)
        if codes is not None and np.shape(codes) != (len(dataset), encoder.dim):
            raise CollectionError(f"codes of shape {np.shape(codes)} do not fit {len(dataset)} images "
                                  f"and {encoder.dim}-d codes")
        if factory == "auto":  # (for files: by their number, the unreadable ones included)
            factory, chosen = choose_factory(len(dataset))
            search_params = chosen if search_params is None else search_params
        # the index first: a bad factory string or parameter fails before any encoding
        index = new_backend(backend, encoder.dim, factory=factory, search_params=search_params or "",
                            **(backend_options or {}))
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = target.parent / f".{target.name}.partial"
        try:  # a backend keeping vectors elsewhere (a server) writes them first
            if isinstance(dataset, FolderFiles):
                dataset, embeddings = encode_files_resumable(stage, encoder, model, dataset, chunk,
                                                             progress)
                images = dataset.images
            else:
                images = conform(dataset.images, preview_spec(encoder.spec))
                embeddings = (encode_resumable(stage, encoder, model, dataset, images, chunk, progress)
                              if codes is None else np.ascontiguousarray(codes, dtype=np.float32))
                stage.mkdir(parents=True, exist_ok=True)
            ids = np.arange(len(images), dtype=np.int64)
            index.add(ids, embeddings)
        except BaseException:
            _abandon(index)
            raise
        retrieval = model.retrieval
        whitening = _whitening(embeddings, retrieval)
        labels = (dataset.labels if dataset.labels is not None
                  else np.full(len(images), -1, dtype=np.int64))
        local = isinstance(index, FaissBackend)

        tmp = stage / "collection"
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            shutil.copytree(model.path, tmp / "model")
            if not (tmp / "model" / ONNX).is_file():  # a model saved before it had one
                export_encoder(model.module, model.config.input, model.fingerprint, tmp / "model")
            segment = seg.write_segment(tmp, "000000", ids, embeddings, images, None,
                                    index if isinstance(index, FaissBackend) else None)
            files = state.write_state(tmp, 0, None if local else index, whitening)
            metadata.create(tmp / metadata.FILE, (
                (int(i), s, int(lab), content_hash(im))
                for i, s, lab, im in zip(ids, dataset.sources, labels, images, strict=True)))
            manifest = {
                "format": state.FORMAT,
                "format_version": state.FORMAT_VERSION,
                "model": {"fingerprint": model.fingerprint, "arch": model.config.arch,
                          "input": model.config.input.to_dict()},
                "dataset": {"name": dataset.name, "split": dataset.split},
                "count": len(ids),
                "dim": encoder.dim,
                "backend": index.settings(),
                "retrieval": retrieval.to_dict(),
                "generation": 0,
                "next_id": len(ids),
                "whitened_on": len(ids),
                "pictures": list(images.shape[1:]),
                "segments": [segment.to_dict()],
                "files": files,
                "checksums": seg.checksums(tmp, files),
                "label_names": list(dataset.label_names) if dataset.label_names else None,
                "skipped": [list(s) for s in dataset.skipped],
                "created": _now(),
                "updated": _now(),
                "versions": versions(),
            }
            atomic_write_json(tmp / "manifest.json", manifest)
            replaced = state.backend_settings(target) if target.exists() else None
            old = target.parent / f".{target.name}.old"
            if target.exists():
                os.replace(target, old)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            # the checkpointed codes stay in the stage, for the next run to resume from
            shutil.rmtree(tmp, ignore_errors=True)
            _abandon(index)
            raise
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        index.close()
        if replaced is not None:
            discard_backend(replaced)
        log.info("indexed %d images into %s", len(ids), target)
        return cls.open(target, verify=False)  # its checksums were computed from these files

    @classmethod
    def open(cls, path: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None,
             verify: bool = False) -> Collection:
        """Open a collection; with ``model_dir``, check that this model made it. Every file's
        size is checked against the manifest; with ``verify`` (``lookalike verify``), its
        SHA-256 too. A format 1 collection is read as it is (:meth:`migrate` rewrites it).

        Raises:
            CollectionError: missing or damaged files, a newer format, another model.
        """
        p = Path(path)
        state.recover(p)
        if not p.is_dir():
            raise CollectionError(f"collection {p} does not exist")
        if not (p / "manifest.json").is_file():
            raise CollectionError(f"{p} is not a lookalike collection (no manifest.json)")
        manifest, store, _ = state.read_committed(p, verify)
        metadata.check(p / metadata.FILE)
        model_path = Path(model_dir) if model_dir is not None else p / "model"
        if store.spec is not None:
            backend: IndexBackend = seg.SegmentedIndex(store)
        else:
            pointer = (manifest.get("files") or {}).get("index", "")
            backend = open_backend(p, {**manifest["backend"], "file": pointer}, store.dim)
            backend.reconcile(store.ids, store.codes)  # after a change written remotely only
            if len(backend) != len(store):
                raise CollectionError(f"{p}: the index holds {len(backend)} vectors, the "
                                      f"collection {len(store)}; rebuild with 'lookalike index'")
        coll = cls(p, manifest, backend, store, model_path)
        if model_dir is not None:  # a model given by hand is checked now
            coll.model  # noqa: B018
        return coll

    def close(self) -> None:
        """Let go of the backend's connections (a Milvus server, Milvus Lite's file lock)."""
        self.backend.close()

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
        self._whitening = _UNREAD if whitening is None else whitening
        return True

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.store)

    @property
    def ids(self) -> np.ndarray:
        """The items' ids, ``int64 (n,)``, in stored order (segment by segment)."""
        return self.store.ids

    @property
    def embeddings(self) -> np.ndarray:
        """The items' codes, ``float32 (n, d)``, row-aligned with :attr:`ids`."""
        return self.store.codes

    @property
    def images(self) -> np.ndarray:
        """Every stored picture, ``uint8 (n, *store_spec)`` (decoded on first use; one at a
        time: :meth:`image`)."""
        return self.store.pictures()

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def files(self) -> dict[str, str]:
        """The collection-wide files of this generation (``whitening`` when re-ranking,
        ``index``: a remote index's pointer); the rest are the segments'."""
        return dict(self.manifest.get("files") or {})

    @property
    def reranks(self) -> bool:
        """Whether searches are re-ranked by default (the model's retrieval config)."""
        return self.retrieval.rerank != "none"

    @property
    def whitening(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The re-ranking's whitening ``(mean (d,), projection (d, d))``: the stored fit, or
        one fitted now when a collection made before it was stored has none."""
        if self._whitening is _UNREAD:
            stored = state.stored_whitening(self.path, self.manifest)
            if stored is None:
                arr = _whitening(self.store, self.retrieval)
                stored = None if arr is None else (arr[0], arr[1:])
            self._whitening = stored
        return self._whitening  # type: ignore[no-any-return]

    @property
    def diffusion(self) -> Diffusion:
        """Diffusion over every item of this collection, its graph built now (O(n²) exact
        k-NN): the whole ranking that ``evaluate`` scores. Searches use
        :func:`lookalike.search.rerank.rerank_candidates` instead."""
        if self._diffusion is None:
            from .rerank import Diffusion

            self._diffusion = Diffusion(np.asarray(self.embeddings), self.retrieval.diffusion)
        return self._diffusion

    @property
    def label_names(self) -> list[str] | None:
        names = self.manifest.get("label_names")
        return list(names) if names else None

    # ------------------------------------------------------------------ metadata
    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        metadata.write(self.path / metadata.FILE, sql, rows)

    def _next_id(self) -> int:
        """The smallest id never given out: ids only grow, so a removed id is never given
        to another image."""
        return max(int(self.manifest.get("next_id", 0)),
                   int(self.ids.max()) + 1 if len(self.ids) else 0)

    def _has(self, item_id: int) -> bool:
        return bool(self.store.rows(np.array([item_id]))[0] >= 0)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return metadata.query(self.path / metadata.FILE, sql, params)

    def items(self, ids: np.ndarray | list[int]) -> list[Item | None]:
        """The rows for ``ids`` in order; ``None`` for an unknown id (or -1 padding)."""
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        known = [i for i in wanted if i >= 0]
        rows: dict[int, Item] = {}
        for start in range(0, len(known), 500):
            chunk = known[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._query(f"SELECT id, source, label, hash FROM items WHERE id IN ({marks})",
                                 tuple(chunk)):
                rows[r[0]] = Item(*r)
        return [rows.get(i) for i in wanted]

    def labels(self, ids: np.ndarray | None = None) -> np.ndarray:
        """``int64`` labels for ``ids`` (all items when ``None``), -1 when unknown."""
        if ids is None:
            got = dict(self._query("SELECT id, label FROM items"))
            return np.array([got.get(int(i), -1) for i in self.ids], dtype=np.int64)
        return np.array([it.label if it else -1 for it in self.items(ids)], dtype=np.int64)

    def find(self, *, source: str | None = None, hash: str | None = None) -> int | None:
        """The id of a stored item with that source or content hash, or ``None``. (Rows
        left by an interrupted change whose id is not in the collection are ignored.)"""
        column, value = ("source", source) if source is not None else ("hash", hash)
        rows = self._query(f"SELECT id FROM items WHERE {column} = ? ORDER BY id", (value,))
        return next((int(r[0]) for r in rows if self._has(int(r[0]))), None)

    def sources(self, among: Iterable[str] | None = None) -> dict[str, tuple[int, str]]:
        """``{source: (id, content hash)}`` of the stored items, or of those ``among`` these
        sources (rows left by an interrupted change are not items)."""
        if among is None:
            rows = self._query("SELECT id, source, hash FROM items")
        else:
            wanted, rows = list(among), []
            for start in range(0, len(wanted), 500):
                chunk = tuple(wanted[start:start + 500])
                rows += self._query("SELECT id, source, hash FROM items WHERE source IN "
                                    f"({','.join('?' * len(chunk))})", chunk)
        known = self.store.rows(np.array([r[0] for r in rows], dtype=np.int64)) >= 0
        return {src: (int(i), h) for (i, src, h), ok in zip(rows, known, strict=True) if ok}

    def image(self, item_id: int) -> np.ndarray:
        """The stored image of ``item_id``: ``uint8 (H, W, C)``."""
        row = int(self.store.rows(np.array([item_id]))[0])
        if row < 0:
            raise LookalikeError(f"no item with id {item_id} in {self.path}")
        return self.store.picture(row)

    def vector(self, item_id: int) -> np.ndarray:
        """The stored code of ``item_id``: ``float32 (d,)``."""
        row = int(self.store.rows(np.array([item_id]))[0])
        if row < 0:
            raise LookalikeError(f"no item with id {item_id} in {self.path}")
        return self.store.codes_at(np.array([row]))[0]

    def stored_form(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """``images`` as this collection stores (and hashes) them, ``uint8 (n, *store_spec)``:
        brought to the model's input first, then down to the preview size, the path every
        stored picture took (so the same file gives the same pixels and hash)."""
        if self.store_spec == self.encoder.spec:
            return conform(images, self.store_spec)
        return conform(conform(images, self.encoder.spec), self.store_spec)

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, exclude: np.ndarray | None = None,
               rerank: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for codes ``float32 (m, d)``; ``exclude`` (``int64 (m,)``, -1 none)
        removes one id per query (the query itself). Returns ``(distances, ids)`` of shape
        ``(m, k)``, nearest first, padded with +inf / -1.

        ``rerank`` (default: the collection's setting) ranks by diffusion; its distances
        are ``1 - score`` (in [0, 1) for items the diffusion reaches, 2..4 for the others,
        which follow in cosine order) rather than Euclidean.
        """
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise LookalikeError(f"k must be a positive integer, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        reranked = self.reranked(rerank)
        ex = (np.full(len(queries), -1, np.int64) if exclude is None
              else np.asarray(exclude, dtype=np.int64))
        if not reranked and not np.any(ex >= 0):
            return self.backend.search(queries, k)
        dist, ids = self.backend.search(queries, self.breadth(k, reranked) + int(np.any(ex >= 0)))
        return self.refine(queries, dist, ids, k, ex, reranked)

    def reranked(self, rerank: bool | None) -> bool:
        """Whether a search with ``rerank`` (None: the collection's setting) re-ranks."""
        return bool((self.reranks if rerank is None else rerank) and len(self))

    def breadth(self, k: int, reranked: bool) -> int:
        """How many of the index's nearest items a top-``k`` search takes (before one that
        its query excludes): the re-ranking's candidates, or ``k``."""
        return max(k, self.retrieval.diffusion.candidates) if reranked else k

    def refine(self, queries: np.ndarray, dist: np.ndarray, ids: np.ndarray, k: int,
               exclude: np.ndarray, reranked: bool) -> tuple[np.ndarray, np.ndarray]:
        """The second half of :meth:`search`, given the index's nearest ``(dist, ids)`` of
        ``queries`` (at least :meth:`breadth` of them, one more where ``exclude`` >= 0):
        each query's excluded id dropped, then its top ``k``, re-ranked when ``reranked``."""
        wide = self.breadth(k, reranked)
        out_d = np.full((len(ids), k), np.inf, dtype=np.float32)
        out_i = np.full((len(ids), k), -1, dtype=np.int64)
        for r in range(len(ids)):
            keep = (ids[r] != exclude[r]) & (ids[r] >= 0)
            d, i = dist[r][keep][:wide], ids[r][keep][:wide]
            if reranked:
                d, i = self._rerank(queries[r], i, k)
            out_d[r, :len(d)] = d[:k]
            out_i[r, :len(i)] = i[:k]
        return out_d, out_i

    def _rerank(self, query: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The best ``k`` of candidates ``ids`` for ``query`` by diffusion over them:
        ``(1 - score, ids)``."""
        from .rerank import rerank_candidates

        scores = rerank_candidates(query, self.store.codes_at(self.store.rows(ids)),
                                   self.retrieval.diffusion, self.whitening)
        order = np.argsort(-scores, kind="stable")[:k]
        return (1.0 - scores[order]).astype(np.float32), ids[order]

    def search_images(self, images: np.ndarray, k: int, rerank: bool | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``uint8 (m, H, W, C)`` images and search; an image whose pixels (as
        stored) equal a stored item's is not returned as its own result."""
        return self.search(self.encoder.encode(conform(images, self.encoder.spec)), k,
                           self.stored_ids(images), rerank)

    def stored_ids(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """The id of each image whose pixels, as stored (:meth:`stored_form`), are a stored
        item's, ``int64 (m,)``; -1 for the others (a query's own item, which it excludes)."""
        found = (self.find(hash=content_hash(im)) for im in self.stored_form(images))
        return np.array([-1 if f is None else f for f in found], dtype=np.int64)

    def search_ids(self, ids: np.ndarray | list[int], k: int, rerank: bool | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Search with stored items as queries, each excluded from its own results."""
        arr = np.asarray(ids, dtype=np.int64)
        vectors = np.stack([self.vector(int(i)) for i in arr]) if len(arr) else np.empty(
            (0, self.dim), dtype=np.float32)
        return self.search(vectors, k, arr, rerank)

    # ------------------------------------------------------------------ changes
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

    def verify(self) -> None:
        """Hash every file against the manifest and check the metadata (the full pass that
        opening skips). Raises :class:`CollectionError` naming the first damaged file."""
        self.store.verify()
        seg.check_hashes(self.path, self.manifest.get("checksums") or {})
        metadata.check(self.path / metadata.FILE, full=True)

    @property
    def _local(self) -> bool:
        """Whether the index lives in the segments (FAISS), not elsewhere (Milvus)."""
        return isinstance(self.backend, seg.SegmentedIndex)

    @property
    def generation(self) -> int:
        """The number of the commit this object holds (0: as created)."""
        return int(self.manifest.get("generation", 0))

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
        whitening = _whitening(store, self.retrieval) if refit else None
        files = state.write_state(self.path, generation, None if self._local else self.backend, whitening)
        if not refit and "whitening" in self.files:  # the fit carries over
            files["whitening"] = self.files["whitening"]
        manifest = {**self.manifest, "format_version": state.FORMAT_VERSION, "count": len(store),
                    "generation": generation, "pictures": list(store.shape),
                    "segments": [s.to_dict() for s in segments], "files": files,
                    "checksums": seg.checksums(self.path, files), "updated": _now(),
                    "next_id": max(self._next_id(), next_id or 0),
                    "whitened_on": len(store) if refit else self.manifest.get("whitened_on", 0)}
        atomic_write_json(self.path / "manifest.json", manifest)
        self.manifest, self.store = manifest, store
        if self._local:
            self.backend = seg.SegmentedIndex(store)
        self._diffusion = None
        if refit:
            self._whitening = _UNREAD
        for name in old - self._sweep():
            (self.path / name).unlink(missing_ok=True)

    def _sweep(self) -> set[str]:
        """Delete the segment files the manifest does not list (a killed commit's); returns
        the files it lists."""
        keep = set(self.files.values()) | seg.segment_files(self.store.segments)
        seg.sweep(self.path, keep)
        return keep
