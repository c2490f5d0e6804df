"""Backbone descriptors (lookalike.models.descriptors): regional pooling, mirrored test-time
views and mid-level blocks' codes are applied as configured, the codes equal the descriptors
computed here by hand, the settings travel with a saved model (and its ONNX encoder), a model
saved before them encodes as it did, and ``train`` takes them as flags."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from conftest import run_cli
from lookalike.config import (
    BACKBONE_ARCHS,
    BACKBONE_BLOCKS,
    MID_BLOCK,
    MID_BLOCKS_BY_DEFAULT,
    InputSpec,
    ModelConfig,
    default_mid_blocks,
    default_train_config,
)
from lookalike.data.datasets import load_dataset
from lookalike.errors import LookalikeError
from lookalike.models.adaptation import train_backbone
from lookalike.models.backbones import EfficientNetLite
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


def _mid_model(size: int, mid_blocks: tuple[int, ...] = (14,)) -> BackboneModel:
    """``_model`` with mid blocks: the same backbone and head whitening, and a random whitening
    of each block's descriptor."""
    model = BackboneModel(ModelConfig(arch=ARCH, input=InputSpec(3, size, size), latent_dim=16,
                                      mid_blocks=mid_blocks))
    model.load_state_dict(_model(size).state_dict(), strict=False)  # (the mid buffers: below)
    rng = np.random.default_rng(2)
    for part, width in enumerate(model.part_widths[1:], start=1):
        model.set_whitening(torch.from_numpy(rng.normal(0, 0.01, width).astype(np.float32)),
                            torch.from_numpy(rng.normal(0, 1, (width, width)).astype(np.float32)), part)
    return model.eval()


def test_mid_block_code_is_the_whitened_block_descriptor_beside_the_head_code(tmp_path: Path) -> None:
    x = _pixels(_arrows(tmp_path / "img", n=3), 96)
    mid, plain = _mid_model(96), _model(96)
    assert mid.part_widths == (1280, 192) and mid.code_dim == 16 + 192
    seen: list[torch.Tensor] = []  # block 14's output, taken by a hook, not by the code under test
    hook = mid.backbone._blocks[14].register_forward_hook(lambda m, i, out: seen.append(out))
    with torch.inference_mode():
        codes = mid.encode(x)
        hook.remove()
        head = _whitened(mid, _gem(mid.backbone.features(x)))
        mean, matrix = mid.mid_mean_14, mid.mid_whiten_14
        block = F.normalize((F.normalize(_gem(seen[0]), dim=1) - mean) @ matrix, dim=1)
        assert seen[0].shape == (3, 192, 3, 3)
        torch.testing.assert_close(codes, F.normalize(torch.cat([head, block], dim=1), dim=1),
                                   rtol=1e-4, atol=1e-5)
        # the first latent_dim columns, renormalised, are the code without the block
        torch.testing.assert_close(F.normalize(codes[:, :16], dim=1), plain.encode(x), rtol=1e-4, atol=1e-5)
        # the block's half carries the images' own information, not a constant
        assert float(codes[:, 16:].std(dim=0).max()) > 0.01


def test_mid_blocks_are_fitted_saved_and_exported(tmp_path: Path) -> None:
    folder = _arrows(tmp_path / "img")
    data = load_dataset(folder, "all")
    config = ModelConfig(arch=ARCH, input=InputSpec(3, 64, 64), latent_dim=8, mid_blocks=(10, 14))
    result = train_backbone(data, config, default_train_config(ARCH))
    saved = save_model(tmp_path / "m", result.model, result.train, result.history)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model"]["mid_blocks"] == [10, 14]
    loaded = load_model(tmp_path / "m")
    assert loaded.config == config and loaded.module.code_dim == 8 + 112 + 192
    codes = encode_dataset(ModelEncoder(loaded, precision="fp32"), data)
    assert codes.shape == (8, 312)
    np.testing.assert_array_equal(codes, encode_dataset(ModelEncoder(saved, precision="fp32"), data))
    # each block whitened on its own training descriptors: its part of the codes is centred
    for lo, hi in ((8, 120), (120, 312)):
        part = codes[:, lo:hi] / np.linalg.norm(codes[:, lo:hi], axis=1, keepdims=True)
        assert abs(float(part.mean(axis=0) @ part.mean(axis=0))) < 0.05
    module = loaded.module
    assert isinstance(module, BackboneModel)
    assert not torch.equal(module.mid_whiten_14, torch.eye(192))
    onnx = open_encoder(saved.path, saved.fingerprint)  # the same codes without PyTorch
    assert onnx is not None
    np.testing.assert_allclose(encode_dataset(onnx, data), codes, atol=1e-5)


