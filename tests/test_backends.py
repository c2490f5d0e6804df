from __future__ import annotations

import numpy as np
import pytest

from lookalike.errors import CollectionError, LookalikeError
from lookalike.search.backends import FaissBackend, new_backend, open_backend


def _exact(q: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    d = ((q[:, None] - x[None]) ** 2).sum(-1)
    return ids[np.argsort(d, axis=1, kind="stable")[:, :k]]


def test_flat_matches_exact_search_with_our_ids(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 16)).astype(np.float32)
    ids = rng.permutation(10_000)[:200].astype(np.int64)
    b = new_backend("faiss", 16)
    b.add(ids, x)
    q = rng.normal(size=(9, 16)).astype(np.float32)
    d, i = b.search(q, 5)
    assert i.dtype == np.int64 and d.dtype == np.float32 and i.shape == (9, 5)
    assert (i == _exact(q, x, ids, 5)).all()
    assert (np.diff(d, axis=1) >= 0).all()
    b.save(tmp_path)
    again = open_backend(tmp_path, b.settings(), 16)
    assert (again.search(q, 5)[1] == i).all()


def test_remove_and_padding() -> None:
    b = FaissBackend(4)
    b.add(np.arange(3), np.eye(3, 4, dtype=np.float32))
    assert b.remove(np.array([1])) == 1 and len(b) == 2
    d, i = b.search(np.zeros((1, 4), np.float32), 5)
    assert sorted(i[0, :2].tolist()) == [0, 2]
    assert i[0, 2:].tolist() == [-1, -1, -1] and np.isinf(d[0, 2:]).all()


def test_errors(tmp_path) -> None:
    b = FaissBackend(4)
    with pytest.raises(LookalikeError, match="shape"):
        b.add(np.arange(2), np.zeros((2, 3), np.float32))
    with pytest.raises(LookalikeError, match="positive"):
        b.search(np.zeros((1, 4), np.float32), 0)
    with pytest.raises(LookalikeError, match="factory"):
        FaissBackend(4, "NotAnIndex")
    (tmp_path / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(CollectionError, match="damaged"):
        open_backend(tmp_path, {"name": "faiss"}, 4)
