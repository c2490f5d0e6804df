"""Speed, each figure beside its peer measured in the same run (docs/protocol.md, "Speed"):

* training and encoding the articles' 16-8-8 denoising autoencoder (fashion-mnist 60k,
  batch 128) with lookalike vs Keras 3 + TensorFlow (``benchmarks/keras_peer.py``, from
  the optional extra ``pip install -e ".[bench]"``; without it that column is skipped),
  with the final loss and the codes' retrieval mAP of both (speed must not cost quality);
* the default recipe's (contrastive) training and encoding throughput;
* exact search of 10k queries in 60k codes (k=10): lookalike's backend vs FAISS
  ``IndexFlatL2`` vs scikit-learn ``NearestNeighbors`` (the articles' choice), and the
  single-query latency;
* approximate search on 10k, 100k and 1M codes made by lookalike's encoder from
  fashion-mnist and random augmentations of it: the index ``--factory auto`` chooses,
  its build time, bytes per vector, queries/s and recall@10 against exact search.

    python benchmarks/speed.py             # everything; writes docs/benchmarks.md "speed"
    python benchmarks/speed.py --json      # also print the figures as JSON
    python benchmarks/speed.py --tiny      # a smoke run on small data (nothing written)

Throughputs are medians over repeats (epochs after the first for training).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import faiss  # noqa: E402
import torch  # noqa: E402
from _common import commit, machine, now, table, write_section  # noqa: E402

from lookalike.config import InputSpec, ModelConfig, default_train_config  # noqa: E402
from lookalike.data.augment import augment  # noqa: E402
from lookalike.data.datasets import load_dataset  # noqa: E402
from lookalike.data.images import from_float, to_float  # noqa: E402
from lookalike.models.encoders import ModelEncoder  # noqa: E402
from lookalike.models.modelio import LoadedModel  # noqa: E402
from lookalike.models.training import train_autoencoder  # noqa: E402
from lookalike.search.backends import FaissBackend, choose_factory  # noqa: E402
from lookalike.search.metrics import retrieval_metrics  # noqa: E402

HERE = Path(__file__).resolve().parent


def median_rate(n: int, fn: Callable[[], Any], repeats: int) -> float:
    """``n / seconds`` of ``fn()``, median over ``repeats`` (after one warm-up call)."""
    fn()
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def keras_available() -> bool:
    """Whether the peer can run (found, not imported: TensorFlow stays out of this process)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("keras", "tensorflow"))


def run_keras(train: np.ndarray, query: np.ndarray, epochs: int, work: Path) -> dict[str, Any]:
    """The articles' stack in its own process (TensorFlow and PyTorch each want the cores)."""
    data = work / "keras_data.npz"
    np.savez(data, train=train, query=query)
    out = subprocess.run([sys.executable, str(HERE / "keras_peer.py"), str(data), str(work / "keras"),
                          "--epochs", str(epochs), "--batch", "128", "--encode-batch", "256"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["train_codes"] = np.load(work / "keras" / "train_codes.npy")
    result["query_codes"] = np.load(work / "keras" / "query_codes.npy")
    return result


def train_speed(train: np.ndarray, epochs: int, precision: str) -> tuple[LoadedModel, dict[str, Any]]:
    cfg = ModelConfig(arch="conv-16-8-8", input=InputSpec(1, train.shape[1], train.shape[2]))
    tc = default_train_config("conv-16-8-8", epochs=epochs, batch_size=128, val_fraction=0.0,
                              loss="mse", denoise=True, noise_factor=0.5, precision=precision)
    res = train_autoencoder(train, cfg, tc)
    return LoadedModel(res.model, cfg, res.train, res.history), res.history


def epoch_rate(n: int, seconds: list[float]) -> float:
    """Median images/s over the epochs after the first (which pays for warm-up)."""
    timed = seconds[1:] or seconds
    return statistics.median(n / s for s in timed)


def augmented_codes(encoder: ModelEncoder, images: np.ndarray, total: int, seed: int = 0) -> np.ndarray:
    """Codes of ``images`` and of random augmentations of them, ``total`` in all."""
    gen = torch.Generator().manual_seed(seed)
    out = np.empty((total, encoder.dim), dtype=np.float32)
    first = min(total, len(images))
    out[:first] = encoder.encode(images[:first])
    done = first
    x = torch.from_numpy(to_float(images))
    while done < total:
        pick = torch.randint(0, len(images), (min(8192, total - done),), generator=gen)
        views = from_float(augment(x[pick], 1.0, False, gen).numpy())
        out[done:done + len(views)] = encoder.encode(views)
        done += len(views)
    return out


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, truth, strict=True)]))


