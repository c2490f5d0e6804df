"""The HTTP search service: a FastAPI app over one collection, and the page at ``/``.

Build the app with :func:`create_app`; ``lookalike serve`` runs it on uvicorn. Routes:

* ``POST /api/search``: multipart (``file``, optional ``k``, ``rerank``) or JSON
  ``{"id": N, "k": 10, "rerank": null}``; returns the results and the time taken;
  with more examples (``like``), counter-examples (``unlike``), a region (``crop``) and a
  filter (query parameters ``in``, ``after``, ``before``, ``label``, ``camera``,
  ``has_gps``; :mod:`lookalike.app.richsearch`);
* ``GET /api/items/{id}``, ``GET /api/items/{id}/image[?size=112]``: metadata and the
  stored image as PNG (from the collection's arrays, never from a path);
* ``GET /api/items/{id}/original``: the file the item was read from, at full size (its
  catalogued path or its own source, never a path a request names);
* ``POST /api/items`` (multipart, one or more files), ``DELETE /api/items/{id}``;
* ``GET /api/health``, ``GET /api/stats``; ``/openapi.json`` and its Swagger UI at ``/docs``,
  served from the ``fastapi-offline`` package's copy (nothing is fetched from elsewhere);
* ``GET /duplicates``, the duplicates review page, and its routes (:mod:`lookalike.app.dupservice`).

Every error is JSON ``{"detail": "<message>"}``: 400 for a file that is not an image (or
a decompression bomb, refused before decoding), 401 for a missing or wrong token, 403 for a
change to a read-only service, 404 for an unknown id, 409 for a change the collection cannot
make, 413 past ``max_upload_bytes``, 415 for another content type, 422 for bad parameters,
503 when a remote index (a Milvus server) fails or cannot be reached.

Who may change the collection is an :class:`~lookalike.app.security.Access`: with a token,
every change needs ``Authorization: Bearer <token>``; read-only, changes get 403.
:func:`serve` refuses to open changes without a token on an address other than loopback.
Every response carries hardening headers; the page and ``/docs`` have Content-Security-
Policies that allow no inline script (:mod:`lookalike.app.security`).

The app's threads share the collection through a
:class:`~lookalike.app.shared.SharedCollection`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import mimetypes
import os
import socket
import threading
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.types import Message

from ..data.images import MAX_PIXELS, decode_image
from ..errors import ImageError, LookalikeError, RemoteError
from ..search.collection import Collection
from ..search.files import original
from ..search.filters import Filter
from .dupservice import duplicates_router, move_folder
from .richsearch import RichQuery, crop_of, file_facts, filter_params, name_of, rich_search

if TYPE_CHECKING:
    from .watch import WatchConfig
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
from .shared import Hit, Refused, SharedCollection, UnknownItem

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
#: Swagger UI's script and stylesheet, from the ``fastapi-offline`` package (the 'serve'
#: extra), so that ``/docs`` works with no network.
DOCS_ASSETS = Path(str(files("fastapi_offline") / "static"))
DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20
DEFAULT_MAX_K = 100
THUMBNAIL = 112
_MEDIA = {"multipart": "multipart/form-data", "json": "application/json"}


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
#: Set to 1 (tests only), every answer carries an ``X-Lookalike-Pid`` header naming the process
#: that gave it; read when the app is made, off by default.
PID_HEADER_ENV = "LOOKALIKE_TEST_PID_HEADER"


def create_app(collection_path: str | os.PathLike[str], *,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_k: int = DEFAULT_MAX_K,
               max_pixels: int = MAX_PIXELS, access: Access | None = None,
               move_to: str | os.PathLike[str] | None = None) -> FastAPI:
    """The service for the collection at ``collection_path`` (opened now).

    ``max_upload_bytes`` caps a request body that carries images (413 past it);
    ``max_k`` caps ``k`` (422 past it); ``max_pixels`` refuses larger images before
    decoding; ``access`` says who may change (and read) the collection
    (default: everyone, as fits a service on loopback; see :func:`check_bind`);
    ``move_to`` is where the duplicates page moves copies (None: it cannot move them).

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
    if os.environ.get(PID_HEADER_ENV) == "1":  # tests only: which of the workers answered
        @app.middleware("http")
        async def answered_by(request: Request, call_next: Callable[..., Any]) -> Response:
            response: Response = await call_next(request)
            response.headers["X-Lookalike-Pid"] = str(os.getpid())
            return response

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
                seconds: float, where: Filter) -> dict[str, Any]:
        root = request.scope.get("root_path", "")
        names = shared.label_names()
        reranked = shared.reranks if opts.rerank is None else opts.rerank
        facts = file_facts(shared.current(), [h.id for h in hits])
        return {"query": query, "k": opts.k, "rerank": reranked,
                "distance": "diffusion (1 - score)" if reranked else "euclidean",
                "seconds": round(seconds, 6), "like": opts.like, "unlike": opts.unlike,
                "crop": opts.crop, "filter": where.to_dict(),
                "results": [{"rank": r, "id": h.id,
                             "distance": round(h.distance, 6) if math.isfinite(h.distance) else None,
                             "label": h.label if h.label >= 0 else None,
                             "label_name": names[h.label] if names and 0 <= h.label < len(names)
                             else None,
                             "source": h.source,
                             "name": facts[h.id][0] if h.id in facts else name_of(h.source),
                             "path": facts[h.id][1] if h.id in facts else None,
                             "taken": facts[h.id][2] if h.id in facts else None,
                             "thumbnail_url": f"{root}/api/items/{h.id}/image?size={THUMBNAIL}",
                             "original_url": f"{root}/api/items/{h.id}/original"
                             if h.id in facts or h.source.startswith("/") else None}
                            for r, h in enumerate(hits, start=1)]}

    async def run(fn: Callable[..., Any], *args: Any) -> Any:
        return await run_in_threadpool(fn, *args)

    search_body = {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "the query image"},
            "k": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 10},
            "rerank": {"type": "boolean", "description": "omit for the collection's default"},
            "like": {"type": "string", "description": "more examples: stored ids, comma-separated"},
            "unlike": {"type": "string", "description": "counter-examples: stored ids, comma-separated"},
            "crop": {"type": "string", "description": "a region of the picture: x,y,w,h fractions"}}}},
        "application/json": {"schema": SearchById.model_json_schema()}}}

    @app.post("/api/search", tags=["search"], openapi_extra={"requestBody": search_body},
              summary="Search with an uploaded image or a stored item's id",
              response_model=SearchAnswer, dependencies=reads,
              responses=error_responses(400, *read_errors, 404, 413, 415, 422, 503))
    async def search(request: Request, where: Annotated[Filter, Depends(filter_params)]) -> dict[str, Any]:
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
            if _plain(opts, where):
                hits = await run(shared.search_id, opts.id, opts.k, opts.rerank)
            else:
                hits = await run(rich_search, shared.current(), _rich(opts, where, item=opts.id))
            return results(request, hits, {"id": opts.id}, opts, time.perf_counter() - start, where)
        async with req.form(max_files=1, max_fields=10) as form:
            upload, fields = _one_file(form)
            data = await upload.read()
            name = upload.filename or "file"
        opts = options(fields, SearchOptions)
        start = time.perf_counter()
        image = await run(_decode, data, name, max_pixels)
        if _plain(opts, where):
            hits = await run(shared.search_image, image, opts.k, opts.rerank)
        else:
            hits = await run(rich_search, shared.current(), _rich(opts, where, image=image))
        query = {"filename": name, "height": image.shape[0], "width": image.shape[1]}
        return results(request, hits, query, opts, time.perf_counter() - start, where)

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

    @app.get("/api/items/{item_id}/original", tags=["items"],
             summary="The file an item was read from, at full size (never another path)",
             response_class=Response, dependencies=reads,
             responses={200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                              "description": "the file's bytes"},
                        **error_responses(*read_errors, 404, 422, 503)})
    def get_original(item_id: int = _item_id()) -> Response:
        coll = shared.current()
        shared.item(item_id)  # (404 for an unknown id)
        found = original(coll, item_id)
        if found is None:
            raise UnknownItem(f"item {item_id} has no original file (it was not read from a file, "
                              "or the file is gone)")
        media = mimetypes.guess_type(found)[0] or "application/octet-stream"
        return FileResponse(found, media_type=media, headers={
            "Cache-Control": "no-cache", "Content-Security-Policy": "default-src 'none'; sandbox"})

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

    app.include_router(duplicates_router(shared, access, move_folder(move_to)))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    return app


