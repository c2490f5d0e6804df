"""A collection's K-means clustering on disk: ``clusters.npz`` (``centroids``,
``assignment``, ``ids``, ``inertia``), read without pickle."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CollectionError
from ..fsutil import atomic_write
from .clustering import Clustering

FILE = "clusters.npz"


def save_clustering(directory: str | os.PathLike[str], clustering: Clustering) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, centroids=clustering.centroids, assignment=clustering.assignment,
                     inertia=np.float64(clustering.inertia))

    return atomic_write(Path(directory) / FILE, write)


def load_clustering(directory: str | os.PathLike[str]) -> Clustering:
    path = Path(directory) / FILE
    if not path.is_file():
        raise CollectionError(f"{directory} has no clustering; run 'lookalike cluster' first")
    try:
        with np.load(path, allow_pickle=False) as z:
            return Clustering(z["centroids"], z["assignment"], float(z["inertia"]))
    except (OSError, ValueError, KeyError) as exc:
        raise CollectionError(f"{path} is damaged ({type(exc).__name__}); rerun 'lookalike "
                              "cluster'") from None
