# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
"""GeM of intermediate blocks' outputs of the (barely) adapted lite0 at 192 px on the subset."""
import sys, time
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
from lookalike.config import InputSpec
from lookalike.data.datasets import load_dataset
from lookalike.models.modelio import load_model
torch.set_num_threads(1)
root = Path("/tmp/colour21/icons64"); out = Path("/tmp/colour21/sub")
sub = np.load("/tmp/colour21/subset.npz")
db = load_dataset(root / "database", "all").subset(sub["db"], "all")
q = load_dataset(root / "queries", "all").subset(sub["q"], "all")
net = load_model("/tmp/colour21/adapted/model").module.backbone.eval().to(memory_format=torch.channels_last)
spec = InputSpec(3, 192, 192)
TAPS = (10, 14, 15)
KEYS = [f'{k}{m}' for k in TAPS for m in ('g', 'a')]
def gem(f): return f.float().clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3)
for split, data in (("db", db), ("q", q)):
    t = time.perf_counter(); parts = {k: [] for k in KEYS}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for s in range(0, len(data), 64):
            x = torch.from_numpy(data.pixels(s, min(s + 64, len(data)), spec)).permute(0, 3, 1, 2).float().div_(255)
            x = (x - net.mean) / net.std
            x = F.relu6(net._bn0(net._conv_stem(x)))
            for i, block in enumerate(net._blocks):
                x = block(x)
                if i in TAPS:
                    parts[f'{i}g'].append(gem(x).numpy()); parts[f'{i}a'].append(x.float().mean((2, 3)).numpy())
    for k in KEYS:
        np.save(out / f"{split}_mid{k}.npy", np.concatenate(parts[k]))
    print(split, round(time.perf_counter() - t, 1), flush=True)
