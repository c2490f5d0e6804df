# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
"""Score pooling / TTA / whitening variants from cached feature maps."""
import sys, time, json
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "/work/wt/colour21/benchmarks")
import colour, icondata
from lookalike.config import default_retrieval_config
from lookalike.data.datasets import load_dataset
from lookalike.models.networks import fit_whitening
from lookalike.search.rerank import Diffusion
from lookalike.models.descriptors import rmac_regions

root = Path("/tmp/colour21/icons64")
meta = icondata.load_meta(root)
dbl = load_dataset(root / "database", "all").labels; ql = load_dataset(root / "queries", "all").labels
db_name, q_name = colour._labels(meta)
labels = {"db_name": db_name, "q_name": q_name, "db_cat": dbl, "q_cat": ql}
import os
if os.environ.get("SUBSET"):
    _s = np.load(os.environ["SUBSET"])
    labels = {"db_name": db_name[_s["db"]], "q_name": q_name[_s["q"]], "db_cat": dbl[_s["db"]],
              "q_cat": ql[_s["q"]]}
    SAMPLE = np.arange(len(_s["db"]))
else:
    SAMPLE = np.sort(np.random.default_rng(0).choice(len(db_name), 5000, replace=False))
DIFF = default_retrieval_config("efficientnet-lite0").diffusion

def load(d, name, view):
    return torch.from_numpy(np.load(Path(d) / f"{name}_{view}.npy"))

def gem(f, p=3.0):
    return f.float().clamp(min=1e-6).pow(p).mean((2, 3)).pow(1 / p)

def regions(h, w, L=3):
    """R-MAC regions (Tolias et al.) of an h x w map: list of (y0, y1, x0, x1)."""
    out = [(0, h, 0, w)]
    m = min(h, w)
    for l in range(2, L + 1):
        s = max(1, int(round(2 * m / (l + 1))))
        ys = np.unique(np.round(np.linspace(0, h - s, l)).astype(int))
        xs = np.unique(np.round(np.linspace(0, w - s, l)).astype(int))
        out += [(y, y + s, x, x + s) for y in ys for x in xs]
    return out

def rmac(f, p=3.0, L=3, whole=1.0):
    n, c, h, w = f.shape
    acc = torch.zeros(n, c)
    for i, (y0, y1, x0, x1) in enumerate(rmac_regions(h, w, L)):
        r = gem(f[:, :, y0:y1, x0:x1], p)
        acc += (whole if i == 0 else 1.0) * torch.nn.functional.normalize(r, dim=1)
    return acc

def l2(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

def whiten(fd, fq, dim=512, power=0.25):
    mean, mat = fit_whitening(np.asarray(fd)[SAMPLE], dim, power)
    return l2((l2(fd) - mean) @ mat), l2((l2(fq) - mean) @ mat)

def score(name, cd, cq, rerank=True):
    cd = np.ascontiguousarray(cd, np.float32); cq = np.ascontiguousarray(cq, np.float32)
    m = colour.score(cq, cd, labels)
    s = f"{name:58s} exact mAP {m['mAP']:.4f} P@1 {m['P@1']:.3f} cat {m['cat P@10']:.3f}"
    if rerank:
        r = colour.score(cq, cd, labels, Diffusion(cd, DIFF))
        s += f" | rerank mAP {r['mAP']:.4f} P@1 {r['P@1']:.3f} cat {r['cat P@10']:.3f}"
    print(s, flush=True)