def _item_id() -> Any:
    return PathParam(ge=0, le=MAX_ID, description="an item's id", examples=[0])


def _plain(opts: SearchOptions, where: Filter) -> bool:
    """Whether a search is a plain one (batched with others, :class:`SharedCollection`)."""
    return not (where or opts.like or opts.unlike or opts.crop)


def _rich(opts: SearchOptions, where: Filter, **query: Any) -> RichQuery:
    return RichQuery(opts.k, opts.rerank, like=tuple(opts.like), unlike=tuple(opts.unlike),
                     crop=crop_of(opts.crop), where=where, **query)


#: Multipart fields of a search besides the file; the lists are comma-separated.
_FIELDS = ("k", "rerank", "like", "unlike", "crop")


def _one_file(form: FormData) -> tuple[UploadFile, dict[str, Any]]:
    uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if not uploads:
        raise HTTPException(422, "file: give an image file (multipart field 'file') or JSON "
                                 '{"id": N}')
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        if isinstance(value, str):
            if key not in _FIELDS:
                raise HTTPException(422, f"{key}: unknown field; expected file, {', '.join(_FIELDS)}")
            if value != "":  # an empty field means "the default"
                fields[key] = [v for v in value.split(",") if v.strip()] if key in _FIELDS[2:] else value
    return uploads[0], fields


def _version() -> str:
    from .. import __version__

    return __version__


