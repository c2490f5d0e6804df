"""Encoding a new collection so that a crash costs one chunk: the codes are saved chunk by
chunk under the collection's staging directory (``.<name>.partial/chunks``), and running the
same ``index`` again (same model, same images) loads the chunks already there instead of
encoding them again (:meth:`lookalike.search.collection.Collection.create`).

A folder of files (:class:`~lookalike.data.pipeline.FolderFiles`) is decoded and encoded in
one stream (:func:`encode_files_resumable`): each chunk of files saves its codes with the
previews, the files' facts (what the catalogue records of each, read with its pixels) and the
skipped files it found, so a resumed run decodes only the chunks not done.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from ..data.datasets import Dataset
from ..data.filefacts import FileFacts
from ..data.images import preview_spec
from ..data.pipeline import FolderFiles, stream
from ..fsutil import atomic_write, atomic_write_json, read_json
from .segments import save_npy

if TYPE_CHECKING:
    from ..models.encoders import ModelEncoder
    from ..models.modelio import LoadedModel
    from ..models.runtime import OnnxEncoder

log = logging.getLogger(__name__)


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


def _job(stage: Path, key: str, count: int, chunk: int) -> Path:
    """The checkpoint directory of the job ``key`` under ``stage``: kept when it is that job's
    (an interrupted run of the same job), else emptied and started anew."""
    job = stage / "job.json"
    try:
        same = job.is_file() and read_json(job).get("key") == key
    except (OSError, ValueError):
        same = False
    if not same:
        if stage.exists():
            shutil.rmtree(stage)
        (stage / "chunks").mkdir(parents=True)
        atomic_write_json(job, {"key": key, "count": count, "chunk": chunk})
    return stage / "chunks"


def encode_resumable(stage: Path, encoder: ModelEncoder, model: LoadedModel, dataset: Dataset,
                     images: np.ndarray, chunk: int = 8192, progress: bool = False) -> np.ndarray:
    """Encode ``dataset`` chunk by chunk (its pixels at the model's input, see
    :meth:`Dataset.pixels`), each chunk's codes saved atomically in ``stage/chunks``;
    chunks already there from an interrupted run with the same model and images (``images``,
    as they are stored) are loaded instead of encoded again."""
    from ..models.encoders import encode_dataset

    chunks = _job(stage, _job_key(model, images, dataset.sources, chunk), len(images), chunk)
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
                atomic_write(path, functools.partial(save_npy, array=codes))
            out[start:stop] = codes
    return out


def _files_key(model: LoadedModel, files: FolderFiles, chunk: int) -> str:
    """What a checkpointed run over files depends on: the model, its input, the chunking, and
    each file's path, size and modification time (a file changed since gives another job)."""
    h = hashlib.sha256(f"{model.fingerprint}:{model.config.input}:{chunk}:files:".encode())
    for path in files.paths:
        try:
            st = os.stat(path)
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0-\n".encode())
    return h.hexdigest()


def _load_part(path: Path, dim: int, preview: tuple[int, ...]) -> dict[str, np.ndarray] | None:
    """A checkpointed chunk of files (:func:`_encode_part`), or ``None`` when absent or unusable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            part = {k: np.asarray(data[k]) for k in ("rows", "codes", "previews", "skipped", "facts")}
    except (OSError, ValueError, KeyError):
        return None
    m = len(part["rows"])
    if part["codes"].shape != (m, dim) or part["previews"].shape != (m, *preview) \
            or part["skipped"].ndim != 2 or part["skipped"].shape[1:] != (2,) \
            or part["facts"].shape != (m,):
        return None
    return part


def _encode_part(path: Path, encoder: ModelEncoder | OnnxEncoder, files: FolderFiles, start: int,
                 stop: int, options: dict[str, Any], bar: tqdm, previews: np.ndarray,
                 codes: np.ndarray, at_once: int = 1) -> dict[str, np.ndarray]:
    """Files ``start:stop`` decoded and encoded in one stream, ``at_once`` batches of the
    encoder's at a time, into ``previews`` and ``codes``
    (arrays with room for the chunk's files: the caller's, so that the previews are held
    once), saved to ``path`` as one ``.npz`` (atomically: a chunk is there whole or not at
    all): the rows decoded, their codes, previews and facts (each a JSON list,
    :meth:`FileFacts.to_list`, or ``null``), and ``(path, reason)`` of each file skipped.
    Returns what it saved."""
    rows = np.empty(max(0, min(stop, len(files)) - start), dtype=np.int64)
    facts: list[str] = []
    skipped: list[tuple[str, str]] = []
    m = 0
    for batch in stream(files.paths, encoder.spec, batch=encoder.batch_size * at_once, start=start,
                        stop=stop, **options):
        k = len(batch.rows)
        if k:
            rows[m:m + k] = batch.rows
            codes[m:m + k] = encoder.encode(batch.inputs)
            previews[m:m + k] = batch.previews
        facts += [json.dumps(None if f is None else f.to_list()) for f in batch.facts]
        skipped += batch.skipped
        m += k
        bar.update(batch.stop - batch.start)
    part = {"rows": rows[:m], "codes": codes[:m], "previews": previews[:m],
            "skipped": np.array(skipped, dtype=str).reshape(len(skipped), 2),
            "facts": np.array(facts, dtype=str).reshape(len(facts))}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, allow_pickle=False, **part)

    atomic_write(path, write)
    return part


def _saved(path: Path) -> bool:
    """Whether a checkpointed chunk seems to be at ``path`` (its rows read, not its previews:
    :func:`_load_part` checks the rest when it loads it)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return "rows" in data.files and data["rows"].ndim == 1
    except (OSError, ValueError):
        return False


