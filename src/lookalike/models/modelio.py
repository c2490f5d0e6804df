"""A model is a directory: ``model.safetensors`` (weights), ``config.json``
(architecture, input spec, training settings, loss history, versions, fingerprint) and
``encoder.onnx``, its encode path for ONNX Runtime (:mod:`lookalike.models.runtime`).
An imported ONNX encoder's directory (:mod:`lookalike.models.onnximport`) has the same
files and its own ``imported.onnx``; :func:`load_model` reads either.

No pickle: loading reads tensors with safetensors and settings from JSON. The
fingerprint is the SHA-256 of the weights file; it is checked on load, and a
collection records it to refuse being searched with another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..config import IMPORTED_ARCH, ModelConfig, RetrievalConfig, TrainConfig, default_retrieval_config
from ..errors import LookalikeError, ModelError
from ..fsutil import atomic_write, atomic_write_json, file_sha256, read_json
from ..versions import versions
from .networks import Model, build_model
from .runtime import export_encoder

if TYPE_CHECKING:
    from .onnximport import ImportedModel

FORMAT = "lookalike-model"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


@dataclass(eq=False)
class LoadedModel:
    """A model with everything that describes it."""

    module: Model | ImportedModel
    config: ModelConfig
    train: TrainConfig | None
    history: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    path: Path | None = None
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)


def save_model(directory: str | os.PathLike[str], module: Model,
               train: TrainConfig | None = None, history: dict[str, Any] | None = None,
               retrieval: RetrievalConfig | None = None) -> LoadedModel:
    """Write ``module`` to ``directory`` (created if needed) and return it as loaded.
    ``retrieval`` defaults to the preset's (:func:`config.default_retrieval_config`)."""
    retrieval = retrieval or default_retrieval_config(module.config.arch)
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ModelError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    atomic_write(out / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT}))
    fingerprint = file_sha256(out / WEIGHTS)
    export_encoder(module, module.config.input, fingerprint, out)  # (PyTorch-free encoding)
    atomic_write_json(out / CONFIG, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "model": module.config.to_dict(),
        "train": train.to_dict() if train else None,
        "retrieval": retrieval.to_dict(),
        "history": history or {},
        "code_dim": module.code_dim,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
    })
    return LoadedModel(module, module.config, train, history or {}, fingerprint, out, retrieval)


def is_model_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a model directory (has ``config.json`` and weights)."""
    p = Path(path)
    return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()


def load_model(directory: str | os.PathLike[str], device: str = "cpu") -> LoadedModel:
    """Load a model directory written by :func:`save_model`.

    Raises:
        ModelError: not a model directory, a newer format, damaged weights or config.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ModelError(f"model directory {d} does not exist")
    if not is_model_dir(d):
        raise ModelError(f"{d} is not a lookalike model (expected {CONFIG} and {WEIGHTS})")
    try:
        meta = read_json(d / CONFIG)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{d / CONFIG}: unreadable ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{d / CONFIG} is not a lookalike model config")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise ModelError(
            f"{d} was written by a newer lookalike (model format {meta.get('format_version')}, "
            f"this one reads up to {FORMAT_VERSION}); upgrade lookalike"
        )
    fingerprint = file_sha256(d / WEIGHTS)
    if fingerprint != meta.get("fingerprint"):
        raise ModelError(f"{d / WEIGHTS} does not match the fingerprint in {CONFIG} (damaged?)")
    if isinstance(meta.get("model"), dict) and meta["model"].get("arch") == IMPORTED_ARCH:
        from .onnximport import load_imported

        return load_imported(d, meta)
    try:
        config = ModelConfig.from_dict(meta["model"])
        train = TrainConfig.from_dict(meta["train"]) if meta.get("train") else None
        retrieval = RetrievalConfig.from_dict(meta.get("retrieval") or {"rerank": "none"})
    except (KeyError, LookalikeError) as exc:
        raise ModelError(f"{d / CONFIG}: bad config ({exc})") from None
    module = build_model(config)
    try:
        state = load_file(d / WEIGHTS)
        module.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{d / WEIGHTS}: cannot load weights ({first})") from None
    module.eval().to(torch.device(device))
    return LoadedModel(module, config, train, meta.get("history") or {}, fingerprint, d,
                       retrieval)
