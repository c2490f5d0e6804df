"""Retrieval quality on the protocol of docs/protocol.md: raw pixels, PCA, the articles' presets
and lookalike's recipe, with ablations (each ingredient on/off).

    python benchmarks/quality.py                       # mnist-5k and fashion-mnist
    python benchmarks/quality.py --datasets mnist-5k   # one dataset
    python benchmarks/quality.py --reuse               # reuse models already trained under --work
    python benchmarks/quality.py --datasets icons      # the colour benchmark (benchmarks/colour.py)

Writes the table to docs/benchmarks.md (section "quality") and prints it. Labels are used
only to score. Every model trains on the database split only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine, now, table, write_section  # noqa: E402

from lookalike.config import (  # noqa: E402
    InputSpec,
    ModelConfig,
    default_retrieval_config,
    default_train_config,
)
from lookalike.data.datasets import load_dataset  # noqa: E402
from lookalike.models.encoders import ModelEncoder, PixelEncoder  # noqa: E402
from lookalike.models.modelio import is_model_dir, load_model, save_model  # noqa: E402
from lookalike.models.training import train_autoencoder  # noqa: E402
from lookalike.search.evaluation import evaluate_features  # noqa: E402
from lookalike.search.rerank import Diffusion  # noqa: E402

KEYS = ("mAP", "P@1", "P@10", "P@100")


def variants(full: bool) -> list[dict[str, Any]]:
    """Rows: name, how codes are made (pixels / pca / a model), whether to diffuse, and
    any diffusion setting that differs from the recipe's."""
    rows: list[dict[str, Any]] = [
        {"name": "raw pixels", "kind": "pixels", "diffuse": False},
        {"name": "PCA-32 of pixels", "kind": "pca", "diffuse": False},
        {"name": "article conv-16-8-8 (denoising AE, 20 epochs)", "kind": "model",
         "arch": "conv-16-8-8", "diffuse": False},
    ]
    if full:  # the ablations (diffusion over 60,000 items takes ~10 min a row here)
        rows += [
            {"name": "raw pixels + diffusion", "kind": "pixels", "diffuse": True},
            {"name": "article conv-16-8-8 + diffusion", "kind": "model", "arch": "conv-16-8-8",
             "diffuse": True},
            {"name": "article conv-32-32 (denoising AE, 20 epochs)", "kind": "model",
             "arch": "conv-32-32", "diffuse": False},
            {"name": "article hourglass (denoising AE, 32x32, 20 epochs)", "kind": "model",
             "arch": "hourglass", "size": 32, "diffuse": False},
        ]
    contrastive_only = {"recon_weight": 0.0, "denoise": False}
    with_recon = {"recon_weight": 1.0, "denoise": True}
    no_jitter = {**contrastive_only, "jitter": 0.0}
    rows += [
        {"name": "contrastive codes, cosine (no diffusion)", "kind": "model",
         "arch": "contrastive", "train": contrastive_only, "diffuse": False},
        {"name": "contrastive + diffusion", "kind": "model", "arch": "contrastive",
         "train": contrastive_only, "diffuse": True},
        {"name": "contrastive + diffusion without whitening", "kind": "model",
         "arch": "contrastive", "train": contrastive_only, "diffuse": True,
         "diffusion": {"whiten": 0.0}},
        {"name": "contrastive without intensity jitter, cosine", "kind": "model",
         "arch": "contrastive", "train": no_jitter, "diffuse": False},
        {"name": "contrastive without intensity jitter + diffusion", "kind": "model",
         "arch": "contrastive", "train": no_jitter, "diffuse": True},
    ]
    if full:
        rows += [
            {"name": "contrastive + denoising reconstruction, cosine", "kind": "model",
             "arch": "contrastive", "train": with_recon, "diffuse": False},
            {"name": "contrastive + denoising reconstruction + diffusion", "kind": "model",
             "arch": "contrastive", "train": with_recon, "diffuse": True},
            {"name": "contrastive + diffusion, half-strength augmentation", "kind": "model",
             "arch": "contrastive", "train": {**contrastive_only, "augment": 0.5}, "diffuse": True},
            {"name": "contrastive + diffusion, half the training budget", "kind": "model",
             "arch": "contrastive", "train": {**contrastive_only, "budget": 160_000},
             "diffuse": True},
        ]
    default = default_train_config("contrastive")
    for row in rows:  # mark the row that is exactly what `lookalike train` ships
        if (row.get("arch") == "contrastive" and row["diffuse"] and not row.get("diffusion")
                and default_train_config("contrastive", **row.get("train", {})) == default):
            row["default"] = True
            row["name"] = f"**{row['name']} (default recipe)**"
    return rows


