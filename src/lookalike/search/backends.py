"""Index backends: where codes are stored and searched, behind one small interface.

A backend maps ``int64`` ids to ``float32`` vectors and answers k-nearest-neighbour
queries by squared Euclidean distance:

* ``add(ids (n,), vectors (n, d))``
* ``remove(ids) -> number removed``
* ``search(queries (m, d), k) -> (distances float32 (m, k), ids int64 (m, k))``, nearest
  first; when fewer than ``k`` items exist, the tail is padded with id -1 and distance +inf.
* ``save(directory)`` / ``load(directory, settings)``
* ``reconcile(ids, vectors)``, ``close()``, ``drop()``: for backends that keep the vectors
  outside the collection directory (a server), bringing them back to the committed state,
  letting go of the connection, and deleting them; nothing to do for a file.

:class:`FaissBackend` is the default: a FAISS index described by a factory string
(``"Flat"`` = exact search) wrapped in ``IndexIDMap2`` so ids are ours, with optional
search-time parameters (``"nprobe=32"``, ``"efSearch=64"``). ``"auto"`` picks by the
collection's size (:func:`choose_factory`): exact search up to :data:`EXACT_LIMIT` codes,
an inverted file above it, whose scan of ``nprobe`` of its ``nlist`` lists keeps recall@10
at or above 0.95 on lookalike's codes (``benchmarks/speed.py`` measures it).
:class:`~lookalike.search.milvus_backend.MilvusBackend` keeps the vectors in Milvus (``pymilvus``,
the ``scale`` extra) and only a pointer to them in the directory.
"""

from __future__ import annotations

import importlib
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..errors import CollectionError, LookalikeError


def _check(vectors: np.ndarray, dim: int, what: str) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    if v.ndim != 2 or v.shape[1] != dim:
        raise LookalikeError(f"{what} must have shape (n, {dim}), got {np.shape(vectors)}")
    return v


