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


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: ``channels`` (1 grey or 3 RGB) x ``height`` x ``width`` pixels."""

    channels: int = 1
    height: int = 28
    width: int = 28

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise LookalikeError(f"channels must be 1 or 3, got {self.channels}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 4 <= value <= 1024:
                raise LookalikeError(f"{name} must be an integer in 4..1024, got {value!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)``: the layout of image arrays at our boundaries."""
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        return _from_dict(cls, data, "input spec")


ARCHITECTURES = ("conv-16-8-8", "conv-32-32", "hourglass")


@dataclass(frozen=True)
class ModelConfig:
    """Which network to build.

    ``arch`` names a preset (see :mod:`lookalike.models`); ``latent_dim`` is used by the
    dense-latent ``hourglass`` only.
    """

    arch: str = "conv-16-8-8"
    input: InputSpec = field(default_factory=InputSpec)
    latent_dim: int = 512

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise LookalikeError(
                f"unknown architecture {self.arch!r}; expected one of {', '.join(ARCHITECTURES)}"
            )
        if isinstance(self.input, dict):  # tolerate nested dicts from JSON
            object.__setattr__(self, "input", InputSpec.from_dict(self.input))
        if not isinstance(self.input, InputSpec):
            raise LookalikeError(f"input must be an InputSpec, got {type(self.input).__name__}")
        if not isinstance(self.latent_dim, int) or self.latent_dim < 1:
            raise LookalikeError(f"latent_dim must be a positive integer, got {self.latent_dim!r}")
        if self.arch == "hourglass" and (self.input.height % 8 or self.input.width % 8):
            raise LookalikeError(
                f"hourglass needs height and width divisible by 8, got "
                f"{self.input.height}x{self.input.width}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "model config")


LOSSES = ("bce", "mse")


@dataclass(frozen=True)
class TrainConfig:
    """How a model is trained.

    ``denoise`` adds Gaussian noise of std ``noise_factor`` to the inputs (clipped to
    [0, 1]) and asks for the clean image back, as the articles do; ``flip`` applies
    random horizontal flips (seed 003). ``val_fraction`` of the training images is held
    out to pick the best epoch. ``seed`` makes a run repeatable on one machine.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    loss: str = "bce"
    denoise: bool = True
    noise_factor: float = 0.5
    flip: bool = False
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise LookalikeError(f"epochs must be a positive integer, got {self.epochs!r}")
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
        if self.device not in ("auto", "cpu", "cuda"):
            raise LookalikeError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _from_dict(cls, data, "train config")
