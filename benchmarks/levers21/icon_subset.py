"""The exploration subset of the icon benchmark, as every levers21 script loads it: the icons
of ``benchmarks/icondata.py`` at ``ICONS`` and the rows of ``make_subset.py``'s ``SUBSET``
(see README.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import colour  # noqa: E402
import icondata  # noqa: E402

from lookalike.data.datasets import Dataset, load_dataset  # noqa: E402

ICONS = Path("/tmp/colour21/icons64")
SUBSET = Path("/tmp/colour21/subset.npz")


def load(root: Path = ICONS, subset: Path = SUBSET) -> tuple[Dataset, Dataset, dict[str, np.ndarray]]:
    """``(database, queries, labels)``: the subset's two splits and the labels that score them
    (``db_name``/``q_name``: the icon name, ``db_cat``/``q_cat``: the category)."""
    meta = icondata.load_meta(root)
    db_all = load_dataset(root / "database", "all")
    q_all = load_dataset(root / "queries", "all")
    sub = np.load(subset)
    db, q = db_all.subset(sub["db"], "all"), q_all.subset(sub["q"], "all")
    dbn, qn = colour._labels(meta)
    labels = {"db_name": dbn[sub["db"]], "q_name": qn[sub["q"]], "db_cat": db_all.labels[sub["db"]],
              "q_cat": q_all.labels[sub["q"]]}
    return db, q, labels


def descriptors(model, maps, frozen: int, mid: int, bf16: bool = True) -> np.ndarray:
    """``float32 (n, C_last + C_mid)``: the GeM of the last map and of block ``mid``'s output
    of ``model`` (a :class:`~lookalike.models.networks.BackboneModel`), run from ``maps``, the
    cached outputs of its first ``frozen`` blocks (those the adaptation leaves frozen), 64 at
    a time."""
    import torch
    import torch.nn.functional as F

    from lookalike.models.networks import gem

    out = []
    bb = model.backbone
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(maps), 64):
            x = maps[s:s + 64]
            at_mid = None
            for i, block in enumerate(bb._blocks[frozen:], start=frozen):
                x = block(x)
                if i == mid:
                    at_mid = x
            last = F.relu6(bb._bn1(bb._conv_head(x)))
            out.append(torch.cat([gem(last), gem(at_mid)], dim=1).float().numpy())
    return np.concatenate(out)


def l2(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length."""
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
