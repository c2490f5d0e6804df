# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
"""Pretrained backbone feature maps at 192 px on the subset (for the ensemble)."""
import os, sys, time
from pathlib import Path
import numpy as np, torch
from lookalike.config import InputSpec
from lookalike.data.datasets import load_dataset
from lookalike.models.backbones import pretrained
torch.set_num_threads(1)
root = Path("/tmp/colour21/icons64"); out = Path("/tmp/colour21/sub")
sub = np.load("/tmp/colour21/subset.npz")
db = load_dataset(root / "database", "all").subset(sub["db"], "all")
q = load_dataset(root / "queries", "all").subset(sub["q"], "all")
name = sys.argv[1]; size = int(sys.argv[2]) if len(sys.argv) > 2 else 192
net = pretrained(name).to(memory_format=torch.channels_last)
spec = InputSpec(3, size, size)
for split, data in (("db", db), ("q", q)):
    t = time.perf_counter(); parts = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for s in range(0, len(data), 64):
            x = torch.from_numpy(data.pixels(s, min(s + 64, len(data)), spec)).permute(0, 3, 1, 2).float().div_(255)
            parts.append(net.features(x).float().half().numpy())
    np.save(out / f"{split}_{name}_{size}.npy", np.concatenate(parts))
    print(name, split, round(time.perf_counter() - t, 1), flush=True)