def model_for(row: dict[str, Any], db, work: Path, reuse: bool) -> tuple[Any, float]:
    key = row["arch"] + "".join(f"_{k}={v}" for k, v in sorted(row.get("train", {}).items()))
    path = work / key
    tconf = default_train_config(row["arch"], **row.get("train", {}))
    if reuse and is_model_dir(path):
        model = load_model(path)
        # reused only when it was trained with today's settings (the recipe may have moved)
        if model.train is not None and dataclasses.replace(model.train, epochs=tconf.epochs) == tconf:
            return model, float(model.history.get("seconds", float("nan")))
    spec = db.spec
    if row.get("size"):
        spec = InputSpec(spec.channels, row["size"], row["size"])
    result = train_autoencoder(db.images, ModelConfig(arch=row["arch"], input=spec), tconf)
    model = save_model(path, result.model, result.train, result.history,
                       default_retrieval_config(row["arch"]))
    return model, result.history["seconds"]


def run_dataset(name: str, full: bool, work: Path, reuse: bool) -> list[dict[str, Any]]:
    db = load_dataset(name, "database")
    q = load_dataset(name, "queries")
    out = []
    cache: dict[str, tuple[np.ndarray, np.ndarray, float, float]] = {}
    for row in variants(full):
        key = row["kind"] + row.get("arch", "") + json.dumps(row.get("train", {}), sort_keys=True)
        t0 = time.perf_counter()
        if key not in cache:
            train_s = enc_s = 0.0
            if row["kind"] in ("pixels", "pca"):
                enc = PixelEncoder(db.spec)
                xd, xq = enc.encode(db.images), enc.encode(q.images)
                if row["kind"] == "pca":
                    from sklearn.decomposition import PCA

                    pca = PCA(32, random_state=0).fit(xd)
                    xd, xq = pca.transform(xd).astype(np.float32), pca.transform(xq).astype(np.float32)
            else:
                model, train_s = model_for(row, db, work / name, reuse)
                t1 = time.perf_counter()
                enc = ModelEncoder(model)
                xd, xq = enc.encode(db.images), enc.encode(q.images)
                enc_s = time.perf_counter() - t1
            cache[key] = (xd, xq, train_s, enc_s)
        xd, xq, train_s, enc_s = cache[key]
        t2 = time.perf_counter()
        settings = dataclasses.replace(default_retrieval_config("contrastive").diffusion,
                                       **row.get("diffusion", {}))
        diffusion = Diffusion(xd, settings) if row["diffuse"] else None
        m = evaluate_features(xq, q.labels, xd, db.labels, lrap_ns=(), diffusion=diffusion)
        eval_s = time.perf_counter() - t2
        res = {"dataset": name, "name": row["name"], **{k: float(m[k]) for k in KEYS},
               "train_s": train_s, "encode_s": enc_s, "rank_s": eval_s,
               "default": bool(row.get("default"))}
        out.append(res)
        print(f"{name:14s} {row['name'][:60]:60s} " + " ".join(f"{k} {res[k]:.3f}" for k in KEYS)
              + f"  train {train_s:.0f}s rank {eval_s:.1f}s ({time.perf_counter() - t0:.0f}s)",
              flush=True)
    return out


