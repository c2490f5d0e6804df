from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import Trained
from lookalike.config import InputSpec, ModelConfig, TrainConfig
from lookalike.data.datasets import load_dataset
from lookalike.errors import CollectionError
from lookalike.models.modelio import save_model
from lookalike.models.training import train_autoencoder
from lookalike.search.collection import Collection


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory):
    db = load_dataset("digits", "database")
    res = train_autoencoder(db.images, ModelConfig(arch="conv-16-8-8", input=InputSpec(1, 8, 8)),
                            TrainConfig(epochs=2, batch_size=64))
    root = tmp_path_factory.mktemp("coll")
    model = save_model(root / "model", res.model)
    coll = Collection.create(root / "c", model, db)
    return model, db, coll, root


def test_layout_and_metadata(model_and_data) -> None:
    model, db, coll, root = model_and_data
    names = {p.name for p in (root / "c").iterdir()}
    assert {"manifest.json", "metadata.sqlite", "segments", "model"} <= names
    assert {p.name for p in (root / "c" / "segments").iterdir()} == {
        f"000000.{part}" for part in ("ids.npy", "codes.npy", "pictures.bin", "offsets.npy", "faiss")}
    manifest = json.loads((root / "c" / "manifest.json").read_text())
    assert manifest["count"] == len(db) and manifest["dim"] == 8
    assert manifest["model"]["fingerprint"] == model.fingerprint
    assert manifest["dataset"] == {"name": "digits", "split": "database"}
    with sqlite3.connect(root / "c" / "metadata.sqlite") as con:
        rows = con.execute("SELECT id, source, label FROM items ORDER BY id LIMIT 2").fetchall()
    con.close()
    assert rows[0] == (0, db.sources[0], int(db.labels[0]))
    assert (coll.labels() == db.labels).all()
    assert not list((root).glob(".c.*")), "no temporary directory left behind"


def test_search_matches_exact_and_excludes_self(model_and_data) -> None:
    _, db, coll, _ = model_and_data
    emb = np.asarray(coll.embeddings)
    d, i = coll.search_ids([0, 5], 4)
    assert 0 not in i[0] and 5 not in i[1]
    full = ((emb[[0, 5], None] - emb[None]) ** 2).sum(-1)
    for r, q in enumerate([0, 5]):
        order = [j for j in np.argsort(full[r], kind="stable") if j != q][:4]
        assert np.allclose(np.sort(full[r][order]), d[r], atol=1e-4)
    # an image equal to a stored one does not find itself
    d2, i2 = coll.search_images(db.images[7:8], 3)
    assert 7 not in i2[0]
    # reopening gives the same answers
    again = Collection.open(coll.path)
    assert (again.search_ids([0, 5], 4)[1] == i).all()


def test_other_model_refused(model_and_data, tmp_path) -> None:
    _, db, coll, _ = model_and_data
    res = train_autoencoder(db.images[:100], ModelConfig(arch="conv-16-8-8", input=InputSpec(1, 8, 8)),
                            TrainConfig(epochs=1, seed=9))
    other = save_model(tmp_path / "other", res.model)
    with pytest.raises(CollectionError, match="another model"):
        Collection.open(coll.path, model_dir=other.path)


def test_existing_path_refused_and_damage_detected(model_and_data, tmp_path) -> None:
    model, db, coll, _ = model_and_data
    with pytest.raises(CollectionError, match="already exists"):
        Collection.create(coll.path, model, db)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(coll.path, copy)
    index = copy / "segments" / "000000.faiss"
    index.write_bytes(index.read_bytes()[:50])
    with pytest.raises(CollectionError, match="000000.faiss"):
        Collection.open(copy)
    (copy / "segments" / "000000.ids.npy").unlink()
    with pytest.raises(CollectionError, match="000000.ids.npy"):
        Collection.open(copy)
    with pytest.raises(CollectionError, match="not a lookalike collection"):
        Collection.open(tmp_path)


def test_reranked_collection(tmp_path) -> None:
    from lookalike.config import default_train_config

    db = load_dataset("digits", "database")
    spec = InputSpec(1, 8, 8)
    res = train_autoencoder(db.images, ModelConfig(arch="contrastive", input=spec),
                            default_train_config("contrastive", epochs=2))
    model = save_model(tmp_path / "m", res.model)
    assert model.retrieval.rerank == "diffusion"
    coll = Collection.create(tmp_path / "c", model, db)
    assert coll.reranks and coll.files == {"whitening": "whitening.npy"}
    assert coll.manifest["whitened_on"] == len(coll)
    n = len(coll)
    # re-ranking reorders, it never changes the set of ids for k = database size
    _, reranked = coll.search_ids([3], n)
    _, exact = coll.search_ids([3], n, rerank=False)
    assert sorted(reranked[0][reranked[0] >= 0].tolist()) == sorted(
        exact[0][exact[0] >= 0].tolist())
    assert 3 not in reranked[0] and (reranked[0] >= 0).sum() == n - 1
    d, _ = coll.search_ids([3], 10)
    assert (np.diff(d[0]) >= 0).all()
    reopened = Collection.open(tmp_path / "c")
    assert (reopened.search_ids([3], 10)[1] == coll.search_ids([3], 10)[1]).all()
    # a search re-ranks the index's nearest candidates: better neighbours than the index's
    assert n > coll.retrieval.diffusion.candidates
    probe = coll.ids[::7]
    labels = dict(zip(coll.ids.tolist(), coll.labels().tolist(), strict=True))

    def precision(found: np.ndarray) -> float:
        return float(np.mean([[labels[int(i)] == labels[int(q)] for i in row]
                              for q, row in zip(probe, found, strict=True)]))

    _, reranked = coll.search_ids(probe, 10)
    _, exact = coll.search_ids(probe, 10, rerank=False)
    _, wide = coll.search_ids(probe, coll.retrieval.diffusion.candidates, rerank=False)
    assert precision(reranked) > precision(exact) + 0.01, (precision(reranked), precision(exact))
    assert all(np.isin(r, w).all() for r, w in zip(reranked, wide, strict=True))


