"""Scoring retrieval on a labelled dataset with the protocol of ``shared/BENCHMARKS.md``:
the dataset's query split against its database split, exact Euclidean ranking of the
whole database, labels used only to score.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .collection import Collection
from .datasets import Dataset, load_dataset
from .encoders import ModelEncoder, PixelEncoder
from .errors import DataError, LookalikeError
from .metrics import retrieval_metrics
from .modelio import is_model_dir, load_model

#: The n of the LRAP@n curve (the articles plot n up to a few hundred).
DEFAULT_LRAP_NS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)


def _require_labels(ds: Dataset) -> np.ndarray:
    if ds.labels is None:
        raise DataError(f"{ds.name} ({ds.split}) has no labels, so retrieval cannot be scored")
    return ds.labels


def evaluate_features(q: np.ndarray, q_labels: np.ndarray, db: np.ndarray,
                      db_labels: np.ndarray, lrap_ns: Sequence[int] = DEFAULT_LRAP_NS
                      ) -> dict[str, Any]:
    """:func:`metrics.retrieval_metrics` with the protocol's P@1/10/100."""
    ns = [n for n in lrap_ns if n <= len(db)]
    return retrieval_metrics(q, q_labels, db, db_labels, ks=(1, 10, 100), lrap_ns=ns)


def evaluate(target: str | os.PathLike[str], dataset: str, *, data_dir: str | None = None,
             lrap_ns: Sequence[int] = DEFAULT_LRAP_NS, progress: bool = False,
             queries: Dataset | None = None, database: Dataset | None = None
             ) -> dict[str, Any]:
    """Score ``target`` on ``dataset``.

    ``target`` is ``"pixels"`` (the raw-pixel baseline), a model directory (encodes the
    database and query splits), or a collection (its stored codes are the database;
    the queries are encoded with its model). Already-loaded splits may be passed in.
    """
    queries = queries or load_dataset(dataset, "queries", data_dir=data_dir)
    name = os.fspath(target)
    q_labels = _require_labels(queries)
    if name == "pixels" or is_model_dir(name):
        database = database or load_dataset(dataset, "database", data_dir=data_dir)
        db_labels = _require_labels(database)
        encoder: PixelEncoder | ModelEncoder = (
            PixelEncoder(database.spec) if name == "pixels" else ModelEncoder(load_model(name)))
        db = encoder.encode(database.images, progress=progress)
        q = encoder.encode(queries.images, progress=progress)
    elif (Path(name) / "manifest.json").is_file():
        coll = Collection.open(name)
        db = np.asarray(coll.embeddings)
        db_labels = coll.labels()
        if np.any(db_labels < 0):
            raise DataError(f"collection {name} has unlabelled items, so it cannot be scored")
        q = coll.encoder.encode(queries.images, progress=progress)
    else:
        raise LookalikeError(
            f"{name!r} is neither 'pixels', a model directory nor a collection directory")
    return evaluate_features(q, q_labels, db, db_labels, lrap_ns)
