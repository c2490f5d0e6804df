"""The service's filters, richer queries and original files (lookalike/app/richsearch.py),
through the HTTP API on a photo library of real JPEGs with EXIF."""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import Trained
from lookalike.app.security import Access
from lookalike.app.service import create_app
from lookalike.search import queries
from lookalike.search.collection import Collection
from photolib import make_library

TOKEN = "richsearch-test-token-0123456789"


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Path:
    return make_library(tmp_path_factory.mktemp("library"), trained.model)


@pytest.fixture()
def client(library: Path, torch_one_thread: None) -> Iterator[TestClient]:
    with TestClient(create_app(library / "coll")) as c:
        yield c


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def _upload(client: TestClient, image: np.ndarray, params: dict | None = None, **fields: str) -> dict:
    r = client.post("/api/search", params=params, files={"file": ("q.png", _png(image), "image/png")},
                    data={"k": "30", **fields})
    assert r.status_code == 200, r.text
    return r.json()


def _ids(answer: dict) -> list[int]:
    return [r["id"] for r in answer["results"]]


def _picture(library: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(library / "photos" / name).convert("RGB"))


def test_filters_are_query_parameters(client: TestClient, library: Path) -> None:
    q = _picture(library, "home/h0.jpg")
    answer = _upload(client, q, {"in": ["trips/*"], "camera": "canon", "has_gps": "true"})
    assert answer["filter"] == {"paths": ["trips/*"], "camera": "canon", "has_gps": True}
    assert len(answer["results"]) == 6
    for r in answer["results"]:
        assert "/trips/2024/" in r["path"] and r["name"] == Path(r["path"]).name
        assert r["taken"].startswith("2024-0") and r["original_url"] == f"/api/items/{r['id']}/original"
    old = _upload(client, q, {"after": "2019-06", "before": "2019-07"})
    assert {Path(r["path"]).parent.name for r in old["results"]} == {"old"} and len(old["results"]) == 6
    assert old["results"][0]["taken"].startswith("2019-06")  # (the file's time: no EXIF date)
    by_id = client.post("/api/search", params={"label": "home"}, json={"id": 0, "k": 30}).json()
    coll = Collection.open(library / "coll")
    in_home = coll.labels([0])[0] == (coll.label_names or []).index("home")
    assert len(by_id["results"]) == 6 - in_home
    assert {r["label_name"] for r in by_id["results"]} == {"home"}
    for params, message in (({"after": "2024-99"}, "bad date"), ({"label": "nope"}, "no label named"),
                            ({"has_gps": "maybe"}, "has_gps"), ({"in": "trips/["}, "'trips/['")):
        r = client.post("/api/search", params=params, json={"id": 0})
        assert r.status_code in (400, 422) and message in r.json()["detail"], r.text
    schema = client.get("/openapi.json").json()["paths"]["/api/search"]["post"]["parameters"]
    assert {p["name"] for p in schema} == {"in", "after", "before", "label", "camera", "has_gps"}


def test_more_like_and_less_like_by_id(client: TestClient, library: Path) -> None:
    coll = Collection.open(library / "coll")
    a, b, c = 1, 2, 3
    answer = client.post("/api/search", json={"id": a, "like": [b], "unlike": [c], "k": 8,
                                              "rerank": False}).json()
    assert answer["like"] == [b] and answer["unlike"] == [c]
    query = queries.combine(np.stack([coll.vector(a), coll.vector(b)]), coll.vector(c)[None])
    _, near = coll.search(query[None], 11, rerank=False)
    assert _ids(answer) == [i for i in near[0] if i not in (a, b, c)][:8]
    assert not {a, b, c} & set(_ids(answer))
    # a counter-example alone moves the query too
    alone = client.post("/api/search", json={"id": a, "unlike": [c], "k": 8, "rerank": False}).json()
    query = queries.combine(coll.vector(a)[None], coll.vector(c)[None])
    _, near = coll.search(query[None], 10, rerank=False)
    assert _ids(alone) == [i for i in near[0] if i not in (a, c)][:8]
    plain = client.post("/api/search", json={"id": a, "k": 8, "rerank": False}).json()
    assert _ids(alone) != _ids(plain)
    r = client.post("/api/search", json={"id": a, "like": [10_000]})
    assert r.status_code == 404 and "no item with id 10000" in r.json()["detail"]


