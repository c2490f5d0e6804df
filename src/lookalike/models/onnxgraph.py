"""The ONNX side of an imported image encoder (:mod:`lookalike.models.onnximport`): reading a
user's ONNX file, checking what it takes and gives (:func:`signature`), and composing the
whole encode path around its graph as one ONNX graph (:func:`compose`), which ONNX Runtime
runs like any model's ``encoder.onnx`` (:mod:`lookalike.models.runtime`):

``uint8 (n, H, W, 3)`` RGB pixels -> centre crop -> float, channel order, ``(x / 255 - mean)
/ std`` -> the user's graph (NCHW or NHWC, float32 or float16) -> a pooled vector as it is, or
a feature map GeM-pooled (as the backbones' maps:
:data:`lookalike.models.descriptors.GEM_P`) -> L2-normalised -> whitened and
L2-normalised again (when fitted) -> ``float32 (n, d)`` codes.

ONNX is a protobuf of operators and tensors: nothing in the file runs as Python. No PyTorch
here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError

#: The oldest default-domain opset composed onto (Slice's and Clip's inputs forms).
MIN_OPSET = 11
_EPS = 1e-12  # as torch.nn.functional.normalize
_FLOATS = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}


def first_line(exc: BaseException) -> str:
    """An error's message, its first line, for a one-line error of ours."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_model(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """The ONNX model in ``path``, checked by ONNX's checker.

    Raises:
        ModelError: not a file, not ONNX, invalid, weights in external files, or an opset
            older than :data:`MIN_OPSET`.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such ONNX file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and the like
        raise ModelError(f"{p} is not an ONNX model ({first_line(exc)})") from None
    if not proto.graph.node or not proto.graph.output or not proto.opset_import:
        raise ModelError(f"{p} is not an ONNX model (no graph)")
    if any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise ModelError(f"{p} keeps its weights in separate files; save it as one file "
                         "(onnx.save(model, path), models under 2 GB)")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # noqa: BLE001 - ValidationError, or a protobuf error
        raise ModelError(f"{p} is not a valid ONNX model ({first_line(exc)})") from None
    opset = opset_of(proto)
    if opset < MIN_OPSET:
        raise ModelError(f"{p} uses ONNX opset {opset}; export it with opset {MIN_OPSET} or newer")
    return proto


def opset_of(proto: onnx.ModelProto) -> int:
    """The model's default-domain ("ai.onnx") opset version."""
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _dims(value: onnx.ValueInfoProto) -> list[int | None] | None:
    """A value's shape, ``None`` for a dynamic axis; ``None`` for a dynamic rank."""
    tt = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim]


@dataclass(frozen=True)
class Signature:
    """What an ONNX image encoder takes and gives, read from its graph: its one image input
    (``layout`` ``"nchw"`` or ``"nhwc"``, 3 channels; ``height``, ``width`` and ``batch``
    ``None`` where dynamic; ``float32`` or ``float16``) and the output used (its ``rank``,
    ``None`` when the file does not say)."""

    input: str
    layout: str
    height: int | None
    width: int | None
    batch: int | None
    dtype: str
    output: str
    rank: int | None


def signature(proto: onnx.ModelProto, output: str | None = None, where: str = "the model"
              ) -> Signature:
    """The :class:`Signature` of ``proto``, its output ``output`` (default: its first).

    Raises:
        ModelError: not one float input of rank 4 with 3 channels on a static axis, a fixed
            batch other than 1, or no output named ``output``.
    """
    graph = proto.graph
    weights = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in weights]
    if len(inputs) != 1:
        raise ModelError(f"{where} takes {len(inputs)} inputs ({', '.join(v.name for v in inputs)}); "
                         "an image encoder takes one batch of images")
    x = inputs[0]
    dtype = _FLOATS.get(x.type.tensor_type.elem_type)
    if dtype is None:
        raise ModelError(f"{where}'s input {x.name!r} is not float32 or float16")
    dims = _dims(x)
    if dims is None:
        raise ModelError(f"{where}'s input {x.name!r} has a dynamic rank; expected rank 4, "
                         "(n, 3, H, W) or (n, H, W, 3)")
    if len(dims) != 4:
        raise ModelError(f"{where}'s input {x.name!r} has rank {len(dims)}, shape "
                         f"{_show(dims)}; expected rank 4, (n, 3, H, W) or (n, H, W, 3)")
    if dims[1] == 3:
        layout, height, width = "nchw", dims[2], dims[3]
    elif dims[3] == 3:
        layout, height, width = "nhwc", dims[1], dims[2]
    else:
        raise ModelError(f"{where}'s input {x.name!r} has shape {_show(dims)}: no axis of 3 colour "
                         "channels at 1 (n, 3, H, W) or 3 (n, H, W, 3) (a dynamic channel axis "
                         "cannot be handled: export with 3 channels)")
    if dims[0] not in (None, 1):
        raise ModelError(f"{where}'s input {x.name!r} has a fixed batch of {dims[0]}; export it with a "
                         "dynamic batch axis (torch.onnx.export's dynamic_axes) or a batch of 1")
    names = [v.name for v in graph.output]
    chosen = output or names[0]
    if chosen not in names:
        raise ModelError(f"{where} has no output {chosen!r}; its outputs are {', '.join(names)}")
    out_dims = _dims(next(v for v in graph.output if v.name == chosen))
    return Signature(x.name, layout, height, width, dims[0], dtype, chosen,
                     None if out_dims is None else len(out_dims))


