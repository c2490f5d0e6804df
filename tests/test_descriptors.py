"""Backbone descriptors (lookalike.models.descriptors): regional pooling and mirrored test-time
views are applied as configured, the codes equal the descriptors computed here by hand, the
settings travel with a saved model (and its ONNX encoder), and ``train`` takes them as flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from conftest import run_cli
from lookalike.config import InputSpec, ModelConfig, default_train_config
from lookalike.data.datasets import load_dataset
from lookalike.errors import LookalikeError
from lookalike.models.adaptation import train_backbone
from lookalike.models.descriptors import rmac_regions
from lookalike.models.encoders import ModelEncoder, encode_dataset
from lookalike.models.modelio import load_model, save_model
from lookalike.models.networks import BackboneModel
from lookalike.models.runtime import open_encoder

ARCH = "efficientnet-lite0"


def _arrows(root: Path, n: int = 8, size: int = 80) -> Path:
    """A folder of lopsided colour drawings (an arrow and a dot, each at its own place),
    which their mirror images do not equal."""
    rng = np.random.default_rng(0)
    for i in range(n):
        img = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(img)
        colour = tuple(int(c) for c in rng.integers(0, 200, 3))
        y = int(rng.integers(15, size - 15))
        draw.polygon([(8, y - 6), (size - 30, y - 6), (size - 30, y - 14), (size - 8, y),
                      (size - 30, y + 14), (size - 30, y + 6), (8, y + 6)], fill=colour)
        cx, cy = (int(v) for v in rng.integers(10, size - 10, 2))
        draw.ellipse([cx - 7, cy - 7, cx + 7, cy + 7], fill=(30, 160, 60))
        (root / "a").mkdir(parents=True, exist_ok=True)
        img.save(root / "a" / f"{i}.png")
    return root


def _model(size: int, **fields: str) -> BackboneModel:
    from lookalike.models.backbones import pretrained

    model = BackboneModel(ModelConfig(arch=ARCH, input=InputSpec(3, size, size), latent_dim=16, **fields))
    model.backbone.load_state_dict(pretrained(ARCH).state_dict())
    rng = np.random.default_rng(1)  # a whitening of our own, so the codes are not a prefix
    model.set_whitening(torch.from_numpy(rng.normal(0, 0.01, 1280).astype(np.float32)),
                        torch.from_numpy(rng.normal(0, 1, (1280, 16)).astype(np.float32)))
    return model.eval()


def _pixels(folder: Path, size: int) -> torch.Tensor:
    data = load_dataset(folder, "all")
    return torch.from_numpy(data.pixels(0, len(data), InputSpec(3, size, size))).permute(0, 3, 1, 2
                                                                                          ).float() / 255


def _gem(f: torch.Tensor) -> torch.Tensor:
    return (f.clamp(min=1e-6) ** 3).mean(dim=(2, 3)) ** (1 / 3)


def _whitened(model: BackboneModel, descriptor: torch.Tensor) -> torch.Tensor:
    return F.normalize((F.normalize(descriptor, dim=1) - model.whiten_mean) @ model.whiten, dim=1)


def test_rmac_regions_of_a_6x6_map() -> None:
    # the whole map, 2x2 squares of side 4 and 3x3 squares of side 3, spread edge to edge
    expected = [(0, 6, 0, 6)] + [(t, t + 4, s, s + 4) for t in (0, 2) for s in (0, 2)] \
        + [(t, t + 3, s, s + 3) for t in (0, 2, 3) for s in (0, 2, 3)]
    assert rmac_regions(6, 6) == expected
    assert rmac_regions(1, 1) == [(0, 1, 0, 1)]  # tiny maps: no duplicate regions
    assert len(set(rmac_regions(2, 3))) == len(rmac_regions(2, 3))


def test_regional_pooling_sums_the_normalised_gem_of_each_region(tmp_path: Path) -> None:
    x = _pixels(_arrows(tmp_path / "img", n=3), 192)
    rmac, plain = _model(192, pooling="rmac"), _model(192, pooling="gem")
    with torch.inference_mode():
        fmap = rmac.backbone.features(x)
        assert fmap.shape[-2:] == (6, 6)
        by_hand = sum(F.normalize(_gem(fmap[:, :, t:b, left:r]), dim=1)
                      for t, b, left, r in rmac_regions(6, 6))
        assert isinstance(by_hand, torch.Tensor)
        torch.testing.assert_close(rmac.features(x), by_hand, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(rmac.encode(x), _whitened(rmac, by_hand), rtol=1e-4, atol=1e-5)
        # the lever is applied: the whole map's GeM alone gives other codes
        torch.testing.assert_close(plain.features(x), _gem(fmap), rtol=1e-5, atol=1e-5)
        assert float((rmac.encode(x) - plain.encode(x)).abs().max()) > 0.05


def test_flip_views_average_the_image_and_its_mirror_image(tmp_path: Path) -> None:
    x = _pixels(_arrows(tmp_path / "img", n=3), 96)
    tta, plain = _model(96, test_views="flip"), _model(96)
    with torch.inference_mode():
        mirrored = x.flip(3)
        by_hand = (_gem(tta.backbone.features(x)) + _gem(tta.backbone.features(mirrored))) / 2
        torch.testing.assert_close(tta.descriptor(x), by_hand, rtol=1e-4, atol=1e-5)
        codes = tta.encode(x)
        torch.testing.assert_close(codes, _whitened(tta, by_hand), rtol=1e-4, atol=1e-5)
        # a drawing and its mirror image get one code; without the views they do not
        torch.testing.assert_close(tta.encode(mirrored), codes, rtol=1e-4, atol=1e-5)
        assert float((plain.encode(mirrored) - plain.encode(x)).abs().max()) > 0.05
        assert float((plain.encode(x) - codes).abs().max()) > 0.05


def test_the_settings_are_saved_fitted_on_and_exported(tmp_path: Path) -> None:
    folder = _arrows(tmp_path / "img")
    data = load_dataset(folder, "all")
    config = ModelConfig(arch=ARCH, input=InputSpec(3, 64, 64), latent_dim=8, pooling="rmac",
                         test_views="flip")
    result = train_backbone(data, config, default_train_config(ARCH))
    saved = save_model(tmp_path / "m", result.model, result.train, result.history)
    loaded = load_model(tmp_path / "m")
    assert loaded.config == config
    codes = encode_dataset(ModelEncoder(loaded, precision="fp32"), data)
    # whitened on the descriptors it encodes with: centred on its training images
    assert abs(float(codes.mean(axis=0) @ codes.mean(axis=0))) < 0.05
    onnx = open_encoder(saved.path, saved.fingerprint)
    assert onnx is not None
    np.testing.assert_allclose(encode_dataset(onnx, data), codes, atol=1e-5)


def test_a_model_saved_before_the_settings_loads_with_plain_gem(tmp_path: Path) -> None:
    saved = ModelConfig(arch=ARCH, input=InputSpec(3, 64, 64)).to_dict()
    del saved["pooling"], saved["test_views"]
    old = ModelConfig.from_dict(saved)
    assert (old.pooling, old.test_views) == ("gem", "none")
    with pytest.raises(LookalikeError, match="pooling must be one of gem, rmac, got 'max'"):
        ModelConfig(arch=ARCH, input=InputSpec(3, 64, 64), pooling="max")
    with pytest.raises(LookalikeError, match="test_views must be one of"):
        ModelConfig(arch=ARCH, input=InputSpec(3, 64, 64), test_views="rotate")


def test_train_takes_pooling_and_test_views(tmp_path: Path, capsys) -> None:
    folder = _arrows(tmp_path / "img", n=4)
    code, out, err = run_cli(capsys, ["-q", "train", "--dataset", folder, "--out", tmp_path / "m",
                                      "--size", "64", "--latent-dim", "8", "--pooling", "rmac",
                                      "--test-views", "flip"])
    assert code == 0, err
    model = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert (model["pooling"], model["test_views"]) == ("rmac", "flip")
    code, out, err = run_cli(capsys, ["train", "--dataset", folder, "--out", tmp_path / "x",
                                      "--pooling", "max"])
    assert code == 2 and "--pooling" in err
