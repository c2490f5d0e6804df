"""The articles' convolutional autoencoders as presets, built from a :class:`ModelConfig`.

* ``conv-16-8-8`` (seeds 000-002): three 3x3 conv + 2x2 max-pool stages of 16, 8, 8
  filters; the code is the last pooled map, 8 x ceil(H/8) x ceil(W/8) (4x4x8 = 128 for
  28x28). Pooling rounds up like Keras' ``padding="same"``.
* ``conv-32-32`` (seed 004): two stages of 32 filters; code 32 x H/4 x W/4 (7x7x32 for 28x28).
* ``contrastive`` (lookalike's recipe): conv stages of w, 2w, 2w filters (``width`` w = 32) with batch
  norm, a dense code of ``latent_dim`` (128), L2-normalised; a mirrored decoder for the
  (optional) denoising loss and a projection head used only by the contrastive loss.
* ``efficientnet-lite0/1/2`` (seed 003's "pretrained models like EfficientNet as feature
  extractor"): an ImageNet-trained backbone (:mod:`lookalike.models.backbones`), its last
  feature map GeM-pooled (or as ``ModelConfig.pooling`` and ``.test_views`` say,
  :mod:`lookalike.models.descriptors`), centred and whitened by a projection fitted on the training
  images (:func:`fit_whitening`), L2-normalised; with ``ModelConfig.mid_blocks`` (new models'
  default), the same for a mid-level block's output, concatenated. It has no decoder.
* ``hourglass`` (seed 003): conv stages of 32, 64, 128 filters, then a dense latent of
  ``latent_dim`` (512); the decoder mirrors it with transposed convolutions.

Decoders return logits (apply a sigmoid for images) so the BCE loss is computed stably.
A decoder whose natural output size differs from the input (the articles' layers fit
28x28 only) is resized bilinearly to the input size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import BACKBONE_ARCHS, ModelConfig
from .backbones import EfficientNetLite
from .descriptors import averaged, gem, regional_gem


def _conv(cin: int, cout: int, padding: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=padding), nn.ReLU(inplace=True))


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, ceil_mode=True)


class Autoencoder(nn.Module):
    """An encoder/decoder pair. ``encode`` gives flat codes ``(n, code_dim)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c, h, w = config.input.channels, config.input.height, config.input.width
        self.encoder, self.decoder, self.code_shape = _build(config.arch, c, h, w,
                                                             config.latent_dim or 0, config.width)
        self.code_dim = int(torch.tensor(self.code_shape).prod())

        self.head = (nn.Sequential(
            nn.BatchNorm1d(self.code_dim), nn.ReLU(), nn.Linear(self.code_dim, self.code_dim),
            nn.BatchNorm1d(self.code_dim), nn.ReLU(), nn.Linear(self.code_dim, 64))
            if config.arch == "contrastive" else None)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's raw output, flat: ``(n, code_dim)``."""
        return self.encoder(x).flatten(1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``float32 (n, C, H, W)`` in [0, 1] -> codes ``(n, code_dim)`` (L2-normalised for
        ``contrastive``, whose codes are compared by angle)."""
        z = self.features(x)
        return F.normalize(z.float(), dim=1) if self.head is not None else z

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Projection head for the contrastive loss: features -> L2-normalised ``(n, 64)``."""
        if self.head is None:
            raise RuntimeError(f"{self.config.arch} has no projection head")
        return F.normalize(self.head(features), dim=1)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Codes ``(n, code_dim)`` -> logits ``(n, C, H, W)``."""
        out = self.decoder(code.view(len(code), *self.code_shape))
        size = (self.config.input.height, self.config.input.width)
        if out.shape[-2:] != size:
            out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits for ``x``."""
        return self.decode(self.features(x))


def _bn_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _build(arch: str, c: int, h: int, w: int, latent: int, width: int = 32
           ) -> tuple[nn.Module, nn.Module, tuple[int, ...]]:
    if arch == "contrastive":
        hh, ww = _ceil_div(h, 4), _ceil_div(w, 4)
        a, b = width, 2 * width
        encoder = nn.Sequential(
            _bn_conv(c, a), _pool(), _bn_conv(a, b), _pool(), _bn_conv(b, b),
            nn.Flatten(), nn.Linear(b * hh * ww, latent),
        )
        decoder = nn.Sequential(
            nn.Linear(latent, b * hh * ww), nn.ReLU(inplace=True), nn.Unflatten(1, (b, hh, ww)),
            nn.Upsample(scale_factor=2), _conv(b, a), nn.Upsample(scale_factor=2),
            nn.Conv2d(a, c, 3, padding=1),
        )
        return encoder, decoder, (latent,)
    if arch == "conv-16-8-8":
        encoder = nn.Sequential(_conv(c, 16), _pool(), _conv(16, 8), _pool(), _conv(8, 8), _pool())
        decoder = nn.Sequential(
            _conv(8, 8), nn.Upsample(scale_factor=2), _conv(8, 8), nn.Upsample(scale_factor=2),
            _conv(8, 16, padding=0), nn.Upsample(scale_factor=2), nn.Conv2d(16, c, 3, padding=1),
        )
        return encoder, decoder, (8, _ceil_div(h, 8), _ceil_div(w, 8))
    if arch == "conv-32-32":
        encoder = nn.Sequential(_conv(c, 32), _pool(), _conv(32, 32), _pool())
        decoder = nn.Sequential(
            _conv(32, 32), nn.Upsample(scale_factor=2), _conv(32, 32), nn.Upsample(scale_factor=2),
            nn.Conv2d(32, c, 3, padding=1),
        )
        return encoder, decoder, (32, _ceil_div(h, 4), _ceil_div(w, 4))
    if arch == "hourglass":
        hh, ww = h // 8, w // 8
        encoder = nn.Sequential(
            _conv(c, 32), _pool(), _conv(32, 64), _pool(), _conv(64, 128), _pool(),
            nn.Flatten(), nn.Linear(128 * hh * ww, latent),
        )
        decoder = nn.Sequential(
            nn.Linear(latent, 128 * hh * ww), nn.ReLU(inplace=True), nn.Unflatten(1, (128, hh, ww)),
            nn.ConvTranspose2d(128, 64, 2, stride=2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(64, 32, 2, stride=2), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(32, c, 2, stride=2),
        )
        return encoder, decoder, (latent,)
    raise AssertionError(f"unhandled architecture {arch}")  # ModelConfig validated it


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


ARTICLE_PRESETS = ("conv-16-8-8", "conv-32-32", "hourglass")


class BackboneModel(nn.Module):
    """A pretrained backbone as an encoder: ``encode`` gives L2-normalised ``(n, code_dim)``
    codes, ``normalize(W^T (normalize(gem(features)) - mean))`` (:func:`fit_whitening`'s
    mean and matrix are of L2-normalised features). ``W`` and ``mean`` are buffers, the
    identity's first columns and zero until :meth:`set_whitening`; ``head`` is the
    projection the contrastive adaptation trains through. No decoder.

    With ``config.mid_blocks``, each named block's output is GeM-pooled too (the same
    forward pass) and whitened by its own buffers (``mid_mean_<block>``,
    ``mid_whiten_<block>``, all its channels kept); the code is the concatenation of the
    L2-normalised parts (equal weights), L2-normalised again:
    ``latent_dim`` + the blocks' channels wide. Its first ``latent_dim`` columns,
    renormalised, are the code without the blocks."""

    whiten_mean: torch.Tensor
    whiten: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = EfficientNetLite(config.arch)
        width = self.backbone.feature_dim
        self.head_dim = int(config.latent_dim or width)
        if self.head_dim > width:
            raise ValueError(f"latent_dim {self.head_dim} exceeds the backbone's {width} features")
        #: the widths of the pooled parts :meth:`descriptor` puts side by side: the last
        #: map's, then each mid block's
        self.part_widths = (width, *(self.backbone.block_channels(b) for b in config.mid_blocks))
        self.code_dim = self.head_dim + sum(self.part_widths[1:])
        self.code_shape = (self.code_dim,)
        self.register_buffer("whiten_mean", torch.zeros(width))
        self.register_buffer("whiten", torch.eye(width)[:, :self.head_dim].contiguous())
        for block, channels in zip(config.mid_blocks, self.part_widths[1:], strict=True):
            self.register_buffer(f"mid_mean_{block}", torch.zeros(channels))
            self.register_buffer(f"mid_whiten_{block}", torch.eye(channels))
        self.head = nn.Sequential(nn.Linear(width, 512), nn.BatchNorm1d(512), nn.ReLU(),
                                  nn.Linear(512, 128))

    def _pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return regional_gem(fmap) if self.config.pooling == "rmac" else gem(fmap)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled last feature map of ``x`` as given, ``(n, 1280)``, before whitening:
        GeM, or regional GeM (``config.pooling``, :mod:`lookalike.models.descriptors`)."""
        return self._pool(self.backbone.features(x))

    def parts(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`features` and the GeM of each mid block's output side by side,
        ``(n, sum(part_widths))``, from one forward pass."""
        if not self.config.mid_blocks:
            return self.features(x)
        last, mids = self.backbone.feature_maps(x, self.config.mid_blocks)
        return torch.cat([self._pool(last), *(gem(m) for m in mids)], dim=1)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`parts` averaged over the test-time views of ``x``
        (``config.test_views``), ``(n, sum(part_widths))`` (``(n, 1280)`` without mid
        blocks): what the whitenings are fitted on and :meth:`encode` whitens."""
        return averaged(self.parts, x, self.config.test_views)

    def whitening(self, part: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(mean, matrix)`` buffers of part ``part`` (0: the last map; i: the i-th mid
        block)."""
        if part == 0:
            return self.whiten_mean, self.whiten
        block = self.config.mid_blocks[part - 1]
        return getattr(self, f"mid_mean_{block}"), getattr(self, f"mid_whiten_{block}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``float32 (n, 3, H, W)`` in [0, 1] -> L2-normalised codes ``(n, code_dim)``."""
        d = self.descriptor(x)
        if not self.config.mid_blocks:  # (the exact operations of the models saved before)
            z = (F.normalize(d, dim=1) - self.whiten_mean) @ self.whiten
            return F.normalize(z, dim=1)
        codes = []
        for i, part in enumerate(torch.split(d, list(self.part_widths), dim=1)):
            mean, matrix = self.whitening(i)
            z = F.normalize((F.normalize(part, dim=1) - mean) @ matrix, dim=1)
            codes.append(z)
        return F.normalize(torch.cat(codes, dim=1), dim=1)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Projection head for the contrastive adaptation: ``(n, 128)``, L2-normalised."""
        return F.normalize(self.head(features), dim=1)

    def set_whitening(self, mean: torch.Tensor, matrix: torch.Tensor, part: int = 0) -> None:
        """Use ``mean`` and ``matrix`` for part ``part`` from now on: part 0, the last map's,
        ``(1280,)`` and ``(1280, latent_dim)``; part i, the i-th mid block's, ``(c,)`` and
        ``(c, c)`` for its ``c`` channels."""
        if not 0 <= part < len(self.part_widths):
            raise ValueError(f"part {part} does not exist: this model has {len(self.part_widths)}")
        old_mean, old = self.whitening(part)
        if matrix.shape != old.shape or mean.shape != old_mean.shape:
            raise ValueError(f"whitening of shape {tuple(matrix.shape)} does not fit "
                             f"{tuple(old.shape)}")
        old_mean.copy_(mean)
        old.copy_(matrix)


def fit_whitening(features: np.ndarray, dim: int, power: float = 0.25
                  ) -> tuple[np.ndarray, np.ndarray]:
    """PCA whitening of L2-normalised ``features`` ``(n, d)``: returns ``mean (d,)`` and
    ``matrix (d, dim)`` that centre the features, keep their ``dim`` principal directions
    and scale each by its variance to the power ``-power`` (0.5: full whitening; the
    default 0.25, square-root whitening, measured better on the icon benchmark:
    docs/benchmarks.md).

    The covariance is Ledoit-Wolf-shrunk (scikit-learn), so a few hundred images do not
    blow up their weakest directions; with fewer directions than ``dim`` (few images), the
    remaining ones are kept unscaled at the shrinkage floor. Label-free: it uses the images
    only. Deterministic (eigenvectors' signs fixed by their largest entry)."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    mean = x.mean(axis=0)
    if len(x) < 3:
        return mean.astype(np.float32), np.eye(x.shape[1], dim, dtype=np.float32)
    cov = LedoitWolf(assume_centered=False, store_precision=False).fit(x).covariance_
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1][:dim]
    eigval, eigvec = np.maximum(eigval[order], 1e-12), eigvec[:, order]
    signs = np.sign(eigvec[np.abs(eigvec).argmax(axis=0), np.arange(eigvec.shape[1])])
    eigvec = eigvec * np.where(signs == 0, 1.0, signs)
    matrix = eigvec * eigval ** -power
    return mean.astype(np.float32), matrix.astype(np.float32)


def _keras_init(module: nn.Module) -> None:
    """Keras' defaults (Glorot-uniform kernels, zero biases), so the articles' presets
    start where the articles' Keras models start."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


Model = Autoencoder | BackboneModel


def build_model(config: ModelConfig) -> Model:
    """A freshly initialised model for ``config``: an :class:`Autoencoder` (the articles'
    presets initialised as Keras does), or a :class:`BackboneModel` with random weights
    (:func:`lookalike.models.backbones.pretrained` has the real ones)."""
    if config.arch in BACKBONE_ARCHS:
        return BackboneModel(config)
    model = Autoencoder(config)
    if config.arch in ARTICLE_PRESETS:
        _keras_init(model)
    return model