def test_a_model_without_mid_blocks_saves_and_encodes_as_before(tmp_path: Path) -> None:
    folder = _arrows(tmp_path / "img", n=4)
    data = load_dataset(folder, "all")
    config = ModelConfig(arch=ARCH, input=InputSpec(3, 64, 64), latent_dim=8)
    result = train_backbone(data, config, default_train_config(ARCH))
    save_model(tmp_path / "m", result.model, result.train, result.history)
    # the files of a model saved before mid blocks existed: no new key, no new tensor
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "mid_blocks" not in meta["model"]
    old = ModelConfig.from_dict(meta["model"])
    assert old.mid_blocks == () and old == config
    loaded = load_model(tmp_path / "m")
    module = loaded.module
    assert isinstance(module, BackboneModel)
    assert not [k for k in module.state_dict() if k.startswith("mid_")]
    # its codes are the old formula's, bit for bit
    x = _pixels(folder, 64)
    with torch.inference_mode():
        by_hand = F.normalize((F.normalize(_gem(module.backbone.features(x)), dim=1)
                               - module.whiten_mean) @ module.whiten, dim=1)
        assert torch.equal(module.encode(x), by_hand)


def test_mid_blocks_are_checked() -> None:
    spec = InputSpec(3, 64, 64)
    assert ModelConfig.from_dict({**ModelConfig(arch=ARCH, input=spec).to_dict(),
                                  "mid_blocks": [14]}).mid_blocks == (14,)
    with pytest.raises(LookalikeError, match=r"efficientnet-lite0 has blocks 0..15, got mid_blocks \(16,\)"):
        ModelConfig(arch=ARCH, input=spec, mid_blocks=(16,))
    for bad in ((14, 10), (14, 14), (-1,), ("14",)):
        with pytest.raises(LookalikeError, match="mid_blocks must be increasing block indices"):
            ModelConfig(arch=ARCH, input=spec, mid_blocks=bad)  # type: ignore[arg-type]
    with pytest.raises(LookalikeError, match="mid_blocks are for a pretrained backbone, not contrastive"):
        ModelConfig(arch="contrastive", mid_blocks=(1,))


@pytest.mark.parametrize("arch", BACKBONE_ARCHS)
def test_the_default_mid_block_ends_the_second_to_last_stage(arch: str) -> None:
    net = EfficientNetLite(arch)
    assert len(net._blocks) == BACKBONE_BLOCKS[arch]
    block = MID_BLOCK[arch]
    # the last block at the last map's stride before the last stage widens the channels
    assert net.block_channels(block) != net.block_channels(block + 1) == net._conv_head.in_channels
    assert block + 1 == len(net._blocks) - 1
    assert default_mid_blocks(arch) == ((block,) if MID_BLOCKS_BY_DEFAULT else ())
    assert default_mid_blocks("contrastive") == ()


def test_train_takes_mid_blocks(tmp_path: Path, capsys) -> None:
    folder = _arrows(tmp_path / "img", n=4)
    for flag, expected, dim in ((["--mid-blocks", "10,14"], [10, 14], 8 + 112 + 192),
                                (["--mid-blocks", "none"], None, 8),
                                ([], [14] if MID_BLOCKS_BY_DEFAULT else None,
                                 8 + 192 if MID_BLOCKS_BY_DEFAULT else 8)):
        code, out, err = run_cli(capsys, ["train", "--dataset", folder, "--out", tmp_path / "m",
                                          "--size", "64", "--latent-dim", "8", *flag])
        assert code == 0, err
        assert f"code {dim}-d" in out
        model = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
        assert model.get("mid_blocks") == expected
    for bad, message in (("x", "expected none or block numbers"), ("14,10", "increasing block numbers"),
                         ("16", "efficientnet-lite0 has blocks 0..15")):
        code, out, err = run_cli(capsys, ["train", "--dataset", folder, "--out", tmp_path / "x",
                                          "--size", "64", "--mid-blocks", bad])
        assert code == 2 and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