def ann_rows(codes: np.ndarray, queries: np.ndarray, sizes: list[int], k: int, repeats: int,
             sweep: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, sweep_rows = [], []
    for n in sizes:
        db = codes[:n]
        flat = faiss.IndexFlatL2(db.shape[1])
        flat.add(db)
        _, truth = flat.search(queries, k)
        flat_qps = median_rate(len(queries), lambda f=flat: f.search(queries, k), repeats)
        auto_factory, auto_params = choose_factory(n)
        candidates = [("auto: " + auto_factory, auto_factory, auto_params)]
        if auto_factory == "Flat":  # show what the inverted file would do at this size too
            nlist = 1 << int(round(np.log2(np.sqrt(n))))
            candidates.append(("IVF (by formula)", f"IVF{nlist},Flat", f"nprobe={max(16, nlist // 64)}"))
        if n <= 100_000:
            candidates.append(("HNSW32", "HNSW32", "efSearch=64"))
        for label, factory, params in candidates:
            t = time.perf_counter()
            backend = FaissBackend(db.shape[1], factory, search_params=params)
            backend.add(np.arange(n, dtype=np.int64), db)
            build = time.perf_counter() - t
            found = backend.search(queries, k)[1]
            qps = median_rate(len(queries), lambda b=backend: b.search(queries, k), repeats)
            size = faiss.serialize_index(backend.index).nbytes
            rows.append({"n": n, "index": label, "factory": factory, "params": params,
                         "build_s": build, "bytes_per_vector": size / n, "qps": qps,
                         "recall_at_10": recall_at(found, truth), "exact_qps": flat_qps})
            if label.startswith("auto") and n == sizes[-1] and factory.startswith("IVF"):
                for nprobe in sweep:
                    faiss.ParameterSpace().set_index_parameters(backend.index, f"nprobe={nprobe}")
                    found = backend.search(queries, k)[1]
                    sweep_rows.append({"n": n, "nprobe": nprobe, "recall_at_10": recall_at(found, truth),
                                       "qps": median_rate(len(queries),
                                                          lambda b=backend: b.search(queries, k), repeats)})
    return rows, sweep_rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3, help="training epochs per stack (default 3)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ann-sizes", default="10000,100000,1000000")
    ap.add_argument("--no-keras", action="store_true", help="skip the Keras-TF peer")
    ap.add_argument("--tiny", action="store_true", help="smoke run: digits, small sizes, nothing written")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args()
    started = time.perf_counter()
    if args.tiny:
        db, q = load_dataset("digits", "database"), load_dataset("digits", "queries")
        args.epochs, args.repeats, args.no_write, args.no_keras = 2, 1, True, True
        sizes = [1000, 3000]
    else:
        db, q = load_dataset("fashion-mnist", "database"), load_dataset("fashion-mnist", "queries")
        sizes = [int(s) for s in args.ann_sizes.split(",")]
    n, k = len(db), 10
    figures: dict[str, Any] = {"dataset": db.name, "n_train": n, "n_queries": len(q),
                               "epochs": args.epochs, "batch": 128, "machine": machine()}
    use_keras = not args.no_keras and keras_available()
    if not args.no_keras and not use_keras:
        print("Keras/TensorFlow not installed (pip install -e '.[bench]'): skipping that peer")
    work = Path(tempfile.mkdtemp(prefix="lookalike-speed-"))

    # ---------------------------------------------------------------- training + encoding
    keras = run_keras(db.images, q.images, args.epochs, work) if use_keras else None
    model, hist = train_speed(db.images, args.epochs, "auto")
    _, hist32 = train_speed(db.images, args.epochs, "fp32")
    ours_train = epoch_rate(n, hist["epoch_seconds"])
    figures["train"] = {"lookalike_img_s": ours_train, "lookalike_precision": hist["precision"],
                        "lookalike_fp32_img_s": epoch_rate(n, hist32["epoch_seconds"]),
                        "lookalike_final_loss": hist["train_loss"][-1]}
    encoder = ModelEncoder(model)
    ours_encode = median_rate(n, lambda: encoder.encode(db.images), args.repeats)
    figures["encode"] = {"lookalike_img_s": ours_encode, "lookalike_precision": encoder.precision,
                         "lookalike_fp32_img_s": median_rate(
                             n, lambda: ModelEncoder(model, precision="fp32").encode(db.images),
                             args.repeats)}
    db_codes, q_codes = encoder.encode(db.images), encoder.encode(q.images)
    ks = (1, 10, 100)
    figures["quality"] = {"lookalike": retrieval_metrics(q_codes, q.labels, db_codes, db.labels, ks=ks)}
    if keras is not None:
        keras_train = epoch_rate(n, keras["epoch_seconds"])
        keras_encode = statistics.median(n / s for s in keras["encode_seconds"])
        figures["train"].update(keras_img_s=keras_train, keras_final_loss=keras["loss"][-1])
        figures["encode"]["keras_img_s"] = keras_encode
        figures["quality"]["keras"] = retrieval_metrics(keras["query_codes"], q.labels,
                                                        keras["train_codes"], db.labels, ks=ks)
        figures["train_ratio_vs_keras"] = ours_train / keras_train
        figures["encode_ratio_vs_keras"] = ours_encode / keras_encode
        figures["loss_ratio_vs_keras"] = hist["train_loss"][-1] / keras["loss"][-1]
        figures["map_diff_vs_keras"] = (figures["quality"]["lookalike"]["mAP"]
                                        - figures["quality"]["keras"]["mAP"])
        figures["versions"] = keras["versions"]

    # the default recipe (contrastive): one epoch's throughput, and its encoder's
    spec = InputSpec(1, db.images.shape[1], db.images.shape[2])
    tc = default_train_config("contrastive", epochs=2, val_fraction=0.0)
    res = train_autoencoder(db.images, ModelConfig(arch="contrastive", input=spec), tc)
    recipe = LoadedModel(res.model, res.model.config, res.train, res.history)
    figures["recipe"] = {"train_img_s": epoch_rate(n, res.history["epoch_seconds"]),
                         "train_precision": res.history["precision"],
                         "encode_img_s": median_rate(n, lambda: ModelEncoder(recipe).encode(db.images),
                                                     args.repeats)}

    # ---------------------------------------------------------------- exact search
    from sklearn.neighbors import NearestNeighbors

    backend = FaissBackend(db_codes.shape[1], "Flat")
    backend.add(np.arange(n, dtype=np.int64), db_codes)
    flat = faiss.IndexFlatL2(db_codes.shape[1])
    flat.add(db_codes)
    nn = NearestNeighbors(n_neighbors=k).fit(db_codes)
    assert (backend.search(q_codes[:50], k)[1] == flat.search(q_codes[:50], k)[1]).all()
    rates: dict[str, list[float]] = {"lookalike": [], "faiss": [], "sklearn": []}
    calls = {"lookalike": lambda: backend.search(q_codes, k), "faiss": lambda: flat.search(q_codes, k),
             "sklearn": lambda: nn.kneighbors(q_codes)}
    for fn in calls.values():
        fn()
    for _ in range(args.repeats):  # interleaved, so a busy moment hits all three alike
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            rates[name].append(len(q_codes) / (time.perf_counter() - t))
    search = {name: statistics.median(r) for name, r in rates.items()}
    lat = []
    for i in range(200):
        t = time.perf_counter()
        backend.search(q_codes[i:i + 1], k)
        lat.append(time.perf_counter() - t)
    figures["search"] = {"db": n, "queries": len(q_codes), "k": k, "dim": int(db_codes.shape[1]),
                         "lookalike_qps": search["lookalike"], "faiss_flat_qps": search["faiss"],
                         "sklearn_qps": search["sklearn"],
                         "single_query_ms_median": 1000 * statistics.median(lat),
                         "single_query_ms_p99": 1000 * float(np.percentile(lat, 99))}
    figures["search_ratio_vs_faiss_flat"] = search["lookalike"] / search["faiss"]
    figures["search_ratio_vs_sklearn"] = search["lookalike"] / search["sklearn"]

    # ---------------------------------------------------------------- approximate search
    t = time.perf_counter()
    codes = augmented_codes(encoder, db.images, max(sizes))
    figures["ann_codes_seconds"] = time.perf_counter() - t
    ann_q = q_codes[:min(len(q_codes), 5000)]
    rows, sweep = ann_rows(codes, ann_q, sizes, k, args.repeats, [8, 16, 32, 64, 128])
    figures["ann"] = rows
    figures["ann_sweep"] = sweep
    top = [r for r in rows if r["n"] == max(sizes) and r["index"].startswith("auto")][0]
    figures["ann_recall_at_10"] = top["recall_at_10"]
    figures["ann_qps"] = top["qps"]
    figures["ann_index"] = f"{top['factory']} {top['params']}".strip()
    figures["seconds"] = time.perf_counter() - started

    print(report(figures, use_keras))
    if not args.no_write:
        write_section("speed", report(figures, use_keras))
    if args.json:
        print(json.dumps(figures, indent=2, default=float))
    return 0


