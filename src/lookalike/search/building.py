"""Building a new collection from a dataset or a folder (:func:`build`, which
:meth:`lookalike.search.collection.Collection.create` runs): encode, then write the
directory in ``.<name>.partial/`` beside it and rename it into place (see
:mod:`lookalike.search.collection` for the layout and what a crash leaves).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.datasets import Dataset
from ..data.images import conform, content_hash, preview_spec
from ..data.pipeline import FolderFiles
from ..errors import CollectionError, LookalikeError
from ..fsutil import atomic_write_json, fsync_dir
from ..models.runtime import ONNX, export_encoder
from ..versions import versions
from . import files as catalogue
from . import metadata, state
from . import segments as seg
from .backends import FaissBackend, IndexBackend, choose_factory, discard_backend, new_backend
from .checkpoint import encode_files_resumable, encode_resumable

if TYPE_CHECKING:
    from ..models.modelio import LoadedModel

log = logging.getLogger(__name__)


def _abandon(index: IndexBackend) -> None:
    """Delete what a new collection's backend wrote outside the directory (a remote
    collection) when the collection is not created after all, and let go of it."""
    try:
        index.drop()
    except Exception as exc:  # the first error is the one to report
        log.warning("could not delete the new index's remote data: %s", exc)
    finally:
        index.close()


def build(path: str | os.PathLike[str], model: LoadedModel, dataset: Dataset | FolderFiles, *,
           backend: str = "faiss", factory: str = "auto", search_params: str | None = None,
           overwrite: bool = False, progress: bool = False, chunk: int = 8192,
           backend_options: dict[str, Any] | None = None,
           codes: np.ndarray | None = None) -> Path:
    """Encode ``dataset`` with ``model`` and write a collection at ``path``; returns its path.

    ``factory`` is a FAISS index factory string, or ``"auto"`` to choose by size
    (:func:`lookalike.search.backends.choose_factory`); ``search_params`` (``"nprobe=64"``)
    override the chosen ones. Codes are checkpointed every ``chunk`` images: after a
    crash, the same call resumes. ``backend_options`` go to the backend (the milvus
    backend's ``uri`` and ``collection``); ``codes`` (``float32 (n, d)``, row-aligned
    with ``dataset``), when given, are the dataset's codes already made by this model
    (``lookalike.models.ray_engine``), and nothing is encoded here. A folder's
    :class:`~lookalike.data.pipeline.FolderFiles` are decoded and encoded in one stream
    (:func:`~lookalike.search.checkpoint.encode_files_resumable`), unreadable files skipped,
    and catalogued (:mod:`lookalike.search.files`) from what was read of them then.

    Raises:
        CollectionError: ``path`` exists (and not ``overwrite``), or the dataset is empty.
    """
    target = Path(path)
    state.recover(target)
    if target.exists() and not overwrite:
        raise CollectionError(f"{target} already exists; choose another --out or pass --overwrite")
    if len(dataset) == 0:
        raise CollectionError("cannot index an empty dataset")
    if model.path is None:
        raise CollectionError("the model must be saved (have a directory) before indexing")
    if chunk <= 0:
        raise LookalikeError(f"chunk must be a positive integer, got {chunk}")
    from ..models.encoders import ModelEncoder

    encoder = ModelEncoder(model)
    if codes is not None and np.shape(codes) != (len(dataset), encoder.dim):
        raise CollectionError(f"codes of shape {np.shape(codes)} do not fit {len(dataset)} images "
                              f"and {encoder.dim}-d codes")
    if factory == "auto":  # (for files: by their number, the unreadable ones included)
        factory, chosen = choose_factory(len(dataset))
        search_params = chosen if search_params is None else search_params
    # the index first: a bad factory string or parameter fails before any encoding
    index = new_backend(backend, encoder.dim, factory=factory, search_params=search_params or "",
                        **(backend_options or {}))
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = target.parent / f".{target.name}.partial"
    facts = None
    try:  # a backend keeping vectors elsewhere (a server) writes them first
        if isinstance(dataset, FolderFiles):
            dataset, embeddings, facts = encode_files_resumable(stage, encoder, model, dataset, chunk,
                                                                progress)
            images = dataset.images
        else:
            images = conform(dataset.images, preview_spec(encoder.spec))
            embeddings = (encode_resumable(stage, encoder, model, dataset, images, chunk, progress)
                          if codes is None else np.ascontiguousarray(codes, dtype=np.float32))
            stage.mkdir(parents=True, exist_ok=True)
        ids = np.arange(len(images), dtype=np.int64)
        index.add(ids, embeddings)
    except BaseException:
        _abandon(index)
        raise
    retrieval = model.retrieval
    whitening = state.fit_whitening(embeddings, retrieval)
    labels = (dataset.labels if dataset.labels is not None
              else np.full(len(images), -1, dtype=np.int64))
    local = isinstance(index, FaissBackend)

    tmp = stage / "collection"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        shutil.copytree(model.path, tmp / "model")
        if not (tmp / "model" / ONNX).is_file():  # a model saved before it had one
            export_encoder(model.module, model.config.input, model.fingerprint, tmp / "model")
        segment = seg.write_segment(tmp, "000000", ids, embeddings, images, None,
                                index if isinstance(index, FaissBackend) else None)
        files = state.write_state(tmp, 0, None if local else index, whitening)
        metadata.create(tmp / metadata.FILE, (
            (int(i), s, int(lab), content_hash(im))
            for i, s, lab, im in zip(ids, dataset.sources, labels, images, strict=True)))
        if facts is not None:  # the catalogue of the files, from what was read with their pixels
            catalogue.record(tmp, dataset.sources, ids, facts)
        manifest = {
            "format": state.FORMAT,
            "format_version": state.FORMAT_VERSION,
            "model": {"fingerprint": model.fingerprint, "arch": model.config.arch,
                      "input": model.config.input.to_dict()},
            "dataset": {"name": dataset.name, "split": dataset.split},
            "count": len(ids),
            "dim": encoder.dim,
            "backend": index.settings(),
            "retrieval": retrieval.to_dict(),
            "generation": 0,
            "next_id": len(ids),
            "whitened_on": len(ids),
            "pictures": list(images.shape[1:]),
            "segments": [segment.to_dict()],
            "files": files,
            "checksums": seg.checksums(tmp, files),
            "label_names": list(dataset.label_names) if dataset.label_names else None,
            "skipped": [list(s) for s in dataset.skipped],
            "created": state.now(),
            "updated": state.now(),
            "versions": versions(),
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        replaced = state.backend_settings(target) if target.exists() else None
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
    return target
