# ruff: noqa
# Exploration script of issue 21 item 3 (lite1/lite2 with a mid block), kept as run; see
# docs/benchmarks.md. Usage, from the repository root:
#   PYTHONPATH=src python benchmarks/levers21/lite12.py
# Pretrained efficientnet-lite0/1/2 (not adapted) at 192 px on the subset: GeM of the last
# map (whitened to 512-d) alone and with one block's GeM (whitened, all channels,
# concatenated as ModelConfig.mid_blocks does), scored exact and re-ranked as exp7.py does.
import sys, time
from pathlib import Path
import numpy as np, torch, torch.nn.functional as F
sys.path.insert(0, "benchmarks")
import colour
from lookalike.config import InputSpec, default_retrieval_config
from lookalike.models.backbones import pretrained
from lookalike.models.networks import fit_whitening, gem
from lookalike.search.rerank import Diffusion

torch.set_num_threads(2)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import icon_subset  # noqa: E402

db, q, labels = icon_subset.load()
spec = InputSpec(3, 192, 192)
TAPS = {"efficientnet-lite0": (10, 14, 15), "efficientnet-lite1": (14, 18, 19, 20),
        "efficientnet-lite2": (14, 18, 19, 20)}


def l2(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


for arch in sys.argv[1:] or ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"):
    cache = Path(f"/tmp/colour23/lite_{arch}.npz")
    if not cache.is_file():
        net = pretrained(arch).eval()
        out = {}
        t = time.perf_counter()
        for name, data in (("db", db), ("q", q)):
            parts = {k: [] for k in ("last", *TAPS[arch])}
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                for s in range(0, len(data), 64):
                    x = torch.from_numpy(data.pixels(s, min(s + 64, len(data)), spec)).permute(0, 3, 1, 2).float().div_(255)
                    last, mids = net.feature_maps(x, TAPS[arch])
                    parts["last"].append(gem(last).float().numpy())
                    for b, m in zip(TAPS[arch], mids):
                        parts[b].append(gem(m).float().numpy())
            for k, v in parts.items():
                out[f"{name}_{k}"] = np.concatenate(v)
        np.savez(cache, **out)
        print(f"{arch}: features in {time.perf_counter() - t:.0f} s", flush=True)
    c = dict(np.load(cache))

    def code(keys):
        cd, cq = [], []
        for k in keys:
            dim = 512 if k == "last" else c[f"db_{k}"].shape[1]
            mean, mat = fit_whitening(c[f"db_{k}"], dim)
            cd.append(l2((l2(c[f"db_{k}"]) - mean) @ mat)); cq.append(l2((l2(c[f"q_{k}"]) - mean) @ mat))
        return l2(np.hstack(cd)), l2(np.hstack(cq))

    for keys in [("last",), *[("last", str(b)) for b in TAPS[arch]]]:
        cd, cq = code(keys)
        ex = colour.score(cq, cd, labels)
        rr = colour.score(cq, cd, labels, Diffusion(cd.astype(np.float32), default_retrieval_config(arch).diffusion))
        print(f"RESULT {arch} {'+'.join(keys):10s} rerank {rr['mAP']:.4f} P@1 {rr['P@1']:.3f} "
              f"cat {rr['cat P@10']:.3f} exact {ex['mAP']:.4f}", flush=True)
