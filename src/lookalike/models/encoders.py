"""Encoders turn images into codes: ``uint8 (n, H, W, C)`` -> ``float32 (n, d)``.

:class:`ModelEncoder` runs a trained model's encoder; :class:`PixelEncoder` is the
raw-pixel baseline (pixels scaled to [0, 1], flattened). Both conform images to their
input spec first (see :func:`lookalike.data.images.conform`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import InputSpec, batch_for
from ..data.datasets import Dataset
from ..data.images import conform
from ..errors import LookalikeError
from .modelio import LoadedModel
from .networks import Model
from .training import resolve_device, use_bf16

if TYPE_CHECKING:
    from .onnximport import ImportedModel
    from .runtime import OnnxEncoder

PRECISIONS = ("auto", "fp32", "bf16")


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
    """A trained model's encoder, batched, on CUDA when asked and present.

    The fast path is the default: on a CPU the images go in channels-last (NHWC, the
    layout oneDNN's convolutions want, and the layout images already have, so no
    transpose), and ``precision="auto"`` runs in bfloat16 where the hardware has native
    bf16 arithmetic (AVX512-BF16 or AMX on CPUs, most CUDA GPUs), float32 elsewhere. Codes
    are always returned as float32; bf16 ones rank like fp32 ones (tests check it).
    """

    def __init__(self, model: LoadedModel, batch_size: int = 256, device: str = "cpu",
                 precision: str = "auto") -> None:
        if precision not in PRECISIONS:
            raise LookalikeError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.model = model
        self.spec = model.config.input
        self.dim = model.module.code_dim
        self.fingerprint = model.fingerprint
        self.name = model.config.arch
        self.batch_size = batch_for(self.spec, batch_size)
        self.device = resolve_device(device)
        self.bf16 = use_bf16(precision, self.device)
        self.precision = "bf16" if self.bf16 else "fp32"
        self._module: Model | ImportedModel | None = None

    @property
    def module(self) -> Model | ImportedModel:
        """The encoder's own copy of the model, on its device, in its memory format."""
        if self._module is None:
            module = copy.deepcopy(self.model.module).to(self.device).eval()
            if self.device.type == "cpu":
                module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self._module = module
        return self._module

    def encode(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """``uint8 (n, H, W, C)`` -> ``float32 (n, dim)``; an empty input gives ``(0, dim)``."""
        module = self.module
        out = np.empty((len(images), self.dim), dtype=np.float32)
        steps = range(0, len(images), self.batch_size)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.bf16):
            for i in tqdm(steps, desc="encoding", unit="batch", disable=not progress):
                part = conform(images[i:i + self.batch_size], self.spec)
                if not part.flags.writeable:  # torch warns on read-only arrays (memory maps)
                    part = part.copy()
                batch = torch.from_numpy(part)
                # (n, H, W, C) viewed as (n, C, H, W) is channels-last already
                x = batch.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
                if self.device.type != "cpu":
                    x = x.contiguous()
                codes = module.encode(x)
                out[i:i + len(batch)] = codes.float().cpu().numpy()
        return out


def encode_dataset(encoder: PixelEncoder | ModelEncoder | OnnxEncoder, data: Dataset, progress: bool = False,
                   start: int = 0, stop: int | None = None, chunk: int = 256,
                   bar: tqdm | None = None) -> np.ndarray:
    """Codes of images ``start:stop`` (default: all) of ``data``, ``float32 (m, dim)``, read
    ``chunk`` at a time at the encoder's input spec (:meth:`Dataset.pixels`: a folder of
    photos is decoded again from its files at that size, never all at once); the next
    chunk is read while this one is encoded. ``bar``: a progress bar to advance instead of
    a new one (shown with ``progress``)."""
    stop = len(data) if stop is None else stop
    out = np.empty((stop - start, encoder.dim), dtype=np.float32)
    with (contextlib.nullcontext(bar) if bar is not None else
          tqdm(total=stop - start, desc="encoding", unit="img", disable=not progress)) as shown:
        for (lo, hi), pixels in prefetched(data, encoder.spec, chunk, start, stop):
            out[lo - start:hi - start] = encoder.encode(pixels)
            shown.update(hi - lo)
    return out


def prefetched(data: Dataset, spec: InputSpec, chunk: int, start: int = 0, stop: int | None = None
               ) -> Iterator[tuple[tuple[int, int], np.ndarray]]:
    """``((lo, hi), data.pixels(lo, hi, spec))`` for consecutive chunks of ``start:stop``,
    each read in a background thread while the caller works on the one before."""
    stop = len(data) if stop is None else stop
    bounds = [(lo, min(lo + chunk, stop)) for lo in range(start, stop, chunk)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(data.pixels, *bounds[0], spec) if bounds else None
        for i, (lo, hi) in enumerate(bounds):
            assert pending is not None
            pixels = pending.result()
            if i + 1 < len(bounds):
                pending = pool.submit(data.pixels, *bounds[i + 1], spec)
            yield (lo, hi), pixels
