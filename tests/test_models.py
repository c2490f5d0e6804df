from __future__ import annotations

import pytest
import torch

from lookalike.config import InputSpec, ModelConfig, TrainConfig
from lookalike.errors import LookalikeError
from lookalike.models.networks import build_model


@pytest.mark.parametrize(("arch", "spec", "code_dim"), [
    ("conv-16-8-8", InputSpec(1, 28, 28), 128),   # seeds 000-002: 4x4x8
    ("conv-32-32", InputSpec(1, 28, 28), 7 * 7 * 32),  # seed 004
    ("hourglass", InputSpec(3, 64, 64), 512),     # seed 003
    ("conv-16-8-8", InputSpec(3, 40, 24), 8 * 5 * 3),
])
def test_presets_shapes(arch: str, spec: InputSpec, code_dim: int) -> None:
    model = build_model(ModelConfig(arch=arch, input=spec))
    x = torch.rand(3, spec.channels, spec.height, spec.width)
    assert model.encode(x).shape == (3, code_dim)
    assert model(x).shape == x.shape
    assert model.code_dim == code_dim


def test_config_validation_and_round_trip() -> None:
    cfg = ModelConfig(arch="hourglass", input=InputSpec(3, 32, 32), latent_dim=64)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    tc = TrainConfig(epochs=3, flip=True)
    assert TrainConfig.from_dict(tc.to_dict()) == tc
    with pytest.raises(LookalikeError, match="unknown architecture"):
        ModelConfig(arch="vgg")
    with pytest.raises(LookalikeError, match="divisible by 8"):
        ModelConfig(arch="hourglass", input=InputSpec(3, 30, 30))
    with pytest.raises(LookalikeError, match="unknown field"):
        TrainConfig.from_dict({"epochs": 2, "momentum": 0.9})
    with pytest.raises(LookalikeError, match="channels"):
        InputSpec(channels=2)
    with pytest.raises(LookalikeError, match="loss"):
        TrainConfig(loss="l1")
    with pytest.raises(LookalikeError, match="epochs"):
        TrainConfig(epochs=0)
