"""Encoding a new collection so that a crash costs one chunk: the codes are saved chunk by
chunk under the collection's staging directory (``.<name>.partial/chunks``), and running the
same ``index`` again (same model, same images) loads the chunks already there instead of
encoding them again (:meth:`lookalike.search.collection.Collection.create`)."""

from __future__ import annotations

import functools
import hashlib
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..data.datasets import Dataset
from ..fsutil import atomic_write, atomic_write_json, read_json
from .segments import save_npy

if TYPE_CHECKING:
    from ..models.encoders import ModelEncoder
    from ..models.modelio import LoadedModel

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


def encode_resumable(stage: Path, encoder: ModelEncoder, model: LoadedModel, dataset: Dataset,
                     images: np.ndarray, chunk: int = 8192, progress: bool = False) -> np.ndarray:
    """Encode ``dataset`` chunk by chunk (its pixels at the model's input, see
    :meth:`Dataset.pixels`), each chunk's codes saved atomically in ``stage/chunks``;
    chunks already there from an interrupted run with the same model and images (``images``,
    as they are stored) are loaded instead of encoded again."""
    from ..models.encoders import encode_dataset

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
                atomic_write(path, functools.partial(save_npy, array=codes))
            out[start:stop] = codes
    return out
