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

from .config import ModelConfig, TrainConfig
from .errors import DataError, LookalikeError
from .images import conform, to_float
from .models import Autoencoder, build_model

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
    ``images_per_second``."""

    model: Autoencoder
    history: dict[str, Any]


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


def train_autoencoder(images: np.ndarray, model_config: ModelConfig, train: TrainConfig,
                      progress: bool = False) -> TrainResult:
    """Train a fresh autoencoder on ``images`` (``uint8 (n, H, W, C)``, converted to
    ``model_config.input``). Labels are never seen.

    Raises:
        DataError: fewer than 2 images.
    """
    if len(images) < 2:
        raise DataError(f"need at least 2 training images, got {len(images)}")
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    gen = torch.Generator().manual_seed(train.seed)
    x_all = torch.from_numpy(to_float(conform(images, model_config.input)))
    n_val = int(round(len(x_all) * train.val_fraction)) if len(x_all) >= 10 else 0
    order = torch.randperm(len(x_all), generator=gen)
    x_train = x_all[order[n_val:]].to(device)
    x_val = x_all[order[:n_val]].to(device)
    val_noise_gen = torch.Generator().manual_seed(train.seed + 1)
    x_val_in = (add_noise(x_val.cpu(), train.noise_factor, val_noise_gen).to(device)
                if train.denoise else x_val)

    model = build_model(model_config).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=train.lr)
    history: dict[str, Any] = {"train_loss": [], "val_loss": []}
    best = float("inf")
    best_state: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    bar = tqdm(range(train.epochs), desc="training", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), train.batch_size):
            idx = perm[i:i + train.batch_size]
            target = x_train[idx.to(device)]
            if train.flip:
                flip = (torch.rand(len(idx), generator=gen) < 0.5).to(device)
                target = torch.where(flip[:, None, None, None], target.flip(-1), target)
            inputs = target
            if train.denoise:
                noise = torch.randn(target.shape, generator=gen).to(device)
                inputs = (target + train.noise_factor * noise).clamp(0.0, 1.0)
            loss = reconstruction_loss(model(inputs), target, train.loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        train_loss = total / len(x_train)
        history["train_loss"].append(train_loss)
        model.eval()
        if n_val:
            with torch.inference_mode():
                val_loss = sum(
                    float(reconstruction_loss(model(x_val_in[j:j + 1024]),
                                              x_val[j:j + 1024], train.loss)) * len(x_val[j:j + 1024])
                    for j in range(0, n_val, 1024)
                ) / n_val
            history["val_loss"].append(val_loss)
        score = history["val_loss"][-1] if n_val else train_loss
        if score < best:
            best = score
            history["best_epoch"] = epoch + 1
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{train_loss:.4f}",
                        **({"val": f"{history['val_loss'][-1]:.4f}"} if n_val else {}))
        log.debug("epoch %d: train %.5f%s", epoch + 1, train_loss,
                  f" val {history['val_loss'][-1]:.5f}" if n_val else "")
    seconds = time.perf_counter() - start
    history["seconds"] = round(seconds, 3)
    history["images_per_second"] = round(len(x_train) * train.epochs / max(seconds, 1e-9), 1)
    history["n_train"] = len(x_train)
    history["n_val"] = n_val
    model.load_state_dict(best_state)
    model.to("cpu").eval()
    return TrainResult(model, history)
