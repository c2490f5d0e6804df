from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import label_ranking_average_precision_score, pairwise_distances

from lookalike.search.metrics import (
    average_precision,
    lrap_at,
    precision_at,
    ranked_blocks,
    recall_at_k,
    retrieval_metrics,
)


@pytest.fixture(scope="module")
def digits_features() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32) + np.random.default_rng(0).normal(0, 1e-3, x.shape).astype(np.float32)
    return x[:300], y[:300], x[300:], y[300:]


def test_map_equals_sklearn_lrap_over_full_ranking(digits_features) -> None:
    q, ql, db, dl = digits_features
    got = retrieval_metrics(q, ql, db, dl, ks=(1,))["mAP"]
    y_true = (ql[:, None] == dl[None, :]).astype(int)
    y_score = -pairwise_distances(q, db, metric="sqeuclidean")
    want = label_ranking_average_precision_score(y_true, y_score)
    # float32 distances (as in search) may order a few near-ties differently from float64
    assert got == pytest.approx(want, abs=1e-5)


def test_precision_at_k_by_hand() -> None:
    rel = np.array([[1, 0, 1, 1], [0, 0, 0, 1]], dtype=bool)
    assert precision_at(rel, 1).tolist() == [1.0, 0.0]
    assert precision_at(rel, 4).tolist() == [0.75, 0.25]
    ap = average_precision(rel)
    assert ap[0] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert ap[1] == pytest.approx(1 / 4)


def test_query_without_relevant_items_scores_zero_not_one() -> None:
    rel = np.array([[0, 0, 0, 0], [0, 1, 0, 0]], dtype=bool)
    assert average_precision(rel).tolist() == [0.0, 0.5]
    # the articles' bug: sklearn's LRAP gives 1.0 to a query with no relevant result
    assert label_ranking_average_precision_score(np.zeros((1, 4)), np.arange(4)[None]) == 1.0
    assert lrap_at(rel, 1).tolist() == [0.0, 0.0]


def test_lrap_at_n_is_lrap_of_the_cut_list() -> None:
    rel = np.array([[0, 1, 1, 0, 1]], dtype=bool)
    # first 3 results: relevant at ranks 2 and 3 -> (1/2 + 2/3) / 2
    assert lrap_at(rel, 3)[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    scores = np.array([[5, 4, 3]])  # sklearn agrees on a list with at least one hit
    assert lrap_at(rel, 3)[0] == pytest.approx(
        label_ranking_average_precision_score(rel[:, :3].astype(int), scores))


def test_ranked_blocks_matches_argsort_and_exclusion() -> None:
    rng = np.random.default_rng(1)
    q, db = rng.normal(size=(7, 5)), rng.normal(size=(20, 5))
    exclude = np.array([3, -1, 0, -1, -1, -1, 19])
    orders = np.concatenate([o for _, o in ranked_blocks(q, db, block=3, exclude=exclude)])
    d = ((q[:, None] - db[None]) ** 2).sum(-1)
    for r in range(7):
        want = np.argsort(d[r], kind="stable")
        if exclude[r] >= 0:
            want = np.concatenate([want[want != exclude[r]], [exclude[r]]])
        assert orders[r].tolist() == want.tolist()


def test_perfect_features_give_map_one() -> None:
    labels = np.repeat(np.arange(4), 10)
    feats = np.eye(4, dtype=np.float32)[labels]
    m = retrieval_metrics(feats, labels, feats + 0.01, labels, ks=(1, 10), lrap_ns=(5,))
    assert m["mAP"] == pytest.approx(1.0)
    assert m["P@10"] == pytest.approx(1.0)
    assert m["LRAP@n"]["value"] == [pytest.approx(1.0)]


def test_recall_at_k() -> None:
    exact = np.array([[1, 2, 3], [4, 5, -1]])
    assert recall_at_k(exact, exact) == 1.0
    assert recall_at_k(np.array([[1, 9, 8], [4, -1, -1]]), exact) == pytest.approx(2 / 5)
