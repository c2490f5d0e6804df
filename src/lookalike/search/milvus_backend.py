"""Milvus as an index backend, through ``pymilvus`` (the ``scale`` extra).

One code path for two deployments, chosen by the URI alone:

* a local path ending in ``.db``: Milvus Lite (``milvus-lite``), embedded in this process,
  no server; its data directory is locked to one process at a time;
* ``http://host:19530`` (or ``https://``, ``tcp://``, ``unix:``): a Milvus standalone or
  distributed server. A token, when needed, comes from the environment variable
  ``MILVUS_TOKEN``: the URI is stored in the collection's manifest, so it must not carry
  credentials.

The remote collection has two fields, ``id`` (INT64 primary key, our ids) and ``vector``
(FLOAT_VECTOR), metric L2, and is named ``lookalike_<directory name>_<8 random hex>``
(:func:`collection_name`); the name is stored in the manifest's backend settings, so the
directory may be moved or renamed later. The collection directory keeps a small JSON
pointer (``index[.<generation>].milvus.json``) instead of an index file.

Behaviour matches :class:`~lookalike.search.backends.FaissBackend`:

* The index type follows the collection's FAISS factory string: ``Flat`` -> ``FLAT``,
  ``IVF<nlist>,Flat`` -> ``IVF_FLAT`` (``nlist``; searched with ``nprobe`` 1, FAISS's
  default), ``HNSW<M>[,Flat]`` -> ``HNSW`` (``M``, ``efConstruction`` 40; searched with
  ``ef`` = max(16, k), FAISS's default ``efSearch`` 16 raised to k, which Milvus requires).
* Distances are squared Euclidean, as FAISS returns them. Milvus's own L2 figures are not
  used: a Milvus server returns squared distances, Milvus Lite's FAISS-based indexes the
  square root, and both are computed in whatever precision the server uses. The search
  asks for the stored vectors of the hits and computes ``sum((v - q)**2)`` in float32 here,
  then orders by (distance, id); padding is id -1 and distance +inf, as with FAISS.

Failures (connection refused, a Lite file held by another process, a missing remote
collection, a dimension mismatch, a failed write) raise a one-line
:class:`~lookalike.errors.CollectionError`. The collection writes the remote side first and
commits locally afterwards (see :class:`~lookalike.search.collection.Collection`), so a failed
remote write changes nothing local. A crash between the two leaves the remote side ahead
(an add) or behind (a remove) of the committed state; opening the collection repairs it
(:meth:`MilvusBackend.reconcile`): remote ids the manifest does not have are deleted, and
committed ids missing remotely are inserted again from the collection's stored codes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from ..errors import CollectionError, LookalikeError, RemoteError
from ..fsutil import atomic_write_json, read_json
from .backends import BACKENDS, IndexBackend, _check, _check_k, _check_rows

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lookalike[scale]'"
TOKEN_ENV = "MILVUS_TOKEN"
ID, VECTOR = "id", "vector"
POINTER_FORMAT = "lookalike-milvus-pointer"
#: Rows per insert request: ~5 MB at 128-d, far below gRPC's 256 MB message limit.
INSERT_BATCH = 10_000
#: Queries per search request, and ids per ``id in [...]`` filter.
QUERY_BATCH = 256
ID_BATCH = 1_000
#: Milvus Lite searches FLAT by broadcasting queries against every row, (nq, n, d) float32
#: at once; queries are sent in groups that keep this under ~256 MB.
LITE_FLAT_BYTES = 256 * 2**20
#: Milvus answers at most this many results per query.
MAX_K = 16_384
CONNECT_TIMEOUT = 10.0
_SCHEMES = ("http", "https", "tcp", "unix")

# Milvus Lite runs one in-process server per ``.db`` path; it is stopped (and its file
# lock released) when the last backend of this process using it is closed.
_LITE_USERS: dict[str, int] = {}
_LITE_LOCK = threading.Lock()


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError:
        raise LookalikeError(f"the milvus backend needs pymilvus and milvus-lite: {INSTALL_HINT}"
                             ) from None
    # Every failure reaches the user as one line (a CollectionError); pymilvus would also
    # log each failed call with its traceback, and Milvus Lite each failed start.
    for name in ("pymilvus", "pymilvus.milvus_client", "milvus_lite"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def is_local(uri: str) -> bool:
    """Whether ``uri`` names a Milvus Lite file rather than a server."""
    return not any(uri.startswith(f"{s}:") for s in _SCHEMES)


def normalize_uri(uri: str) -> str:
    """An absolute path for a Milvus Lite file, the URI itself for a server.

    Raises:
        LookalikeError: neither a ``.db`` path nor a server URI, or credentials in the URI.
    """
    text = str(uri).strip()
    if not text:
        raise LookalikeError("--milvus-uri is empty")
    if is_local(text):
        if "://" in text or not text.endswith(".db"):
            raise LookalikeError(f"--milvus-uri {text!r} is neither a local Milvus Lite file ending "
                                 "in .db nor a server URI like http://host:19530")
        return os.path.abspath(os.path.expanduser(text))
    parsed = urlparse(text)
    if parsed.username or parsed.password:
        raise LookalikeError(f"--milvus-uri must not carry credentials (it is stored in the "
                             f"manifest); put the token in ${TOKEN_ENV}")
    return text


def collection_name(directory: str | os.PathLike[str]) -> str:
    """A new remote collection name for a collection directory: ``lookalike_`` + the
    directory's name (letters, digits and ``_`` only) + ``_`` + 8 random hex digits."""
    stem = re.sub(r"[^0-9A-Za-z_]", "_", Path(os.path.abspath(directory)).name)[:48]
    return f"lookalike_{stem}_{secrets.token_hex(4)}"


