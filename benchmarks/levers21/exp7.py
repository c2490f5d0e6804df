# ruff: noqa
# Exploration script of issue 21 item 3 (adaptation levers), kept as run (paths under /tmp/colour21);
# see docs/benchmarks.md. Usage, from the repository root:
#   PYTHONPATH=src python benchmarks/levers21/exp7.py BUDGET_S VARIANT[,VARIANT...]
# Each variant adapts EfficientNet-Lite0 (the default recipe, monkeypatched) on the subset's
# database items for BUDGET_S seconds, then encodes the subset (192 px, GeM of the last map +
# block 14, each whitened on the subset's database, as train_backbone + ModelEncoder do) and
# scores same-icon mAP with benchmarks/colour.py's score (exact and re-ranked). The frozen
# stem and blocks 0-7 (FROZEN_BLOCKS, BN frozen) give the same block-7 maps for every
# variant: computed once and cached (/tmp/colour21/exp7_b7.npz), blocks 8-15 run per variant.
import sys, time, os, math
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, "benchmarks")
import colour
from lookalike.config import (ModelConfig, default_train_config, input_for, default_retrieval_config,
                              MID_BLOCK)
from lookalike.models import adaptation
from lookalike.models.backbones import pretrained
from lookalike.models.networks import BackboneModel, fit_whitening
from lookalike.search.rerank import Diffusion

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import icon_subset  # noqa: E402

db, q, labels = icon_subset.load()
arch = "efficientnet-lite0"
MID = MID_BLOCK[arch]
config = ModelConfig(arch=arch, input=input_for(arch, db.spec), mid_blocks=(MID,))
FROZEN = adaptation.FROZEN_BLOCKS
bf16 = True

cache = Path("/tmp/colour21/exp7_b7.npz")
if not cache.is_file():
    net = pretrained(arch).eval()
    maps = {}
    t = time.perf_counter()
    for name, data in (("db", db), ("q", q)):
        parts = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for s in range(0, len(data), 64):
                x = torch.from_numpy(data.pixels(s, min(s + 64, len(data)), config.input)).permute(0, 3, 1, 2).float().div_(255)
                x = (x - net.mean) / net.std
                x = F.relu6(net._bn0(net._conv_stem(x)))
                for block in net._blocks[:FROZEN]:
                    x = block(x)
                parts.append(x.float().numpy())
        maps[name] = np.concatenate(parts)
    np.savez(cache, **maps)
    print(f"cached block-{FROZEN - 1} maps in {time.perf_counter() - t:.0f} s", flush=True)
with np.load(cache) as c:
    B7 = {"db": torch.from_numpy(c["db"]), "q": torch.from_numpy(c["q"])}

orig_views = adaptation.colour_views


def smaller(size):
    def views(x, gen, strength=1.0):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return orig_views(x, gen, strength)
    return views


def geometric(x, gen, strength=1.0, degrees=15.0):
    """A random rotation of +-degrees and a shift of up to 8% before the default views."""
    n = len(x)
    a = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(degrees)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(a); theta[:, 0, 1] = -torch.sin(a)
    theta[:, 1, 0] = torch.sin(a); theta[:, 1, 1] = torch.cos(a)
    theta[:, :, 2] = (torch.rand(n, 2, generator=gen) * 2 - 1) * 0.08
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return orig_views(x, gen, strength)


VARIANTS = {  # name: (colour_views, FROZEN_BLOCKS)
    "base": (orig_views, FROZEN), "base2": (orig_views, FROZEN),
    "s128": (smaller(128), FROZEN), "s144": (smaller(144), FROZEN), "s160": (smaller(160), FROZEN),
    "geo": (geometric, FROZEN), "f11": (orig_views, 11), "s128geo": (None, FROZEN),
}


def s128geo(x, gen, strength=1.0):
    x = F.interpolate(x, size=(128, 128), mode="bilinear", antialias=True, align_corners=False)
    return geometric(x, gen, strength)


VARIANTS["s128geo"] = (s128geo, FROZEN)


def descriptors(model, name):
    return icon_subset.descriptors(model, B7[name], FROZEN, MID, bf16)


l2 = icon_subset.l2


budget = float(sys.argv[1])
for variant in sys.argv[2].split(","):
    views, frozen = VARIANTS[variant]
    adaptation.colour_views, adaptation.FROZEN_BLOCKS = views, frozen
    train = default_train_config(arch, objective="contrastive", time_budget=budget)
    torch.manual_seed(train.seed)
    model = BackboneModel(config)
    model.backbone.load_state_dict(pretrained(arch).state_dict())
    load0 = os.getloadavg()[0]
    hist = adaptation._adapt(model, db, train, torch.device("cpu"), bf16, False)
    load1 = os.getloadavg()[0]
    adaptation.colour_views, adaptation.FROZEN_BLOCKS = orig_views, FROZEN
    model.eval()
    t = time.perf_counter()
    fd, fq = descriptors(model, "db"), descriptors(model, "q")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        ref = model.parts(torch.from_numpy(db.pixels(0, 8, config.input)).permute(0, 3, 1, 2).float().div_(255))
    err = np.abs(ref.float().numpy() - fd[:8]).max() / np.abs(fd[:8]).max()
    assert err < 0.05, err  # the cached maps give the model's own descriptors
    codes = {"db": [], "q": []}
    for lo, hi, dim in ((0, 1280, 512), (1280, fd.shape[1], fd.shape[1] - 1280)):
        mean, mat = fit_whitening(fd[:, lo:hi], dim)
        for name, f in (("db", fd), ("q", fq)):
            codes[name].append(l2((l2(f[:, lo:hi]) - mean) @ mat))
    cd, cq = l2(np.hstack(codes["db"])), l2(np.hstack(codes["q"]))
    exact = colour.score(cq, cd, labels)
    rr = colour.score(cq, cd, labels, Diffusion(cd.astype(np.float32), default_retrieval_config(arch).diffusion))
    print(f"RESULT {variant:8s} images {hist['adapt_images']:5d} steps {len(hist['adapt_loss']):3d} "
          f"adapt_s {hist['adapt_seconds']:.0f} loss {np.mean(hist['adapt_loss'][-3:]):.3f} "
          f"mAP exact {exact['mAP']:.4f} rerank {rr['mAP']:.4f} P@1 {rr['P@1']:.3f} "
          f"load {load0:.2f}->{load1:.2f} encode_s {time.perf_counter() - t:.0f}", flush=True)
