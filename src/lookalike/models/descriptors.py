"""How a backbone's last feature map becomes one descriptor per image: the pooling
(:func:`gem`, or :func:`regional_gem`, R-MAC's regions pooled with GeM) and, optionally,
test-time views (:func:`view_batches`: the image and its mirror image) whose descriptors are
averaged.

Pure functions of tensors; :class:`lookalike.models.networks.BackboneModel` applies them as
its :class:`~lookalike.config.ModelConfig` says (``pooling``, ``test_views``), and the
icon benchmark measured each (docs/benchmarks.md, "Colour").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: GeM's exponent: between average (1) and max (inf) pooling; 3 is the usual choice for
#: retrieval (Radenović, Tolias and Chum, "Fine-tuning CNN image retrieval with no human
#: annotation", 2018).
GEM_P = 3.0
#: R-MAC's scales: level l tiles the map with l x l square regions (level 1: the whole map).
RMAC_LEVELS = 3


def gem(fmap: torch.Tensor, p: float = GEM_P) -> torch.Tensor:
    """Generalised-mean pooling of ``fmap`` ``(n, c, h, w)`` (non-negative, as after ReLU6;
    clamped at 1e-6) over its positions: ``(n, c)`` float32."""
    return fmap.float().clamp(min=1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def rmac_regions(h: int, w: int, levels: int = RMAC_LEVELS) -> list[tuple[int, int, int, int]]:
    """The regions ``(top, bottom, left, right)`` of an ``h`` x ``w`` feature map that
    :func:`regional_gem` pools: the whole map, then for each level ``l`` in 2..``levels``
    an ``l`` x ``l`` grid of squares of side ``round(2 min(h, w) / (l + 1))`` spread evenly
    from edge to edge (overlapping like Tolias, Sicre and Jégou's R-MAC, "Particular object
    retrieval with integral max-pooling of CNN activations", 2016). Duplicates (tiny maps)
    are dropped; the first region is always the whole map."""
    out = [(0, h, 0, w)]
    for level in range(2, levels + 1):
        side = max(1, int(round(2 * min(h, w) / (level + 1))))
        tops = sorted({int(round(i * (h - side) / (level - 1))) for i in range(level)})
        lefts = sorted({int(round(i * (w - side) / (level - 1))) for i in range(level)})
        for top in tops:
            for left in lefts:
                region = (top, top + side, left, left + side)
                if region not in out:
                    out.append(region)
    return out


def regional_gem(fmap: torch.Tensor, p: float = GEM_P, levels: int = RMAC_LEVELS) -> torch.Tensor:
    """R-MAC-like regional pooling of ``fmap`` ``(n, c, h, w)``: the sum of the L2-normalised
    GeM descriptors of the :func:`rmac_regions`, ``(n, c)`` float32 (not normalised: the
    whitening normalises). A part of the drawing then weighs as much as the whole, so an
    image matches another one that draws the same detail at another place or scale."""
    h, w = fmap.shape[-2:]
    total = torch.zeros(fmap.shape[0], fmap.shape[1], dtype=torch.float32, device=fmap.device)
    for top, bottom, left, right in rmac_regions(int(h), int(w), levels):
        total = total + F.normalize(gem(fmap[:, :, top:bottom, left:right], p), dim=1)
    return total


def view_batches(x: torch.Tensor, views: str) -> list[torch.Tensor]:
    """The test-time views of ``x`` ``(n, 3, H, W)``: ``"none"``: ``[x]``; ``"flip"``:
    ``[x, x mirrored left-right]``."""
    if views == "none":
        return [x]
    if views == "flip":
        return [x, x.flip(3)]
    raise ValueError(f"unknown test-time views {views!r}")


def averaged(describe: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, views: str
             ) -> torch.Tensor:
    """The mean of ``describe`` over the :func:`view_batches` of ``x`` (one forward pass
    for all views together)."""
    batches = view_batches(x, views)
    if len(batches) == 1:
        return describe(x)
    out = describe(torch.cat(batches))
    return out.view(len(batches), x.shape[0], *out.shape[1:]).mean(dim=0)

