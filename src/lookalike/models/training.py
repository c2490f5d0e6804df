"""Training an autoencoder: denoising or plain, Adam, BCE or MSE, a validation split,
the best epoch's weights kept, repeatable for a seed on one machine.

Data stays in one tensor; batches are index slices (no per-sample Python).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import BACKBONE_ARCHS, ModelConfig, TrainConfig
from ..data.augment import augment, nt_xent
from ..data.images import conform, to_float
from ..errors import DataError, LookalikeError
from .networks import Autoencoder, Model, build_model

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; ``"cuda"`` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LookalikeError("device 'cuda' requested but no CUDA GPU is available")
    return torch.device(device)


@dataclass(eq=False)
class TrainResult:
    """The trained model (best epoch's weights, on CPU, in eval mode) and its history:
    ``train_loss`` and ``val_loss`` per epoch, ``best_epoch`` (1-based), ``seconds``,
    ``images_per_second``; and the training config with its epochs resolved."""

    model: Model
    history: dict[str, Any]
    train: TrainConfig


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX)."""
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx is not None and amx())


def use_bf16(precision: str, device: torch.device) -> bool:
    """Resolve ``TrainConfig.precision`` on ``device``: ``auto`` means bf16 where native."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return cpu_supports_bf16()
    return precision == "bf16"


def reconstruction_loss(logits: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    """Mean BCE (on logits) or MSE (on sigmoid outputs) between a batch and its target."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(torch.sigmoid(logits), target)


def add_noise(x: torch.Tensor, factor: float, generator: torch.Generator | None = None
              ) -> torch.Tensor:
    """``clip(x + factor * N(0, 1), 0, 1)``: the articles' denoising corruption."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + factor * noise).clamp_(0.0, 1.0)


def _batch_loss(model: Autoencoder, target: torch.Tensor, train: TrainConfig,
                gen: torch.Generator) -> torch.Tensor:
    """One training batch's loss for ``train.objective`` (random views/noise from ``gen``)."""
    device = target.device
    if train.flip and train.objective == "reconstruction":
        flip = (torch.rand(len(target), generator=gen) < 0.5).to(device)
        target = torch.where(flip[:, None, None, None], target.flip(-1), target)
    if train.objective == "contrastive":
        views = torch.cat([augment(target, train.augment, train.flip, gen, train.jitter),
                           augment(target, train.augment, train.flip, gen, train.jitter)])
        if device.type == "cpu":
            views = views.contiguous(memory_format=torch.channels_last)
        z = model.project(model.features(views)).float()
        loss = nt_xent(z[:len(target)], z[len(target):], train.temperature)
        if train.recon_weight == 0:
            return loss
        weight = train.recon_weight
    else:
        loss, weight = torch.zeros((), device=device), 1.0
    inputs = target
    if train.denoise:
        noise = torch.randn(target.shape, generator=gen).to(device)
        inputs = (target + train.noise_factor * noise).clamp(0.0, 1.0)
    return loss + weight * reconstruction_loss(model(inputs).float(), target, train.loss)


