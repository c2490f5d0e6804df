"""Scoring retrieval on a labelled dataset with the protocol of docs/protocol.md:
the dataset's query split against its database split, exact Euclidean ranking of the
whole database, labels used only to score.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..data.datasets import Dataset, load_dataset
from ..errors import DataError, LookalikeError
from ..models.encoders import ModelEncoder, PixelEncoder, encode_dataset
from ..models.modelio import is_model_dir, load_model
from .collection import Collection
from .metrics import ranking_metrics, retrieval_metrics
from .rerank import Diffusion

#: The n of the LRAP@n curve (the articles plot n up to a few hundred).
DEFAULT_LRAP_NS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)


def _require_labels(ds: Dataset) -> np.ndarray:
    if ds.labels is None:
        raise DataError(f"{ds.name} ({ds.split}) has no labels, so retrieval cannot be scored")
    return ds.labels


def evaluate_features(q: np.ndarray, q_labels: np.ndarray, db: np.ndarray,
                      db_labels: np.ndarray, lrap_ns: Sequence[int] = DEFAULT_LRAP_NS,
                      diffusion: Diffusion | None = None, block: int = 256,
                      progress: bool = False) -> dict[str, Any]:
    """The protocol's metrics (mAP, P@1/10/100, LRAP@n) for codes ``q`` against ``db``:
    exact Euclidean ranking, or the ranking of ``diffusion`` (fitted on ``db``)."""
    ns = [n for n in lrap_ns if n <= len(db)]
    if diffusion is None:
        return retrieval_metrics(q, q_labels, db, db_labels, ks=(1, 10, 100), lrap_ns=ns)

    def rankings() -> Iterator[tuple[slice, np.ndarray]]:
        starts = range(0, len(q), block)
        for start in tqdm(starts, desc="ranking", unit="block", disable=not progress):
            rows = slice(start, min(start + block, len(q)))
            yield rows, np.argsort(-diffusion.scores(q[rows]), axis=1, kind="stable")

    return ranking_metrics(rankings(), q_labels, db_labels, ks=(1, 10, 100), lrap_ns=ns)


def evaluate(target: str | os.PathLike[str], dataset: str, *, data_dir: str | None = None,
             lrap_ns: Sequence[int] = DEFAULT_LRAP_NS, progress: bool = False,
             queries: Dataset | None = None, database: Dataset | None = None,
             rerank: bool | None = None) -> dict[str, Any]:
    """Score ``target`` on ``dataset``.

    ``target`` is ``"pixels"`` (the raw-pixel baseline), a model directory (encodes the
    database and query splits), or a collection (its stored codes are the database;
    the queries are encoded with its model). Already-loaded splits may be passed in.
    ``rerank`` (default: the model's retrieval config) ranks by diffusion; ``False``
    gives the exact Euclidean ranking of the codes.
    """
    diffusion: Diffusion | None = None
    queries = queries or load_dataset(dataset, "queries", data_dir=data_dir)
    name = os.fspath(target)
    q_labels = _require_labels(queries)
    if name == "pixels" or is_model_dir(name):
        database = database or load_dataset(dataset, "database", data_dir=data_dir)
        db_labels = _require_labels(database)
        model = None if name == "pixels" else load_model(name)
        encoder: PixelEncoder | ModelEncoder = (
            PixelEncoder(database.spec) if model is None else ModelEncoder(model))
        db = encode_dataset(encoder, database, progress=progress)
        q = encode_dataset(encoder, queries, progress=progress)
        if model is not None and (model.retrieval.rerank == "diffusion" if rerank is None
                                  else rerank):
            diffusion = Diffusion(db, model.retrieval.diffusion)
    elif (Path(name) / "manifest.json").is_file():
        coll = Collection.open(name)
        db = np.asarray(coll.embeddings)
        db_labels = coll.labels()
        if np.any(db_labels < 0):
            raise DataError(f"collection {name} has unlabelled items, so it cannot be scored")
        q = encode_dataset(coll.encoder, queries, progress=progress)
        if coll.reranks if rerank is None else rerank:
            diffusion = coll.diffusion
    else:
        raise LookalikeError(
            f"{name!r} is neither 'pixels', a model directory nor a collection directory")
    return evaluate_features(q, q_labels, db, db_labels, lrap_ns, diffusion, progress=progress)
