"""Random augmentations for contrastive training, batched on tensors (no per-image Python).

One call draws, per image, an intensity change (contrast ×(1 ± 0.4) and gamma
exp(±0.4), both times ``jitter``; black stays black), a random affine transform (rotation
up to 20°, scale ±20 %, shear ±0.2, translation ±15 % of the size, all times
``strength``), an optional horizontal flip, a cut-out square of a third of the side
(erased to 0), and Gaussian noise of a random level up to 0.2 (clipped to [0, 1]). These
are generic photometric and geometric changes, not tuned to one dataset: the intensity
change is the grey-level form of SimCLR's colour jitter, and teaches the codes that a
darker or paler copy of an object is the same object (docs/benchmarks.md measures it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, scale: float, gen: torch.Generator | None, device: torch.device
             ) -> torch.Tensor:
    return ((torch.rand(n, generator=gen) * 2 - 1) * scale).to(device)


def jitter_intensity(x: torch.Tensor, jitter: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``clip(c * x ** g, 0, 1)`` per image, contrast ``c`` in 1 ± 0.4·jitter and gamma
    ``g`` in exp(±0.4·jitter): a darker, paler or more contrasted copy (0 stays 0)."""
    n = len(x)
    c = 1 + _uniform(n, 0.4 * jitter, generator, x.device)
    g = torch.exp(_uniform(n, 0.4 * jitter, generator, x.device))
    powered = torch.where(x > 0, x.clamp(min=1e-6) ** g[:, None, None, None], 0.0)
    return (c[:, None, None, None] * powered).clamp(0.0, 1.0)


def augment(x: torch.Tensor, strength: float = 1.0, flip: bool = False,
            generator: torch.Generator | None = None, jitter: float = 0.0) -> torch.Tensor:
    """A random view of each image of ``x`` (``float32 (n, C, H, W)`` in [0, 1])."""
    n, _, h, w = x.shape
    dev = x.device
    if jitter > 0:
        x = jitter_intensity(x, jitter, generator)
    if strength > 0:
        ang = _uniform(n, math.radians(20) * strength, generator, dev)
        scale = 1 + _uniform(n, 0.2 * strength, generator, dev)
        shear = _uniform(n, 0.2 * strength, generator, dev)
        tx, ty = (_uniform(n, 0.15 * strength, generator, dev) for _ in range(2))
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        theta = torch.stack([torch.stack([cos, -sin + shear, tx], 1),
                             torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(dev)
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    if strength > 0:
        side_h, side_w = max(1, h // 3), max(1, w // 3)
        cy = torch.randint(0, h, (n,), generator=generator).to(dev)
        cx = torch.randint(0, w, (n,), generator=generator).to(dev)
        yy = torch.arange(h, device=dev)[None, :, None]
        xx = torch.arange(w, device=dev)[None, None, :]
        hole = (((yy - cy[:, None, None]).abs() <= side_h // 2)
                & ((xx - cx[:, None, None]).abs() <= side_w // 2))
        x = x * (~hole)[:, None].to(x.dtype)
        level = (torch.rand(n, 1, 1, 1, generator=generator) * 0.2 * strength).to(dev)
        noise = torch.randn(x.shape, generator=generator).to(dev)
        x = (x + level * noise).clamp(0.0, 1.0)
    return x


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy for two views ``(n, d)`` (each row
    L2-normalised): each view must pick out its partner among the other ``2n - 2``."""
    z = torch.cat([z1, z2])
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    n = len(z1)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)
