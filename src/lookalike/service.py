"""The HTTP search service: a FastAPI app over one collection, and the page at ``/``.

Build the app with :func:`create_app`; ``lookalike serve`` runs it on uvicorn. Routes:

* ``POST /api/search``: multipart (``file``, optional ``k``, ``rerank``) or JSON
  ``{"id": N, "k": 10, "rerank": null}``; returns the results and the time taken;
* ``GET /api/items/{id}``, ``GET /api/items/{id}/image[?size=112]``: metadata and the
  stored image as PNG (from the collection's arrays, never from a path);
* ``POST /api/items`` (multipart, one or more files), ``DELETE /api/items/{id}``;
* ``GET /api/health``, ``GET /api/stats``; ``/openapi.json`` and its Swagger UI at ``/docs``,
  served from the ``fastapi-offline`` package's copy (nothing is fetched from elsewhere).

Every error is JSON ``{"detail": "<message>"}``: 400 for a file that is not an image (or
a decompression bomb, refused before decoding), 401 for a missing or wrong token, 403 for a
change to a read-only service, 404 for an unknown id, 409 for a change the collection cannot
make, 413 past ``max_upload_bytes``, 415 for another content type, 422 for bad parameters,
503 when a remote index (a Milvus server) fails or cannot be reached.

Who may change the collection is an :class:`~lookalike.security.Access`: with a token,
every change needs ``Authorization: Bearer <token>``; read-only, changes get 403.
:func:`serve` refuses to open changes without a token on an address other than loopback.
Every response carries hardening headers; the page and ``/docs`` have Content-Security-
Policies that allow no inline script (:mod:`lookalike.security`).

A :class:`~lookalike.collection.Collection` is not thread-safe; :class:`SharedCollection`
gives readers the snapshot of the last commit and commits queued changes together, one
commit at a time, on a collection of its own: a search sees the collection before or after
a change, never half of one, and never waits for a commit or a compaction.
"""

from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message

from .collection import Collection
from .errors import ImageError, LookalikeError, RemoteError
from .images import MAX_PIXELS, conform, content_hash, decode_image
from .schemas import (
    MAX_ID,
    AddAnswer,
    Health,
    ItemInfo,
    RemoveAnswer,
    SearchAnswer,
    SearchById,
    SearchOptions,
    Stats,
    error_responses,
)
from .security import DOCS_CSP, HEADERS, PAGE_CSP, Access, HardeningHeaders, check_bind, guards

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: Swagger UI's script and stylesheet, from the ``fastapi-offline`` package (the 'serve'
#: extra), so that ``/docs`` works with no network.
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_K = 100
THUMBNAIL = 112
_MEDIA = {"multipart": "multipart/form-data", "json": "application/json"}


# ---------------------------------------------------------------------------- collection
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
        self._queue = threading.Condition(threading.Lock())
        self._pending: list[_Change] = []
        self._committing = False
        self._searches = threading.Condition(threading.Lock())
        self._asked: list[_Query] = []
        self._searching = False
        self.snapshot = self._coll
        self._publish()

    def _publish(self) -> None:
        """Load what readers would otherwise load on first use (the model, the whitening),
        then hand them the committed state."""
        coll = self._coll
        if len(coll):
            coll.encoder  # noqa: B018
            if coll.reranks:
                coll.whitening  # noqa: B018
        self.snapshot = coll.snapshot()

    @property
    def reranks(self) -> bool:
        return self.snapshot.reranks

    def stats(self) -> dict[str, Any]:
        coll = self.snapshot
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
        coll = self.snapshot
        own = coll.find(hash=content_hash(coll.stored_form([image])[0]))
        return self._search(_Query(coll, k, coll.reranked(rerank), -1 if own is None else own,
                                   image=conform([image], coll.input_spec)[0]))

    def search_id(self, item_id: int, k: int, rerank: bool | None) -> list[Hit]:
        """Results for a stored item, itself excluded. Raises :class:`UnknownItem`."""
        coll = self.snapshot
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
        with self._searches:
            self._asked.append(query)
            while not query.done:
                if self._searching:
                    self._searches.wait()
                    continue
                self._searching = True
                batch, self._asked = self._asked, []
                self._searches.release()
                try:
                    _nearest(batch)
                finally:
                    self._searches.acquire()
                    self._searching = False
                    self._searches.notify_all()
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
        coll = self.snapshot
        self._check(coll, item_id)
        found = coll.items([item_id])[0]
        if found is None:  # removed by a commit after this snapshot
            raise UnknownItem(f"no item with id {item_id}")
        return found.id, found.source, found.label, found.hash

    def image(self, item_id: int) -> tuple[np.ndarray, str]:
        """The stored image ``uint8 (H, W, C)`` and its content hash."""
        coll = self.snapshot
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
        with self._queue:
            self._pending.append(change)
            while not change.finished:
                if self._committing:
                    self._queue.wait()
                    continue
                self._committing = True
                self._queue.release()
                try:
                    self._apply()
                finally:
                    self._queue.acquire()
                    self._committing = False
                    self._queue.notify_all()
        if change.error is not None:
            raise change.error
        return change.result

    def _apply(self) -> None:
        """Take every pending change (those that came during the last commit too) and apply
        them: removes first (so an add in the batch never returns an id
        removed in it), then every add in one call; each change gets its result or its own
        error."""
        batch: list[_Change] = []
        try:
            with self._queue:
                batch, self._pending = self._pending, []
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
                c.finished = True

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
    finished: bool = False


