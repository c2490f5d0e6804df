"""Encoding without PyTorch: a model's encode path as ONNX, run by ONNX Runtime.

:func:`export_encoder` (PyTorch side) writes ``encoder.onnx`` into a model directory: the
computation of :meth:`lookalike.models.encoders.ModelEncoder.encode` for one batch, in float32,
from ``uint8 (n, H, W, C)`` pixels to codes, the batch size free; the weights' fingerprint
is in the file's metadata. :func:`save_model` writes it with the weights, and a collection
adds it to its copy of an older model the first time that model is loaded.

:class:`OnnxEncoder` runs it with ONNX Runtime and imports neither PyTorch nor the model
code, so a process that encodes a few images (``lookalike add COLL photo.jpg``, a search
by image) starts in a fraction of a second instead of the ~2 s PyTorch's import takes. Its
codes equal PyTorch's float32 codes to ~1e-6 (``tests/test_runtime.py``). A collection
uses it when the file is there and fits (:func:`open_encoder`); ``LOOKALIKE_ENCODER=torch``
turns it off. ONNX is a protobuf of operators and tensors: no code is loaded from it.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import InputSpec, batch_for
from ..data.images import conform
from ..errors import ModelError
from ..fsutil import atomic_write, read_json

if TYPE_CHECKING:
    from .networks import Model
    from .onnximport import ImportedModel

log = logging.getLogger(__name__)

ONNX = "encoder.onnx"
#: ``LOOKALIKE_ENCODER=torch`` makes collections encode with PyTorch even where the ONNX
#: encoder is there (e.g. to use a GPU for a large ``add``)
ENV = "LOOKALIKE_ENCODER"


def torch_chosen() -> bool:
    """Whether ``LOOKALIKE_ENCODER=torch`` asks collections to encode with PyTorch."""
    return os.environ.get(ENV, "").lower() == "torch"


def export_encoder(module: Model | ImportedModel, spec: InputSpec, fingerprint: str, directory: Path) -> bool:
    """Write ``directory/encoder.onnx`` (atomically) for ``module``'s encode path at ``spec``,
    tagged with ``fingerprint``; whether it was written (a failure is logged, never raised:
    PyTorch encodes then, as before)."""
    import torch

    from .onnximport import ImportedModel

    if isinstance(module, ImportedModel):  # an imported ONNX encoder: copied, never traced
        return module.write_encoder(directory)

    class _Encode(torch.nn.Module):
        def __init__(self, inner: Model) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.encode(x.permute(0, 3, 1, 2).float().div(255.0))

    def write(tmp: str) -> None:
        import onnx

        wrapper = _Encode(module).to("cpu").eval()
        example = torch.zeros((2, spec.height, spec.width, spec.channels), dtype=torch.uint8)
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # (the exporter's deprecation and tracer notes)
            torch.onnx.export(wrapper, (example,), tmp, input_names=["images"],
                              output_names=["codes"], opset_version=17, dynamo=False,
                              dynamic_axes={"images": {0: "n"}, "codes": {0: "n"}})
        proto = onnx.load(tmp)
        onnx.helper.set_model_props(proto, {"lookalike.fingerprint": fingerprint})
        onnx.save(proto, tmp)

    try:
        atomic_write(Path(directory) / ONNX, write)
        return True
    except Exception as exc:  # noqa: BLE001 - any failure leaves the PyTorch path in charge
        log.warning("could not export %s's encoder to ONNX (%s: %s); PyTorch will encode",
                    directory, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False


class OnnxEncoder:
    """A model's encoder run by ONNX Runtime: ``uint8 (n, H, W, C)`` -> ``float32 (n, dim)``,
    the interface of :class:`lookalike.models.encoders.ModelEncoder` (images conformed to
    :attr:`spec` first, batched as it does)."""

    precision = "fp32"

    def __init__(self, session: Any, spec: InputSpec, dim: int, name: str, fingerprint: str,
                 batch_size: int | None = None) -> None:
        self.session = session
        self.spec = spec
        self.dim = dim
        self.name = name
        self.fingerprint = fingerprint
        self.batch_size = batch_size or batch_for(spec)

    def encode(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i in range(0, len(images), self.batch_size):
            part = np.ascontiguousarray(conform(images[i:i + self.batch_size], self.spec))
            out[i:i + len(part)] = self.session.run(None, {"images": part})[0]
        if not np.isfinite(out).all():  # (an imported encoder's numerics are not ours)
            raise ModelError(f"the {self.name} encoder gave NaN codes for "
                             f"{int((~np.isfinite(out).all(axis=1)).sum())} image(s)")
        return out


def open_session(model: str | os.PathLike[str] | bytes) -> Any:
    """An ONNX Runtime session on the CPU for ``model`` (a file, or a serialised
    ``ModelProto``): its log quiet but for errors, its idle threads not spinning (they would
    take the cores from the decoding threads)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def open_encoder(directory: Path, fingerprint: str) -> OnnxEncoder | None:
    """The ONNX encoder of the model directory ``directory`` when it has one made from the
    weights ``fingerprint`` and ONNX Runtime loads it; None otherwise (PyTorch encodes),
    or when ``LOOKALIKE_ENCODER=torch``."""
    path = Path(directory) / ONNX
    if torch_chosen() or not path.is_file():
        return None
    try:
        meta = read_json(Path(directory) / "config.json")
        if meta.get("fingerprint") != fingerprint:
            return None
        session = open_session(path)
        tagged = session.get_modelmeta().custom_metadata_map.get("lookalike.fingerprint")
        if tagged != fingerprint:
            log.warning("%s was made from other weights; PyTorch will encode", path)
            return None
        spec = InputSpec.from_dict(meta["model"]["input"])
        fixed = (meta.get("onnx") or {}).get("batch")  # an imported encoder's fixed batch (1)
        return OnnxEncoder(session, spec, int(meta["code_dim"]), str(meta["model"]["arch"]),
                           fingerprint, fixed)
    except Exception as exc:  # noqa: BLE001 - a damaged or unreadable file: PyTorch encodes
        log.warning("cannot use %s (%s); PyTorch will encode", path, type(exc).__name__)
        return None
