# ruff: noqa
# Exploration script of issue 21 item 3 (an adapted lite1 against the adapted lite0), kept as
# run; see docs/benchmarks.md. Usage, from the repository root:
#   PYTHONPATH=src python benchmarks/levers21/lite1adapt.py ARCH[:BLOCK] [ARCH[:BLOCK]...]
# Each model is made by the library's own train_backbone (the default recipe: adapted for
# 300 s on the subset's database items, whitened on them; 192 px, the given mid block), then
# the subset is encoded by model.encode (bf16) and scored as exp7.py does.
import sys, time, os
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, "benchmarks")
import colour
from lookalike.config import ModelConfig, default_train_config, input_for, default_retrieval_config
from lookalike.models.adaptation import train_backbone
from lookalike.search.rerank import Diffusion

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import icon_subset  # noqa: E402

db, q, labels = icon_subset.load()

for spec in sys.argv[1:]:
    arch, _, block = spec.partition(":")
    config = ModelConfig(arch=arch, input=input_for(arch, db.spec), mid_blocks=(int(block),) if block else ())
    train = default_train_config(arch, objective="contrastive", time_budget=300.0)
    load0 = os.getloadavg()[0]
    result = train_backbone(db, config, train)
    model = result.model.eval()
    t = time.perf_counter()
    codes = {}
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for name, data in (("db", db), ("q", q)):
            codes[name] = np.concatenate([
                model.encode(torch.from_numpy(data.pixels(s, min(s + 64, len(data)), config.input))
                             .permute(0, 3, 1, 2).float().div_(255)).float().numpy()
                for s in range(0, len(data), 64)])
    encode_s = time.perf_counter() - t
    cd, cq = codes["db"], codes["q"]
    ex = colour.score(cq, cd, labels)
    rr = colour.score(cq, cd, labels, Diffusion(cd.astype(np.float32), default_retrieval_config(arch).diffusion))
    h = result.history
    print(f"RESULT {spec:22s} images {h['adapt_images']} steps {len(h['adapt_loss'])} rerank {rr['mAP']:.4f} "
          f"P@1 {rr['P@1']:.3f} cat {rr['cat P@10']:.3f} exact {ex['mAP']:.4f} encode_s {encode_s:.1f} "
          f"load {load0:.2f}->{os.getloadavg()[0]:.2f}", flush=True)
