from __future__ import annotations

import numpy as np
import pytest

from lookalike.config import DiffusionConfig
from lookalike.errors import LookalikeError
from lookalike.search.evaluation import evaluate_features
from lookalike.search.rerank import Diffusion


@pytest.fixture(scope="module")
def rings() -> tuple[np.ndarray, np.ndarray]:
    """Two concentric noisy circles in 3-d: a manifold where Euclidean ranking mixes the
    classes near the inner ring and diffusion follows each ring."""
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 2 * np.pi, 600)
    radius = np.where(np.arange(600) < 300, 1.0, 1.6)
    x = np.stack([radius * np.cos(t), radius * np.sin(t), np.full(600, 3.0)], 1)
    x += rng.normal(0, 0.05, x.shape)
    return x.astype(np.float32), (np.arange(600) >= 300).astype(np.int64)


def test_ranks_a_permutation_of_the_database(rings) -> None:
    x, _ = rings
    d = Diffusion(x[:500])
    scores, rows = d.search(x[500:520], k=500)
    for r in rows:  # k = database size: every item exactly once, whatever the order
        assert sorted(r.tolist()) == list(range(500))
    assert (np.diff(scores, axis=1) <= 1e-7).all()


def test_diffusion_beats_euclidean_on_a_manifold(rings) -> None:
    x, y = rings
    db, q = x[::2], x[1::2]
    plain = evaluate_features(q, y[1::2], db, y[::2], lrap_ns=())
    diffused = evaluate_features(q, y[1::2], db, y[::2], lrap_ns=(), diffusion=Diffusion(db))
    assert diffused["mAP"] > plain["mAP"] + 0.1
    assert diffused["mAP"] > 0.9


def test_exclude_and_stored_graph_give_same_results(rings) -> None:
    x, _ = rings
    d = Diffusion(x)
    s1, r1 = d.search(x[:5], 7, exclude=np.arange(5))
    assert all(i not in row for i, row in enumerate(r1))
    again = Diffusion(x, neighbours=d.neighbours())
    s2, r2 = again.search(x[:5], 7, exclude=np.arange(5))
    assert (r1 == r2).all() and np.allclose(s1, s2)
    sims, ids = d.neighbours()
    assert ids.shape == (600, 15) and not (ids == np.arange(600)[:, None]).any()


def test_tiny_database_and_bad_config() -> None:
    d = Diffusion(np.eye(2, 4, dtype=np.float32))
    _, rows = d.search(np.eye(1, 4, dtype=np.float32), 5)
    assert rows[0, :2].tolist() == [0, 1] and rows[0, 2:].tolist() == [-1, -1, -1]
    with pytest.raises(LookalikeError):
        DiffusionConfig(alpha=1.0)
    with pytest.raises(LookalikeError):
        d.search(np.eye(1, 4, dtype=np.float32), 0)


def test_whitening_evens_out_dominant_nuisance_directions() -> None:
    """Three classes told apart in 8 weak dimensions, plus 4 strong directions that vary
    at random (like brightness or size): they decide most cosines, and square-root
    whitening fitted on the database turns them down."""
    rng = np.random.default_rng(1)
    n, y = 1500, rng.integers(0, 3, 1500)
    centres = rng.normal(0, 1.0, (3, 8))
    x = np.concatenate([rng.normal(0, 4.0, (n, 4)),
                        centres[y] + rng.normal(0, 0.7, (n, 8))], 1).astype(np.float32)
    db, q, ydb, yq = x[:1200], x[1200:], y[:1200], y[1200:]
    plain = evaluate_features(q, yq, db, ydb, lrap_ns=(),
                              diffusion=Diffusion(db, DiffusionConfig(whiten=0.0)))
    whitened = evaluate_features(q, yq, db, ydb, lrap_ns=(),
                                 diffusion=Diffusion(db, DiffusionConfig(whiten=0.5)))
    assert whitened["P@10"] > plain["P@10"] + 0.1
    assert whitened["mAP"] > plain["mAP"] + 0.03


def test_whitening_config_and_degenerate_databases() -> None:
    assert DiffusionConfig().whiten == 0.5
    # a retrieval config saved before whitening existed keeps its meaning (and stored graph)
    assert DiffusionConfig.from_dict({"k": 15}).whiten == 0.0
    assert DiffusionConfig.from_dict(DiffusionConfig().to_dict()) == DiffusionConfig()
    with pytest.raises(LookalikeError):
        DiffusionConfig(whiten=1.5)
    same = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (10, 1))  # nothing to whiten
    _, rows = Diffusion(same).search(same[:1], 10)
    assert sorted(rows[0].tolist()) == list(range(10))
    few = np.random.default_rng(0).normal(size=(6, 32)).astype(np.float32)  # n << d
    _, rows = Diffusion(few).search(few, 1)
    assert rows[:, 0].tolist() == list(range(6))  # each code still finds itself first


def _cosine_first(db: np.ndarray, q: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    dn = db / np.linalg.norm(db, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qn @ dn.T
    if exclude is not None:
        sims[np.arange(len(q)), exclude] = -np.inf
    return np.argmax(sims, axis=1)


def test_keep_puts_the_exact_nearest_first_and_diffusion_orders_the_rest(rings) -> None:
    x, y = rings
    db, q = x[::2], x[1::2]
    first = _cosine_first(db, q)
    free = Diffusion(db, DiffusionConfig(keep=0)).search(q, 10)[1]
    kept = Diffusion(db, DiffusionConfig(keep=1)).search(q, 10)[1]
    assert (free[:, 0] != first).sum() > 10  # pure diffusion moves the nearest item down...
    assert (kept[:, 0] == first).all()  # ...keep=1 never does
    assert (kept[:, 1:] != first[:, None]).all()  # and it is not repeated
    plain = evaluate_features(q, y[1::2], db, y[::2], lrap_ns=())
    diffused = evaluate_features(q, y[1::2], db, y[::2], lrap_ns=(),
                                 diffusion=Diffusion(db, DiffusionConfig(keep=1)))
    assert diffused["P@1"] == plain["P@1"]  # keep=1 keeps P@1 exactly
    assert diffused["mAP"] > plain["mAP"] + 0.1  # and still re-ranks the tail
    # a stored item as the query: itself is excluded, the next nearest is kept first
    ex = np.arange(5)
    rows = Diffusion(x, DiffusionConfig(keep=1)).search(x[:5], 3, exclude=ex)[1]
    assert (rows[:, 0] == _cosine_first(x, x[:5], ex)).all()


def test_blend_only_breaks_near_ties(rings) -> None:
    x, _ = rings
    db, q = x[::2], x[1::2]
    tiny = Diffusion(db, DiffusionConfig(keep=0, blend=1e-6)).search(q, 20)[1]
    dn = db / np.linalg.norm(db, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    exact = np.argsort(-(qn @ dn.T), axis=1, kind="stable")[:, :20]
    assert (tiny[:, :5] == exact[:, :5]).mean() > 0.95  # a vanishing blend: the cosine order
    strong = Diffusion(db, DiffusionConfig(keep=0, blend=5.0)).search(q, 20)[1]
    assert (strong[:, :5] != exact[:, :5]).mean() > 0.2  # a strong one re-ranks
    with pytest.raises(LookalikeError, match="blend"):
        DiffusionConfig(blend=-1)
    with pytest.raises(LookalikeError, match="keep"):
        DiffusionConfig(keep=-1)
    old = DiffusionConfig.from_dict({"k": 15, "whiten": 0.5})  # saved before keep existed
    assert old.keep == 0 and old.blend == 0
