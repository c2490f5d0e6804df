"""Bring your own encoder: a local ONNX image encoder wrapped into a lookalike model directory.

:func:`import_encoder` checks the file (:mod:`lookalike.models.onnxgraph`), runs it once on
two test images (NaN or infinite outputs are refused), optionally fits the codes' whitening on
a dataset (the images to be indexed, as for the pretrained backbones), and writes a model
directory (:mod:`lookalike.models.modelio`'s layout):

* ``imported.onnx``: the file, copied byte for byte; its SHA-256 is in ``config.json``;
* ``model.safetensors``: the whitening (``whiten_mean (d,)``, ``whiten (d, k)``; none when
  not fitted), with the stated input and output in its metadata, so its SHA-256, the
  model's fingerprint, changes with any of them;
* ``encoder.onnx``: the whole encode path, ``uint8`` pixels to codes (:func:`onnxgraph.compose`),
  what :class:`lookalike.models.runtime.OnnxEncoder` runs;
* ``config.json``: architecture ``"onnx"``, the input spec the pipeline decodes to, the
  stated :class:`OnnxInput`, the file's hash, the retrieval rule (the backbones': diffusion
  that only breaks near-ties of the cosine), history, versions.

:func:`load_imported` reads it back (hashes checked) as a :class:`~lookalike.models.modelio.LoadedModel`
whose module is an :class:`ImportedModel`: every command that takes a model takes it.
Adaptation is not possible (ONNX Runtime does not train), and there is no decoder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..config import (
    DEFAULT_BACKBONE,
    IMPORTED_ARCH,
    RESIZE_RULES,
    InputSpec,
    ModelConfig,
    RetrievalConfig,
    _from_dict,
    batch_for,
    default_retrieval_config,
)
from ..errors import LookalikeError, ModelError
from ..fsutil import atomic_write, atomic_write_json, file_sha256
from ..versions import versions
from . import onnxgraph
from .runtime import OnnxEncoder, open_session

if TYPE_CHECKING:
    import onnx

    from ..data.datasets import Dataset
    from .modelio import LoadedModel

log = logging.getLogger(__name__)

#: The user's file, as copied into the model directory.
IMPORTED = "imported.onnx"
CHANNEL_ORDERS = ("rgb", "bgr")
OUTPUTS = ("auto", "vector", "feature-map")
#: The whitening is fitted on at most this many images (a seeded sample), as the backbones'.
WHITEN_SAMPLE = 5000


@dataclass(frozen=True)
class OnnxInput:
    """What an imported encoder takes and gives, as its user states it.

    ``size`` (h, w): the input it takes (``None``: read from the file, which must then fix
    it). An image of another shape is brought to it by ``resize``: ``"crop"`` scales the
    shorter side to fit and centre-crops the rest, ``"squash"`` scales each side to fit;
    with ``crop_fraction`` f < 1 the image is first brought so to ``size / f`` and the
    central ``size`` taken (0.875: resize to 256, centre-crop 224). ``channel_order`` is
    what its first axis of colour holds (``"rgb"`` or ``"bgr"``); ``mean`` and ``std``
    normalise pixels scaled to [0, 1], per channel in that order. ``output``: ``"vector"``
    (a pooled ``(n, d)``), ``"feature-map"`` (``(n, C, h, w)``, or ``(n, h, w, C)`` for a
    channels-last model, GeM-pooled), or ``"auto"`` (by the output's rank: 2 or a 1x1 map
    is a vector, 4 a map); ``output_name``: which output (default: the first)."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    size: tuple[int, int] | None = None
    channel_order: str = "rgb"
    resize: str = "crop"
    crop_fraction: float = 1.0
    output: str = "auto"
    output_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            value = tuple(getattr(self, name))
            if len(value) != 3 or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in value):
                raise LookalikeError(f"{name} must be 3 numbers, one per channel, got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(abs(v) > 1.0 for v in self.mean):
            raise LookalikeError(f"mean {self.mean} is for pixels in [0, 1]: divide 0..255 values by 255")
        if not all(0 < v <= 1.0 for v in self.std):
            raise LookalikeError(f"std must be in (0, 1] for pixels in [0, 1], got {self.std}")
        if self.size is not None:
            object.__setattr__(self, "size", tuple(self.size))
            InputSpec(3, *self.size)  # (validates the size)
        if self.channel_order not in CHANNEL_ORDERS:
            raise LookalikeError(f"channel order must be rgb or bgr, got {self.channel_order!r}")
        if self.resize not in RESIZE_RULES:
            raise LookalikeError(f"resize must be one of {', '.join(RESIZE_RULES)}, got {self.resize!r}")
        if not (isinstance(self.crop_fraction, (int, float)) and 0.25 <= self.crop_fraction <= 1):
            raise LookalikeError(f"crop fraction must be in [0.25, 1], got {self.crop_fraction!r}")
        if self.output not in OUTPUTS:
            raise LookalikeError(f"output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnnxInput:
        return _from_dict(cls, data, "ONNX input")


def _plan(stated: OnnxInput, sig: onnxgraph.Signature, where: str
          ) -> tuple[InputSpec, tuple[int, int] | None]:
    """The spec images are decoded to, and the centred crop the graph takes from them."""
    fixed = (sig.height, sig.width)
    if stated.size is None:
        if None in fixed:
            raise ModelError(f"{where}'s input height and width are dynamic; give its size "
                             "(--size, e.g. 224)")
        size = (int(fixed[0]), int(fixed[1]))  # type: ignore[arg-type]
    else:
        size = stated.size
        for given, have, what in ((size[0], fixed[0], "height"), (size[1], fixed[1], "width")):
            if have is not None and have != given:
                raise ModelError(f"{where} takes a {what} of {have}, not the {given} stated")
    if stated.crop_fraction == 1.0:
        return InputSpec(3, size[0], size[1], stated.resize), None
    outer = [min(1024, round(side / stated.crop_fraction)) for side in size]
    return InputSpec(3, outer[0], outer[1], stated.resize), size


def _steps(stated: OnnxInput, spec: InputSpec, crop: tuple[int, int] | None,
           pool: str, whitening: tuple[np.ndarray, np.ndarray] | None = None) -> onnxgraph.Steps:
    return onnxgraph.Steps((spec.height, spec.width), crop, stated.channel_order == "bgr",
                           stated.mean, stated.std, pool, whitening)


def _probe(spec: InputSpec) -> np.ndarray:
    """Two test images ``uint8 (2, H, W, 3)``: colour gradients, and seeded noise."""
    yy, xx = np.mgrid[0:spec.height, 0:spec.width]
    ramp = np.stack([xx * 255 // max(spec.width - 1, 1), yy * 255 // max(spec.height - 1, 1),
                     (xx + yy) * 255 // max(spec.width + spec.height - 2, 1)], axis=-1)
    noise = np.random.default_rng(0).integers(0, 256, (spec.height, spec.width, 3))
    return np.stack([ramp, noise]).astype(np.uint8)


def _pooling(stated: OnnxInput, proto: onnx.ModelProto, sig: onnxgraph.Signature, spec: InputSpec,
             crop: tuple[int, int] | None, batch: int, where: str) -> tuple[str, int]:
    """Run the graph once on :func:`_probe`'s images: ``("vector" | "gem", dim)``.

    Raises:
        ModelError: it fails, gives NaN or infinite values, or an output of another rank
            than stated (or than 2 or 4).
    """
    raw = onnxgraph.compose(proto, sig, _steps(stated, spec, crop, "raw"))
    try:
        out = onnxgraph.run(open_session(raw.SerializeToString()), _probe(spec), batch)
    except Exception as exc:  # noqa: BLE001 - ONNX Runtime's errors have no common base
        raise ModelError(f"{where} fails on a test batch of {spec.height}x{spec.width} images "
                         f"({onnxgraph.first_line(exc)})") from None
    if not np.isfinite(out).all():
        raise ModelError(f"{where} gives NaN or infinite outputs for test images")
    shape = "(" + ", ".join(map(str, out.shape)) + ")"
    spatial = out.shape[2:] if sig.layout == "nchw" else out.shape[1:3]
    one_by_one = out.ndim == 4 and spatial == (1, 1)
    if (out.ndim == 2 or one_by_one) and stated.output in ("auto", "vector"):
        return "vector", int(np.prod(out.shape[1:]))
    if out.ndim == 4 and stated.output in ("auto", "feature-map"):
        return "gem", int(out.shape[1] if sig.layout == "nchw" else out.shape[3])
    expected = {"vector": "a vector (n, d)", "feature-map": "a feature map of rank 4",
                "auto": "a vector (n, d) or a feature map of rank 4"}[stated.output]
    raise ModelError(f"{where}'s output {sig.output!r} has shape {shape}; expected {expected} "
                     "(pick another output with --output-name, or export the pooled vector)")


class _Shared:
    """An ONNX Runtime session opened on first use, shared by copies (``deepcopy`` of a
    model gives the same session: ONNX Runtime runs one session from several threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._session: Any = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Shared:
        return self

    def get(self) -> Any:
        if self._session is None:
            self._session = open_session(self.path)
        return self._session


class ImportedModel(torch.nn.Module):
    """An imported encoder as a model: :meth:`encode` takes what every model takes, ``float32
    (n, 3, H, W)`` RGB in [0, 1] at ``config.input``, and runs the model directory's
    ``encoder.onnx`` on the same pixels with ONNX Runtime, so the codes are the ONNX codes
    whichever path encodes. No parameters, no decoder; it is never traced to ONNX (it is
    ONNX already: :meth:`write_encoder`)."""

    def __init__(self, config: ModelConfig, encoder: Path, batch: int | None) -> None:
        super().__init__()
        self.config = config
        self.code_dim = int(config.latent_dim or 0)
        self.code_shape = (self.code_dim,)
        self.batch = batch or batch_for(config.input)
        self._runner = _Shared(encoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``float32 (n, 3, H, W)`` in [0, 1] -> L2-normalised codes ``(n, code_dim)``.

        Raises:
            ModelError: when traced, or when the encoder gives NaN codes for an image.
        """
        if torch.jit.is_tracing():
            raise ModelError("an imported ONNX encoder cannot be traced (it is ONNX already)")
        pixels = x.detach().float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
        codes = onnxgraph.run(self._runner.get(), pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy(),
                              self.batch)
        bad = int((~np.isfinite(codes).all(axis=1)).sum())
        if bad:
            raise ModelError(f"{self._runner.path} gave NaN codes for {bad} image(s)")
        return torch.from_numpy(codes).to(x.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ModelError("an imported ONNX encoder has no decoder: it cannot reconstruct or denoise")

    def write_encoder(self, directory: Path) -> bool:
        """Copy its ``encoder.onnx`` into ``directory`` (a collection's copy of the model);
        whether it was written."""
        target = Path(directory) / self._runner.path.name
        if target.resolve() != self._runner.path.resolve():
            atomic_write(target, lambda tmp: shutil.copyfile(self._runner.path, tmp))
        return True


def _pooled_features(graph: onnx.ModelProto, data: Dataset, spec: InputSpec, dim: int, batch: int,
                     progress: bool) -> np.ndarray:
    """The codes ``float32 (n, dim)`` of ``data``'s images (at ``spec``) by ``graph``, the
    encoder composed without whitening, to fit the whitening on.

    Raises:
        ModelError: NaN or infinite codes for an image.
    """
    from .encoders import encode_dataset

    encoder = OnnxEncoder(open_session(graph.SerializeToString()), spec, dim, "imported", "", batch)
    return encode_dataset(encoder, data, progress)


def import_encoder(file: str | os.PathLike[str], out: str | os.PathLike[str], stated: OnnxInput, *,
                   data: Dataset | Callable[[InputSpec], Dataset] | None = None,
                   latent_dim: int | None = None, seed: int = 0, rerank: str | None = None,
                   progress: bool = False) -> LoadedModel:
    """Wrap the ONNX image encoder ``file`` into a model directory ``out`` (see the module's
    text) that takes its input as ``stated``. With ``data`` (a dataset, or a function that
    loads one at the spec the encoder takes, called once the file is checked), the codes'
    whitening is fitted on its images (a sample of :data:`WHITEN_SAMPLE` at most, seeded by
    ``seed``; labels unused), keeping ``latent_dim`` directions (default: all); without, the
    codes are the L2-normalised outputs. ``rerank`` overrides the retrieval rule (the
    backbones').

    Raises:
        ModelError: the file is not ONNX, or not an encoder this can run (wrong input rank,
            dynamic shapes without a stated size, a fixed batch > 1, an output of another
            rank), or it gives NaN outputs; ``latent_dim`` above its output's size.
        LookalikeError: bad options, or ``out`` is a file.
    """
    from .modelio import CONFIG, FORMAT, FORMAT_VERSION, WEIGHTS, LoadedModel
    from .networks import fit_whitening

    start = time.perf_counter()
    source = Path(file)
    where = source.name
    proto = onnxgraph.read_model(source)
    sig = onnxgraph.signature(proto, stated.output_name, where)
    spec, crop = _plan(stated, sig, where)
    batch = sig.batch or batch_for(spec)
    pool, dim = _pooling(stated, proto, sig, spec, crop, batch, where)
    code_dim = latent_dim or dim
    if code_dim > dim:
        raise ModelError(f"latent dim {code_dim} exceeds the {dim} values the encoder gives")
    whitening = None
    history: dict[str, Any] = {"n_whitening": 0}
    if callable(data):
        data = data(spec)
    if data is not None and len(data):
        sample = data
        if len(data) > WHITEN_SAMPLE:
            rows = np.random.default_rng(seed).choice(len(data), WHITEN_SAMPLE, replace=False)
            sample = data.subset(np.sort(rows), data.split)
        unwhitened = onnxgraph.compose(proto, sig, _steps(stated, spec, crop, pool))
        features = _pooled_features(unwhitened, sample, spec, dim, batch, progress)
        whitening = fit_whitening(features, code_dim)
        history = {"n_whitening": len(sample), "dataset": data.name, "split": data.split}
    elif latent_dim and latent_dim != dim:
        raise LookalikeError("latent dim (fewer code directions) needs images to fit the whitening on")

    target = Path(out)
    if target.exists() and not target.is_dir():
        raise ModelError(f"{target} exists and is not a directory")
    target.mkdir(parents=True, exist_ok=True)
    atomic_write(target / IMPORTED, lambda tmp: shutil.copyfile(source, tmp))
    onnx_sha = file_sha256(target / IMPORTED)
    details = {"file": IMPORTED, "source": source.name, "sha256": onnx_sha, "input": stated.to_dict(),
               "layout": sig.layout, "pool": pool, "output_dim": dim, "batch": sig.batch}
    # (C order: safetensors writes an array's memory as it is, and the fit's is Fortran-ordered)
    tensors = {} if whitening is None else {"whiten_mean": np.ascontiguousarray(whitening[0]),
                                            "whiten": np.ascontiguousarray(whitening[1])}
    atomic_write(target / WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={
        "format": FORMAT, "onnx": json.dumps(details, sort_keys=True)}))
    fingerprint = file_sha256(target / WEIGHTS)
    config = ModelConfig(arch=IMPORTED_ARCH, input=spec, latent_dim=code_dim)
    _write_encoder(proto, sig, _steps(stated, spec, crop, pool, whitening), fingerprint, target)
    retrieval = default_retrieval_config(DEFAULT_BACKBONE)  # whitened codes, as the backbones'
    if rerank:
        retrieval = RetrievalConfig(rerank=rerank, diffusion=retrieval.diffusion)
    history.update({"seconds": round(time.perf_counter() - start, 3), "train_loss": [],
                    "val_loss": [], "best_epoch": 1})
    atomic_write_json(target / CONFIG, {
        "format": FORMAT, "format_version": FORMAT_VERSION, "fingerprint": fingerprint,
        "model": config.to_dict(), "onnx": details, "train": None, "retrieval": retrieval.to_dict(),
        "history": history, "code_dim": code_dim,
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "versions": versions()})
    log.info("imported %s (SHA-256 %s...) into %s: %dx%d %s input, %s output, %d-d codes%s", source,
             onnx_sha[:12], target, spec.height, spec.width, sig.layout.upper(), pool, code_dim,
             f", whitened on {history['n_whitening']} images" if whitening is not None else "")
    module = ImportedModel(config, target / "encoder.onnx", sig.batch)
    return LoadedModel(module, config, None, history, fingerprint, target, retrieval)


def _write_encoder(proto: onnx.ModelProto, sig: onnxgraph.Signature, steps: onnxgraph.Steps,
                   fingerprint: str, directory: Path) -> None:
    """Write ``directory/encoder.onnx``: ``proto`` composed with ``steps``, tagged."""
    import onnx

    graph = onnxgraph.compose(proto, sig, steps, {"lookalike.fingerprint": fingerprint})
    atomic_write(directory / "encoder.onnx", lambda tmp: onnx.save(graph, tmp))


def load_imported(directory: Path, meta: dict[str, Any]) -> LoadedModel:
    """The imported encoder in the model directory ``directory``, whose ``config.json`` says
    ``meta``; ``encoder.onnx`` written again from its parts when missing or not theirs.

    Raises:
        ModelError: a file missing or changed since (its SHA-256), a bad config.
    """
    from .modelio import CONFIG, WEIGHTS, LoadedModel

    try:
        details = meta["onnx"]
        stated = OnnxInput.from_dict(details["input"])
        config = ModelConfig.from_dict(meta["model"])
        retrieval = RetrievalConfig.from_dict(meta.get("retrieval") or {"rerank": "none"})
        batch = details.get("batch")
    except (KeyError, TypeError, LookalikeError) as exc:
        raise ModelError(f"{directory / CONFIG}: bad config ({exc})") from None
    fingerprint = file_sha256(directory / WEIGHTS)
    if fingerprint != meta.get("fingerprint"):
        raise ModelError(f"{directory / WEIGHTS} does not match the fingerprint in {CONFIG} (damaged?)")
    source = directory / IMPORTED
    if not source.is_file() or file_sha256(source) != details.get("sha256"):
        raise ModelError(f"{source} is missing or not the file imported (SHA-256 "
                         f"{str(details.get('sha256'))[:12]}...); import it again")
    encoder = directory / "encoder.onnx"
    if not _tagged(encoder, fingerprint):
        try:
            tensors = load_file(directory / WEIGHTS)
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{directory / WEIGHTS}: cannot load ({onnxgraph.first_line(exc)})") from None
        whitening = (tensors["whiten_mean"], tensors["whiten"]) if "whiten" in tensors else None
        proto = onnxgraph.read_model(source)
        sig = onnxgraph.signature(proto, stated.output_name, source.name)
        spec, crop = _plan(stated, sig, source.name)
        _write_encoder(proto, sig, _steps(stated, spec, crop, details["pool"], whitening), fingerprint,
                       directory)
    module = ImportedModel(config, encoder, batch)
    return LoadedModel(module, config, None, meta.get("history") or {}, fingerprint,
                       directory, retrieval)


def _tagged(path: Path, fingerprint: str) -> bool:
    """Whether ``path`` is an ONNX file made for the weights ``fingerprint`` (its metadata
    read without its tensors)."""
    import onnx

    if not path.is_file():
        return False
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - damaged: written again
        return False
    return {p.key: p.value for p in proto.metadata_props}.get("lookalike.fingerprint") == fingerprint
