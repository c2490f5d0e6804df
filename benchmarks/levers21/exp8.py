# ruff: noqa
# Exploration script of issue 21 item 3 (a different adaptation objective; features for the
# learned whitening of lw.py), kept as run (paths under /tmp/colour21, /tmp/colour23); see
# docs/benchmarks.md. Usage, from the repository root:
#   PYTHONPATH=src python benchmarks/levers21/exp8.py BUDGET_S VARIANT[,VARIANT...]
# Variants: pre (no adaptation), base (the default recipe: the loop of adaptation._adapt),
# nn<k>p<P> (positives mined once from mutual k-NN of the pretrained default codes, computed
# from the pixels inside the budget; each row's second view is of one of its mutual
# neighbours with probability P, else of itself), sd<L>lr<E> (self-distillation: L x (1 -
# cos) between the adapted and the pretrained pooled features of the same views, lr E e-4).
# Each variant is scored as exp7.py does (192 px, GeM of the last map + block 14, each
# whitened on the subset's database; exact and re-ranked), and its descriptors of the
# database, the queries and two augmented views of each database item (colour_views at
# strength 1 and 0.5, one fixed seed) are saved to /tmp/colour23/feats_<variant>.npz for lw.py.
import sys, time, os, copy
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, "benchmarks")
import colour
from lookalike.config import (ModelConfig, default_train_config, input_for, default_retrieval_config,
                              MID_BLOCK)
from lookalike.data.augment import nt_xent
from lookalike.models import adaptation
from lookalike.models.backbones import pretrained
from lookalike.models.networks import BackboneModel, fit_whitening, gem
from lookalike.search.rerank import Diffusion

torch.set_num_threads(2)
OUT = Path("/tmp/colour23"); OUT.mkdir(exist_ok=True)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import icon_subset  # noqa: E402

db, q, labels = icon_subset.load()
arch = "efficientnet-lite0"
MID = MID_BLOCK[arch]
config = ModelConfig(arch=arch, input=input_for(arch, db.spec), mid_blocks=(MID,))
FROZEN = adaptation.FROZEN_BLOCKS
bf16 = True


def stem(net, x):
    x = (x - net.mean) / net.std
    x = F.relu6(net._bn0(net._conv_stem(x)))
    for block in net._blocks[:FROZEN]:
        x = block(x)
    return x


def b7_maps(make):
    net = pretrained(arch).eval()
    parts = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(db), 64):
            parts.append(stem(net, make(s, min(s + 64, len(db)))).float().numpy())
    return np.concatenate(parts)


def pix(data, s, e):
    return torch.from_numpy(data.pixels(s, e, config.input)).permute(0, 3, 1, 2).float().div_(255)


with np.load("/tmp/colour21/exp7_b7.npz") as c:
    B7 = {"db": torch.from_numpy(c["db"]), "q": torch.from_numpy(c["q"])}
vcache = OUT / "views_b7.npz"
if not vcache.is_file():
    t = time.perf_counter()
    maps = {}
    for key, strength, seed in (("v1", 1.0, 11), ("v05", 0.5, 12)):
        gen = torch.Generator().manual_seed(seed)
        maps[key] = b7_maps(lambda s, e: adaptation.colour_views(pix(db, s, e), gen, strength))
    np.savez(vcache, **maps)
    print(f"cached the views' block-7 maps in {time.perf_counter() - t:.0f} s", flush=True)
with np.load(vcache) as c:
    B7.update({k: torch.from_numpy(c[k]) for k in ("v1", "v05")})


def descriptors(model, name):
    return icon_subset.descriptors(model, B7[name], FROZEN, MID, bf16)


l2 = icon_subset.l2


def default_codes(fd, others):
    """The default code (each part whitened on fd) of fd and of each array of others."""
    outs = [[] for _ in range(1 + len(others))]
    for lo, hi, dim in ((0, 1280, 512), (1280, fd.shape[1], fd.shape[1] - 1280)):
        mean, mat = fit_whitening(fd[:, lo:hi], dim)
        for o, f in zip(outs, [fd, *others]):
            o.append(l2((l2(f[:, lo:hi]) - mean) @ mat))
    return [l2(np.hstack(o)) for o in outs]


