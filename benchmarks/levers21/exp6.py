# ruff: noqa
# Exploration script of issue 21's colour levers (2026-12-05, session 2): the mid-level block's weight
# in the concatenated code, other blocks, and the block combined with the two-scale views; from the
# cache of feats.py / feats_mid.py (paths under /tmp/colour21); see docs/benchmarks.md.
import sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: colour, icondata
import colour, icondata
from lookalike.config import default_retrieval_config
from lookalike.data.datasets import load_dataset
from lookalike.models.networks import fit_whitening
from lookalike.search.rerank import Diffusion

d = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/colour21/sub")
root = Path("/tmp/colour21/icons64")
meta = icondata.load_meta(root)
dbl = load_dataset(root / "database", "all").labels; ql = load_dataset(root / "queries", "all").labels
db_name, q_name = colour._labels(meta)
s = np.load("/tmp/colour21/subset.npz")
labels = {"db_name": db_name[s["db"]], "q_name": q_name[s["q"]], "db_cat": dbl[s["db"]], "q_cat": ql[s["q"]]}
DIFF = default_retrieval_config("efficientnet-lite0").diffusion

def l2(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

def gem(f):
    return f.float().clamp(min=1e-6).pow(3).mean((2, 3)).pow(1 / 3).numpy()

def whiten(fd, fq, dim=512):
    mean, mat = fit_whitening(fd, min(dim, fd.shape[1]))
    return l2((l2(fd) - mean) @ mat), l2((l2(fq) - mean) @ mat)

def score(name, cd, cq):
    cd = np.ascontiguousarray(cd, np.float32); cq = np.ascontiguousarray(cq, np.float32)
    m = colour.score(cq, cd, labels)
    r = colour.score(cq, cd, labels, Diffusion(cd, DIFF))
    print(f"{name:50s} exact mAP {m['mAP']:.4f} | rerank mAP {r['mAP']:.4f} P@1 {r['P@1']:.3f} "
          f"cat {r['cat P@10']:.3f}", flush=True)

def cat(parts, weights):
    return tuple(l2(np.hstack([w * p[i] for p, w in zip(parts, weights)])) for i in (0, 1))

mapd = lambda v: torch.from_numpy(np.load(d / f"db_{v}.npy")); mapq = lambda v: torch.from_numpy(np.load(d / f"q_{v}.npy"))
head = whiten(gem(mapd("192")), gem(mapq("192")))
head160 = whiten(gem(mapd("160")), gem(mapq("160")))
mid = {k: whiten(np.load(d / f"db_mid{k}.npy"), np.load(d / f"q_mid{k}.npy")) for k in ("10g", "14g", "15g")}
score("head (today's default)", *head)
for w in (0.5, 0.75, 1.0, 1.25, 1.5):
    score(f"head + {w} x block 14", *cat([head, mid["14g"]], [1, w]))
for k in ("10g", "15g"):
    score(f"head + block {k[:-1]}", *cat([head, mid[k]], [1, 1]))
score("head + blocks 10 and 14", *cat([head, mid["10g"], mid["14g"]], [1, 1, 1]))
score("head + blocks 14 and 15", *cat([head, mid["14g"], mid["15g"]], [1, 1, 1]))
two = (l2(head[0] + head160[0]), l2(head[1] + head160[1]))
score("two scales (192 + 160 px, averaged codes)", *two)
score("two scales + block 14 (192 px)", *cat([two, mid["14g"]], [1, 1]))