def report(f: dict[str, Any], keras: bool) -> str:
    tr, en, se = f["train"], f["encode"], f["search"]
    lines = [
        "## Speed",
        "",
        f"Measured {now()} at commit `{commit()}` on {f['machine']}, in {f['seconds'] / 60:.1f} min. "
        "Re-run: `python benchmarks/speed.py` (the Keras peer needs `pip install -e \".[bench]\"`). "
        "Medians over repeats; training rates are the median of the epochs after the first.",
        "",
        f"### Training and encoding: the articles' 16-8-8 denoising autoencoder, {f['dataset']} "
        f"{f['n_train']:,} images, batch {f['batch']}, {f['epochs']} epochs, MSE, noise 0.5",
        "",
    ]
    rows = []
    if keras:
        q = f["quality"]["keras"]
        rows.append(["Keras 3 + TensorFlow (the articles' stack)", f"{tr['keras_img_s']:,.0f}", "1.00",
                     f"{tr['keras_final_loss']:.5f}", f"{en['keras_img_s']:,.0f}", "1.00", f"{q['mAP']:.3f}"])
    q = f["quality"]["lookalike"]
    rows.append([f"lookalike ({tr['lookalike_precision']} training, {en['lookalike_precision']} encoding)",
                 f"{tr['lookalike_img_s']:,.0f}",
                 f"{f['train_ratio_vs_keras']:.2f}" if keras else "",
                 f"{tr['lookalike_final_loss']:.5f}", f"{en['lookalike_img_s']:,.0f}",
                 f"{f['encode_ratio_vs_keras']:.2f}" if keras else "", f"{q['mAP']:.3f}"])
    rows.append(["lookalike, float32 throughout", f"{tr['lookalike_fp32_img_s']:,.0f}",
                 f"{tr['lookalike_fp32_img_s'] / tr['keras_img_s']:.2f}" if keras else "", "",
                 f"{en['lookalike_fp32_img_s']:,.0f}",
                 f"{en['lookalike_fp32_img_s'] / en['keras_img_s']:.2f}" if keras else "", ""])
    lines.append(table(["stack", "train img/s", "× Keras", "final loss", "encode img/s", "× Keras",
                        "codes' mAP (exact L2)"], rows))
    if keras:
        lines += ["", f"Final loss lookalike / Keras = {f['loss_ratio_vs_keras']:.3f}; mAP difference "
                      f"{f['map_diff_vs_keras']:+.4f} (TensorFlow {f['versions']['tensorflow']}, "
                      f"Keras {f['versions']['keras']})."]
    r = f["recipe"]
    lines += ["", f"The default recipe (contrastive, batch 256): trains at {r['train_img_s']:,.0f} img/s "
                  f"({r['train_precision']}), encodes at {r['encode_img_s']:,.0f} img/s.", "",
              f"### Exact search: {se['queries']:,} queries in {se['db']:,} codes ({se['dim']}-d), "
              f"k={se['k']}",
              "",
              table(["engine", "queries/s", "lookalike ×"], [
                  ["scikit-learn NearestNeighbors (the articles' choice)", f"{se['sklearn_qps']:,.0f}",
                   f"{f['search_ratio_vs_sklearn']:.2f}"],
                  ["FAISS IndexFlatL2", f"{se['faiss_flat_qps']:,.0f}",
                   f"{f['search_ratio_vs_faiss_flat']:.2f}"],
                  ["lookalike (FaissBackend, Flat)", f"{se['lookalike_qps']:,.0f}", "1.00"]]),
              "",
              f"Single-query latency on {se['db']:,} codes: median {se['single_query_ms_median']:.3f} ms, "
              f"p99 {se['single_query_ms_p99']:.3f} ms.",
              "",
              "### Approximate search (`--factory auto`), codes of fashion-mnist and random augmentations "
              f"of it ({f['ann_codes_seconds']:.0f} s to make), 5,000 queries (test images), k=10",
              "",
              table(["codes", "index", "build s", "bytes/vector", "queries/s", "recall@10",
                     "exact queries/s"],
                    [[f"{a['n']:,}", f"{a['index']} {a['params']}".strip(), f"{a['build_s']:.1f}",
                      f"{a['bytes_per_vector']:.0f}", f"{a['qps']:,.0f}", f"{a['recall_at_10']:.3f}",
                      f"{a['exact_qps']:,.0f}"] for a in f["ann"]])]
    if f["ann_sweep"]:
        lines += ["", f"nprobe sweep at {f['ann_sweep'][0]['n']:,} codes:", "",
                  table(["nprobe", "recall@10", "queries/s"],
                        [[str(s["nprobe"]), f"{s['recall_at_10']:.3f}", f"{s['qps']:,.0f}"]
                         for s in f["ann_sweep"]])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
