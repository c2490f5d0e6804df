"""Running a whole autoencoder: reconstructions and denoising (seeds 000-002)."""

from __future__ import annotations

import numpy as np
import torch

from .images import conform, from_float, to_float
from .modelio import LoadedModel
from .training import add_noise


def reconstruct(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    """``uint8 (n, H, W, C)`` -> the model's reconstructions, ``uint8`` at its input spec."""
    x = torch.from_numpy(to_float(conform(images, model.config.input)))
    with torch.inference_mode():
        out = torch.sigmoid(model.module.eval()(x))
    return from_float(out.numpy())


def denoise(model: LoadedModel, images: np.ndarray, noise_factor: float = 0.5, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt ``images`` with Gaussian noise (``noise_factor``, clipped to [0, 1]) and
    denoise them: returns ``(noisy, denoised)``, both ``uint8 (n, H, W, C)``."""
    x = torch.from_numpy(to_float(conform(images, model.config.input)))
    noisy = add_noise(x, noise_factor, torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        out = torch.sigmoid(model.module.eval()(noisy))
    return from_float(noisy.numpy()), from_float(out.numpy())
