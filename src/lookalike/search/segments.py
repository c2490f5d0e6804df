"""Segments: where a collection's items lie on disk, written only as they change.

A collection's items live in *segments*, each written once and never changed (as in
Lucene, Milvus's sealed segments, Lance's fragments). A segment ``NNNNNN`` (the generation
that wrote it) is a few files under ``segments/``:

* ``NNNNNN.ids.npy`` (``int64 (n,)``) and ``NNNNNN.codes.npy`` (``float32 (n, d)``), row-aligned;
* ``NNNNNN.pictures.bin`` and ``NNNNNN.offsets.npy`` (``int64 (n + 1,)``): the stored
  pictures (what the page and the figures show), each compressed losslessly, PNG for grey
  and WebP (lossless) for colour, or raw pixels where that is smaller (:func:`encode_picture`),
  picture ``r`` at bytes ``offsets[r]:offsets[r + 1]``;
* ``NNNNNN.faiss``: the segment's own FAISS index (the collection's factory; an exact
  ``Flat`` one for a segment too small to train an inverted file), absent when the index
  lives elsewhere (Milvus);
* ``NNNNNN.deleted.GGGGGG.npy`` (``int64``, row offsets): the segment's deleted rows as of
  generation ``GGGGGG``, written again (small) by each commit that deletes from it.

The manifest lists the segments in order, with each file's size and SHA-256, computed once
when the file is written, and stays the commit point: a commit writes new files under new
names, then replaces ``manifest.json`` atomically, then deletes what no longer belongs to
it. Opening checks the files' sizes only; :meth:`SegmentStore.verify` (``lookalike
verify``) hashes every file.

Searches run over each segment's index, deleted rows skipped by a FAISS id selector, and
are merged by distance (ties by id). :func:`plan_merge` keeps the count of segments and of
deleted rows small (the merge policy, run after each commit): with more than
:data:`MAX_SEGMENTS` segments, the newest ones after the last segment holding at least
:data:`BIG_SHARE` of the rows are merged into one; a segment with more than
:data:`DELETED_SHARE` of its rows deleted is rewritten, with the segments after it.
``lookalike compact`` merges everything into one.

Format 1 collections (one ``ids.npy``, ``embeddings.npy``, ``images.npy`` and
``index.faiss``) are read as a single segment with raw pictures (:func:`open_store`); a
commit lists those files as its first segment, ``lookalike migrate`` rewrites them.
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from PIL import Image

from ..errors import CollectionError
from ..fsutil import file_sha256, fsync_dir
from .backends import FaissBackend, IndexBackend

log = logging.getLogger(__name__)

DIR = "segments"
#: The merge policy (see the module docstring).
MAX_SEGMENTS = 8
BIG_SHARE = 0.25
DELETED_SHARE = 0.2
#: FAISS's advice: at least this many training points per inverted list.
MIN_POINTS_PER_LIST = 39


# ---------------------------------------------------------------------------- pictures
def encode_picture(image: np.ndarray) -> bytes:
    """One ``uint8 (H, W, C)`` picture, losslessly compressed: PNG when grey, WebP when
    colour; its raw pixels instead when that is not smaller (a tiny picture, where the
    format's headers outweigh the gain), told apart by their length, ``H * W * C``."""
    buf = io.BytesIO()
    if image.shape[2] == 1:
        Image.fromarray(image[:, :, 0], "L").save(buf, "PNG", optimize=False, compress_level=6)
    else:
        # lossless, the fastest effort (method 0): about 0.4 ms of CPU a 96-px photo preview
        # and 18% more bytes than method 1, which took 2.1 ms, a fifth of the model's time
        # an image (benchmarks/pipeline.py; docs/benchmarks.md); 100/4 took 22 ms
        Image.fromarray(image, "RGB").save(buf, "WEBP", lossless=True, quality=0, method=0)
    return buf.getvalue() if buf.tell() < image.size else np.ascontiguousarray(image).tobytes()


def decode_picture(data: bytes | memoryview, shape: tuple[int, int, int]) -> np.ndarray:
    """The ``uint8 (H, W, C)`` picture that :func:`encode_picture` compressed."""
    if len(data) == shape[0] * shape[1] * shape[2]:
        return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("L" if shape[2] == 1 else "RGB"), dtype=np.uint8)
    return arr.reshape(shape)


