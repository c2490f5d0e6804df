# ruff: noqa
# Exploration script of issue 21's colour levers, kept as run (paths under /tmp/colour21); see docs/benchmarks.md.
"""Cache backbone feature maps of the icon benchmark (fp16 .npy) for the adapted default model
and views: plain 192, flipped 192, and the 192 input resized in torch to other sizes."""
import sys, time, json
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, "/work/wt/colour21/benchmarks")
from lookalike.config import (ModelConfig, adaptation_budget, default_train_config, input_for,
                              default_retrieval_config)
from lookalike.data.datasets import load_dataset
from lookalike.models.adaptation import train_backbone
from lookalike.models.modelio import load_model, save_model
from lookalike.models.training import use_bf16

root = Path("/tmp/colour21/icons64")
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
views = sys.argv[2].split(",")  # e.g. 192,192f,160,224
db = load_dataset(root / "database", "all"); q = load_dataset(root / "queries", "all")
import os
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
SUB = os.environ.get("SUBSET")
if SUB:
    sub = np.load(SUB)
    dbi, qi = sub["db"], sub["q"]
full_db, full_q = db, q
arch = "efficientnet-lite0"
config = ModelConfig(arch=arch, input=input_for(arch, db.spec))
mdir = out / "model"
if (mdir / "config.json").is_file():
    model = load_model(mdir)
else:
    extra = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    train = default_train_config(arch, objective="contrastive", time_budget=adaptation_budget(len(db)), **extra)
    t = time.perf_counter()
    res = train_backbone(db, config, train)
    print("train s", time.perf_counter() - t, {k: res.history.get(k) for k in ("adapt_images", "adapt_seconds")}, flush=True)
    model = save_model(mdir, res.model, res.train, res.history, default_retrieval_config(arch))
if SUB:
    db, q = full_db.subset(dbi, "all"), full_q.subset(qi, "all")
net = model.module.backbone.eval().to(memory_format=torch.channels_last)
bf16 = use_bf16("auto", torch.device("cpu"))
print("bf16", bf16, flush=True)
for view in views:
    for name, data in (("db", db), ("q", q)):
        path = out / f"{name}_{view}.npy"
        if path.is_file():
            continue
        t = time.perf_counter(); parts = []
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for s in range(0, len(data), 64):
                x = torch.from_numpy(data.pixels(s, min(s + 64, len(data)), config.input)).permute(0, 3, 1, 2).float().div_(255)
                if view.endswith("f"):
                    x = x.flip(3)
                size = int(view.rstrip("f"))
                if size != config.input.height:
                    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                parts.append(net.features(x).float().half().numpy())
        np.save(path, np.concatenate(parts))
        print(view, name, "s", round(time.perf_counter() - t, 1), flush=True)
