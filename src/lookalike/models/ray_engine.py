"""Encoding with Ray Data (``lookalike index --engine ray``): the same images and the same
codes as the in-process engine, on a laptop (a local Ray instance) or on a Ray cluster
(``--ray-address``). Ray comes with the ``scale`` extra and is imported only here.

The pipeline for a folder of image files:

1. the files, listed and ordered as the in-process loader lists them
   (:func:`lookalike.data.datasets.folder_images`), become rows ``(index, path)``;
2. ``map_batches(_decode)`` (Ray tasks) decodes each file once, in threads, with the
   in-process engine's decoder stage (:func:`lookalike.data.pipeline.stream`): the model's
   input and the preview a collection stores, both from one decode at a reduced scale; an
   unreadable file becomes a row with empty pictures and the reason the in-process engine
   gives, not a failure;
3. ``map_batches(_Encoder)`` (a pool of Ray actors, each loading the model once from its
   weights shipped with the task, so workers need no shared model directory) encodes the
   readable rows and drops their model inputs;
4. the driver collects previews, codes and skip records (never a model input per image) and
   puts them back in file order, so ids (assigned in that order) are the in-process engine's
   whatever order the workers finished in.

Built-in datasets, IDX directories and ``.npz`` files are arrays already: they are loaded in
process and only the encoding runs on Ray (``ray.data.from_numpy``, order preserved).

On a cluster every worker must be able to import ``lookalike`` and read the image paths
(shared storage).
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import IMPORTED_ARCH, InputSpec
from ..data.datasets import Dataset, is_folder, load_dataset
from ..data.images import conform, preview_spec
from ..data.pipeline import FolderFiles, decode_file, stream
from ..errors import LookalikeError
from .modelio import CONFIG, WEIGHTS, LoadedModel
from .onnximport import IMPORTED
from .runtime import ONNX

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'lookalike[scale]'"


@dataclass(frozen=True)
class RayConfig:
    """How to run: ``address`` of a Ray cluster (``None``: start a local instance, or use
    the one this process already started), CPUs of a local instance (``None``: all),
    images per batch, encoder actors at most (``None``: one per CPU of the cluster, less
    one left to the decoding tasks)."""

    address: str | None = None
    num_cpus: int | None = None
    batch_size: int = 256
    actors: int | None = None


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library, part of ray[data]
    except ImportError:
        raise LookalikeError(f"--engine ray needs Ray Data: {INSTALL_HINT}") from None
    return ray


@contextmanager
def ray_session(config: RayConfig, verbose: bool = False) -> Iterator[Any]:
    """Ray, initialized for the ``with`` block: this process's running session when it has
    one (left running), otherwise a new one, connected to ``config.address`` or local, and
    shut down afterwards. Ray's own logging is kept to errors unless ``verbose``."""
    ray = _ray()
    level = logging.INFO if verbose else logging.ERROR
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(level)
    if ray.is_initialized():
        yield ray
        return
    where = f"the Ray cluster at {config.address}" if config.address else "a local Ray instance"
    try:
        ray.init(address=config.address, num_cpus=None if config.address else config.num_cpus,
                 include_dashboard=False, log_to_driver=verbose, logging_level=level)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise LookalikeError(f"cannot start or reach {where}: {first}") from None
    try:
        yield ray
    finally:
        shutdown(ray)


def shutdown(ray: Any) -> None:
    """``ray.shutdown()``, then reap the local node's processes that Ray killed but gave
    only a second to exit: under load one can outlive that, and its ``Popen`` would later
    be collected while still running (a ResourceWarning at a random moment)."""
    try:  # Ray's private handle on the processes its local node started
        node = ray._private.worker._global_node
        procs = [info.process for infos in node.all_processes.values() for info in infos]
    except Exception:  # a Ray without it, or connected to a cluster: nothing to reap
        procs = []
    ray.shutdown()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("a Ray process (pid %d) did not exit after shutdown", proc.pid)


