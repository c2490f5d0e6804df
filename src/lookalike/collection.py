"""A collection is a directory holding a searchable database of images:

* ``manifest.json``: format version, model fingerprint, dataset, count, dimension,
  backend settings, label names, library versions, timestamps;
* ``metadata.sqlite``: table ``items(id, source, label, hash)``, one row per image;
* ``ids.npy`` (``int64 (n,)``) and ``embeddings.npy`` (``float32 (n, d)``), row-aligned;
* ``images.npy``: the images as the model sees them, ``uint8 (n, H, W, C)``, so results
  can be shown without going back to the sources;
* the backend's index file (``index.faiss``), or for the milvus backend a JSON pointer to
  the remote collection (``index.milvus.json``, see :mod:`lookalike.milvus_backend`);
* with diffusion re-ranking (the model's retrieval config): the database's k-NN graph,
  ``graph_ids.npy`` (row indices, ``int64 (n, k)``) and ``graph_sims.npy`` (cosines);
* ``model/``: a copy of the model that made the codes, so a collection is self-contained.

The manifest records the SHA-256 and size of every array and index file of the current
generation, checked on open, so a damaged or truncated file is named rather than read.

A new collection is built in ``.<name>.partial/`` beside it and renamed into place, so a
crash never leaves a half-written one under its name. Its codes are checkpointed there
chunk by chunk: running the same ``create`` again (same model, same images) resumes from
the last finished chunk. Replacing a collection (``overwrite``) first moves the old one to
``.<name>.old``, which :meth:`Collection.open` and :meth:`Collection.create` move back if
a crash came between the two renames.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .backends import IndexBackend, choose_factory, discard_backend, new_backend, open_backend
from .config import InputSpec, RetrievalConfig
from .datasets import Dataset
from .encoders import ModelEncoder, encode_dataset
from .errors import CollectionError, LookalikeError
from .fsutil import atomic_write, atomic_write_json, fsync_dir, read_json
from .images import conform, content_hash, preview_spec
from .modelio import LoadedModel, file_sha256, load_model
from .rerank import Diffusion
from .versions import versions

log = logging.getLogger(__name__)

FORMAT = "lookalike-collection"
FORMAT_VERSION = 1
DEFAULT_FILES = {"ids": "ids.npy", "embeddings": "embeddings.npy", "images": "images.npy",
                 "index": "index.faiss"}


def _write_state(directory: Path, generation: int, ids: np.ndarray, embeddings: np.ndarray,
                 images: np.ndarray, backend: IndexBackend,
                 graph: tuple[np.ndarray, np.ndarray] | None) -> dict[str, str]:
    """Write one generation of the array files and the index (each atomically) and return
    their names. Generation 0 uses the plain names; later ones add ``.<generation>``."""
    tag = f".{generation}" if generation else ""
    files = {"ids": f"ids{tag}.npy", "embeddings": f"embeddings{tag}.npy",
             "images": f"images{tag}.npy", "index": f"index{tag}.faiss"}
    arrays: dict[str, np.ndarray] = {"ids": ids, "embeddings": embeddings, "images": images}
    if graph is not None:
        files.update(graph_sims=f"graph_sims{tag}.npy", graph_ids=f"graph_ids{tag}.npy")
        arrays.update(graph_sims=graph[0], graph_ids=graph[1])
    for key, arr in arrays.items():
        atomic_write(directory / files[key], functools.partial(_save_npy, array=arr))
    files["index"] = backend.save(directory, files["index"])
    return files


def _checksums(directory: Path, files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``{file name: {"sha256": ..., "bytes": ...}}`` for the generation's files."""
    return {name: {"sha256": file_sha256(directory / name), "bytes": (directory / name).stat().st_size}
            for name in sorted(set(files.values()))}