def train_autoencoder(images: np.ndarray, model_config: ModelConfig, train: TrainConfig,
                      progress: bool = False) -> TrainResult:
    """Train a fresh autoencoder on ``images`` (``uint8 (n, H, W, C)``, converted to
    ``model_config.input``) with ``train.objective``. Labels are never seen.

    The validation loss (on ``val_fraction`` of the images, with noise and views drawn
    once from the seed) picks the epoch whose weights are returned.

    Raises:
        DataError: fewer than 2 images (4 for the contrastive objective).
    """
    if model_config.arch in BACKBONE_ARCHS or train.objective == "pretrained":
        raise LookalikeError(f"{model_config.arch} with the {train.objective} objective is not "
                             "trained here: pretrained backbones go through lookalike.models.adaptation")
    minimum = 4 if train.objective == "contrastive" else 2
    if len(images) < minimum:
        raise DataError(f"need at least {minimum} training images, got {len(images)}")
    if train.objective == "contrastive" and model_config.arch != "contrastive":
        raise LookalikeError(f"the contrastive objective needs the 'contrastive' architecture, "
                             f"not {model_config.arch!r}")
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    x_all = torch.from_numpy(to_float(conform(images, model_config.input)))
    n_val = int(round(len(x_all) * train.val_fraction)) if len(x_all) >= 10 else 0
    order = torch.randperm(len(x_all), generator=gen)
    x_train = x_all[order[n_val:]].to(device)
    x_val = x_all[order[:n_val]].to(device)
    train = train.resolve(len(x_train))
    assert train.epochs is not None

    model = build_model(model_config).to(device)
    assert isinstance(model, Autoencoder)
    bf16 = use_bf16(train.precision, device)
    if device.type == "cpu":  # oneDNN's convolutions are faster in NHWC
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        x_train = x_train.contiguous(memory_format=torch.channels_last)
    opt = _optimizer(model, train)
    batches = [(i, min(i + train.batch_size, len(x_train)))
               for i in range(0, len(x_train), train.batch_size)]
    batches = [b for b in batches if b[1] - b[0] >= minimum // 2 + 1] or batches
    sched = (torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=train.lr, pct_start=0.1,
                                                 total_steps=train.epochs * len(batches))
             if train.objective == "contrastive" else None)
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "epoch_seconds": []}
    best = float("inf")
    best_state: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    bar = tqdm(range(train.epochs), desc="training", unit="epoch", disable=not progress)
    for epoch in bar:
        epoch_start = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x_train), generator=gen).to(device)
        total = seen = 0.0
        for lo, hi in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = _batch_loss(model, x_train[perm[lo:hi]], train, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total += float(loss.detach()) * (hi - lo)
            seen += hi - lo
        history["train_loss"].append(total / seen)
        history["epoch_seconds"].append(round(time.perf_counter() - epoch_start, 4))
        if n_val:
            history["val_loss"].append(_validate(model, x_val, train))
        score = history["val_loss"][-1] if n_val else history["train_loss"][-1]
        if score < best:
            best = score
            history["best_epoch"] = epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{history['train_loss'][-1]:.4f}",
                        **({"val": f"{history['val_loss'][-1]:.4f}"} if n_val else {}))
        log.debug("epoch %d: train %.5f%s", epoch + 1, history["train_loss"][-1],
                  f" val {history['val_loss'][-1]:.5f}" if n_val else "")
    seconds = time.perf_counter() - start
    history["seconds"] = round(seconds, 3)
    history["images_per_second"] = round(len(x_train) * train.epochs / max(seconds, 1e-9), 1)
    history["n_train"] = len(x_train)
    history["n_val"] = n_val
    history["epochs"] = train.epochs
    history["precision"] = "bf16" if bf16 else "fp32"
    model.load_state_dict(best_state)
    model.to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    return TrainResult(model, history, train)


def _optimizer(model: Autoencoder, train: TrainConfig) -> torch.optim.Optimizer:
    """Adam (AdamW with weight decay), fused into one kernel where PyTorch has it."""
    cls = torch.optim.AdamW if train.weight_decay else torch.optim.Adam
    kwargs: dict[str, Any] = {"lr": train.lr}
    if train.weight_decay:
        kwargs["weight_decay"] = train.weight_decay
    try:
        return cls(model.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device or dtype
        return cls(model.parameters(), **kwargs)


def _validate(model: Autoencoder, x_val: torch.Tensor, train: TrainConfig) -> float:
    """Validation loss with noise and views drawn from a fixed seed (comparable epochs)."""
    gen = torch.Generator().manual_seed(train.seed + 1)
    model.eval()
    total = 0.0
    with torch.inference_mode():
        for j in range(0, len(x_val), train.batch_size):
            xb = x_val[j:j + train.batch_size]
            if train.objective == "contrastive" and len(xb) < 2:
                continue
            total += float(_batch_loss(model, xb, train, gen)) * len(xb)
    return total / len(x_val)