def test_reranking_commits_write_no_graph(tmp_path: Path, trained: Trained) -> None:
    """A change to a re-ranking collection writes its segment and nothing the size of the
    collection: the whitening is fitted again only when the collection doubles or halves."""
    path = tmp_path / "c"
    shutil.copytree(trained.collection, path)
    coll = Collection.open(path)
    n, fit = len(coll), coll.files["whitening"]
    extra = load_dataset("digits", "queries").images
    coll.add(extra[:20], [f"x{i}" for i in range(20)])
    assert coll.files["whitening"] == fit and coll.manifest["whitened_on"] == n
    assert set(coll.files) == {"whitening"}
    coll.remove(coll.ids[: n // 3].tolist())
    assert coll.files["whitening"] == fit
    coll.remove(coll.ids[: len(coll) - n // 2 + 1].tolist())  # below half: fitted again
    assert coll.files["whitening"] != fit and coll.manifest["whitened_on"] == len(coll)
    assert not (path / fit).exists()
    again = Collection.open(path, verify=True)
    w = again.whitening
    assert w is not None and w[1].shape == (again.dim, again.dim)
    assert (again.search_ids(again.ids[:3], 5)[1] == coll.search_ids(coll.ids[:3], 5)[1]).all()


def test_add_and_remove_persist_and_are_searchable(tmp_path) -> None:
    db = load_dataset("digits", "database")
    res = train_autoencoder(db.images[:300], ModelConfig(arch="conv-16-8-8", input=InputSpec(1, 8, 8)),
                            TrainConfig(epochs=1))
    model = save_model(tmp_path / "m", res.model)
    coll = Collection.create(tmp_path / "c", model, db.subset(np.arange(200), "database"))
    extra = load_dataset("digits", "queries")
    new = coll.add(extra.images[:5], [f"q{i}" for i in range(5)], extra.labels[:5])
    assert new.tolist() == list(range(200, 205)) and len(coll) == 205
    again = coll.add(extra.images[:2], ["dup0", "dup1"])  # same pixels: not added twice
    assert again.tolist() == [200, 201] and len(coll) == 205
    near = extra.images[:1] // 2 * 2  # a near copy (odd grey levels moved by one) finds it
    assert not np.array_equal(near, extra.images[:1])  # (not the stored pixels, not excluded)
    dist, hits = coll.search_images(near, 2)
    assert hits[0].tolist()[0] == 200 and dist[0, 0] < dist[0, 1], (hits, dist)
    assert coll.remove([3, 201, 999]) == 2
    reopened = Collection.open(tmp_path / "c")
    assert len(reopened) == 203 and 3 not in reopened.ids and 204 in reopened.ids
    assert reopened.items([204])[0].source == "q4"
    assert reopened.labels([204])[0] == extra.labels[4]
    _, ids = reopened.search_ids(reopened.ids, 203)
    assert not np.isin([3, 201], ids).any()
    assert np.array_equal(reopened.image(204), extra.images[4])
    # only the current generation's files remain
    names = {p.name for p in (tmp_path / "c" / "segments").iterdir()}
    listed = {f for s in reopened.store.segments for f in s.files.values()}
    assert {f"segments/{n}" for n in names} == listed


def test_ids_never_reused_and_removing_everything(tmp_path) -> None:
    from lookalike.config import default_train_config

    db = load_dataset("digits", "database")
    res = train_autoencoder(db.images[:100], ModelConfig(arch="contrastive", input=InputSpec(1, 8, 8)),
                            default_train_config("contrastive", epochs=1))
    model = save_model(tmp_path / "m", res.model)
    coll = Collection.create(tmp_path / "c", model, db.subset(np.arange(20), "database"))
    assert coll.remove([19]) == 1
    new = coll.add(db.images[50:51], ["x"])
    assert new.tolist() == [20]  # not 19 again
    assert coll.remove(coll.ids) == 20 and len(coll) == 0
    reopened = Collection.open(tmp_path / "c")
    assert len(reopened) == 0
    d, i = reopened.search_images(db.images[:1], 3)
    assert (i == -1).all()
    assert reopened.add(db.images[60:61], ["y"]).tolist() == [21]