def _verify(directory: Path, checksums: dict[str, dict[str, Any]]) -> None:
    """Raise :class:`CollectionError` naming the first file whose size or SHA-256 differs
    from the manifest's record."""
    for name, want in checksums.items():
        path = directory / name
        if not path.is_file():
            raise CollectionError(f"{path} is missing; rebuild the collection with 'lookalike index'")
        size = path.stat().st_size
        if size != want.get("bytes", size):
            raise CollectionError(f"{path} is damaged (truncated: {size} bytes, the manifest says "
                                  f"{want['bytes']}); rebuild the collection with 'lookalike index'")
        if file_sha256(path) != want.get("sha256"):
            raise CollectionError(f"{path} is damaged (its checksum does not match the manifest); "
                                  "rebuild the collection with 'lookalike index'")


def _check_sqlite(path: Path) -> None:
    """SQLite's own quick consistency check of the metadata table. The connection may
    write: a process killed inside a metadata transaction leaves a hot journal, which
    SQLite rolls back on this first read (a read-only connection would refuse to)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=rw", uri=True)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
            db.execute("SELECT count(*) FROM items").fetchone()
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        raise CollectionError(f"{path} is damaged ({exc}); rebuild the collection with "
                              "'lookalike index'") from None
    if result != "ok":
        raise CollectionError(f"{path} is damaged ({result}); rebuild the collection with "
                              "'lookalike index'")


def _recover(target: Path) -> None:
    """Undo a replacement interrupted between its two renames: the old collection, moved
    aside to ``.<name>.old``, goes back under its name."""
    old = target.parent / f".{target.name}.old"
    if old.is_dir() and not target.exists():
        os.replace(old, target)
        fsync_dir(target.parent)
        log.warning("restored %s from an interrupted replacement", target)
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)


def _job_key(model: LoadedModel, images: np.ndarray, sources: Iterable[str], chunk: int) -> str:
    """What a checkpointed encoding run depends on: the model, the images (as stored) and
    where they came from, the chunking."""
    h = hashlib.sha256(f"{model.fingerprint}:{images.shape}:{chunk}:".encode())
    h.update(np.ascontiguousarray(images).data)
    h.update("\0".join(sources).encode())
    return h.hexdigest()


def _load_codes(path: Path, shape: tuple[int, int], mmap: bool = False) -> np.ndarray | None:
    """A checkpointed chunk of codes, or ``None`` when absent, unreadable or of another shape
    (``mmap``: map it, reading only the header, to check it is there)."""
    try:
        codes = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError):
        return None
    return codes if codes.shape == shape else None


def encode_resumable(stage: Path, encoder: ModelEncoder, model: LoadedModel, dataset: Dataset,
                     images: np.ndarray, chunk: int = 8192, progress: bool = False) -> np.ndarray:
    """Encode ``dataset`` chunk by chunk (its pixels at the model's input, see
    :meth:`Dataset.pixels`), each chunk's codes saved atomically in ``stage/chunks``;
    chunks already there from an interrupted run with the same model and images (``images``,
    as they are stored) are loaded instead of encoded again."""
    key = _job_key(model, images, dataset.sources, chunk)
    job = stage / "job.json"
    chunks = stage / "chunks"
    try:
        same = job.is_file() and read_json(job).get("key") == key
    except (OSError, ValueError):
        same = False
    if not same:
        if stage.exists():
            shutil.rmtree(stage)
        chunks.mkdir(parents=True)
        atomic_write_json(job, {"key": key, "count": len(images), "chunk": chunk})
    out = np.empty((len(images), encoder.dim), dtype=np.float32)
    parts = {start: (chunks / f"codes.{start:09d}.npy", (min(chunk, len(images) - start), encoder.dim))
             for start in range(0, len(images), chunk)}
    saved = {start: _load_codes(path, shape, mmap=True) is not None
             for start, (path, shape) in parts.items()}  # (headers only)
    done = sum(shape[0] for start, (_, shape) in parts.items() if saved[start])
    if done:
        log.warning("resuming: %d of %d images already encoded", done, len(images))
    with tqdm(total=len(images), initial=done, desc="encoding", unit="img",
              disable=not progress) as bar:
        for start, (path, shape) in parts.items():
            stop = start + shape[0]
            codes = _load_codes(path, shape) if saved[start] else None
            if codes is None:
                codes = encode_dataset(encoder, dataset, start=start, stop=stop, bar=bar)
                atomic_write(path, functools.partial(_save_npy, array=codes))
            out[start:stop] = codes
    return out


DIFFUSION_LIMIT = 100_000


def _abandon(index: IndexBackend) -> None:
    """Delete what a new collection's backend wrote outside the directory (a remote
    collection) when the collection is not created after all, and let go of it."""
    try:
        index.drop()
    except Exception as exc:  # the first error is the one to report
        log.warning("could not delete the new index's remote data: %s", exc)
    finally:
        index.close()


def _backend_settings(path: Path) -> dict[str, Any] | None:
    """The backend settings of the collection at ``path``, if it has a readable manifest."""
    try:
        manifest = read_json(path / "manifest.json")
        return dict(manifest["backend"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _ranker(embeddings: np.ndarray, retrieval: RetrievalConfig) -> Diffusion | None:
    """The diffusion ranker over ``embeddings`` when ``retrieval`` re-ranks and there is
    anything to rank; its graph is what a collection stores. Above
    :data:`DIFFUSION_LIMIT` items there is none: its exact k-NN graph costs O(n²)."""
    if retrieval.rerank != "diffusion" or not 0 < len(embeddings) <= DIFFUSION_LIMIT:
        return None
    return Diffusion(embeddings, retrieval.diffusion)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


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
        #: what a picture is stored (and hashed) as: the model's input up to 96 px a side
        self.store_spec = InputSpec(int(images.shape[3]), int(images.shape[1]), int(images.shape[2]))
        self._row = {int(i): r for r, i in enumerate(ids)}
        self.retrieval = RetrievalConfig.from_dict(manifest.get("retrieval") or {})
        self._diffusion: Diffusion | None = None

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: str | os.PathLike[str], model: LoadedModel, dataset: Dataset, *,
               backend: str = "faiss", factory: str = "auto", search_params: str | None = None,
               overwrite: bool = False, progress: bool = False, chunk: int = 8192,
               backend_options: dict[str, Any] | None = None,
               codes: np.ndarray | None = None) -> Collection:
        """Encode ``dataset`` with ``model`` and write a collection at ``path``.

        ``factory`` is a FAISS index factory string, or ``"auto"`` to choose by size
        (:func:`lookalike.backends.choose_factory`); ``search_params`` (``"nprobe=64"``)
        override the chosen ones. Codes are checkpointed every ``chunk`` images: after a
        crash, the same call resumes. ``backend_options`` go to the backend (the milvus
        backend's ``uri`` and ``collection``); ``codes`` (``float32 (n, d)``, row-aligned
        with ``dataset``), when given, are the dataset's codes already made by this model
        (``lookalike.ray_engine``), and nothing is encoded here.

        Raises:
            CollectionError: ``path`` exists (and not ``overwrite``), or the dataset is empty.
        """
        target = Path(path)
        _recover(target)
        if target.exists() and not overwrite:
            raise CollectionError(f"{target} already exists; choose another --out or pass --overwrite")
        if len(dataset) == 0:
            raise CollectionError("cannot index an empty dataset")
        if model.path is None:
            raise CollectionError("the model must be saved (have a directory) before indexing")
        if chunk <= 0:
            raise LookalikeError(f"chunk must be a positive integer, got {chunk}")
        encoder = ModelEncoder(model)
        images = conform(dataset.images, preview_spec(encoder.spec))
        if codes is not None and np.shape(codes) != (len(images), encoder.dim):
            raise CollectionError(f"codes of shape {np.shape(codes)} do not fit {len(images)} images "
                                  f"and {encoder.dim}-d codes")
        ids = np.arange(len(images), dtype=np.int64)
        if factory == "auto":
            factory, chosen = choose_factory(len(ids))
            search_params = chosen if search_params is None else search_params
        # the index first: a bad factory string or parameter fails before any encoding
        index = new_backend(backend, encoder.dim, factory=factory, search_params=search_params or "",
                            **(backend_options or {}))
        target.parent.mkdir(parents=True, exist_ok=True)
        stage = target.parent / f".{target.name}.partial"
        try:  # a backend keeping vectors elsewhere (a server) writes them first
            if codes is None:
                embeddings = encode_resumable(stage, encoder, model, dataset, images, chunk, progress)
            else:
                embeddings = np.ascontiguousarray(codes, dtype=np.float32)
                stage.mkdir(parents=True, exist_ok=True)
            index.add(ids, embeddings)
        except BaseException:
            _abandon(index)
            raise
        retrieval = model.retrieval
        ranker = _ranker(embeddings, retrieval)
        graph = ranker.neighbours() if ranker is not None else None
        labels = (dataset.labels if dataset.labels is not None
                  else np.full(len(images), -1, dtype=np.int64))

        tmp = stage / "collection"
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            shutil.copytree(model.path, tmp / "model")
            files = _write_state(tmp, 0, ids, embeddings, images, index, graph)
            db = sqlite3.connect(tmp / "metadata.sqlite")
            try:
                with db:
                    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, source TEXT NOT NULL,"
                               " label INTEGER NOT NULL, hash TEXT NOT NULL)")
                    db.execute("CREATE INDEX items_hash ON items(hash)")
                    db.execute("CREATE INDEX items_source ON items(source)")
                    db.executemany("INSERT INTO items VALUES (?, ?, ?, ?)", (
                        (int(i), s, int(lab), content_hash(im))
                        for i, s, lab, im in zip(ids, dataset.sources, labels, images, strict=True)
                    ))
            finally:
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
                "generation": 0,
                "files": files,
                "checksums": _checksums(tmp, files),
                "label_names": list(dataset.label_names) if dataset.label_names else None,
                "skipped": [list(s) for s in dataset.skipped],
                "created": _now(),
                "updated": _now(),
                "versions": versions(),
            }
            atomic_write_json(tmp / "manifest.json", manifest)
            replaced = _backend_settings(target) if target.exists() else None
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
             verify: bool = True) -> Collection:
        """Open a collection; with ``model_dir``, check that this model made it. With
        ``verify``, every array and index file is checked against the manifest's checksums.

        Raises:
            CollectionError: missing or damaged files, a newer format, another model.
        """
        p = Path(path)
        _recover(p)
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
        files = {**DEFAULT_FILES, **(manifest.get("files") or {})}
        for key in ("ids", "embeddings", "images"):
            if not (p / files[key]).is_file():
                raise CollectionError(f"{p / files[key]} is missing; rebuild with 'lookalike index'")
        if not (p / "metadata.sqlite").is_file():
            raise CollectionError(f"{p / 'metadata.sqlite'} is missing; rebuild with 'lookalike index'")
        if verify and manifest.get("checksums"):
            _verify(p, manifest["checksums"])
        _check_sqlite(p / "metadata.sqlite")
        model = load_model(model_dir if model_dir is not None else p / "model")
        if model.fingerprint != manifest["model"]["fingerprint"]:
            raise CollectionError(
                f"{p} was made by another model (fingerprint {manifest['model']['fingerprint'][:12]}"
                f", this model is {model.fingerprint[:12]}); re-index with this model"
            )
        try:
            ids = np.load(p / files["ids"], allow_pickle=False)
            embeddings = np.load(p / files["embeddings"], allow_pickle=False, mmap_mode="r")
            images = np.load(p / files["images"], allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise CollectionError(f"{p}: an array file is damaged ({exc}); rebuild with "
                                  "'lookalike index'") from None
        dim = int(manifest["dim"])
        if embeddings.shape != (len(ids), dim) or len(images) != len(ids):
            raise CollectionError(f"{p}: ids, embeddings and images do not line up; rebuild")
        backend = open_backend(p, {**manifest["backend"], "file": files["index"]}, dim)
        backend.reconcile(ids, embeddings)  # after a change written remotely, never committed
        if len(backend) != len(ids):
            raise CollectionError(f"{p}: the index holds {len(backend)} vectors, the collection "
                                  f"{len(ids)}; rebuild with 'lookalike index'")
        return cls(p, manifest, backend, ids, embeddings, images, model)

    def close(self) -> None:
        """Let go of the backend's connections (a Milvus server, Milvus Lite's file lock)."""
        self.backend.close()

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def files(self) -> dict[str, str]:
        """The current generation's file names (``ids``, ``embeddings``, ``images``,
        ``index``, and ``graph_ids``/``graph_sims`` when re-ranking)."""
        return {**DEFAULT_FILES, **(self.manifest.get("files") or {})}

    @property
    def reranks(self) -> bool:
        """Whether searches are re-ranked by default: the model's retrieval config, up to
        :data:`DIFFUSION_LIMIT` items (larger collections are searched by their index)."""
        return self.retrieval.rerank != "none" and len(self) <= DIFFUSION_LIMIT

    @property
    def diffusion(self) -> Diffusion:
        """The diffusion ranker over this collection's codes (built on first use from the
        stored graph, or from the codes when the graph files are absent)."""
        if self._diffusion is None:
            graph = None
            files = self.files
            if files.get("graph_ids") and (self.path / files["graph_ids"]).is_file():
                try:
                    graph = (np.load(self.path / files["graph_sims"], allow_pickle=False),
                             np.load(self.path / files["graph_ids"], allow_pickle=False))
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
    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        """Run ``sql`` for every row in one SQLite transaction."""
        db = sqlite3.connect(self.path / "metadata.sqlite")
        try:
            with db:
                db.executemany(sql, rows)
        finally:
            db.close()

    def _next_id(self) -> int:
        """The smallest id never given out: ids only grow, so a removed id is never given
        to another image."""
        return max(int(self.manifest.get("next_id", 0)),
                   int(self.ids.max()) + 1 if len(self.ids) else 0)

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(f"file:{self.path / 'metadata.sqlite'}?mode=rw", uri=True)
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
        """The id of a stored item with that source or content hash, or ``None``. (Rows
        left by an interrupted change whose id is not in the collection are ignored.)"""
        column, value = ("source", source) if source is not None else ("hash", hash)
        rows = self._query(f"SELECT id FROM items WHERE {column} = ? ORDER BY id", (value,))
        return next((int(r[0]) for r in rows if int(r[0]) in self._row), None)

    def sources(self) -> dict[str, tuple[int, str]]:
        """``{source: (id, content hash)}`` of the stored items (rows left by an interrupted
        change are not items)."""
        return {src: (int(i), h) for i, src, h in self._query("SELECT id, source, hash FROM items")
                if int(i) in self._row}

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
        """Encode ``uint8 (m, H, W, C)`` images and search; an image whose pixels (as
        stored) equal a stored item's is not returned as its own result."""
        found = (self.find(hash=content_hash(im)) for im in self.stored_form(images))
        exclude = np.array([-1 if f is None else f for f in found], dtype=np.int64)
        return self.search(self.encoder.encode(conform(images, self.encoder.spec)), k, exclude, rerank)

    def search_ids(self, ids: np.ndarray | list[int], k: int, rerank: bool | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Search with stored items as queries, each excluded from its own results."""
        arr = np.asarray(ids, dtype=np.int64)
        vectors = np.stack([self.vector(int(i)) for i in arr]) if len(arr) else np.empty(
            (0, self.dim), dtype=np.float32)
        return self.search(vectors, k, arr, rerank)

    # ------------------------------------------------------------------ changes
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
        ids = np.concatenate([self.ids, new_ids])
        embeddings = np.concatenate([np.asarray(self.embeddings), codes])
        stored = np.concatenate([np.asarray(self.images), conformed[rows]])
        self.backend.add(new_ids, codes)
        self._write("INSERT OR REPLACE INTO items VALUES (?, ?, ?, ?)", (
            (int(new_ids[j]), sources[r], int(lab[r]), hashes[r]) for j, r in enumerate(rows)))
        self._commit(ids, embeddings, stored, next_id=next_id)
        return out

    def update(self, ids: np.ndarray | list[int], images: np.ndarray | list[np.ndarray]) -> int:
        """Give stored items new images (a changed file): each keeps its id, source and
        label; its pixels, hash and code are replaced, in one commit. Returns how many
        changed (an image equal to the stored one changes nothing).

        Raises:
            LookalikeError: an unknown id, or not one image per id.
        """
        wanted = [int(i) for i in np.asarray(ids).ravel()]
        if len(wanted) != len(images):
            raise LookalikeError("give one image per id")
        unknown = [i for i in wanted if i not in self._row]
        if unknown:
            raise LookalikeError(f"no item with id {unknown[0]} in {self.path}")
        conformed = self.stored_form(images)
        stored = {it.id: it.hash for it in self.items(wanted) if it is not None}
        changed = [j for j, i in enumerate(wanted) if content_hash(conformed[j]) != stored.get(i)]
        if not changed:
            return 0
        rows = np.array([self._row[wanted[j]] for j in changed])
        change_ids = np.array([wanted[j] for j in changed], dtype=np.int64)
        codes = self._encode(images, np.array(changed))
        embeddings = np.array(self.embeddings)
        pixels = np.array(self.images)
        embeddings[rows] = codes
        pixels[rows] = conformed[changed]
        self.backend.remove(change_ids)
        self.backend.add(change_ids, codes)
        self._commit(self.ids.copy(), embeddings, pixels)
        self._write("UPDATE items SET hash = ? WHERE id = ?", (
            (content_hash(conformed[j]), wanted[j]) for j in changed))
        return len(changed)

    def _encode(self, images: np.ndarray | list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        """Codes of ``images[rows]``, each taken at the model's input spec."""
        return self.encoder.encode(conform([images[int(r)] for r in rows], self.encoder.spec))

    def remove(self, ids: np.ndarray | list[int]) -> int:
        """Remove items by id; unknown ids are ignored. Returns how many were removed."""
        gone = {int(i) for i in np.asarray(ids).ravel()} & set(self._row)
        if not gone:
            return 0
        keep = np.array([int(i) not in gone for i in self.ids])
        self._commit(self.ids[keep], np.asarray(self.embeddings)[keep],
                     np.asarray(self.images)[keep], removed=np.array(sorted(gone), np.int64))
        self._write("DELETE FROM items WHERE id = ?", ((i,) for i in sorted(gone)))
        return len(gone)

    def _commit(self, ids: np.ndarray, embeddings: np.ndarray, images: np.ndarray,
                removed: np.ndarray | None = None, next_id: int | None = None) -> None:
        """Write a new generation and switch the manifest to it (the commit point), then
        delete the previous generation's files. ``removed`` ids leave the index here."""
        old = self.files
        generation = int(self.manifest.get("generation", 0)) + 1
        diffusion = _ranker(embeddings, self.retrieval)
        graph = diffusion.neighbours() if diffusion is not None else None
        if removed is not None:
            self.backend.remove(removed)
        files = _write_state(self.path, generation, ids, embeddings, images, self.backend, graph)
        manifest = {**self.manifest, "count": len(ids), "generation": generation,
                    "files": files, "checksums": _checksums(self.path, files), "updated": _now(),
                    "next_id": max(self._next_id(), next_id or 0)}
        atomic_write_json(self.path / "manifest.json", manifest)
        self.manifest = manifest
        self.ids, self.embeddings, self.images = ids, embeddings, images
        self._row = {int(i): r for r, i in enumerate(ids)}
        self._diffusion = diffusion
        for name in set(old.values()) - set(files.values()):
            try:
                (self.path / name).unlink()
            except FileNotFoundError:
                pass