# ---------------------------------------------------------------------------- HTTP helpers
def _message(errors: Any) -> str:
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _status_handler(status: int) -> Any:
    """An exception handler answering ``status`` with the exception's message."""

    async def handler(request: Request, exc: Exception) -> Response:
        return _error(status, str(exc))

    return handler


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"upload is larger than the limit of {limit:,} bytes")


def _capped(request: Request, limit: int) -> Request:
    """The same request, its body refused with 413 past ``limit`` bytes: at once when the
    Content-Length says so, otherwise as soon as the bytes received pass it (chunked)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise HTTPException(400, f"bad Content-Length header {length!r}")
        if int(length) > limit:
            raise _too_large(limit)
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
        return message

    return Request(request.scope, receive)


def _media(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    for key, value in _MEDIA.items():
        if ctype == value:
            return key
    raise HTTPException(415, f"expected {' or '.join(_MEDIA.values())}, got {ctype or 'no content type'}")


def _decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    try:
        return decode_image(data, max_pixels=max_pixels)
    except ImageError as exc:
        raise HTTPException(400, f"{name}: {exc}") from None


def _png(image: np.ndarray, size: int | None) -> bytes:
    """PNG of ``uint8 (H, W, C)``; with ``size``, scaled so its longer side is ``size``
    (nearest neighbour when enlarging, so small images stay crisp)."""
    pil = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)
    if size is not None:
        h, w = image.shape[:2]
        scale = size / max(h, w)
        target = (max(1, round(w * scale)), max(1, round(h * scale)))
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
        pil = pil.resize(target, resample)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def _source(upload: UploadFile, n: int) -> str:
    name = os.path.basename(upload.filename or "") or f"image-{n}"
    return "upload:" + "".join(c if c.isprintable() else "?" for c in name)[:200]


# ---------------------------------------------------------------------------- the app
def create_app(collection_path: str | os.PathLike[str], *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_k: int = DEFAULT_MAX_K,
               max_pixels: int = MAX_PIXELS, access: Access | None = None) -> FastAPI:
    """The service for the collection at ``collection_path`` (opened now).

    ``max_upload_bytes`` caps a request body that carries images (413 past it);
    ``max_k`` caps ``k`` (422 past it); ``max_pixels`` refuses larger images before
    decoding; ``access`` says who may change (and read) the collection
    (default: everyone, as fits a service on loopback; see :func:`check_bind`).

    Raises:
        CollectionError: the collection cannot be opened.
        ValueError: a bad setting.
    """
    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_k", max_k),
                        ("max_pixels", max_pixels)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    access = Access() if access is None else access
    if not isinstance(access, Access):
        raise TypeError(f"access must be an Access, got {type(access).__name__}")
    shared = SharedCollection(collection_path)
    # docs_url=None: our /docs below serves Swagger UI from local files, without inline script.
    app = FastAPI(title="lookalike", summary=f"Image search over {shared.path.name}",
                  version=_version(), docs_url=None, redoc_url=None)
    app.state.collection = shared
    app.state.access = access
    app.add_middleware(HardeningHeaders)
    reads, writes = guards(access, write=False), guards(access, write=True)
    # the statuses the guards add: 401 for a token, 403 for a read-only service
    read_errors = (401,) if reads else ()
    write_errors = (403,) if access.read_only else (401,) if writes else ()

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error(422, _message(exc.errors()))

    # Our errors, by class (Starlette picks the most specific): the message is the detail.
    for error, status in ((UnknownItem, 404), (Refused, 409), (RemoteError, 503),
                          (LookalikeError, 400)):
        app.add_exception_handler(error, _status_handler(status))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        # (answered outside the middleware, so the hardening headers are added here)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"},
                            status_code=500, headers=HEADERS)

    def options(data: dict[str, Any], model: type[SearchOptions]) -> SearchOptions:
        try:
            opts = model.model_validate(data)
        except ValidationError as exc:
            raise HTTPException(422, _message(exc.errors())) from None
        if opts.k > max_k:
            raise HTTPException(422, f"k: must be at most {max_k}, got {opts.k}")
        if opts.rerank and not shared.reranks:
            raise HTTPException(422, "rerank: this collection has no re-ranking; leave it out")
        return opts

    def results(request: Request, hits: list[Hit], query: dict[str, Any], opts: SearchOptions,
                seconds: float) -> dict[str, Any]:
        root = request.scope.get("root_path", "")
        names = shared.label_names()
        reranked = shared.reranks if opts.rerank is None else opts.rerank
        return {"query": query, "k": opts.k, "rerank": reranked,
                "distance": "diffusion (1 - score)" if reranked else "euclidean",
                "seconds": round(seconds, 6),
                "results": [{"rank": r, "id": h.id,
                             "distance": round(h.distance, 6) if math.isfinite(h.distance) else None,
                             "label": h.label if h.label >= 0 else None,
                             "label_name": names[h.label] if names and 0 <= h.label < len(names)
                             else None,
                             "source": h.source,
                             "thumbnail_url": f"{root}/api/items/{h.id}/image?size={THUMBNAIL}"}
                            for r, h in enumerate(hits, start=1)]}

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(fn, *args)

    search_body = {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "the query image"},
            "k": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 10},
            "rerank": {"type": "boolean", "description": "omit for the collection's default"}}}},
        "application/json": {"schema": SearchById.model_json_schema()}}}

    @app.post("/api/search", tags=["search"], openapi_extra={"requestBody": search_body},
              summary="Search with an uploaded image or a stored item's id",
              response_model=SearchAnswer, dependencies=reads,
              responses=error_responses(400, *read_errors, 404, 413, 415, 422, 503))
    async def search(request: Request) -> dict[str, Any]:
        media = _media(request)
        req = _capped(request, max_upload_bytes)
        if media == "json":
            try:
                data = await req.json()
            except ValueError:
                raise HTTPException(422, "request: the body is not valid JSON") from None
            if not isinstance(data, dict):
                raise HTTPException(422, 'request: expected a JSON object like {"id": 3, "k": 10}')
            opts = options(data, SearchById)
            assert isinstance(opts, SearchById)
            start = time.perf_counter()
            hits = await run(shared.search_id, opts.id, opts.k, opts.rerank)
            return results(request, hits, {"id": opts.id}, opts, time.perf_counter() - start)
        async with req.form(max_files=1, max_fields=10) as form:
            upload, fields = _one_file(form)
            data = await upload.read()
            name = upload.filename or "file"
        opts = options(fields, SearchOptions)
        start = time.perf_counter()
        image = await run(_decode, data, name, max_pixels)
        hits = await run(shared.search_image, image, opts.k, opts.rerank)
        query = {"filename": name, "height": image.shape[0], "width": image.shape[1]}
        return results(request, hits, query, opts, time.perf_counter() - start)

    @app.get("/api/items/{item_id}", tags=["items"], summary="An item's metadata",
             response_model=ItemInfo, dependencies=reads,
             responses=error_responses(*read_errors, 404, 422, 503))
    def get_item(request: Request, item_id: int = _item_id()) -> dict[str, Any]:
        i, source, label, digest = shared.item(item_id)
        names = shared.label_names()
        root = request.scope.get("root_path", "")
        return {"id": i, "source": source, "label": label if label >= 0 else None,
                "label_name": names[label] if names and 0 <= label < len(names) else None,
                "hash": digest, "image_url": f"{root}/api/items/{i}/image",
                "thumbnail_url": f"{root}/api/items/{i}/image?size={THUMBNAIL}"}

    @app.get("/api/items/{item_id}/image", tags=["items"], summary="An item's stored image (PNG)",
             response_class=Response, dependencies=reads,
             responses={200: {"content": {"image/png": {"schema": {"type": "string",
                                                                   "format": "binary"}}},
                              "description": "the image"},
                        304: {"description": "not modified (If-None-Match gave its ETag)"},
                        **error_responses(*read_errors, 404, 422, 503)})
    def get_image(request: Request, item_id: int = _item_id(),
                  size: int | None = Query(None, ge=8, le=1024,
                                           description="longer side in pixels")) -> Response:
        image, digest = shared.image(item_id)
        etag = f'"{digest[:32]}-{size or 0}"'
        # ids can be reused after a delete, so caches must revalidate; the ETag is the content.
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(_png(image, size), media_type="image/png", headers=headers)

    items_body = {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"], "properties": {
            "files": {"type": "array", "minItems": 1,
                      "items": {"type": "string", "format": "binary"}}}}}}}

    @app.post("/api/items", tags=["items"], status_code=201, openapi_extra={"requestBody": items_body},
              summary="Add one or more images (the same content twice keeps one item)",
              response_model=AddAnswer, dependencies=writes,
              responses=error_responses(400, *write_errors, 413, 415, 422, 503))
    async def add_items(request: Request) -> dict[str, Any]:
        if _media(request) != "multipart":
            raise HTTPException(415, "upload images as multipart/form-data (field 'files')")
        req = _capped(request, max_upload_bytes)
        async with req.form(max_files=1000, max_fields=10) as form:
            uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            blobs = [(await u.read(), u.filename or f"image-{n}", _source(u, n))
                     for n, u in enumerate(uploads)]
        if not blobs:
            raise HTTPException(422, "files: no image files in the upload")
        # Decode every file before changing anything: one bad file adds nothing.
        images = [await run(_decode, data, name, max_pixels) for data, name, _ in blobs]
        sources = [s for _, _, s in blobs]
        ids, new, count = await run(shared.add, images, sources)
        root = request.scope.get("root_path", "")
        return {"items": [{"id": int(i), "source": s, "added": bool(a),
                           "thumbnail_url": f"{root}/api/items/{int(i)}/image?size={THUMBNAIL}"}
                          for i, s, a in zip(ids, sources, new, strict=True)],
                "count": count}

    @app.delete("/api/items/{item_id}", tags=["items"], summary="Remove an item",
                response_model=RemoveAnswer, dependencies=writes,
                responses=error_responses(400, *write_errors, 404, 409, 422, 503))
    async def delete_item(item_id: int = _item_id()) -> dict[str, Any]:
        count = await run(shared.remove, item_id)
        return {"id": item_id, "removed": True, "count": count}

    @app.get("/api/health", tags=["service"], summary="Liveness (open even with --token-reads)",
             response_model=Health)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/stats", tags=["service"], summary="Count, dimension, model, index type, access",
             response_model=Stats, dependencies=reads, responses=error_responses(*read_errors, 503))
    def stats() -> dict[str, Any]:
        return {**shared.stats(), "max_upload_bytes": max_upload_bytes, "max_k": max_k,
                "access": {"writes": access.writes, "reads": access.reads}}

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return FileResponse(STATIC / "index.html", headers={
            "Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> Response:
        # Swagger UI from local files, started by static/docs.js: no inline script.
        return FileResponse(STATIC / "docs.html", headers={
            "Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    return app


def _item_id() -> Any:
    return PathParam(ge=0, le=MAX_ID, description="an item's id", examples=[0])


def _one_file(form: FormData) -> tuple[UploadFile, dict[str, Any]]:
    uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not uploads:
        raise HTTPException(422, "file: give an image file (multipart field 'file') or JSON "
                                 '{"id": N}')
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            if key not in ("k", "rerank"):
                raise HTTPException(422, f"{key}: unknown field; expected file, k, rerank")
            if value != "":  # an empty field means "the default"
                fields[key] = value
    return uploads[0], fields


def _version() -> str:
    from . import __version__

    return __version__


def serve(collection_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, *,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, access: Access | None = None,
          on_ready: Callable[[str], None] | None = None,
          log_level: str = "info") -> None:
    """Run the app on uvicorn until interrupted. ``port`` 0 picks a free port; ``on_ready``
    is called with the page's URL once the socket is bound (before serving).

    Raises:
        LookalikeError: ``host`` is not loopback and ``access`` leaves changes open to anyone
            (:func:`check_bind`); checked before anything is opened.
    """
    import socket

    import uvicorn

    access = Access() if access is None else access
    check_bind(host, access)
    app = create_app(collection_path, max_upload_bytes=max_upload_bytes, access=access)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every keep-alive response waits ~40 ms (Nagle against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        # Listening now, not when uvicorn starts: a client that acts on on_ready's URL at once
        # waits in the backlog instead of being refused.
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    if on_ready is not None:
        on_ready(f"http://{shown}:{bound}/")
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()

