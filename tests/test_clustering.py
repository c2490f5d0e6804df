from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import CollectionError, LookalikeError
from lookalike.search.clustering import choose_k, elbow_curve, fit_kmeans, search_in_cluster
from lookalike.search.clusterstore import load_clustering, save_clustering
from lookalike.search.metrics import recall_at_k


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(n_samples=600, centers=4, n_features=8, cluster_std=0.5, random_state=0)
    return x.astype(np.float32)


def test_elbow_finds_true_k(blobs) -> None:
    ks = list(range(2, 10))
    inertias = elbow_curve(blobs, ks)
    assert (np.diff(inertias) < 0).all()
    assert choose_k(ks, inertias) == 4


def test_in_cluster_search_on_separated_blobs_equals_exact(blobs, tmp_path) -> None:
    c = fit_kmeans(blobs, 4)
    ids = np.arange(len(blobs), dtype=np.int64) + 100
    q = blobs[:50]
    _, approx = search_in_cluster(q, blobs, ids, c, 10, exclude=ids[:50])
    d = ((q[:, None] - blobs[None]) ** 2).sum(-1)
    d[np.arange(50), np.arange(50)] = np.inf
    exact = ids[np.argsort(d, axis=1)[:, :10]]
    assert recall_at_k(approx, exact) == 1.0
    save_clustering(tmp_path, c)
    back = load_clustering(tmp_path)
    assert (back.assignment == c.assignment).all() and back.k == 4


def test_in_cluster_pads_small_clusters_and_errors(tmp_path) -> None:
    x = np.array([[0, 0], [0, 1], [10, 10]], dtype=np.float32)
    c = fit_kmeans(x, 2)
    d, i = search_in_cluster(np.array([[10, 10.5]], np.float32), x, np.arange(3), c, 3)
    assert i[0].tolist() == [2, -1, -1] and np.isinf(d[0, 1:]).all()
    with pytest.raises(LookalikeError):
        fit_kmeans(x, 5)
    with pytest.raises(CollectionError, match="cluster"):
        load_clustering(tmp_path)
