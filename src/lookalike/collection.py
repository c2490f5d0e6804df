"""A collection is a directory holding a searchable database of images:

* ``manifest.json``: format version, model fingerprint, dataset, count, dimension,
  backend settings, label names, library versions, timestamps;
* ``metadata.sqlite``: table ``items(id, source, label, hash)``, one row per image;
* ``ids.npy`` (``int64 (n,)``) and ``embeddings.npy`` (``float32 (n, d)``), row-aligned;
* ``images.npy``: the images as the model sees them, ``uint8 (n, H, W, C)``, so results
  can be shown without going back to the sources;
* the backend's index file (``index.faiss``);
* with diffusion re-ranking (the model's retrieval config): the database's k-NN graph,
  ``graph_ids.npy`` (row indices, ``int64 (n, k)``) and ``graph_sims.npy`` (cosines);
* ``model/``: a copy of the model that made the codes, so a collection is self-contained.

A collection is written to a temporary directory and renamed into place, so a crash
never leaves a half-written one under its name.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from .backends import IndexBackend, new_backend, open_backend
from .config import RetrievalConfig
from .datasets import Dataset
from .encoders import ModelEncoder
from .errors import CollectionError, LookalikeError
from .fsutil import atomic_write_json, read_json
from .images import conform, content_hash
from .modelio import LoadedModel, load_model
from .rerank import Diffusion
from .versions import versions

log = logging.getLogger(__name__)

FORMAT = "lookalike-collection"
FORMAT_VERSION = 1
FILES = ("manifest.json", "metadata.sqlite", "ids.npy", "embeddings.npy", "images.npy")


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
                 ids: np.ndarray, embeddings: np.ndarray, images: np.ndarray,
                 model: LoadedModel) -> None:
        self.path = path
        self.manifest = manifest
        self.backend = backend
        self.ids = ids
        self.embeddings = embeddings
        self.images = images
        self.model = model
        self.encoder = ModelEncoder(model)
        self._row = {int(i): r for r, i in enumerate(ids)}
        self.retrieval = RetrievalConfig.from_dict(manifest.get("retrieval") or {})
        self._diffusion: Diffusion | None = None

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | os.PathLike[str], model: LoadedModel, dataset: Dataset, *,
               backend: str = "faiss", factory: str = "Flat", overwrite: bool = False,
               progress: bool = False) -> Collection:
        """Encode ``dataset`` with ``model`` and write a collection at ``path``.

        Raises:
            CollectionError: ``path`` exists (and not ``overwrite``), or the dataset is empty.
        """
        target = Path(path)
        if target.exists() and not overwrite:
            raise CollectionError(f"{target} already exists; choose another --out or pass --overwrite")
        if len(dataset) == 0:
            raise CollectionError("cannot index an empty dataset")
        if model.path is None:
            raise CollectionError("the model must be saved (have a directory) before indexing")
        encoder = ModelEncoder(model)
        images = conform(dataset.images, encoder.spec)
        embeddings = encoder.encode(images, progress=progress)
        ids = np.arange(len(images), dtype=np.int64)
        index = new_backend(backend, encoder.dim, factory=factory)
        index.add(ids, embeddings)
        retrieval = model.retrieval
        graph = (Diffusion(embeddings, retrieval.diffusion).neighbours()
                 if retrieval.rerank == "diffusion" else None)
        labels = (dataset.labels if dataset.labels is not None
                  else np.full(len(images), -1, dtype=np.int64))

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            shutil.copytree(model.path, tmp / "model")
            np.save(tmp / "ids.npy", ids)
            np.save(tmp / "embeddings.npy", embeddings)
            np.save(tmp / "images.npy", images)
            index.save(tmp)
            if graph is not None:
                np.save(tmp / "graph_sims.npy", graph[0])
                np.save(tmp / "graph_ids.npy", graph[1])
            with sqlite3.connect(tmp / "metadata.sqlite") as db:
                db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, source TEXT NOT NULL,"
                           " label INTEGER NOT NULL, hash TEXT NOT NULL)")
                db.execute("CREATE INDEX items_hash ON items(hash)")
                db.execute("CREATE INDEX items_source ON items(source)")
                db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", (
                    (int(i), s, int(lab), content_hash(im))
                    for i, s, lab, im in zip(ids, dataset.sources, labels, images, strict=True)
                ))
            db.close()
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "model": {"fingerprint": model.fingerprint, "arch": model.config.arch,
                          "input": model.config.input.to_dict()},
                "dataset": {"name": dataset.name, "split": dataset.split},
                "count": len(ids),
                "dim": encoder.dim,
                "backend": index.settings(),
                "retrieval": retrieval.to_dict(),
                "label_names": list(dataset.label_names) if dataset.label_names else None,
                "skipped": [list(s) for s in dataset.skipped],
                "created": _now(),
                "updated": _now(),
                "versions": versions(),
            }
            atomic_write_json(tmp / "manifest.json", manifest)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("indexed %d images into %s", len(ids), target)
        return cls.open(target)

    @classmethod
    def open(cls, path: str | os.PathLike[str], model_dir: str | os.PathLike[str] | None = None
             ) -> Collection:
        """Open a collection; with ``model_dir``, check that this model made it.

        Raises:
            CollectionError: missing or damaged files, a newer format, another model.
        """
        p = Path(path)
        if not p.is_dir():
            raise CollectionError(f"collection {p} does not exist")
        if not (p / "manifest.json").is_file():
            raise CollectionError(f"{p} is not a lookalike collection (no manifest.json)")
        try:
            manifest = read_json(p / "manifest.json")
        except (OSError, ValueError) as exc:
            raise CollectionError(f"{p / 'manifest.json'} is damaged ({type(exc).__name__})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CollectionError(f"{p / 'manifest.json'} is not a lookalike collection manifest")
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CollectionError(
                f"{p} was written by a newer lookalike (collection format {version}, this one "
                f"reads up to {FORMAT_VERSION}); upgrade lookalike"
            )
        for name in FILES[1:]:
            if not (p / name).is_file():
                raise CollectionError(f"{p / name} is missing; rebuild with 'lookalike index'")
        model = load_model(model_dir if model_dir is not None else p / "model")
        if model.fingerprint != manifest["model"]["fingerprint"]:
            raise CollectionError(
                f"{p} was made by another model (fingerprint {manifest['model']['fingerprint'][:12]}"
                f", this model is {model.fingerprint[:12]}); re-index with this model"
            )
        try:
            ids = np.load(p / "ids.npy", allow_pickle=False)
            embeddings = np.load(p / "embeddings.npy", allow_pickle=False, mmap_mode="r")
            images = np.load(p / "images.npy", allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CollectionError(f"{p}: an array file is damaged ({exc}); rebuild with "
                                  "'lookalike index'") from None
        dim = int(manifest["dim"])
        if embeddings.shape != (len(ids), dim) or len(images) != len(ids):
            raise CollectionError(f"{p}: ids, embeddings and images do not line up; rebuild")
        backend = open_backend(p, manifest["backend"], dim)
        if len(backend) != len(ids):
            raise CollectionError(f"{p}: the index holds {len(backend)} vectors, the collection "
                                  f"{len(ids)}; rebuild with 'lookalike index'")
        return cls(p, manifest, backend, ids, embeddings, images, model)

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def reranks(self) -> bool:
        """Whether searches are re-ranked by default (the model's retrieval config)."""
        return self.retrieval.rerank != "none"

    @property
    def diffusion(self) -> Diffusion:
        """The diffusion ranker over this collection's codes (built on first use from the
        stored graph, or from the codes when the graph files are absent)."""
        if self._diffusion is None:
            graph = None
            if (self.path / "graph_ids.npy").is_file():
                try:
                    graph = (np.load(self.path / "graph_sims.npy", allow_pickle=False),
                             np.load(self.path / "graph_ids.npy", allow_pickle=False))
                except (OSError, ValueError) as exc:
                    raise CollectionError(f"{self.path}: the graph files are damaged ({exc}); "
                                          "rebuild with 'lookalike index'") from None
                if graph[1].shape[0] != len(self) or graph[0].shape != graph[1].shape:
                    raise CollectionError(f"{self.path}: the graph does not match the items; "
                                          "rebuild with 'lookalike index'")
            self._diffusion = Diffusion(np.asarray(self.embeddings), self.retrieval.diffusion,
                                        graph)
        return self._diffusion

    @property
    def label_names(self) -> list[str] | None:
        names = self.manifest.get("label_names")
        return list(names) if names else None

    # ------------------------------------------------------------------ metadata
    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.path / 'metadata.sqlite'}?mode=ro", uri=True)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

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
        """The id of the item with that source or content hash, or ``None``."""
        column, value = ("source", source) if source is not None else ("hash", hash)
        rows = self._query(f"SELECT id FROM items WHERE {column} = ? LIMIT 1", (value,))
        return int(rows[0][0]) if rows else None

    def image(self, item_id: int) -> np.ndarray:
        """The stored image of ``item_id``: ``uint8 (H, W, C)``."""
        row = self._row.get(int(item_id))
        if row is None:
            raise LookalikeError(f"no item with id {item_id} in {self.path}")
        return np.asarray(self.images[row])

    def vector(self, item_id: int) -> np.ndarray:
        """The stored code of ``item_id``: ``float32 (d,)``."""
        row = self._row.get(int(item_id))
        if row is None:
            raise LookalikeError(f"no item with id {item_id} in {self.path}")
        return np.asarray(self.embeddings[row])

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
        if (self.reranks if rerank is None else rerank) and len(self):
            rows_ex = None
            if exclude is not None:
                rows_ex = np.array([self._row.get(int(e), -1) for e in exclude], dtype=np.int64)
            scores, rows = self.diffusion.search(
                np.ascontiguousarray(queries, dtype=np.float32), k, rows_ex)
            ids = np.where(rows >= 0, self.ids[np.maximum(rows, 0)], -1)
            return np.where(rows >= 0, 1.0 - scores, np.inf).astype(np.float32), ids
        if exclude is None or not np.any(np.asarray(exclude) >= 0):
            return self.backend.search(queries, k)
        dist, ids = self.backend.search(queries, k + 1)
        out_d = np.full((len(ids), k), np.inf, dtype=np.float32)
        out_i = np.full((len(ids), k), -1, dtype=np.int64)
        for r, ex in enumerate(np.asarray(exclude)):
            keep = ids[r] != ex
            d, i = dist[r][keep][:k], ids[r][keep][:k]
            out_d[r, :len(d)] = d
            out_i[r, :len(i)] = i
        return out_d, out_i

    def search_images(self, images: np.ndarray, k: int, rerank: bool | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Encode ``uint8 (m, H, W, C)`` images and search; an image whose pixels (as the
        model sees them) equal a stored item's is not returned as its own result."""
        conformed = conform(images, self.encoder.spec)
        found = (self.find(hash=content_hash(im)) for im in conformed)
        exclude = np.array([-1 if f is None else f for f in found], dtype=np.int64)
        return self.search(self.encoder.encode(conformed), k, exclude, rerank)

    def search_ids(self, ids: np.ndarray | list[int], k: int, rerank: bool | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Search with stored items as queries, each excluded from its own results."""
        arr = np.asarray(ids, dtype=np.int64)
        vectors = np.stack([self.vector(int(i)) for i in arr]) if len(arr) else np.empty(
            (0, self.dim), dtype=np.float32)
        return self.search(vectors, k, arr, rerank)
