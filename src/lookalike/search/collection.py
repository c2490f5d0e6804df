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

import copy
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import InputSpec, RetrievalConfig
from ..data.datasets import Dataset
from ..data.images import conform, content_hash
from ..data.pipeline import FolderFiles
from ..errors import CollectionError, LookalikeError
from ..models.runtime import export_encoder, open_encoder, torch_chosen
from . import metadata, state
from . import segments as seg
from .backends import IndexBackend, open_backend
from .changes import UNREAD, Changes

if TYPE_CHECKING:  # PyTorch (encoders, modelio) and scikit-learn (rerank) load on first use:
    # a command that encodes nothing (remove, search id:N, info) never imports them
    from ..models.encoders import ModelEncoder
    from ..models.modelio import LoadedModel
    from ..models.runtime import OnnxEncoder
    from .rerank import Diffusion

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Item:
    """One database row: ``label`` is -1 when unknown."""

    id: int
    source: str
    label: int
    hash: str


class Collection(Changes):
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
        self._whitening: Any = UNREAD  # (mean, projection) or None, read on first use
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
    def create(cls, path: str | os.PathLike[str], model: LoadedModel, dataset: Dataset | FolderFiles,
               **options: Any) -> Collection:
        """Encode ``dataset`` with ``model``, write a collection at ``path`` and open it;
        ``options`` and what it raises: :func:`lookalike.search.building.build`."""
        from .building import build

        # (no checksums verified: they were computed from the files it wrote)
        return cls.open(build(path, model, dataset, **options), verify=False)

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
        if self._whitening is UNREAD:
            stored = state.stored_whitening(self.path, self.manifest)
            if stored is None:
                arr = state.fit_whitening(self.store, self.retrieval)
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