def latency(name: str, work: Path, n: int = 200) -> dict[str, float]:
    """Single-query latency (ms, median) on the default recipe's codes: exact FAISS flat
    search vs diffusion re-ranking, plus encoding one image."""
    import faiss

    db = load_dataset(name, "database")
    q = load_dataset(name, "queries")
    default = next(r for r in variants(False) if r.get("default"))
    key = default["arch"] + "".join(f"_{k}={v}" for k, v in sorted(default.get("train", {}).items()))
    model = load_model(work / name / key)
    enc = ModelEncoder(model)
    xd = enc.encode(db.images)
    index = faiss.IndexFlatL2(xd.shape[1])
    index.add(xd)
    # the table's settings (a reused model may carry the retrieval config of its day)
    diffusion = Diffusion(xd, default_retrieval_config(default["arch"]).diffusion)
    times: dict[str, list[float]] = {"encode": [], "exact": [], "diffusion": []}
    for i in range(n):
        t0 = time.perf_counter()
        code = enc.encode(q.images[i:i + 1])
        t1 = time.perf_counter()
        index.search(code, 10)
        t2 = time.perf_counter()
        diffusion.search(code, 10)
        t3 = time.perf_counter()
        times["encode"].append(t1 - t0)
        times["exact"].append(t2 - t1)
        times["diffusion"].append(t3 - t2)
    return {k: float(np.median(v) * 1000) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist-5k,fashion-mnist")
    ap.add_argument("--work", default="benchmarks/out/quality", help="where models are kept")
    ap.add_argument("--reuse", action="store_true", help="reuse trained models found in --work")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs alone")
    ap.add_argument("--icons", default="benchmarks/out/icons64",
                    help="where benchmarks/icondata.py builds the icon set (icons dataset)")
    ap.add_argument("--adapt-budget", type=float,
                    help="icons: seconds of the backbone's adaptation (default: lookalike "
                         "train's for the database's size)")
    ap.add_argument("--recipe-budget", type=int, default=320_000,
                    help="icons: images the self-trained recipe's row sees")
    ap.add_argument("--only-backbone", action="store_true",
                    help="icons: raw pixels and lookalike's backbone rows only (no off-the-shelf "
                         "or recipe rows: a quicker run; prints its table, leaves the docs alone)")
    args = ap.parse_args()
    start = time.perf_counter()
    work = Path(args.work)
    if "icons" in args.datasets.split(","):
        import colour
        import icondata

        rows = colour.run_icons(work / "icons", Path(args.icons), args.reuse, args.adapt_budget,
                                args.recipe_budget, args.only_backbone)
        body = colour.icons_section(rows, time.perf_counter() - start,
                                    icondata.load_meta(Path(args.icons)))
        (work / "results_icons.json").parent.mkdir(parents=True, exist_ok=True)
        (work / "results_icons.json").write_text(json.dumps({"results": rows, "date": now()}, indent=2))
        print(body)
        if not args.no_write and not args.only_backbone:  # (a partial table: merged by hand)
            write_section("colour", body)
        args.datasets = ",".join(n for n in args.datasets.split(",") if n != "icons")
        if not args.datasets:
            return
    results: list[dict[str, Any]] = []
    lat: dict[str, dict[str, float]] = {}
    names = args.datasets.split(",")
    for name in names:
        res = run_dataset(name, full=(name == "mnist-5k"), work=work, reuse=args.reuse)
        lat_ms = latency(name, work)
        print(f"{name}: single-query latency (ms, median of 200): {lat_ms}", flush=True)
        (work / f"results_{name}.json").write_text(json.dumps(
            {"results": res, "latency_ms": lat_ms, "wall_s": time.perf_counter() - start,
             "date": now(), "commit": commit()}, indent=2))
    # the table holds every dataset measured so far (one run per dataset is allowed)
    for name in ["mnist-5k", "fashion-mnist"] + [n for n in names if n not in ("mnist-5k", "fashion-mnist")]:
        path = work / f"results_{name}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            results += saved["results"]
            lat[name] = saved["latency_ms"]
    wall = time.perf_counter() - start
    rows = [[r["dataset"], r["name"], *(f"{r[k]:.3f}" for k in KEYS),
             f"{r['train_s']:.0f}" if r["train_s"] else "–", f"{r['rank_s']:.1f}"]
            for r in results]
    body = "\n".join([
        "## Retrieval quality",
        "",
        f"`python benchmarks/quality.py` (or `--datasets NAME` for one) — last run {now()}, "
        f"commit {commit()}, {machine()}; that run's wall time {wall / 60:.1f} min"
        + (" (with `--reuse`: a model an earlier run trained with the same settings was "
           "re-encoded and re-scored, and its `train s` is from that run)" if args.reuse else "")
        + (f" for {', '.join(names)}; the other datasets' rows are from an earlier run "
           "(results_NAME.json under the work folder)" if set(names) != {"mnist-5k", "fashion-mnist"}
           else "")
        + ". Other processes shared the 2 cores during the run, so times are upper bounds.",
        "",
        "Protocol of docs/protocol.md: queries against the database split, the whole "
        "database ranked, labels used only to score. Models train on the database images "
        "only (no labels, no query images). Ablations run on mnist-5k only (diffusion "
        "over 60,000 items costs ~6 min a row here), except the intensity jitter's and the "
        "whitening's, run on both. "
        "`train s` is training time on this machine; `rank s` is the time to rank the whole "
        "database for every query (exact, or diffusion).",
        "",
        table(["dataset", "features", *KEYS, "train s", "rank s"], rows),
        "",
        "Single-query latency of the default recipe (median of 200 queries, one at a time, "
        "top 10), milliseconds:",
        "",
        table(["dataset", "encode one image", "exact search (FAISS flat)", "diffusion re-ranking"],
              [[n, f"{v['encode']:.2f}", f"{v['exact']:.2f}", f"{v['diffusion']:.2f}"]
               for n, v in lat.items()]),
    ])
    print(body)
    if not args.no_write:
        write_section("quality", body)


if __name__ == "__main__":
    main()