# ---------------------------------------------------------------------------- manifest entries
@dataclass(frozen=True)
class Segment:
    """One segment as the manifest lists it: ``files`` by role (``ids``, ``codes``,
    ``pictures``, and ``offsets``, ``index``, ``deleted`` when present), each file's
    ``{"sha256", "bytes"}`` in ``checksums``; ``pictures`` is ``"png"`` (compressed, with
    offsets) or ``"npy"`` (a raw ``uint8 (n, H, W, C)`` array, format 1)."""

    name: str
    count: int
    files: dict[str, str]
    checksums: dict[str, dict[str, Any]]
    pictures: str = "png"
    deleted: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "count": self.count, "deleted": self.deleted,
                "pictures": self.pictures, "files": dict(self.files),
                "checksums": dict(self.checksums)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Segment:
        try:
            return cls(str(d["name"]), int(d["count"]), dict(d["files"]), dict(d["checksums"]),
                       str(d.get("pictures", "png")), int(d.get("deleted", 0)))
        except (KeyError, TypeError, ValueError):
            raise CollectionError(f"a segment entry of the manifest is damaged: {d!r:.80}") from None


def _checksum(path: Path) -> dict[str, Any]:
    return {"sha256": file_sha256(path), "bytes": path.stat().st_size}


def checksums(root: Path, files: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``{file name: {"sha256": ..., "bytes": ...}}`` of ``files`` (names under ``root``)."""
    return {name: _checksum(root / name) for name in sorted(set(files.values()))}


def save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array))


def check_sizes(root: Path, checksums: dict[str, dict[str, Any]]) -> None:
    """Raise :class:`CollectionError` naming the first file that is missing or whose size
    differs from the manifest's record (the cheap check made on open)."""
    for name, want in checksums.items():
        path = root / name
        if not path.is_file():
            raise CollectionError(f"{path} is missing; rebuild the collection with 'lookalike index'")
        size = path.stat().st_size
        if size != want.get("bytes", size):
            raise CollectionError(f"{path} is damaged (truncated: {size} bytes, the manifest says "
                                  f"{want['bytes']}); rebuild the collection with 'lookalike index'")


def check_hashes(root: Path, checksums: dict[str, dict[str, Any]]) -> None:
    """:func:`check_sizes`, then every file's SHA-256 against the manifest's."""
    check_sizes(root, checksums)
    for name, want in checksums.items():
        if file_sha256(root / name) != want.get("sha256"):
            raise CollectionError(f"{root / name} is damaged (its checksum does not match the "
                                  "manifest); rebuild the collection with 'lookalike index'")


#: Format 1's file names, unless its manifest names others.
LEGACY_FILES = {"ids": "ids.npy", "embeddings": "embeddings.npy", "images": "images.npy",
                "index": "index.faiss"}


def open_store(root: Path, manifest: dict[str, Any], verify: bool = False,
               loaded: dict[str, _Loaded] | None = None) -> tuple[dict[str, Any], SegmentStore]:
    """The segments a collection's ``manifest`` lists, read (those in ``loaded``, already
    read by an older store, reused), their sizes checked (and with ``verify`` their
    SHA-256). A format 1 manifest comes back with its arrays and index as one segment of
    raw pictures and only its collection-wide files (the graph, a remote index's pointer)
    under ``files``."""
    local = manifest["backend"].get("name", "faiss") == "faiss"
    if manifest.get("format_version") == 1:
        files = {**LEGACY_FILES, **(manifest.get("files") or {})}
        roles = {"ids": files["ids"], "codes": files["embeddings"], "pictures": files["images"]}
        if local:
            roles["index"] = files["index"]
        sums = manifest.get("checksums") or {}
        segments = [Segment("v1", int(manifest["count"]), roles,
                            {f: sums[f] for f in roles.values() if f in sums}, "npy")]
        own = {k: v for k, v in files.items() if k.startswith("graph_") or (k == "index" and not local)}
        manifest = {**manifest, "files": own,
                    "checksums": {f: sums[f] for f in own.values() if f in sums}}
    else:
        segments = [Segment.from_dict(s) for s in manifest.get("segments") or []]
    for sums in [s.checksums for s in segments] + [manifest.get("checksums") or {}]:
        (check_hashes if verify else check_sizes)(root, sums)
    if manifest.get("pictures"):
        h, w, c = (int(v) for v in manifest["pictures"])
    else:
        try:
            raw = np.load(root / segments[0].files["pictures"], allow_pickle=False, mmap_mode="r")
        except (OSError, ValueError, IndexError) as exc:
            raise CollectionError(f"{root}: the pictures are damaged ({exc}); rebuild with "
                                  "'lookalike index'") from None
        h, w, c = (int(v) for v in raw.shape[1:])
    backend = manifest["backend"]
    spec = IndexSpec(backend.get("factory", "Flat"), backend.get("search_params", "")) if local else None
    return manifest, SegmentStore(root, segments, int(manifest["dim"]), (h, w, c), spec, loaded)


# ---------------------------------------------------------------------------- writing
@dataclass(frozen=True)
class IndexSpec:
    """How a segment's FAISS index is made: the collection's factory and search parameters."""

    factory: str = "Flat"
    search_params: str = ""

    def build(self, dim: int, ids: np.ndarray, codes: np.ndarray) -> FaissBackend:
        """An index of ``codes`` with ``ids``: the factory's, or exact (``Flat``) when it
        needs more training points than there are codes."""
        index = FaissBackend(dim, self.factory, search_params=self.search_params)
        if not index.index.is_trained:
            ivf = faiss.try_extract_index_ivf(index.index.index)
            need = MIN_POINTS_PER_LIST * (ivf.nlist if ivf is not None else 1)
            if len(codes) < need:
                index = FaissBackend(dim, "Flat")
        index.add(ids, codes)
        return index


def write_segment(root: Path, name: str, ids: np.ndarray, codes: np.ndarray,
                  pictures: np.ndarray | tuple[bytes, np.ndarray], spec: IndexSpec | None,
                  index: FaissBackend | None = None) -> Segment:
    """Write a new segment's files (each atomically) and return its manifest entry.

    ``pictures``: ``uint8 (n, H, W, C)`` to compress, or already compressed ``(blob,
    offsets)``; ``spec``: how to index it (``None``: the index lives elsewhere), unless a
    ready ``index`` of these codes is given.
    """
    (root / DIR).mkdir(exist_ok=True)
    stem = f"{DIR}/{name}"
    files = {"ids": f"{stem}.ids.npy", "codes": f"{stem}.codes.npy",
             "pictures": f"{stem}.pictures.bin", "offsets": f"{stem}.offsets.npy"}
    if isinstance(pictures, tuple):
        blob, offsets = pictures
    else:
        parts = [encode_picture(p) for p in pictures]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        blob = b"".join(parts)
    for key, arr in (("ids", np.asarray(ids, np.int64)), ("codes", np.asarray(codes, np.float32)),
                     ("offsets", offsets)):
        _write_new(root / files[key], functools.partial(save_npy, array=arr))
    _write_new(root / files["pictures"], lambda path: Path(path).write_bytes(blob))
    if spec is not None or index is not None:
        built = index if index is not None else (spec or IndexSpec()).build(
            codes.shape[1], ids, codes)
        files["index"] = f"{stem}.faiss"
        _write_new(root / files["index"], lambda path: faiss.write_index(built.index, path))
    fsync_dir(root / DIR)
    return Segment(name, len(ids), files, {f: _checksum(root / f) for f in files.values()})


def _write_new(path: Path, write: Callable[[str], Any]) -> None:
    """Write a file of a new segment and make it durable. No temporary file and rename: its
    name is new and becomes visible only when a manifest written afterwards lists it (a
    crash leaves an unlisted file, deleted by the next commit's :func:`sweep`); the caller
    syncs the directory once for all of them."""
    write(str(path))
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def write_deleted(root: Path, segment: Segment, rows: np.ndarray, generation: int) -> Segment:
    """``segment`` with its deleted rows (all of them, sorted offsets) recorded in a new file."""
    name = f"{DIR}/{segment.name}.deleted.{generation:06d}.npy"
    (root / DIR).mkdir(exist_ok=True)  # (absent from a format 1 collection)
    _write_new(root / name, functools.partial(save_npy, array=np.asarray(rows, np.int64)))
    fsync_dir(root / DIR)
    files = {**segment.files, "deleted": name}
    sums = {f: s for f, s in segment.checksums.items() if f in files.values()}
    sums[name] = _checksum(root / name)
    return Segment(segment.name, segment.count, files, sums, segment.pictures, len(rows))


# ---------------------------------------------------------------------------- reading
@dataclass
class _Loaded:
    """A segment's arrays: ``ids`` read, ``codes`` and raw pictures mapped, ``live`` the
    rows not deleted, ``index`` its FAISS index (``None`` when the index lives elsewhere)."""

    segment: Segment
    ids: np.ndarray
    codes: np.ndarray
    live: np.ndarray
    index: FaissBackend | None
    offsets: np.ndarray | None = None
    raw: np.ndarray | None = None
    gone_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    params: Any = None  # FAISS search parameters skipping the deleted ids, made on first use
    #: the compressed pictures' bytes, mapped: a reader of this snapshot still reads them
    #: after a later commit (a merge) has deleted the file
    blob: np.ndarray | None = None


def _load(root: Path, seg: Segment, dim: int, spec: IndexSpec | None) -> _Loaded:
    f = seg.files
    try:
        ids = np.load(root / f["ids"], allow_pickle=False)
        codes = np.load(root / f["codes"], allow_pickle=False, mmap_mode="r")
        live = np.ones(len(ids), dtype=bool)
        if f.get("deleted"):
            live[np.load(root / f["deleted"], allow_pickle=False)] = False
        offsets = raw = blob = None
        if seg.pictures == "npy":
            raw = np.load(root / f["pictures"], allow_pickle=False, mmap_mode="r")
            n_pictures = len(raw)
        else:
            offsets = np.load(root / f["offsets"], allow_pickle=False)
            n_pictures = len(offsets) - 1
            size = (root / f["pictures"]).stat().st_size
            blob = (np.memmap(root / f["pictures"], np.uint8, "r") if size
                    else np.empty(0, np.uint8))
    except (OSError, ValueError, IndexError) as exc:
        raise CollectionError(f"{root}: a file of segment {seg.name} is damaged ({exc}); rebuild "
                              "with 'lookalike index'") from None
    if ids.shape != (seg.count,) or codes.shape != (seg.count, dim) or n_pictures != seg.count:
        raise CollectionError(f"{root}: the ids, codes and pictures of segment {seg.name} do not "
                              "line up; rebuild with 'lookalike index'")
    index = None
    if spec is not None and f.get("index"):
        index = _read_index(root / f["index"], dim)
        if not isinstance(faiss.downcast_index(index.index.index), faiss.IndexFlat):
            # the collection's factory (a small segment's index is exact: Flat, no parameters)
            index = FaissBackend(dim, spec.factory, index.index, spec.search_params)
        if len(index) != seg.count:
            raise CollectionError(f"{root / f['index']} holds {len(index)} vectors, segment "
                                  f"{seg.name} {seg.count}; rebuild with 'lookalike index'")
    return _Loaded(seg, ids, codes, live, index, offsets, raw, ids[~live], blob=blob)


def _read_index(path: Path, dim: int) -> FaissBackend:
    """A segment's index, mapped rather than read where FAISS can (a segment's index is
    never changed once written): opening costs page faults, not a read of the whole file."""
    try:
        index = faiss.read_index(str(path), getattr(faiss, "IO_FLAG_MMAP_IFC", 0))
    except RuntimeError:
        return FaissBackend.load(path.parent, {"file": path.name}, dim)
    if index.d != dim:
        raise CollectionError(f"{path} holds {index.d}-d vectors, the manifest says {dim}")
    return FaissBackend(dim, "Flat", index)


def _reuse(root: Path, part: _Loaded, seg: Segment) -> _Loaded:
    """``part``, already read, as ``seg`` lists it now: the same arrays and index, its
    deleted rows read again when a commit recorded new ones."""
    if part.segment == seg:
        return part
    live = np.ones(len(part.ids), dtype=bool)
    if seg.files.get("deleted"):
        try:
            live[np.load(root / seg.files["deleted"], allow_pickle=False)] = False
        except (OSError, ValueError, IndexError) as exc:
            raise CollectionError(f"{root / seg.files['deleted']} is damaged ({exc})") from None
    return _Loaded(seg, part.ids, part.codes, live, part.index, part.offsets, part.raw,
                   part.ids[~live], blob=part.blob)


def _search_one(part: _Loaded, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of one segment, its deleted rows left out by a FAISS id selector (Flat,
    IVF and HNSW take one; another index is over-fetched by the deleted count)."""
    assert part.index is not None
    gone = part.gone_ids
    if not len(gone):
        return part.index.search(q, k)
    if part.params is None:
        part.params = _selector_params(part.index.index, gone)
    if part.params is not False:
        dist, ids = part.index.index.search(q, k, params=part.params)
        dist[ids < 0] = np.inf
        return dist, ids.astype(np.int64)
    dist, ids = part.index.search(q, min(k + len(gone), max(k, part.segment.count)))
    dead = np.isin(ids, gone)
    dist[dead], ids[dead] = np.inf, -1
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)


def _selector_params(index: Any, gone: np.ndarray) -> Any:
    """FAISS search parameters that skip ids ``gone`` (keeping the index's own ``nprobe``
    or ``efSearch``), or ``False`` for an index that takes none."""
    fs: Any = faiss  # (its type stubs lack the search parameters' keyword arguments)
    sel = fs.IDSelectorNot(fs.IDSelectorBatch(np.ascontiguousarray(gone, np.int64)))
    inner = fs.downcast_index(index.index)
    ivf = fs.try_extract_index_ivf(inner)
    if ivf is not None:
        params = fs.SearchParametersIVF(sel=sel, nprobe=ivf.nprobe)
    elif hasattr(inner, "hnsw"):
        params = fs.SearchParametersHNSW(sel=sel, efSearch=inner.hnsw.efSearch)
    elif isinstance(inner, fs.IndexFlat):
        params = fs.SearchParameters(sel=sel)
    else:
        return False
    params.keep = (sel, gone)  # (the selector must outlive the parameters)
    return params


class SegmentStore:
    """The segments of one committed manifest, read: a snapshot that a later commit does not
    change (it makes a new store). Rows are numbered in segment order, deleted ones left
    out: row ``r`` of :attr:`ids`, :attr:`codes` and :meth:`pictures`."""

    def __init__(self, root: Path, segments: Sequence[Segment], dim: int,
                 shape: tuple[int, int, int], spec: IndexSpec | None,
                 loaded: dict[str, _Loaded] | None = None) -> None:
        self.root = root
        self.segments = list(segments)
        self.dim = dim
        self.shape = shape
        self.spec = spec
        old = loaded or {}
        self.parts = [_reuse(root, old[s.name], s) if s.name in old else _load(root, s, dim, spec)
                      for s in self.segments]
        self.ids = (np.concatenate([p.ids[p.live] for p in self.parts]) if self.parts
                    else np.empty(0, np.int64))
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        self._codes: np.ndarray | None = None
        self._pictures: np.ndarray | None = None
        # where each row lies: segment number and offset in it
        self._seg = np.concatenate([np.full(int(p.live.sum()), i, np.int32)
                                    for i, p in enumerate(self.parts)] or [np.empty(0, np.int32)])
        self._off = np.concatenate([np.flatnonzero(p.live) for p in self.parts]
                                   or [np.empty(0, np.int64)])

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def loaded(self) -> dict[str, _Loaded]:
        return {p.segment.name: p for p in self.parts}

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The row of each id, ``int64``; -1 for an id not in the collection."""
        q = np.asarray(ids, dtype=np.int64).ravel()
        if not len(self._sorted):
            return np.full(len(q), -1, np.int64)
        pos = np.minimum(np.searchsorted(self._sorted, q), len(self._sorted) - 1)
        return np.where(self._sorted[pos] == q, self._order[pos], -1).astype(np.int64)

    @property
    def codes(self) -> np.ndarray:
        """``float32 (n, d)``, row-aligned with :attr:`ids` (a mapped file when it can be)."""
        if self._codes is None:
            if len(self.parts) == 1 and self.parts[0].live.all():
                self._codes = self.parts[0].codes
            else:
                self._codes = (np.concatenate([np.asarray(p.codes)[p.live] for p in self.parts])
                               if self.parts else np.empty((0, self.dim), np.float32))
        return self._codes

    def codes_at(self, rows: np.ndarray) -> np.ndarray:
        """The codes of ``rows`` (``int64``, each in range): ``float32 (len(rows), d)``,
        read from each segment's (mapped) codes without assembling the rest."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float32)
        where = self._seg[rows]
        for s in np.unique(where):
            sel = where == s
            out[sel] = np.asarray(self.parts[s].codes)[self._off[rows[sel]]]
        return out

    def locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where rows lie: each one's segment (an index into :attr:`segments`) and its place
        among that segment's pictures (deleted ones counted)."""
        return self._seg[rows], self._off[rows]

    def segment_pictures(self, part: int) -> int:
        """How many pictures segment ``part``'s files hold (deleted ones counted)."""
        p = self.parts[part]
        if p.raw is not None:
            return len(p.raw)
        assert p.offsets is not None
        return len(p.offsets) - 1

    def picture(self, row: int) -> np.ndarray:
        """The stored picture of row ``row``: ``uint8 (H, W, C)``."""
        return self.picture_at(int(self._seg[row]), int(self._off[row]))

    def picture_at(self, part: int, off: int) -> np.ndarray:
        """Picture ``off`` of segment ``part`` (see :meth:`locate`): ``uint8 (H, W, C)``."""
        p = self.parts[part]
        if p.raw is not None:
            return np.asarray(p.raw[off])
        assert p.offsets is not None and p.blob is not None
        start, stop = int(p.offsets[off]), int(p.offsets[off + 1])
        return decode_picture(p.blob[start:stop].tobytes(), self.shape)

    def pictures(self) -> np.ndarray:
        """Every stored picture, ``uint8 (n, H, W, C)`` (decoded once, then kept)."""
        if self._pictures is None:
            out = np.empty((len(self), *self.shape), np.uint8)
            r = 0
            for p in self.parts:
                rows = np.flatnonzero(p.live)
                if p.raw is not None:
                    out[r:r + len(rows)] = p.raw[rows]
                else:
                    assert p.offsets is not None and p.blob is not None
                    for j, row in enumerate(rows):
                        out[r + j] = decode_picture(
                            p.blob[p.offsets[row]:p.offsets[row + 1]].tobytes(), self.shape)
                r += len(rows)
            self._pictures = out
        return self._pictures

    def compressed(self, part: _Loaded, rows: np.ndarray) -> tuple[bytes, np.ndarray]:
        """The compressed pictures of ``part``'s ``rows``, copied without decoding."""
        if part.raw is not None:
            parts = [encode_picture(np.asarray(part.raw[r])) for r in rows]
        else:
            assert part.offsets is not None and part.blob is not None
            parts = [part.blob[part.offsets[r]:part.offsets[r + 1]].tobytes() for r in rows]
        offsets = np.zeros(len(parts) + 1, np.int64)
        offsets[1:] = np.cumsum([len(p) for p in parts])
        return b"".join(parts), offsets

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` over every segment's index, merged: ``(distances, ids)`` ``(m, k)``,
        nearest first (ties by id), padded with +inf / -1."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        found = [_search_one(p, q, k) for p in self.parts if p.live.any()]
        if not found:
            return np.full((len(q), k), np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        if len(found) == 1:
            return found[0]
        dist = np.concatenate([d for d, _ in found], axis=1)
        ids = np.concatenate([i for _, i in found], axis=1)
        key = np.where(ids < 0, np.iinfo(np.int64).max, ids)
        order = np.lexsort((key, dist), axis=1)[:, :k] if dist.size else np.empty((len(q), 0), int)
        return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)

    # ------------------------------------------------------------------ changes
    def with_deleted(self, ids: np.ndarray, generation: int) -> list[Segment]:
        """The segment list once ``ids`` are deleted (new deletion files written)."""
        rows = self.rows(ids)
        rows = rows[rows >= 0]
        out = list(self.segments)
        for i in np.unique(self._seg[rows]):
            part = self.parts[i]
            dead = np.union1d(np.flatnonzero(~part.live), self._off[rows[self._seg[rows] == i]])
            out[i] = write_deleted(self.root, part.segment, dead, generation)
        return out

    def merged(self, start: int, name: str) -> list[Segment]:
        """The segment list with segments ``start:`` merged into one new segment ``name``
        (deleted rows dropped, pictures copied as compressed)."""
        parts = self.parts[start:]
        ids = np.concatenate([p.ids[p.live] for p in parts])
        codes = np.concatenate([np.asarray(p.codes)[p.live] for p in parts])
        pieces = [self.compressed(p, np.flatnonzero(p.live)) for p in parts]
        blob = b"".join(b for b, _ in pieces)
        sizes = np.concatenate([np.diff(o) for _, o in pieces])
        offsets = np.zeros(len(sizes) + 1, np.int64)
        offsets[1:] = np.cumsum(sizes)
        if not len(ids):
            return self.segments[:start]
        seg = write_segment(self.root, name, ids, codes, (blob, offsets), self.spec)
        return [*self.segments[:start], seg]

    def verify(self) -> None:
        """Hash every file of every segment against the manifest (the full check)."""
        for s in self.segments:
            check_hashes(self.root, s.checksums)


class SegmentedIndex(IndexBackend):
    """A store's segment indexes seen as one FAISS backend (searched together); changes go
    through the store's commits, not through :meth:`add` and :meth:`remove`."""

    name = "faiss"

    def __init__(self, store: SegmentStore) -> None:
        super().__init__(store.dim)
        assert store.spec is not None
        self.store = store
        self.factory, self.search_params = store.spec.factory, store.spec.search_params

    def __len__(self) -> int:
        return len(self.store)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError("segments are added by a commit")

    def remove(self, ids: np.ndarray) -> int:
        raise NotImplementedError("segments are changed by a commit")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from .backends import _check, _check_k

        _check_k(k)
        return self.store.search(_check(queries, self.dim, "queries"), k)

    def save(self, directory: str | os.PathLike[str], filename: str | None = None) -> str:
        raise NotImplementedError("each segment saves its own index")

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "factory": self.factory, "metric": "l2",
                "search_params": self.search_params}

    @classmethod
    def load(cls, directory: str | os.PathLike[str], settings: dict[str, Any],
             dim: int) -> SegmentedIndex:
        raise NotImplementedError("open the collection instead")


def plan_merge(segments: Sequence[Segment]) -> int | None:
    """Where the merge policy starts merging (all segments from there on become one), or
    ``None`` when nothing needs it (see the module docstring)."""
    live = [s.count - s.deleted for s in segments]
    heavy = [i for i, s in enumerate(segments) if s.count and s.deleted > DELETED_SHARE * s.count]
    start = heavy[0] if heavy else None
    if len(segments) > MAX_SEGMENTS:
        total = max(1, sum(live))
        big = [i for i, n in enumerate(live[:-1]) if n >= BIG_SHARE * total]
        tail = big[-1] + 1 if big else 0
        if len(segments) - tail < 2:  # the big ones are many: merge the newest two
            tail = len(segments) - 2
        start = tail if start is None else min(start, tail)
    return start


def segment_files(segments: Sequence[Segment]) -> set[str]:
    return {f for s in segments for f in s.files.values()}


def sweep(root: Path, keep: set[str]) -> None:
    """Delete the files under ``segments/`` that the committed manifest does not list
    (older generations', or those of a commit a crash cut short)."""
    folder = root / DIR
    if not folder.is_dir():
        return
    for p in folder.iterdir():
        if f"{DIR}/{p.name}" not in keep:
            try:
                p.unlink()
            except OSError as exc:
                log.debug("could not delete %s: %s", p, exc)


def bytes_per_item(root: Path, segments: Sequence[Segment]) -> float:
    """Mean stored bytes of a picture (compressed or raw)."""
    n = sum(s.count for s in segments)
    size = sum((root / s.files["pictures"]).stat().st_size
               + ((root / s.files["offsets"]).stat().st_size if "offsets" in s.files else 0)
               for s in segments)
    return size / max(1, n)


__all__ = ["DIR", "MAX_SEGMENTS", "IndexSpec", "Segment", "SegmentStore", "check_hashes",
           "check_sizes", "decode_picture", "encode_picture", "open_store", "plan_merge"]
