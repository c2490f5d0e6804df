"""Running a whole autoencoder: reconstructions and denoising (seeds 000-002)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import BACKBONE_ARCHS
from ..data.images import conform, from_float, to_float
from ..errors import ModelError
from .modelio import LoadedModel
from .training import add_noise


def has_trained_decoder(model: LoadedModel) -> bool:
    """Whether the model's decoder was trained: always for the reconstruction objective,
    for the contrastive one only with ``recon_weight > 0``."""
    train = model.train
    return train is None or train.objective == "reconstruction" or train.recon_weight > 0


def _check(model: LoadedModel) -> None:
    if model.config.arch in BACKBONE_ARCHS:
        raise ModelError(f"{model.path or 'this model'} is a pretrained {model.config.arch}, an "
                         "encoder without a decoder; denoise with an article preset "
                         "(lookalike train --arch conv-16-8-8)")
    if not has_trained_decoder(model):
        raise ModelError(
            f"{model.path or 'this model'} was trained with the contrastive objective only, so "
            "its decoder is untrained; train with --recon-weight 1 --denoise, or an article preset")


def reconstruct(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    """``uint8 (n, H, W, C)`` -> the model's reconstructions, ``uint8`` at its input spec.

    Raises:
        ModelError: the model's decoder was never trained (see :func:`has_trained_decoder`).
    """
    _check(model)
    x = torch.from_numpy(to_float(conform(images, model.config.input)))
    with torch.inference_mode():
        out = torch.sigmoid(model.module.eval()(x))
    return from_float(out.numpy())


def denoise(model: LoadedModel, images: np.ndarray, noise_factor: float = 0.5, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt ``images`` with Gaussian noise (``noise_factor``, clipped to [0, 1]) and
    denoise them: returns ``(noisy, denoised)``, both ``uint8 (n, H, W, C)``.

    Raises:
        ModelError: the model's decoder was never trained (see :func:`has_trained_decoder`).
    """
    _check(model)
    x = torch.from_numpy(to_float(conform(images, model.config.input)))
    noisy = add_noise(x, noise_factor, torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        out = torch.sigmoid(model.module.eval()(noisy))
    return from_float(noisy.numpy()), from_float(out.numpy())
