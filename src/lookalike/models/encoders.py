"""Encoders turn images into codes: ``uint8 (n, H, W, C)`` -> ``float32 (n, d)``.

:class:`ModelEncoder` runs a trained model's encoder; :class:`PixelEncoder` is the
raw-pixel baseline (pixels scaled to [0, 1], flattened). Both conform images to their
input spec first (see :func:`lookalike.data.images.conform`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import threading
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
_TAKING = threading.Lock()  # (one thread at a time takes an encoder's batches_at_once)
#: How many batches a stream of files (:func:`lookalike.models.atonce.batches_at_once`) encodes
#: at once, at most (:meth:`ModelEncoder.batches_at_once`: a batch in each of that many threads,
#: PyTorch's threads shared out among them; 0 or 1: one batch at a time on all of PyTorch's
#: threads). Measured side by side (docs/benchmarks.md, "Indexing at the model's speed"): one
#: batch on two PyTorch threads loses the time each waits for the other at every layer while
#: the decoder threads hold a core. At most 2, because each batch in flight holds its
#: activations (about 85 MiB for EfficientNet-Lite0's batch of 14 at 192 px).
BATCHES_AT_ONCE = 2


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

    #: the pool of :meth:`batches_at_once`, and the thread (its ident) that entered it: the only
    #: one whose :meth:`encode` uses the pool (another thread encodes one batch at a time)
    _pool: ThreadPoolExecutor | None = None
    _owner: int | None = None

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
        """``uint8 (n, H, W, C)`` -> ``float32 (n, dim)``; an empty input gives ``(0, dim)``.
        Within :meth:`batches_at_once`, in the thread that entered it, its batches run in that
        many threads at once (an image's code does not depend on the other images of its batch:
        the same codes in bf16, bit for bit on this project's CPU; in fp32 they may differ in the
        last bits, 3e-7 measured, since a layer summed on fewer threads adds in another order);
        in any other thread, one at a time, as outside."""
        module = self.module
        out = np.empty((len(images), self.dim), dtype=np.float32)
        steps = range(0, len(images), self.batch_size)

        def one(i: int) -> int:
            part = images[i:i + self.batch_size]
            out[i:i + len(part)] = self._encode_batch(module, part)
            return len(part)

        with tqdm(total=len(images), desc="encoding", unit="img", disable=not progress) as bar:
            mine = self._owner == threading.get_ident()  # (then the pool is there until we leave)
            pool = self._pool if mine and len(steps) > 1 else None
            for n in (pool.map(one, steps) if pool is not None else map(one, steps)):
                bar.update(n)
        return out

    def _encode_batch(self, module: Model | ImportedModel, images: np.ndarray) -> np.ndarray:
        """One batch's codes (autocast and inference mode are per thread: entered here)."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                                    enabled=self.bf16):
            part = conform(images, self.spec)
            if not part.flags.writeable:  # torch warns on read-only arrays (memory maps)
                part = part.copy()
            batch = torch.from_numpy(part)
            # (n, H, W, C) viewed as (n, C, H, W) is channels-last already
            x = batch.to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            if self.device.type != "cpu":
                x = x.contiguous()
            return module.encode(x).float().cpu().numpy()

    @contextlib.contextmanager
    def batches_at_once(self) -> Iterator[int]:
        """Within, on a CPU, :meth:`encode` runs its batches in ``workers`` threads at once:
        :data:`BATCHES_AT_ONCE` (2) at most, and no more than PyTorch's threads or the
        process's cores; PyTorch runs on ``threads // workers`` threads (at least 1) in each.
        Only the pool's threads keep that count: the process's is set to it while they start
        (each reads it at its first use, then keeps its own) and given back before this
        yields, so a thread that first uses PyTorch meanwhile (a service's request) gets the
        process's count. Yields ``workers`` (1: as before, on CUDA,
        with one thread or with :data:`BATCHES_AT_ONCE` off). On 2 cores, 2 batches on one
        thread each. What a stream of files is encoded with (:mod:`lookalike.search.checkpoint`):
        a batch on one thread wastes nothing, while one batch on two threads makes each wait
        for the other at every layer, on cores shared with the decoder threads (measured in
        docs/benchmarks.md, "Indexing at the model's speed"); the cap bounds the memory, a
        batch's activations for each batch in flight. Only the thread that entered uses the
        pool; another thread's :meth:`encode` runs one batch at a time, and its
        ``batches_at_once`` (or this thread's again, within) yields 1."""
        before = torch.get_num_threads()
        workers = min(BATCHES_AT_ONCE, before, _cores())
        if self.device.type != "cpu" or workers <= 1:
            yield 1
            return
        _ = self.module  # (made once, before the threads)
        if not self._take():
            yield 1
            return
        each = max(1, before // workers)
        started = threading.Barrier(workers + 1)

        def start() -> None:  # in each worker, once: its own PyTorch threads, for good
            try:
                torch.set_num_threads(each)
                torch.get_num_threads()  # (a thread reads the process's count once, at its first use)
            finally:
                started.wait()

        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lookalike-encode",
                                    initializer=start) as pool:
                for _ in range(workers):  # each waits for the others in start(): all start now
                    pool.submit(int)
                started.wait()
                torch.set_num_threads(before)  # the process's count again: only the workers keep theirs
                self._pool = pool
                try:
                    yield workers
                finally:
                    self._pool = None
        finally:
            torch.set_num_threads(before)
            self._owner = None

    def _take(self) -> bool:
        """Whether this thread now holds :meth:`batches_at_once`'s pool (not if a thread
        does: this one or another)."""
        with _TAKING:
            if self._owner is not None:
                return False
            self._owner = threading.get_ident()
            return True


def _cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