def _show(dims: Sequence[int | None]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


@dataclass(frozen=True)
class Steps:
    """What :func:`compose` puts around the user's graph: the pixels' ``size`` (h, w) as
    the graph receives them, the centred ``crop`` (h, w) taken from them (``None``: none),
    ``bgr`` channel order, per-channel ``mean`` and ``std`` (on [0, 1] pixels, in the
    model's channel order), ``pool`` (``"raw"``: the output as it is, ``"vector"``:
    flattened, ``"gem"``: a feature map GeM-pooled), and the whitening ``(mean (d,),
    matrix (d, k))`` or ``None`` (codes: the L2-normalised pooled vector)."""

    size: tuple[int, int]
    crop: tuple[int, int] | None
    bgr: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pool: str
    whitening: tuple[np.ndarray, np.ndarray] | None = None


class _Builder:
    """Nodes and constants with names that cannot collide with the user's graph's."""

    def __init__(self, taken: set[str]) -> None:
        self.prefix = "lookalike/"
        while any(name.startswith(self.prefix) for name in taken):
            self.prefix = "_" + self.prefix
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def name(self, what: str) -> str:
        self._count += 1
        return f"{self.prefix}{what}{self._count}"

    def const(self, value: Any, dtype: Any = np.float32) -> str:
        name = self.name("const")
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op: str, inputs: Sequence[str], output: str | None = None, **attrs: Any) -> str:
        out = output or self.name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self.name(op), **attrs))
        return out


def _normalize(b: _Builder, z: str, opset: int) -> str:
    """``z / max(||z||, 1e-12)`` along axis 1 (torch's ``F.normalize``)."""
    if opset >= 18:
        norm = b.op("ReduceL2", [z, b.const([1], np.int64)], keepdims=1)
    else:
        norm = b.op("ReduceL2", [z], axes=[1], keepdims=1)
    return b.op("Div", [z, b.op("Max", [norm, b.const(_EPS)])])


def compose(proto: onnx.ModelProto, sig: Signature, steps: Steps,
            tags: dict[str, str] | None = None) -> onnx.ModelProto:
    """One ONNX model: input ``images`` ``uint8 (n, *steps.size, 3)``, output ``codes``
    ``float32`` (rank 2; with ``pool="raw"``, the user's output as it is, as float32),
    running ``steps`` around ``proto``'s graph (see the module's text). ``tags`` go into
    the model's metadata. ``proto`` is not changed."""
    graph = proto.graph
    taken = {graph.name, *(v.name for v in graph.input), *(v.name for v in graph.output),
             *(t.name for t in graph.initializer)}
    for node in graph.node:
        taken.update([*node.input, *node.output, node.name])
    b = _Builder(taken)
    opset = opset_of(proto)
    x = b.op("Cast", ["images"], to=TensorProto.FLOAT)
    if steps.crop is not None:
        (h, w), (ch, cw) = steps.size, steps.crop
        top, left = (h - ch) // 2, (w - cw) // 2
        x = b.op("Slice", [x, b.const([top, left], np.int64), b.const([top + ch, left + cw], np.int64),
                           b.const([1, 2], np.int64)])
    if steps.bgr:
        x = b.op("Gather", [x, b.const([2, 1, 0], np.int64)], axis=3)
    x = b.op("Div", [x, b.const(255.0)])
    x = b.op("Sub", [x, b.const(steps.mean)])
    x = b.op("Div", [x, b.const(steps.std)])
    if sig.layout == "nchw":
        x = b.op("Transpose", [x], perm=[0, 3, 1, 2])
    if sig.dtype == "float16":
        x = b.op("Cast", [x], to=TensorProto.FLOAT16)
    b.op("Identity", [x], output=sig.input)
    pre = list(b.nodes)
    b.nodes.clear()

    y = b.op("Cast", [sig.output], to=TensorProto.FLOAT)
    if steps.pool == "gem":
        # the backbones' exponent; imported here, as its module loads PyTorch
        from .descriptors import GEM_P

        if sig.layout == "nhwc":  # a channels-last model's maps are channels-last too
            y = b.op("Transpose", [y], perm=[0, 3, 1, 2])
        y = b.op("Pow", [b.op("Max", [y, b.const(1e-6)]), b.const(GEM_P)])
        y = b.op("Pow", [b.op("GlobalAveragePool", [y]), b.const(1.0 / GEM_P)])
    if steps.pool != "raw":
        y = _normalize(b, b.op("Flatten", [y], axis=1), opset)
    if steps.whitening is not None:
        mean, matrix = steps.whitening
        y = b.op("MatMul", [b.op("Sub", [y, b.const(mean)]), b.const(matrix)])
        y = _normalize(b, y, opset)
    b.op("Identity", [y], output="codes")

    n: int | str = 1 if sig.batch == 1 else "n"
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, [n, *steps.size, 3])
    codes = helper.make_tensor_value_info("codes", TensorProto.FLOAT, None)
    weights = {t.name for t in graph.initializer}
    composed = helper.make_graph(
        [*pre, *graph.node, *b.nodes], graph.name or "encoder",
        [images, *(v for v in graph.input if v.name in weights)], [codes],
        initializer=[*graph.initializer, *b.constants], value_info=list(graph.value_info))
    model = helper.make_model(composed, opset_imports=list(proto.opset_import),
                              ir_version=proto.ir_version, producer_name="lookalike")
    model.functions.extend(proto.functions)
    if tags:
        helper.set_model_props(model, tags)
    return model


def run(sess: Any, images: np.ndarray, batch: int) -> np.ndarray:
    """``sess`` (a composed model) on ``uint8 (n, H, W, 3)`` ``images``, ``batch`` at a time;
    the outputs concatenated along axis 0, float32."""
    parts = [sess.run(None, {"images": np.ascontiguousarray(images[i:i + batch])})[0]
             for i in range(0, len(images), batch)]
    return np.concatenate(parts).astype(np.float32, copy=False)