def test_a_region_of_an_upload_and_of_an_original(client: TestClient, library: Path) -> None:
    t0 = _picture(library, "trips/2024/t0.jpg")
    noise = np.random.default_rng(3).integers(0, 255, t0.shape, dtype=np.uint8)
    both = np.concatenate([t0, noise], axis=1)
    whole = _ids(_upload(client, both, rerank="false"))
    left = _upload(client, both, rerank="false", crop="0,0,0.5,1")
    assert left["crop"] == [0, 0, 0.5, 1]
    assert _ids(left) == _ids(_upload(client, t0, rerank="false")) != whole
    # a stored item's region is cut from its original file, at full size
    coll = Collection.open(library / "coll")
    item = coll.find(source=str(library / "photos" / "home" / "h1.jpg"))
    assert item is not None
    h1 = _picture(library, "home/h1.jpg")
    region = client.post("/api/search", json={"id": item, "crop": [0.5, 0, 0.5, 1], "k": 30,
                                              "rerank": False}).json()
    upload = _upload(client, h1[:, h1.shape[1] // 2:], rerank="false")
    assert _ids(region) == [i for i in _ids(upload) if i != item]
    r = client.post("/api/search", json={"id": item, "crop": [0.5, 0, 0.8, 1]})
    assert r.status_code == 422 and "crop" in r.json()["detail"]


def test_the_original_file_and_only_it(library: Path, tmp_path: Path, torch_one_thread: None) -> None:
    copy = shutil.copytree(library / "coll", tmp_path / "coll")
    coll = Collection.open(copy)
    path = library / "photos" / "home" / "h2.jpg"
    item = coll.find(source=str(path))
    assert item is not None
    with TestClient(create_app(copy)) as client:
        r = client.get(f"/api/items/{item}/original")
        assert r.status_code == 200 and r.content == path.read_bytes()
        assert r.headers["content-type"] == "image/jpeg"
        assert "sandbox" in r.headers["content-security-policy"]
        assert client.get("/api/items/99999/original").status_code == 404
        # an item with no catalogue row (an older collection): its own source
        from lookalike.search import metadata

        metadata.write(copy / metadata.FILE, "DELETE FROM files WHERE id = ?", [(item,)])
        r = client.get(f"/api/items/{item}/original")
        assert r.status_code == 200 and r.content == path.read_bytes()
        assert client.get("/api/items/..%2F..%2Fetc%2Fpasswd/original").status_code in (404, 422)
        # an uploaded item has no original file
        added = client.post("/api/items", files={"files": ("x.png", _png(np.zeros((8, 8, 3), np.uint8)),
                                                           "image/png")}).json()["items"][0]
        r = client.get(f"/api/items/{added['id']}/original")
        assert r.status_code == 404 and "no original file" in r.json()["detail"]
    with TestClient(create_app(copy, access=Access(token=TOKEN, token_reads=True))) as client:
        assert client.get(f"/api/items/{item}/original").status_code == 401
        r = client.get(f"/api/items/{item}/original", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and r.content == path.read_bytes()


def test_delete_removes_the_items_catalogue_rows(library: Path, tmp_path: Path,
                                                 torch_one_thread: None) -> None:
    from lookalike.search import files, metadata

    copy = shutil.copytree(library / "coll", tmp_path / "coll")
    path = library / "photos" / "old" / "o3.jpg"
    item = Collection.open(copy).find(source=str(path))
    assert item is not None

    def rows() -> int:
        return int(metadata.query(files.db(copy), "SELECT count(*) FROM files WHERE id = ?", (item,))[0][0])

    assert rows() == 1
    with TestClient(create_app(copy)) as client:
        assert client.delete(f"/api/items/{item}").status_code == 200
        assert rows() == 0
        assert client.get(f"/api/items/{item}/original").status_code == 404
        assert client.delete(f"/api/items/{item}").status_code == 404
    assert path.is_file() and metadata.query(files.db(copy), "SELECT count(*) FROM files")[0][0] == 17