def mutual_knn(codes, k):
    """For each row, the rows that are in its k nearest neighbours and have it in theirs."""
    sim = codes @ codes.T
    np.fill_diagonal(sim, -np.inf)
    top = np.argpartition(-sim, k, axis=1)[:, :k]
    isin = np.zeros(sim.shape, dtype=bool)
    isin[np.arange(len(sim))[:, None], top] = True
    mutual = isin & isin.T
    return [np.flatnonzero(r) for r in mutual]


def mine(model, k):
    """Mutual k-NN of the pretrained default codes, from the pixels (the cost a library
    would pay: a forward pass over the training images, whitening, a similarity matrix)."""
    feats = []
    model.eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for s in range(0, len(db), 64):
            feats.append(model.parts(pix(db, s, min(s + 64, len(db)))).float().numpy())
    (codes,) = default_codes(np.concatenate(feats), [])
    return mutual_knn(codes, k)


def adapt(model, train, budget, neighbours=None, p=0.0, sd=0.0, teacher=None, mid_head=None):
    """adaptation._adapt's loop, with mined partners, a self-distillation term, or a second
    NT-Xent loss on block MID's GeM through its own projection head (mid_head)."""
    gen = torch.Generator().manual_seed(train.seed)
    rng = np.random.default_rng(train.seed)
    for i, block in enumerate(model.backbone._blocks):
        block.requires_grad_(i >= FROZEN)
    for part in (model.backbone._conv_stem, model.backbone._bn0):
        part.requires_grad_(False)
    params = [p_ for p_ in model.parameters() if p_.requires_grad]
    if mid_head is not None:
        params += list(mid_head.parameters())
    opt = torch.optim.AdamW(params, lr=train.lr, weight_decay=train.weight_decay)
    steps_per_epoch = max(1, len(db) // train.batch_size)
    losses, seen, swapped = [], 0, 0
    start = time.perf_counter()
    while True:
        order = torch.randperm(len(db), generator=gen).numpy()
        for s in range(steps_per_epoch):
            rows = np.sort(order[s * train.batch_size:(s + 1) * train.batch_size])
            x = torch.from_numpy(db.take(rows, config.input)).permute(0, 3, 1, 2).float().div_(255.0)
            if neighbours is not None:
                partners = rows.copy()
                for j, r in enumerate(rows):
                    if len(neighbours[r]) and rng.random() < p:
                        partners[j] = rng.choice(neighbours[r])
                swapped += int((partners != rows).sum())
                x2 = torch.from_numpy(db.take(partners, config.input)).permute(0, 3, 1, 2).float().div_(255.0)
            else:
                x2 = x
            views = torch.cat([adaptation.colour_views(x, gen), adaptation.colour_views(x2, gen)])
            model.train()
            for m in model.backbone.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.eval()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                if mid_head is not None:
                    last, (mid,) = model.backbone.feature_maps(views, (MID,))
                    f = gem(last)
                else:
                    f = model.features(views)
                z = model.project(f).float()
                loss = nt_xent(z[:len(rows)], z[len(rows):], train.temperature)
                if mid_head is not None:
                    zm = F.normalize(mid_head(gem(mid)), dim=1).float()
                    loss = loss + nt_xent(zm[:len(rows)], zm[len(rows):], train.temperature)
                if sd:
                    with torch.no_grad():
                        ft = teacher.features(views)
                    loss = loss + sd * (1 - F.cosine_similarity(f.float(), ft.float(), dim=1)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            seen += len(rows)
            if time.perf_counter() - start >= budget:
                model.requires_grad_(True)
                model.eval()
                return {"adapt_loss": losses, "adapt_images": seen, "swapped": swapped}


budget = float(sys.argv[1])
for variant in sys.argv[2].split(","):
    train = default_train_config(arch, objective="contrastive", time_budget=budget)
    torch.manual_seed(train.seed)
    model = BackboneModel(config)
    model.backbone.load_state_dict(pretrained(arch).state_dict())
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    info = {"adapt_loss": [0.0], "adapt_images": 0, "swapped": 0}
    mine_s = 0.0
    if variant.startswith("nn"):
        k, p = variant[2:].split("p")
        neighbours = mine(model, int(k))
        mine_s = time.perf_counter() - t0
        print(f"mined in {mine_s:.0f} s: {sum(len(n) > 0 for n in neighbours)} of {len(db)} rows have a "
              f"mutual {k}-NN", flush=True)
        info = adapt(model, train, budget - mine_s, neighbours, float(p))
    elif variant.startswith("sd"):
        lam, lr = variant[2:].split("lr")
        teacher = copy.deepcopy(model).eval()
        train = default_train_config(arch, objective="contrastive", time_budget=budget,
                                     lr=float(lr) * 1e-4)
        info = adapt(model, train, budget, sd=float(lam), teacher=teacher)
    elif variant.startswith("ml"):  # ml, or ml<lr>: the mid block's own contrastive loss
        mid_head = torch.nn.Sequential(torch.nn.Linear(model.part_widths[1], 512), torch.nn.BatchNorm1d(512),
                                       torch.nn.ReLU(), torch.nn.Linear(512, 128))
        if len(variant) > 2:
            train = default_train_config(arch, objective="contrastive", time_budget=budget,
                                         lr=float(variant[2:]) * 1e-4)
        info = adapt(model, train, budget, mid_head=mid_head)
    elif variant.startswith("t"):  # t<T>: NT-Xent temperature T
        train = default_train_config(arch, objective="contrastive", time_budget=budget,
                                     temperature=float(variant[1:]))
        info = adapt(model, train, budget)
    elif variant.startswith("lr"):
        train = default_train_config(arch, objective="contrastive", time_budget=budget,
                                     lr=float(variant[2:]) * 1e-4)
        info = adapt(model, train, budget)
    elif variant.startswith("base") or variant.startswith("wise"):
        info = adapt(model, train, budget)
    adapt_s = time.perf_counter() - t0
    load1 = os.getloadavg()[0]
    model.eval()
    # wise<A>[_<A>...]: the adapted weights interpolated with the pretrained ones (WiSE-FT),
    # A x adapted + (1 - A) x pretrained, each A scored (1 = the default)
    alphas = [float(a) for a in variant[4:].split("_")] if variant.startswith("wise") else [None]
    adapted = copy.deepcopy(model.backbone.state_dict())
    start_sd = pretrained(arch).state_dict()
    for alpha in alphas:
        if alpha is not None:
            model.backbone.load_state_dict({k: (alpha * v + (1 - alpha) * start_sd[k]) if v.is_floating_point()
                                            else v for k, v in adapted.items()})
            tag = f"wise{alpha}"
        else:
            tag = variant
        t = time.perf_counter()
        F_ = {name: descriptors(model, name) for name in ("db", "q", "v1", "v05")}
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            ref = model.parts(pix(db, 0, 8))
        err = np.abs(ref.float().numpy() - F_["db"][:8]).max() / np.abs(F_["db"][:8]).max()
        assert err < 0.05, err  # the cached maps give the model's own descriptors
        np.savez(OUT / f"feats_{tag}.npz", **F_)
        cd, cq = default_codes(F_["db"], [F_["q"]])
        exact = colour.score(cq, cd, labels)
        rr = colour.score(cq, cd, labels, Diffusion(cd.astype(np.float32), default_retrieval_config(arch).diffusion))
        print(f"RESULT {tag:10s} images {info['adapt_images']:5d} steps {len(info['adapt_loss']):3d} "
              f"swapped {info['swapped']} mine_s {mine_s:.0f} adapt_s {adapt_s:.0f} "
              f"loss {np.mean(info['adapt_loss'][-3:]):.3f} "
              f"mAP exact {exact['mAP']:.4f} rerank {rr['mAP']:.4f} P@1 {rr['P@1']:.3f} cat {rr.get('cat P@10', float('nan')):.3f} "
              f"load {load0:.2f}->{load1:.2f} encode_s {time.perf_counter() - t:.0f}", flush=True)