def _model_files(model: LoadedModel) -> dict[str, bytes]:
    if model.path is None:
        raise LookalikeError("the model must be saved (have a directory) before encoding with Ray")
    imported = model.config.arch == IMPORTED_ARCH  # (its ONNX files are its weights)
    names = (CONFIG, WEIGHTS, IMPORTED, ONNX) if imported else (CONFIG, WEIGHTS)
    return {name: (Path(model.path) / name).read_bytes() for name in names}


def _decode(batch: dict[str, np.ndarray], spec: InputSpec) -> dict[str, np.ndarray]:
    """Rows ``(index, path)`` -> ``(index, path, image, preview, reason)``: each file decoded
    once (:func:`~lookalike.data.pipeline.stream`, in threads) to the model's input and its
    preview; ``reason`` is "" for a decoded file and, for one that is not, what the in-process
    engine reports (its pictures are then zeros)."""
    paths = [str(p) for p in batch["path"]]
    images = np.zeros((len(paths), *spec.shape), dtype=np.uint8)
    previews = np.zeros((len(paths), *preview_spec(spec).shape), dtype=np.uint8)
    reasons = [""] * len(paths)
    for part in stream(paths, spec, batch=max(1, len(paths)), ahead=0, decode=decode_file):
        images[part.rows], previews[part.rows] = part.inputs, part.previews
        for path, reason in part.skipped:
            reasons[paths.index(path)] = reason
    return {"index": np.asarray(batch["index"], dtype=np.int64),
            "path": np.array(paths, dtype=object), "image": images, "preview": previews,
            "reason": np.array(reasons, dtype=object)}


class _Encoder:
    """A Ray actor's encoder: loads the model once, from its files (config and weights,
    shipped with the task, so workers need no shared model directory). Adds a column
    ``code`` for the images in ``column`` (rows with a non-empty ``reason`` get zeros), and
    passes the images on only when ``keep``."""

    def __init__(self, files: dict[str, bytes], column: str, keep: bool) -> None:
        from .encoders import ModelEncoder
        from .modelio import load_model

        self._dir = tempfile.TemporaryDirectory(prefix="lookalike-model-")
        for name, data in files.items():
            Path(self._dir.name, name).write_bytes(data)
        self.encoder = ModelEncoder(load_model(self._dir.name))
        self.column, self.keep = column, keep

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = np.asarray(batch[self.column], dtype=np.uint8)
        ok = (np.array([r == "" for r in batch["reason"]], dtype=bool) if "reason" in batch
              else np.ones(len(images), dtype=bool))
        codes = np.zeros((len(images), self.encoder.dim), dtype=np.float32)
        if ok.any():
            codes[ok] = self.encoder.encode(images[ok])
        out = {k: v for k, v in batch.items() if self.keep or k != self.column}
        out["code"] = codes
        return out


def _encode_stage(ray: Any, ds: Any, model: LoadedModel, column: str, keep: bool,
                  config: RayConfig) -> Any:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    most = config.actors or max(1, cpus - 1)
    # max_restarts=0: Ray Data would restart a failed actor forever, and says so on stderr
    # at every run (its arguments sit in the object store, ray-project/ray#53727); a model
    # that fails to load or encode is not cured by a restart. Ray 2.60 has no named
    # parameter for it yet and warns that the keyword form is deprecated.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*ray_remote_args.*deprecated",
                                category=DeprecationWarning)
        return ds.map_batches(_Encoder, fn_constructor_args=(_model_files(model), column, keep),
                              batch_size=config.batch_size, batch_format="numpy",
                              concurrency=(1, most), num_cpus=1, max_restarts=0)


def _quiet_context(ray: Any, progress: bool, preserve_order: bool) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    ctx.execution_options.preserve_order = preserve_order


