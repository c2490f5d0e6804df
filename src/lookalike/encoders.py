"""Encoders turn images into codes: ``uint8 (n, H, W, C)`` -> ``float32 (n, d)``.

:class:`ModelEncoder` runs a trained model's encoder; :class:`PixelEncoder` is the
raw-pixel baseline (pixels scaled to [0, 1], flattened). Both conform images to their
input spec first (see :func:`lookalike.images.conform`).
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import InputSpec
from .images import conform, to_float
from .modelio import LoadedModel
from .training import resolve_device


class PixelEncoder:
    """Raw pixels in [0, 1] as the code: the baseline every model must beat."""

    name = "pixels"
    fingerprint = "pixels"

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.dim = spec.channels * spec.height * spec.width

    def encode(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """``uint8 (n, H, W, C)`` -> ``float32 (n, dim)``."""
        x = conform(images, self.spec)
        return (x.reshape(len(x), -1).astype(np.float32)) / np.float32(255)


class ModelEncoder:
    """A trained model's encoder, batched, on CUDA when asked and present."""

    def __init__(self, model: LoadedModel, batch_size: int = 1024, device: str = "cpu") -> None:
        self.model = model
        self.spec = model.config.input
        self.dim = model.module.code_dim
        self.fingerprint = model.fingerprint
        self.name = model.config.arch
        self.batch_size = batch_size
        self.device = resolve_device(device)

    def encode(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """``uint8 (n, H, W, C)`` -> ``float32 (n, dim)``; an empty input gives ``(0, dim)``."""
        module = self.model.module.to(self.device).eval()
        out = np.empty((len(images), self.dim), dtype=np.float32)
        steps = range(0, len(images), self.batch_size)
        with torch.inference_mode():
            for i in tqdm(steps, desc="encoding", unit="batch", disable=not progress):
                batch = to_float(conform(images[i:i + self.batch_size], self.spec))
                codes = module.encode(torch.from_numpy(batch).to(self.device))
                out[i:i + len(batch)] = codes.float().cpu().numpy()
        return out