def serve(collection_path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = 8000, *,
          max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, access: Access | None = None,
          on_ready: Callable[[str], None] | None = None,
          log_level: str = "info", workers: int = 1,
          move_to: str | os.PathLike[str] | None = None,
          watch: WatchConfig | None = None) -> None:
    """Run the app on uvicorn until interrupted. ``port`` 0 picks a free port; ``on_ready``
    is called with the page's URL once the socket is bound (before serving).

    ``workers`` > 1 forks that many processes in all (POSIX only), each with its own app
    over the collection, accepting on the one socket: searches run on as many cores, free
    of one process's GIL. A change takes the collection's writer lock, whichever process
    receives it, and the others read the new commit before their next answer
    (:meth:`SharedCollection._current`). The processes stop together.

    ``watch`` keeps the collection in step with its remembered folders while it serves
    (:func:`lookalike.app.watch.keep_in_sync`), in a thread of the first process only: one
    process watches and writes, every process reads its commits as any other's.

    Raises:
        LookalikeError: ``host`` is not loopback and ``access`` leaves changes open to anyone
            (:func:`check_bind`); checked before anything is opened.
    """
    import uvicorn

    access = Access() if access is None else access
    check_bind(host, access)
    if workers < 1 or (workers > 1 and not hasattr(os, "fork")):
        raise LookalikeError(f"workers must be 1 or more ({workers} given), and more than 1 "
                             "needs a POSIX system")
    # The collection is opened before the socket is bound, so that a bad one is reported at
    # once. With workers each process opens it after the fork (no thread, connection or
    # encoder session crosses a fork): here it is only checked.
    def made() -> FastAPI:
        return create_app(collection_path, max_upload_bytes=max_upload_bytes, access=access,
                          move_to=move_to)

    if workers == 1:
        app = made()
    else:
        Collection.open(collection_path).close()
    sock = _listen(host, port, reuse_port=workers > 1)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if sock.family == socket.AF_INET6 else host

    def run(app: FastAPI, sock: socket.socket) -> None:
        config = uvicorn.Config(app, log_level=log_level, access_log=log_level == "debug")
        try:
            uvicorn.Server(config).run(sockets=[sock])
        finally:
            sock.close()

    def worker(ready: int) -> None:
        # its own socket on the same port: the kernel spreads new connections evenly over
        # the processes' sockets (SO_REUSEPORT), where one shared socket lets whichever
        # process wakes first take most of them
        sock.close()
        mine = _listen(host, bound, reuse_port=True)
        app = made()
        os.write(ready, b"1")
        os.close(ready)
        run(app, mine)

    children = _fork_workers(workers - 1, worker)
    stop = threading.Event()
    watcher: threading.Thread | None = None
    try:
        if workers > 1:
            app = made()
            _wait_ready(children)
        if watch is not None:
            watcher = _start_watching(collection_path, watch, stop)
        if on_ready is not None:  # every process has its collection open: none keeps a
            on_ready(f"http://{shown}:{bound}/")  # client waiting on its start
        run(app, sock)
    finally:
        stop.set()
        if watcher is not None:
            watcher.join(timeout=30)
        _stop_workers(children)


def _start_watching(collection_path: str | os.PathLike[str], config: WatchConfig,
                    stop: threading.Event) -> threading.Thread:
    """The thread that syncs the collection with its folders until ``stop`` (first what
    changed while nothing watched, then each burst); the service answers meanwhile."""
    from .watch import keep_in_sync

    def say(report: Any) -> None:
        log.info("synced %s: %s", collection_path, report.summary())

    def work() -> None:
        try:
            keep_in_sync(collection_path, stop, config, on_report=say)
        except Exception:
            log.exception("watching the folders of %s failed; no longer watching", collection_path)

    thread = threading.Thread(target=work, name="lookalike-watch", daemon=True)
    thread.start()
    return thread


def _listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port``, listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
    # without it every keep-alive response waits ~40 ms (Nagle against delayed ACKs).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        # Listening now, not when uvicorn starts: a client that acts on on_ready's URL at once
        # waits in the backlog instead of being refused.
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _fork_workers(n: int, work: Callable[[int], None]) -> list[tuple[int, int]]:
    """Fork ``n`` processes that each run ``work(ready)``, which writes a byte to the file
    descriptor ``ready`` once it can answer, and exit; ``(process id, the other end of
    ready)`` of each. A child dies with its parent (Linux: the parent-death signal) and
    never returns into the caller."""
    children = []
    for _ in range(n):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.close(read)
                _die_with_parent()
                work(write)
            except LookalikeError as exc:  # the parent says it, in one line
                with contextlib.suppress(OSError):
                    os.write(write, f"!{exc}".encode()[:4000])
                code = 2
            except BaseException:  # noqa: B036 - a child reports and exits, never returns
                log.exception("a service worker failed")
                code = 1
            finally:
                os._exit(code)
        os.close(write)
        children.append((pid, read))
    return children


def _wait_ready(children: list[tuple[int, int]]) -> None:
    for _, ready in children:
        try:
            said = os.read(ready, 4096)
        finally:
            os.close(ready)
        if said != b"1":
            raise LookalikeError("a service worker could not start: " + (
                said[1:].decode(errors="replace") if said else "its error is above"))


def _die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (no-op elsewhere)."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop_workers(children: list[tuple[int, int]]) -> None:
    import signal

    for pid, _ in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid, _ in children:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

