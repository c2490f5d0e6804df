# ruff: noqa
# Exploration script of issue 21 item 3: learned whitening from label-free pairs (Mikolajczyk
# & Matas; Radenovic et al.'s "Lw"), kept as run; see docs/benchmarks.md. Usage, from the
# repository root, after exp8.py has saved a variant's descriptors:
#   PYTHONPATH=src python benchmarks/levers21/lw.py VARIANT [VARIANT...]     (e.g. base pre)
# For each part of the default code (the last map's GeM -> 512-d, block 14's GeM -> 192-d):
# the features are L2-normalised and centred on the database mean, whitened by the intra-pair
# covariance C_S of the differences of matching pairs (to the power -a, Ledoit-Wolf-shrunk),
# then PCA-rotated in that space, keeping the part's dimensions, each scaled by its variance
# to the power -b. The result is a (mean, matrix) pair of the same shapes as fit_whitening's:
# the code is computed exactly as today's. Pairs (no labels): aug, each database item and its
# two augmented views (colour_views at strength 1 and 0.5); mnn<k>, mutual k-NN of the
# database in today's default code; both.
import sys
from pathlib import Path
import numpy as np
from sklearn.covariance import LedoitWolf
sys.path.insert(0, "benchmarks")
import colour, icondata
from lookalike.config import default_retrieval_config
from lookalike.data.datasets import load_dataset
from lookalike.models.networks import fit_whitening
from lookalike.search.rerank import Diffusion

root = Path("/tmp/colour21/icons64")
meta = icondata.load_meta(root)
db_all = load_dataset(root / "database", "all")
q_all = load_dataset(root / "queries", "all")
sub = np.load("/tmp/colour21/subset.npz")
dbn, qn = colour._labels(meta)
labels = {"db_name": dbn[sub["db"]], "q_name": qn[sub["q"]], "db_cat": db_all.labels[sub["db"]],
          "q_cat": q_all.labels[sub["q"]]}
RR = default_retrieval_config("efficientnet-lite0").diffusion
PARTS = ((0, 1280, 512), (1280, 1472, 192))


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def learned_whitening(x, a_rows, b_rows, dim, a=0.5, b=0.0):
    """(mean, matrix) from features x (n, d) and matching pairs (a_rows[i], b_rows[i]) given
    as feature arrays (m, d)."""
    x = l2(x.astype(np.float64))
    mean = x.mean(axis=0)
    diff = l2(a_rows.astype(np.float64)) - l2(b_rows.astype(np.float64))
    cs = LedoitWolf(assume_centered=True, store_precision=False).fit(diff).covariance_
    w, v = np.linalg.eigh(cs)
    p1 = (v * np.maximum(w, 1e-12) ** -a) @ v.T
    y = (x - mean) @ p1
    cd = LedoitWolf(assume_centered=False, store_precision=False).fit(y).covariance_
    w2, v2 = np.linalg.eigh(cd)
    order = np.argsort(w2)[::-1][:dim]
    m = p1 @ (v2[:, order] * np.maximum(w2[order], 1e-12) ** -b)
    return mean.astype(np.float32), m.astype(np.float32)


def mutual_pairs(codes, k):
    sim = codes @ codes.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    isin = np.zeros(sim.shape, dtype=bool)
    isin[np.arange(len(sim))[:, None], top] = True
    i, j = np.nonzero(np.triu(isin & isin.T, 1))
    return i, j


def codes_with(F, fit):
    """fit(part_index, lo, hi, dim) -> (mean, matrix); the codes of db and q."""
    out = {"db": [], "q": []}
    for p, (lo, hi, dim) in enumerate(PARTS):
        mean, mat = fit(p, lo, hi, dim)
        for name in out:
            out[name].append(l2((l2(F[name][:, lo:hi]) - mean) @ mat))
    return l2(np.hstack(out["db"])), l2(np.hstack(out["q"]))


def report(tag, cd, cq, base=None):
    ex = colour.score(cq, cd, labels)
    rr = colour.score(cq, cd, labels, Diffusion(cd.astype(np.float32), RR))
    rel = f" ({100 * (rr['mAP'] / base - 1):+.1f}%)" if base else ""
    print(f"{tag:44s} rerank {rr['mAP']:.4f}{rel} P@1 {rr['P@1']:.3f} cat {rr['cat P@10']:.3f} "
          f"exact {ex['mAP']:.4f}", flush=True)
    return rr["mAP"]


for variant in sys.argv[1:]:
    F = dict(np.load(f"/tmp/colour23/feats_{variant}.npz"))
    pca = lambda p, lo, hi, dim: fit_whitening(F["db"][:, lo:hi], dim)
    cd0, cq0 = codes_with(F, pca)
    base = report(f"{variant}: PCA whitening (today)", cd0, cq0)
    for k in (1, 2, 3, 5):
        i, j = mutual_pairs(cd0, k)
        same = (labels["db_name"][i] == labels["db_name"][j]).mean()
        print(f"  mutual {k}-NN pairs: {len(i)}, {100 * same:.0f}% of the same name (labels only to report)")
    pairs = {}
    for k in (1, 2, 3):
        i, j = mutual_pairs(cd0, k)
        pairs[f"mnn{k}"] = (i, j)
    n = len(F["db"])
    grid = [(src, a, b, (0, 1)) for src in ("aug", "mnn1", "aug+mnn1")
            for a, b in ((0.5, 0.25), (0.25, 0.25), (0.5, 0.5), (0.25, 0.5), (0.5, 0.125))]
    grid += [("aug", 0.5, 0.0, (0, 1)), ("aug", 0.5, 0.25, (0,)), ("aug", 0.5, 0.25, (1,)), ("aug1", 0.5, 0.25, (0, 1)),
             ("mnn2", 0.5, 0.25, (0, 1))]
    for src, a, b, parts in grid:
        if True:
            def fit(p, lo, hi, dim):
                if p not in parts:
                    return pca(p, lo, hi, dim)
                A, B = [], []
                for s in src.split("+"):
                    if s.startswith("aug"):
                        for v in (("v1",) if s == "aug1" else ("v1", "v05")):
                            A.append(F["db"][:, lo:hi]); B.append(F[v][:, lo:hi])
                    else:
                        i, j = pairs[s]
                        A.append(F["db"][i, lo:hi]); B.append(F["db"][j, lo:hi])
                return learned_whitening(F["db"][:, lo:hi], np.vstack(A), np.vstack(B), dim, a, b)
            cd, cq = codes_with(F, fit)
            report(f"  Lw {src} a{a} b{b} parts{''.join(map(str, parts))}", cd, cq, base)