def encode_images(images: np.ndarray, model: LoadedModel, config: RayConfig = RayConfig(),
                  progress: bool = False, verbose: bool = False) -> np.ndarray:
    """Codes ``float32 (n, d)`` for ``uint8 (n, H, W, C)`` images (conformed to the model
    first, as :class:`~lookalike.models.encoders.ModelEncoder` does), encoded on Ray."""
    conformed = conform(images, model.config.input)
    if len(conformed) == 0:
        return np.empty((0, model.module.code_dim), dtype=np.float32)
    with ray_session(config, verbose) as ray:
        _quiet_context(ray, progress, preserve_order=True)
        ds = ray.data.from_numpy(conformed)  # column "data"
        ds = _encode_stage(ray, ds, model, "data", False, config)
        parts = [b["code"] for b in ds.iter_batches(batch_size=None, batch_format="numpy")]
    codes = np.concatenate(parts).astype(np.float32, copy=False)
    if len(codes) != len(conformed):  # pragma: no cover - Ray lost or duplicated rows
        raise LookalikeError(f"Ray returned {len(codes)} codes for {len(conformed)} images")
    return codes


def encode_folder(files: FolderFiles, model: LoadedModel, config: RayConfig = RayConfig(),
                  progress: bool = False, verbose: bool = False) -> tuple[Dataset, np.ndarray]:
    """The folder's dataset (previews, exactly as the in-process engine's
    :func:`~lookalike.search.checkpoint.encode_files_resumable` gives it, ``files.split``
    applied) and its codes, read, decoded and encoded on Ray."""
    paths = files.paths
    spec = model.config.input
    with ray_session(config, verbose) as ray:
        _quiet_context(ray, progress, preserve_order=False)
        rows = [{"index": i, "path": str(p)} for i, p in enumerate(paths)]
        blocks = max(1, min(len(rows) // config.batch_size + 1, 4 * int(
            ray.cluster_resources().get("CPU", 1))))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        ds = ds.map_batches(_decode, fn_kwargs={"spec": spec}, batch_size=config.batch_size,
                            batch_format="numpy")
        ds = _encode_stage(ray, ds, model, "image", False, config)  # model inputs dropped
        batches = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    index = np.concatenate([b["index"] for b in batches]).astype(np.int64)
    order = np.argsort(index, kind="stable")
    if not np.array_equal(index[order], np.arange(len(paths))):  # pragma: no cover
        raise LookalikeError(f"Ray returned {len(index)} rows for {len(paths)} files")
    reasons = [str(r) for b in batches for r in b["reason"]]
    reasons = [reasons[i] for i in order]
    ok = np.array([r == "" for r in reasons], dtype=bool)
    previews = np.concatenate([b["preview"] for b in batches])[order][ok]
    codes = np.concatenate([b["code"] for b in batches]).astype(np.float32, copy=False)[order][ok]
    skipped = [(str(p), r) for p, r in zip(paths, reasons, strict=True) if r]
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    kept = [p for p, good in zip(paths, ok, strict=True) if good]
    dataset, taken = files.dataset(previews, kept, skipped, spec)
    return dataset, codes if len(taken) == len(codes) else codes[taken]


def load_and_encode(spec: str | os.PathLike[str], split: str, model: LoadedModel, *,
                    data_dir: str | os.PathLike[str] | None = None,
                    config: RayConfig = RayConfig(), download: bool = False,
                    progress: bool = False, verbose: bool = False) -> tuple[Dataset, np.ndarray]:
    """What ``lookalike index --engine ray`` indexes: the dataset ``spec`` (as
    :func:`~lookalike.data.datasets.load_dataset` names it, folders converted to the model's
    input) and its codes ``float32 (n, d)``, row-aligned."""
    if is_folder(spec):
        return encode_folder(FolderFiles.of(spec, split), model, config, progress, verbose)
    dataset = load_dataset(spec, split, data_dir=data_dir, input_spec=model.config.input,
                           download=download, progress=progress)
    return dataset, encode_images(dataset.images, model, config, progress, verbose)
