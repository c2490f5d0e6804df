"""The main job, end to end on a labelled dataset (``mnist-5k`` by default): train,
index, evaluate next to the pixel baseline, draw the figures, write the report.

:func:`report_figures` is shared with ``lookalike report``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ModelConfig, TrainConfig, default_train_config
from ..data.datasets import Dataset, load_dataset
from ..fsutil import atomic_write_json
from ..models.modelio import LoadedModel, save_model
from ..models.reconstruct import denoise, has_trained_decoder, reconstruct
from ..models.training import train_autoencoder
from ..search.clustering import choose_k, elbow_curve
from ..search.collection import Collection
from ..search.evaluation import evaluate
from . import figures
from .report import write_report

log = logging.getLogger(__name__)
METRIC_KEYS = ("mAP", "P@1", "P@10", "P@100")


def report_figures(model: LoadedModel, collection: Collection, queries: Dataset,
                   curves: dict[str, dict[str, list[float]]] | None = None,
                   n_queries: int = 6, k: int = 10, seed: int = 0
                   ) -> list[tuple[str, bytes]]:
    """The report's figures as ``(caption, PNG bytes)``: loss curves, reconstructions,
    denoising, query grid, LRAP@n curves (when ``curves`` are given) and the elbow plot."""
    out: list[tuple[str, bytes]] = []
    rng = np.random.default_rng(seed)
    hist = model.history
    if hist.get("train_loss"):
        out.append(("Training and validation loss per epoch (best epoch dashed)",
                    figures.to_png(figures.loss_curves(hist, hist.get("best_epoch")))))
    sample = queries.images[rng.choice(len(queries), size=min(10, len(queries)), replace=False)]
    if has_trained_decoder(model):
        noisy, clean = denoise(model, sample, 0.5, seed)
        out.append(("Query images, their reconstructions, noisy copies (factor 0.5) and denoised",
                    figures.to_png(figures.image_rows([
                        ("original", sample), ("reconstructed", reconstruct(model, sample)),
                        ("noisy", noisy), ("denoised", clean)]))))
    pick = rng.choice(len(queries), size=min(n_queries, len(queries)), replace=False)
    q_images = queries.images[pick]
    dist, ids = collection.search_images(q_images, k)
    result_images = np.stack([
        np.stack([collection.image(i) if i >= 0 else np.zeros_like(collection.image(0))
                  for i in row]) for row in ids])
    q_labels = queries.labels
    out.append((f"Queries (left) and their top {k} results; green = same label, red = not",
                figures.to_png(figures.query_grid(
                    q_images, result_images, dist,
                    query_labels=q_labels[pick] if q_labels is not None else None,
                    result_labels=collection.labels(ids.ravel()).reshape(ids.shape)
                    if q_labels is not None else None,
                    label_names=collection.label_names, result_ids=ids))))
    if curves:
        ns = [int(n) for n in next(iter(curves.values()))["n"]]
        out.append(("LRAP@n as in the articles, computed correctly (a query with no relevant "
                    "result in its first n scores 0)",
                    figures.to_png(figures.lrap_curve(ns, {k_: c["value"]
                                                           for k_, c in curves.items()}))))
    ks = list(range(2, 16))
    sub = np.asarray(collection.embeddings)
    if len(sub) > 5000:
        sub = sub[rng.choice(len(sub), 5000, replace=False)]
    ks = [k_ for k_ in ks if k_ < len(sub)]
    if len(ks) >= 2:
        inertias = elbow_curve(sub, ks, seed).tolist()
        out.append(("K-means elbow on the collection's codes (inertia vs k; the elbow marked)",
                    figures.to_png(figures.elbow(ks, inertias, choose_k(ks, inertias)))))
    return out


@dataclass(frozen=True)
class DemoResult:
    out: Path
    model: Path
    collection: Path
    metrics: Path
    report: Path
    seconds: float
    scores: dict[str, dict[str, float]]


def run_demo(out: str | os.PathLike[str], *, dataset: str = "mnist-5k", epochs: int | None = None,
             model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
             data_dir: str | None = None, progress: bool = False) -> DemoResult:
    """Train on ``dataset``'s database split, index it, evaluate model and pixels on its
    query split, and write ``model/``, ``collection/``, ``metrics.json`` and ``report.html``
    under ``out``."""
    start = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    database = load_dataset(dataset, "database", data_dir=data_dir)
    queries = load_dataset(dataset, "queries", data_dir=data_dir)
    mconf = model_config or ModelConfig(input=database.spec)
    tconf = train_config or default_train_config(mconf.arch, epochs=epochs)
    log.info("training %s on %d %s images", mconf.arch, len(database), dataset)
    result = train_autoencoder(database.images, mconf, tconf, progress=progress)
    tconf = result.train
    model = save_model(root / "model", result.model, tconf, result.history)
    figures.save(figures.loss_curves(result.history, result.history.get("best_epoch")),
                 root / "model" / "loss.png")
    log.info("indexing %d images", len(database))
    collection = Collection.create(root / "collection", model, database, overwrite=True,
                                   progress=progress)
    log.info("evaluating model and pixel baseline")
    full = {
        "model": evaluate(root / "collection", dataset, queries=queries, database=database),
        "pixels": evaluate("pixels", dataset, queries=queries, database=database),
    }
    scores = {name: {k: round(float(m[k]), 4) for k in METRIC_KEYS} for name, m in full.items()}
    curves: dict[str, Any] = {name: m["LRAP@n"] for name, m in full.items() if "LRAP@n" in m}
    metrics_path = atomic_write_json(root / "metrics.json", scores)
    atomic_write_json(root / "metrics_full.json", full)
    seconds = time.perf_counter() - start
    report_path = write_report(
        root / "report.html",
        title=f"lookalike on {dataset}",
        metrics=scores,
        figures=report_figures(model, collection, queries, curves),
        info={"dataset": dataset, "database / queries": f"{len(database)} / {len(queries)}",
              "model": f"{mconf.arch}, code {result.model.code_dim}-d, {tconf.epochs} epochs, "
                       f"objective {tconf.objective}, ranking {model.retrieval.rerank}",
              "training time": f"{result.history['seconds']:.1f} s",
              "demo wall time (before the report)": f"{seconds:.1f} s"},
        notes=["Figures use the protocol of docs/protocol.md: exact Euclidean ranking of "
               "the whole database, labels used only to score."],
    )
    return DemoResult(root, root / "model", root / "collection", metrics_path, report_path,
                      time.perf_counter() - start, scores)