def encode_files_resumable(stage: Path, encoder: ModelEncoder | OnnxEncoder, model: LoadedModel,
                           files: FolderFiles, chunk: int = 8192, progress: bool = False,
                           threads: int | None = None
                           ) -> tuple[Dataset, np.ndarray, list[FileFacts | None]]:
    """Decode and encode ``files`` in one stream (:func:`lookalike.data.pipeline.stream`:
    each file decoded once, in threads, while the encoder works on the batch before), ``chunk``
    files at a time, each chunk's codes, previews and skipped files saved atomically in
    ``stage/chunks``; chunks already there from an interrupted run of the same job (same
    model, same files unchanged) are loaded instead of decoded again. A model encodes
    :func:`~lookalike.models.atonce.batches_at_once` meanwhile. Returns the dataset
    (previews, as :func:`lookalike.data.datasets.load_folder` gives it, ``files.split``
    applied), its codes, ``float32 (n, d)``, and the facts of its files (what
    :func:`lookalike.data.pipeline.read_file` read of each with its pixels), row-aligned."""
    from ..models.atonce import batches_at_once

    small = preview_spec(encoder.spec).shape
    chunks = _job(stage, _files_key(model, files, chunk), len(files), chunk)
    where = {start: chunks / f"files.{start:09d}.npz" for start in range(0, len(files), chunk)}
    done = sum(min(chunk, len(files) - start) for start, path in where.items() if _saved(path))
    if done:
        log.warning("resuming: %d of %d files already encoded", done, len(files))
    options: dict[str, Any] = {} if threads is None else {"threads": threads}
    # one array of previews and one of codes for all the files, filled chunk by chunk (a chunk
    # encoded is decoded straight into them, one loaded is copied in and let go): the previews
    # are held once, in one block (10,000 photos: 0.28 GB)
    pictures = np.empty((len(files), *small), dtype=np.uint8)
    codes = np.empty((len(files), encoder.dim), dtype=np.float32)
    kept: list[Path] = []
    facts: list[FileFacts | None] = []
    skipped: list[tuple[str, str]] = []
    at = 0
    with tqdm(total=len(files), initial=done, desc="encoding", unit="img", disable=not progress) as bar, \
            batches_at_once(encoder) as at_once:
        for start, path in where.items():
            part = _load_part(path, encoder.dim, small)
            if part is None:
                part = _encode_part(path, encoder, files, start, start + chunk, options, bar,
                                    pictures[at:], codes[at:], at_once)
            else:
                pictures[at:at + len(part["rows"])] = part["previews"]
                codes[at:at + len(part["rows"])] = part["codes"]
            kept += [files.paths[int(i)] for i in part["rows"]]
            facts += [None if (v := json.loads(str(s))) is None else FileFacts.from_list(v)
                      for s in part["facts"]]
            skipped += [(str(a), str(b)) for a, b in part["skipped"]]
            at += len(part["rows"])
    for file, reason in skipped:
        log.warning("skipped %s: %s", file, reason)
    dataset, rows = files.dataset(pictures[:at], kept, skipped, encoder.spec)
    if len(rows) == at:
        return dataset, codes[:at], facts
    return dataset, codes[rows], [facts[int(r)] for r in rows]
