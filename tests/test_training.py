from __future__ import annotations

import numpy as np
import pytest
import torch

from lookalike.config import InputSpec, ModelConfig, TrainConfig
from lookalike.data.datasets import load_dataset
from lookalike.data.images import conform, to_float
from lookalike.errors import DataError, ModelError
from lookalike.models.encoders import ModelEncoder, PixelEncoder
from lookalike.models.modelio import load_model, save_model
from lookalike.models.reconstruct import denoise, reconstruct
from lookalike.models.training import add_noise, train_autoencoder


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", "database")


def _train(images, **kw):
    spec = InputSpec(1, 8, 8)
    return train_autoencoder(images, ModelConfig(arch="conv-16-8-8", input=spec),
                             TrainConfig(epochs=kw.pop("epochs", 3), batch_size=64, **kw))


def test_training_reduces_loss_and_records_history(digits) -> None:
    res = _train(digits.images, epochs=6)
    h = res.history
    assert len(h["train_loss"]) == 6 and len(h["val_loss"]) == 6
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert 1 <= h["best_epoch"] <= 6
    assert h["val_loss"][h["best_epoch"] - 1] == min(h["val_loss"])
    assert h["n_val"] == round(len(digits) * 0.1)


def test_same_seed_same_weights_other_seed_differs(digits) -> None:
    a = _train(digits.images[:400], seed=3).model.state_dict()
    b = _train(digits.images[:400], seed=3).model.state_dict()
    c = _train(digits.images[:400], seed=4).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def _record_model(monkeypatch: pytest.MonkeyPatch
                  ) -> tuple[list[tuple[bool, np.ndarray]], dict[str, torch.Tensor]]:
    """Make ``train_autoencoder``'s model record every input of its forward pass (the
    reconstruction path), with whether it was in training mode, and keep its weights as
    built (before any step)."""
    from lookalike.models import training

    seen: list[tuple[bool, np.ndarray]] = []
    initial: dict[str, torch.Tensor] = {}
    build = training.build_model

    def recording(config):  # noqa: ANN001, ANN202
        model = build(config)
        initial.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        model.register_forward_pre_hook(lambda m, args: seen.append(
            (m.training, np.ascontiguousarray(args[0].detach().float().cpu().numpy()))))
        return model

    monkeypatch.setattr(training, "build_model", recording)
    return seen, initial


def _rows(images: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.ascontiguousarray(images, dtype=np.float32)}


def test_flip_plain_and_mse_train(digits, monkeypatch: pytest.MonkeyPatch, torch_one_thread: None) -> None:
    seen, _ = _record_model(monkeypatch)
    images = digits.images[:300]
    res = _train(images, flip=True, denoise=False, loss="mse", epochs=2)
    assert np.isfinite(res.history["train_loss"]).all()
    x = to_float(conform(images, InputSpec(1, 8, 8)))
    originals = _rows(x)
    mirrors = _rows(x[..., ::-1]) - originals  # (a symmetric digit is its own mirror)
    # plain reconstruction: the model sees the images themselves (no noise); flip: about half
    # of them mirrored left-right
    fed = [row.tobytes() for _, batch in seen for row in batch]
    assert fed and all(row in originals or row in mirrors for row in fed)
    share = np.mean([row in mirrors for row in fed])
    assert 0.3 < share < 0.7, share
    # MSE: the kept epoch's validation loss is the mean squared error of the returned
    # model's reconstructions (sigmoid outputs) of the validation inputs, which are drawn
    # from a fixed seed and so the same each epoch (BCE would be far larger)
    val = [batch for training_mode, batch in seen if not training_mode]
    assert len(val) == 2 and np.array_equal(val[0], val[1])
    inputs = torch.from_numpy(val[1])
    assert _rows(val[1]) & mirrors  # the validation views are flipped too
    with torch.no_grad():
        logits = res.model(inputs)
    mse = float(torch.nn.functional.mse_loss(torch.sigmoid(logits), inputs))
    bce = float(torch.nn.functional.binary_cross_entropy_with_logits(logits, inputs))
    h = res.history
    assert h["val_loss"][h["best_epoch"] - 1] == pytest.approx(mse, rel=1e-4)
    assert bce > 2 * mse


def test_too_few_images() -> None:
    with pytest.raises(DataError):
        _train(np.zeros((1, 8, 8, 1), np.uint8))