def _check_rows(ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 (n,), vectors float32 (n, dim))`` for ``add``, or a one-line error."""
    v = _check(vectors, dim, "vectors")
    i = np.ascontiguousarray(ids, dtype=np.int64)
    if i.shape != (len(v),):
        raise LookalikeError(f"ids must have shape ({len(v)},), got {i.shape}")
    return i, v


def _check_k(k: int) -> None:
    if k <= 0:
        raise LookalikeError(f"k must be a positive integer, got {k}")


def _last_line(exc: RuntimeError, default: str) -> str:
    """The message of a FAISS error without its C++ location ("Error in <function> at
    <file>:<line>: ..."), or ``default``."""
    text = str(exc).strip()
    if not text:
        return default
    last = text.splitlines()[-1]
    m = re.fullmatch(r"Error in .* at \S+:\d+: (?:Error: '.*' failed: )?(.+)", last)
    return m.group(1) if m else last


EXACT_LIMIT = 100_000


def choose_factory(n: int) -> tuple[str, str]:
    """The index for ``n`` codes: ``("Flat", "")`` (exact) up to :data:`EXACT_LIMIT`, above
    it ``("IVF{nlist},Flat", "nprobe=...")`` with ``nlist`` the power of two nearest
    ``sqrt(n)`` (1024 at 1M) and ``nprobe = nlist / 64`` (at least 16): at 1M of
    lookalike's codes, recall@10 0.998 at ~3,900 queries/s on 2 cores (``benchmarks/speed.py``).

    An inverted file rather than HNSW because it supports removal (``lookalike remove``),
    builds in a fraction of HNSW's time and costs no memory per vector beyond the codes.
    """
    if n <= EXACT_LIMIT:
        return "Flat", ""
    nlist = 1 << int(round(np.log2(np.sqrt(n))))
    return f"IVF{nlist},Flat", f"nprobe={max(16, nlist // 64)}"


class IndexBackend(ABC):
    """The verbs every index backend provides (see the module docstring)."""

    name: str = "abstract"
    FILE: str = ""  # the file a collection keeps this backend in, unless its settings name one

    def __init__(self, dim: int) -> None:
        self.dim = dim

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int: ...

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def save(self, directory: str | os.PathLike[str], filename: str | None = None) -> str:
        """Write the index into ``directory`` (atomically); returns the file name used."""

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """JSON-able settings that :func:`open_backend` needs to load this backend."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | os.PathLike[str], settings: dict[str, Any],
             dim: int) -> IndexBackend:
        """The backend saved in ``directory`` with these ``settings`` (from a manifest)."""

    @classmethod
    def stored_file(cls, directory: str | os.PathLike[str], settings: dict[str, Any]) -> Path:
        """The file :meth:`load` reads (``settings["file"]`` or :attr:`FILE`), which must
        exist."""
        path = Path(directory) / settings.get("file", cls.FILE)
        if not path.is_file():
            raise CollectionError(f"{path} is missing; rebuild the collection with 'lookalike index'")
        return path

    def reconcile(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Bring an index kept outside the collection directory back to the committed
        ``ids`` (``vectors`` row-aligned) after a change that was written there but never
        committed. A file written per generation needs nothing."""
        return None  # nothing, for a backend that is a file

    def close(self) -> None:
        """Let go of connections; the backend is not used afterwards."""
        return None  # nothing, for a backend that is a file

    def drop(self) -> None:
        """Delete whatever this backend keeps outside the collection directory."""
        return None  # nothing, for a backend that is a file

    @classmethod
    def discard(cls, settings: dict[str, Any]) -> None:
        """Delete what a collection with these settings keeps outside its directory
        (a collection being overwritten); best effort."""
        return None  # nothing, for a backend that is a file


class FaissBackend(IndexBackend):
    """A FAISS index (``factory`` string, L2 metric) with our ids (``IndexIDMap2``);
    ``search_params`` (``"nprobe=32"``) are FAISS ``ParameterSpace`` settings."""

    name = "faiss"
    FILE = "index.faiss"

    def __init__(self, dim: int, factory: str = "Flat", index: Any = None,
                 search_params: str = "") -> None:
        super().__init__(dim)
        if factory == "auto":
            raise LookalikeError("resolve the 'auto' factory with choose_factory(n) first")
        self.factory = factory
        self.search_params = search_params
        if index is None:
            try:
                inner = faiss.index_factory(dim, factory, faiss.METRIC_L2)
            except RuntimeError as exc:
                raise LookalikeError(f"bad FAISS factory string {factory!r}: "
                                     f"{_last_line(exc, 'bad factory')}") from None
            index = faiss.IndexIDMap2(inner)
        self.index = index
        if search_params:
            try:
                faiss.ParameterSpace().set_index_parameters(index, search_params)  # type: ignore[arg-type]
            except RuntimeError as exc:
                raise LookalikeError(f"bad FAISS search parameters {search_params!r} for "
                                     f"{factory!r}: {_last_line(exc, 'bad parameter')}") from None

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        i, v = _check_rows(ids, vectors, self.dim)
        if len(v) == 0:
            return
        if not self.index.is_trained:
            self.index.train(v)
        self.index.add_with_ids(v, i)

    def remove(self, ids: np.ndarray) -> int:
        i = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(i):
            return 0
        try:
            return int(self.index.remove_ids(i))
        except RuntimeError:
            raise CollectionError(f"a {self.factory!r} index cannot remove items; rebuild the "
                                  "collection with another --factory (Flat or IVF)") from None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k)
        q = _check(queries, self.dim, "queries")
        if len(self) == 0 or len(q) == 0:
            return (np.full((len(q), k), np.inf, dtype=np.float32),
                    np.full((len(q), k), -1, dtype=np.int64))
        distances, ids = self.index.search(q, k)
        distances[ids < 0] = np.inf
        return distances, ids.astype(np.int64)

    def save(self, directory: str | os.PathLike[str], filename: str | None = None) -> str:
        from ..fsutil import atomic_write

        name = filename or self.FILE
        atomic_write(Path(directory) / name, lambda tmp: faiss.write_index(self.index, tmp))
        return name

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "factory": self.factory, "metric": "l2",
                "search_params": self.search_params}

    @classmethod
    def load(cls, directory: str | os.PathLike[str], settings: dict[str, Any],
             dim: int) -> FaissBackend:
        path = cls.stored_file(directory, settings)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError:
            raise CollectionError(
                f"{path} is damaged (FAISS cannot read it); rebuild with 'lookalike index'"
            ) from None
        if index.d != dim:
            raise CollectionError(f"{path} holds {index.d}-d vectors, the manifest says {dim}")
        return cls(dim, settings.get("factory", "Flat"), index, settings.get("search_params", ""))


BACKENDS: dict[str, type[IndexBackend]] = {"faiss": FaissBackend}
#: Backends defined in other modules: imported, and so registered in BACKENDS, when named.
LAZY_BACKENDS = {"milvus": "lookalike.search.milvus_backend"}


def backend_class(name: str) -> type[IndexBackend] | None:
    """The backend class registered under ``name``, or ``None``."""
    if name not in BACKENDS and name in LAZY_BACKENDS:
        importlib.import_module(LAZY_BACKENDS[name])
    return BACKENDS.get(name)


def new_backend(name: str, dim: int, **options: Any) -> IndexBackend:
    """A new, empty backend by name (``"faiss"`` or ``"milvus"``)."""
    cls = backend_class(name)
    if cls is None:
        known = ", ".join(sorted({*BACKENDS, *LAZY_BACKENDS}))
        raise LookalikeError(f"unknown backend {name!r}; expected one of {known}")
    return cls(dim, **options)


def open_backend(directory: str | os.PathLike[str], settings: dict[str, Any],
                 dim: int) -> IndexBackend:
    """Load the backend that ``settings`` (from a manifest) describe."""
    name = settings.get("name", "faiss")
    cls = backend_class(name)
    if cls is None:
        raise CollectionError(f"collection uses unknown backend {name!r}")
    return cls.load(directory, settings, dim)


def discard_backend(settings: dict[str, Any]) -> None:
    """Delete what the backend described by ``settings`` keeps outside its collection's
    directory (nothing for FAISS); for a collection that is being replaced."""
    cls = backend_class(settings.get("name", "faiss"))
    if cls is not None:
        cls.discard(settings)