def index_spec(factory: str) -> tuple[str, dict[str, int], dict[str, int]]:
    """``(index type, build params, search params)`` in Milvus's terms for a FAISS factory
    string (see the module docstring).

    Raises:
        LookalikeError: a factory string with no Milvus counterpart.
    """
    f = factory.replace(" ", "")
    if f == "Flat":
        return "FLAT", {}, {}
    m = re.fullmatch(r"IVF(\d+),Flat", f)
    if m and int(m.group(1)) > 0:
        return "IVF_FLAT", {"nlist": int(m.group(1))}, {"nprobe": 1}
    m = re.fullmatch(r"HNSW(\d+)(?:,Flat)?", f)
    if m and int(m.group(1)) > 0:
        return "HNSW", {"M": int(m.group(1)), "efConstruction": 40}, {"ef": 16}
    raise LookalikeError(f"the milvus backend takes the factory strings Flat, IVF<nlist>,Flat or "
                         f"HNSW<M>; got {factory!r}")


def _parse_search_params(text: str) -> dict[str, int]:
    """FAISS's ``"nprobe=32,efSearch=64"`` as Milvus search params (``efSearch`` is ``ef``)."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not value.strip().isdigit():
            raise LookalikeError(f"bad search parameter {part!r}; expected NAME=INTEGER")
        out[{"efSearch": "ef"}.get(key.strip(), key.strip())] = int(value)
    return out


def _reason(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _lite_locked(path: str) -> bool:
    """Whether another process holds Milvus Lite's lock on ``path`` (a diagnosis made only
    after a failed start)."""
    lock = Path(path) / "LOCK"
    if not lock.is_file():
        return False
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _connect(uri: str) -> Any:
    """A ``MilvusClient`` for ``uri`` (normalized); one-line errors."""
    pymilvus = _pymilvus()
    local = is_local(uri)
    if local and not Path(uri).parent.is_dir():
        raise CollectionError(f"cannot open Milvus Lite file {uri}: {Path(uri).parent} is not a directory")
    with _LITE_LOCK:
        try:
            client = pymilvus.MilvusClient(uri=uri, token=os.environ.get(TOKEN_ENV, ""),
                                           timeout=CONNECT_TIMEOUT)
        except Exception as exc:
            if local and _lite_locked(uri):
                raise RemoteError(
                    f"Milvus Lite file {uri} is in use by another process (Milvus Lite allows one "
                    "process at a time; stop it, or use a Milvus server)") from None
            what = "open Milvus Lite file" if local else "connect to Milvus at"
            raise RemoteError(f"cannot {what} {uri}: {_reason(exc)}") from None
        if local:
            _LITE_USERS[uri] = _LITE_USERS.get(uri, 0) + 1
    return client


def probe(uri: str) -> None:
    """Reach ``uri`` (normalized) once and let go: a one-line CollectionError now rather
    than after hours of encoding."""
    client = _connect(uri)
    try:
        client.list_collections()
    except Exception as exc:
        if not _is_remote_error(exc):
            raise
        raise RemoteError(f"Milvus at {uri} does not answer: {_reason(exc)}") from None
    finally:
        _disconnect(uri, client)


def _disconnect(uri: str, client: Any) -> None:
    try:
        client.close()
    except Exception as exc:  # closing must not hide what came before
        log.debug("closing the Milvus client of %s: %s", uri, exc)
    if not is_local(uri):
        return
    with _LITE_LOCK:
        users = _LITE_USERS.get(uri, 0) - 1
        if users > 0:
            _LITE_USERS[uri] = users
            return
        _LITE_USERS.pop(uri, None)
        try:
            from milvus_lite.server_manager import server_manager_instance
        except ImportError:  # pragma: no cover - a server URI never gets here
            return
        release = getattr(server_manager_instance, "release_server", None)  # (milvus-lite >= 2.4)
        if release is not None:
            release(uri)


class MilvusBackend(IndexBackend):
    """Vectors in a Milvus collection (see the module docstring).

    ``MilvusBackend(dim, factory, uri=..., collection=...)`` creates the remote collection
    (``collection`` defaults to a random ``lookalike_...`` name); :meth:`load` opens one.
    """

    name = "milvus"
    FILE = "index.milvus.json"

    def __init__(self, dim: int, factory: str = "Flat", uri: str | None = None,
                 collection: str | None = None, search_params: dict[str, int] | str | None = None,
                 *, client: Any = None) -> None:
        super().__init__(dim)
        if isinstance(search_params, str):  # FAISS's form, "nprobe=32,efSearch=64"
            search_params = _parse_search_params(search_params)
        if uri is None:
            raise LookalikeError("the milvus backend needs a URI (--milvus-uri PATH.db or "
                                 "http://host:19530)")
        self.factory = factory
        self.index_type, self.index_params, default_search = index_spec(factory)
        self.search_params = {**default_search, **(search_params or {})}
        self.uri = normalize_uri(uri)
        self.collection = collection or collection_name("collection")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", self.collection):
            raise LookalikeError(f"bad Milvus collection name {self.collection!r} (letters, digits "
                                 "and _ only, not starting with a digit)")
        self._fresh = client is None  # a collection made here and never written: plain inserts
        self._client = client if client is not None else _connect(self.uri)
        if client is None:
            try:
                self._create()
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------------ remote calls
    @contextmanager
    def _remote(self, what: str) -> Iterator[None]:
        """Turn a pymilvus or gRPC failure during ``what`` into one CollectionError."""
        try:
            yield
        except LookalikeError:
            raise
        except Exception as exc:
            if not _is_remote_error(exc):
                raise
            raise RemoteError(
                f"Milvus at {self.uri}: {what} in collection {self.collection!r} failed: "
                f"{_reason(exc)}") from None

    def _create(self) -> None:
        pymilvus = _pymilvus()
        with self._remote("creating"):
            if self._client.has_collection(self.collection):
                raise CollectionError(f"Milvus at {self.uri} already has a collection named "
                                      f"{self.collection!r}")
            schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field(ID, pymilvus.DataType.INT64, is_primary=True)
            schema.add_field(VECTOR, pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
            index = self._client.prepare_index_params()
            # Build parameters travel as one JSON "params" entry: the wire form every Milvus
            # server reads, and the only one Milvus Lite reads (flattened keys are ignored).
            extra = {"params": json.dumps(self.index_params)} if self.index_params else {}
            index.add_index(field_name=VECTOR, index_type=self.index_type, metric_type="L2",
                            params=extra)
            self._client.create_collection(self.collection, schema=schema,
                                           consistency_level="Strong")
            # sync=False: nothing to wait for on an empty collection (and Milvus Lite cannot
            # answer the wait's timestamp request).
            self._client.create_index(self.collection, index, sync=False)
            self._client.load_collection(self.collection)

    def _ensure_loaded(self, attempts: int = 3) -> None:
        """Load the collection for search (a server restarted, or a new Milvus Lite process).
        Milvus Lite 3.2 may fail a load that overlaps its background compaction ("file seems
        not fully written"); a load is idempotent, so it is tried again a few times."""
        pymilvus = _pymilvus()
        with self._remote("loading"):
            state = self._client.get_load_state(self.collection).get("state")
            if state == pymilvus.client.types.LoadState.Loaded:
                return
            for attempt in range(attempts):
                try:
                    self._client.load_collection(self.collection)
                    return
                except pymilvus.MilvusException:
                    if attempt == attempts - 1:
                        raise
                    time.sleep(1.0 + attempt)

    def _describe_dim(self) -> int:
        with self._remote("describing"):
            info = self._client.describe_collection(self.collection)
        for f in info.get("fields", []):
            if f.get("name") == VECTOR:
                return int((f.get("params") or {}).get("dim", -1))
        raise CollectionError(f"Milvus collection {self.collection!r} at {self.uri} has no "
                              f"{VECTOR!r} field; it was not made by lookalike")

    def _existing(self, ids: np.ndarray) -> np.ndarray:
        """Which of ``ids`` the remote collection holds."""
        found: list[int] = []
        with self._remote("looking up ids"):
            for start in range(0, len(ids), ID_BATCH):
                chunk = [int(i) for i in ids[start:start + ID_BATCH]]
                rows = self._client.query(self.collection, filter=f"{ID} in {chunk}",
                                          output_fields=[ID], consistency_level="Strong")
                found.extend(int(r[ID]) for r in rows)
        return np.array(sorted(set(found)), dtype=np.int64)

    def _all_ids(self) -> np.ndarray:
        found: list[int] = []
        with self._remote("listing ids"):
            it = self._client.query_iterator(self.collection, batch_size=10_000, filter="",
                                             output_fields=[ID])
            try:
                while batch := it.next():
                    found.extend(int(r[ID]) for r in batch)
            finally:
                it.close()
        return np.array(sorted(set(found)), dtype=np.int64)

    def _write(self, ids: np.ndarray, vectors: np.ndarray, what: str) -> None:
        with self._remote(what):
            for start in range(0, len(ids), INSERT_BATCH):
                rows = [{ID: int(i), VECTOR: v} for i, v in
                        zip(ids[start:start + INSERT_BATCH],
                            vectors[start:start + INSERT_BATCH].tolist(), strict=True)]
                # upsert replaces an id left by an interrupted change; a new collection
                # cannot hold one, and a plain insert is cheaper.
                (self._client.insert if self._fresh else self._client.upsert)(self.collection, rows)

    # ------------------------------------------------------------------ the interface
    def __len__(self) -> int:
        with self._remote("counting"):
            rows = self._client.query(self.collection, filter="", output_fields=["count(*)"],
                                      consistency_level="Strong")
        return int(rows[0]["count(*)"]) if rows else 0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        i, v = _check_rows(ids, vectors, self.dim)
        if len(v) == 0:
            return
        self._write(i, v, "adding")
        self._fresh = False

    def remove(self, ids: np.ndarray) -> int:
        i = np.unique(np.ascontiguousarray(ids, dtype=np.int64))
        if not len(i):
            return 0
        present = self._existing(i)  # Milvus's delete does not say how many it found
        with self._remote("removing"):
            for start in range(0, len(present), ID_BATCH):
                self._client.delete(self.collection,
                                    ids=[int(x) for x in present[start:start + ID_BATCH]])
        self._fresh = False
        return len(present)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        _check_k(k)
        if k > MAX_K:
            raise LookalikeError(f"Milvus returns at most {MAX_K:,} results per query; got k={k}")
        q = _check(queries, self.dim, "queries")
        out_d = np.full((len(q), k), np.inf, dtype=np.float32)
        out_i = np.full((len(q), k), -1, dtype=np.int64)
        params = dict(self.search_params)
        if "ef" in params:
            params["ef"] = max(params["ef"], k)
        batch = QUERY_BATCH
        if is_local(self.uri) and self.index_type == "FLAT" and len(q) > 1:
            batch = int(np.clip(LITE_FLAT_BYTES // (max(1, len(self)) * self.dim * 4), 1, QUERY_BATCH))
        with self._remote("searching"):
            for start in range(0, len(q), batch):
                block = q[start:start + batch]
                hits = self._client.search(
                    self.collection, data=block.tolist(), limit=k, anns_field=VECTOR,
                    output_fields=[VECTOR], search_params={"metric_type": "L2", "params": params},
                    consistency_level="Strong")
                for r, row in enumerate(hits):
                    if not row:
                        continue
                    ids = np.array([int(h["id"]) for h in row], dtype=np.int64)
                    vecs = np.array([h["entity"][VECTOR] for h in row], dtype=np.float32)
                    dist = ((vecs - block[r]) ** 2).sum(axis=1, dtype=np.float32)
                    order = np.lexsort((ids, dist))[:k]
                    out_d[start + r, :len(order)] = dist[order]
                    out_i[start + r, :len(order)] = ids[order]
        return out_d, out_i

    def save(self, directory: str | os.PathLike[str], filename: str | None = None) -> str:
        """Write the pointer (URI, collection, index, count) as JSON; ``filename`` (the
        collection's name for this generation's index file) keeps its generation tag and
        gets the suffix ``.milvus.json``."""
        name = filename or self.FILE
        if not name.endswith(".milvus.json"):
            name = (name.rsplit(".", 1)[0] if "." in name else name) + ".milvus.json"
        atomic_write_json(Path(directory) / name, {
            "format": POINTER_FORMAT, **self.settings(), "dim": self.dim, "count": len(self)})
        return name

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "factory": self.factory, "metric": "l2", "uri": self.uri,
                "collection": self.collection, "index_type": self.index_type,
                "index_params": dict(self.index_params), "search_params": dict(self.search_params)}

    @classmethod
    def load(cls, directory: str | os.PathLike[str], settings: dict[str, Any],
             dim: int) -> MilvusBackend:
        path = cls.stored_file(directory, settings)
        try:
            pointer = read_json(path)
        except (OSError, ValueError):
            raise CollectionError(f"{path} is damaged (not JSON); rebuild with 'lookalike index'") from None
        if not isinstance(pointer, dict) or pointer.get("format") != POINTER_FORMAT:
            raise CollectionError(f"{path} is not a lookalike Milvus pointer")
        uri, name = settings.get("uri"), settings.get("collection")
        if not uri or not name or (pointer.get("uri"), pointer.get("collection")) != (uri, name):
            raise CollectionError(f"{path} and the manifest name different Milvus collections")
        client = _connect(normalize_uri(uri))
        backend = cls(dim, settings.get("factory", "Flat"), uri, name,
                      settings.get("search_params"), client=client)
        try:
            with backend._remote("opening"):
                exists = client.has_collection(name)
            if not exists:
                raise CollectionError(f"Milvus at {uri} has no collection {name!r} (dropped, or "
                                      "another server?); rebuild with 'lookalike index'")
            remote_dim = backend._describe_dim()
            if remote_dim != dim:
                raise CollectionError(f"Milvus collection {name!r} at {uri} holds {remote_dim}-d "
                                      f"vectors, the manifest says {dim}")
            backend._ensure_loaded()
        except BaseException:
            backend.close()
            raise
        return backend

    def reconcile(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Make the remote collection hold exactly the committed ``ids``: delete the ids an
        interrupted add left there, insert again (from ``vectors``) those an interrupted
        remove took away. Costs one count when nothing is amiss."""
        if len(self) == len(ids):
            return
        remote = self._all_ids()
        local = np.ascontiguousarray(ids, dtype=np.int64)
        extra = np.setdiff1d(remote, local)
        missing = np.isin(local, remote, invert=True)
        log.warning("Milvus collection %r at %s held %d uncommitted id(s) and lacked %d committed "
                    "one(s) after an interrupted change; repaired", self.collection, self.uri,
                    len(extra), int(missing.sum()))
        if len(extra):
            self.remove(extra)
        if missing.any():
            self._write(local[missing], _check(vectors, self.dim, "vectors")[missing], "repairing")

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        if client is not None:
            _disconnect(self.uri, client)

    def drop(self) -> None:
        if self._client is None:
            return
        with self._remote("dropping"):
            self._client.drop_collection(self.collection)

    @classmethod
    def discard(cls, settings: dict[str, Any]) -> None:
        uri, name = settings.get("uri"), settings.get("collection")
        if not uri or not name:
            return
        try:
            client = _connect(normalize_uri(uri))
        except LookalikeError as exc:
            log.warning("could not drop the old Milvus collection %r: %s", name, exc)
            return
        try:
            if client.has_collection(name):
                client.drop_collection(name)
        except Exception as exc:
            log.warning("could not drop the old Milvus collection %r at %s: %s", name, uri, _reason(exc))
        finally:
            _disconnect(normalize_uri(uri), client)

    def __del__(self) -> None:  # a backend nobody closed still lets go of Milvus Lite's lock
        try:
            self.close()
        except Exception:  # noqa: S110 - interpreter shutdown
            pass


def _is_remote_error(exc: BaseException) -> bool:
    try:
        from pymilvus import MilvusException
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, MilvusException):
        return True
    try:
        import grpc
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, grpc.RpcError)


BACKENDS[MilvusBackend.name] = MilvusBackend