def test_save_load_gives_bit_identical_codes(tmp_path, digits) -> None:
    res = _train(digits.images[:300])
    saved = save_model(tmp_path / "m", res.model, TrainConfig(epochs=3), res.history)
    loaded = load_model(tmp_path / "m")
    assert loaded.fingerprint == saved.fingerprint
    assert loaded.history["best_epoch"] == res.history["best_epoch"]
    codes_a = ModelEncoder(saved).encode(digits.images)
    codes_b = ModelEncoder(loaded).encode(digits.images)
    assert codes_a.dtype == np.float32 and codes_a.shape == (len(digits), 8)
    assert np.array_equal(codes_a, codes_b)
    # no pickle anywhere: the weights are a safetensors file, the config JSON
    assert (tmp_path / "m" / "model.safetensors").read_bytes()[8:9] == b"{"


def test_damaged_or_foreign_model_dirs(tmp_path, digits) -> None:
    res = _train(digits.images[:100], epochs=1)
    save_model(tmp_path / "m", res.model)
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelError, match="fingerprint|damaged"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelError, match="not a lookalike model"):
        load_model(tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_newer_format_refused(tmp_path, digits) -> None:
    import json

    res = _train(digits.images[:100], epochs=1)
    save_model(tmp_path / "m", res.model)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["format_version"] = 99
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="newer"):
        load_model(tmp_path / "m")


def test_pixel_encoder_and_denoise(digits) -> None:
    enc = PixelEncoder(digits.spec)
    codes = enc.encode(digits.images[:5])
    assert codes.shape == (5, 64) and codes.max() <= 1.0
    res = _train(digits.images, epochs=8)
    from lookalike.models.modelio import LoadedModel

    model = LoadedModel(res.model, res.model.config, None)
    clean = digits.images[:50]
    noisy, out = denoise(model, clean, 0.5, seed=0)
    err_noisy = np.abs(noisy.astype(float) - clean).mean()
    err_out = np.abs(out.astype(float) - clean).mean()
    assert err_out < err_noisy  # denoising removes part of the noise
    assert reconstruct(model, clean).shape == clean.shape


def test_add_noise_is_clipped() -> None:
    x = torch.full((2, 1, 4, 4), 0.5)
    y = add_noise(x, 2.0, torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)


def test_contrastive_objective_trains_and_codes_are_unit_length(digits) -> None:
    from lookalike.config import default_train_config

    spec = InputSpec(1, 8, 8)
    tc = default_train_config("contrastive", epochs=3, batch_size=128)
    res = train_autoencoder(digits.images[:600], ModelConfig(arch="contrastive", input=spec), tc)
    assert res.history["train_loss"][-1] < res.history["train_loss"][0]
    from lookalike.models.modelio import LoadedModel

    codes = ModelEncoder(LoadedModel(res.model, res.model.config, tc)).encode(digits.images[:20])
    assert codes.shape == (20, 128)
    assert np.allclose(np.linalg.norm(codes, axis=1), 1.0, atol=1e-5)


def test_contrastive_with_reconstruction_and_wrong_arch(digits,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        torch_one_thread: None) -> None:
    from lookalike.config import default_train_config
    from lookalike.errors import LookalikeError

    spec = InputSpec(1, 8, 8)
    seen, initial = _record_model(monkeypatch)
    images = digits.images[:300]
    tc = default_train_config("contrastive", epochs=1, recon_weight=1.0, denoise=True)
    res = train_autoencoder(images, ModelConfig(arch="contrastive", input=spec), tc)
    assert np.isfinite(res.history["val_loss"]).all()
    # the reconstruction term ran: the decoder was fed noisy images (denoising) in training
    # and its weights moved
    clean = _rows(to_float(conform(images, spec)))
    fed = [row for training_mode, batch in seen if training_mode for row in batch]
    assert len(fed) == res.history["n_train"]
    assert not any(row.tobytes() in clean for row in fed)
    decoder = {k: v for k, v in res.model.state_dict().items() if k.startswith("decoder.")}
    assert decoder and all(not torch.equal(v, initial[k]) for k, v in decoder.items()
                           if v.is_floating_point())
    # without it (recon_weight 0), the decoder is never run in training nor changed
    seen.clear()
    plain = train_autoencoder(images, ModelConfig(arch="contrastive", input=spec),
                              default_train_config("contrastive", epochs=1))
    assert not [batch for training_mode, batch in seen if training_mode]
    assert all(torch.equal(v, initial[k]) for k, v in plain.model.state_dict().items()
               if k.startswith("decoder."))
    with pytest.raises(LookalikeError, match="contrastive"):
        train_autoencoder(digits.images[:300], ModelConfig(arch="conv-16-8-8", input=spec), tc)
