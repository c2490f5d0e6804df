"""The HTTP service (lookalike.app.service): every endpoint and every error, with FastAPI's test
client, against small real collections; results are compared with the Collection's own."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFile

from lookalike.app import service
from lookalike.app.cli import main
from lookalike.app.security import Access, check_bind
from lookalike.app.service import PID_HEADER_ENV, create_app
from lookalike.app.shared import SharedCollection, UnknownItem
from lookalike.data.datasets import load_dataset
from lookalike.errors import CollectionError, ImageError, LookalikeError
from lookalike.search.collection import Collection
from servers import serving, serving_processes

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture()
def rerank_path(trained, tmp_path: Path) -> Path:
    """A private copy of the shared re-ranking (contrastive + diffusion) collection."""
    return Path(shutil.copytree(trained.collection, tmp_path / "collection"))


@pytest.fixture()
def client(rerank_path: Path, torch_one_thread: None) -> Iterator[TestClient]:
    with TestClient(create_app(rerank_path)) as c:
        yield c


@pytest.fixture()
def exact_client(exact_collection: Path, tmp_path: Path, torch_one_thread: None) -> Iterator[TestClient]:
    path = shutil.copytree(exact_collection, tmp_path / "exact")
    with TestClient(create_app(path)) as c:
        yield c


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.ndim == 3 and image.shape[2] == 1 else image).save(buf, "PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture(scope="module")
def queries() -> np.ndarray:
    """Digits the collections do not hold: ``uint8 (359, 8, 8, 1)``."""
    return load_dataset("digits", "queries").images


def upload(client: TestClient, data: bytes, name: str = "q.png", **fields: str):
    return client.post("/api/search", files={"file": (name, data, "image/png")}, data=fields)


def ids_of(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [r["id"] for r in response.json()["results"]]


# ---------------------------------------------------------------------------- service info
def test_health_and_stats(client: TestClient, rerank_path: Path) -> None:
    assert client.get("/api/health").json() == {"status": "ok"}
    stats = client.get("/api/stats").json()
    coll = Collection.open(rerank_path)
    assert stats["count"] == len(coll) and stats["dimension"] == coll.dim
    assert stats["model"] == {"arch": "contrastive", "fingerprint": coll.manifest["model"]["fingerprint"]}
    assert stats["index"]["name"] == "faiss" and stats["index"]["factory"] == "Flat"
    assert stats["rerank"] == "diffusion" and stats["reranks"] is True
    assert stats["input"] == {"channels": 1, "height": 8, "width": 8}
    assert stats["label_names"] == [str(i) for i in range(10)]
    assert stats["max_upload_bytes"] == 10 * 2**20 and stats["max_k"] == 100


def test_openapi_docs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert {"/api/search", "/api/items", "/api/items/{item_id}", "/api/items/{item_id}/image",
            "/api/health", "/api/stats"} <= set(schema["paths"])
    body = schema["paths"]["/api/search"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and kind in r.headers["content-type"]
    # no build step and nothing fetched from elsewhere: every reference is relative
    for f in sorted(service.STATIC.iterdir()):
        text = f.read_text()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, f.name
    assert client.get("/static/../service.py").status_code == 404


# ---------------------------------------------------------------------------- search
def test_search_by_upload_matches_the_collection(client: TestClient, rerank_path: Path,
                                                 queries: np.ndarray) -> None:
    coll = Collection.open(rerank_path)
    for rerank in (None, True, False):
        fields = {"k": "7"} if rerank is None else {"k": "7", "rerank": str(rerank).lower()}
        r = upload(client, png(queries[0]), **fields)
        body = r.json()
        _, want = coll.search_images(queries[:1], 7, rerank=rerank)
        assert ids_of(r) == want[0].tolist()
        assert body["rerank"] is (rerank is not False) and body["k"] == 7
        assert body["query"] == {"filename": "q.png", "height": 8, "width": 8}
        assert body["seconds"] >= 0
        distances = [x["distance"] for x in body["results"]]
        assert distances == sorted(distances)
        first = body["results"][0]
        item = coll.items([first["id"]])[0]
        assert first["rank"] == 1 and first["source"] == item.source
        assert first["label"] == item.label and first["label_name"] == str(item.label)
        assert first["thumbnail_url"] == f"/api/items/{first['id']}/image?size=112"
    assert body["distance"] == "euclidean"


def test_search_by_id_excludes_the_query(client: TestClient, rerank_path: Path) -> None:
    coll = Collection.open(rerank_path)
    for rerank in (None, False):
        payload = {"id": 5, "k": 5} if rerank is None else {"id": 5, "k": 5, "rerank": rerank}
        r = client.post("/api/search", json=payload)
        _, want = coll.search_ids([5], 5, rerank=rerank)
        assert ids_of(r) == want[0].tolist() and 5 not in ids_of(r)
        assert r.json()["query"] == {"id": 5}
    assert len(ids_of(client.post("/api/search", json={"id": 5}))) == 10  # k defaults to 10


def test_exact_collection_has_no_rerank_toggle(exact_client: TestClient, queries: np.ndarray) -> None:
    stats = exact_client.get("/api/stats").json()
    assert stats["reranks"] is False and stats["rerank"] == "none"
    default = upload(exact_client, png(queries[3]), k="4")
    assert default.json()["rerank"] is False and default.json()["distance"] == "euclidean"
    assert ids_of(upload(exact_client, png(queries[3]), k="4", rerank="false")) == ids_of(default)
    r = upload(exact_client, png(queries[3]), rerank="true")
    assert r.status_code == 422 and "no re-ranking" in r.json()["detail"]


def test_colour_and_large_uploads_are_conformed(client: TestClient, queries: np.ndarray) -> None:
    big = np.repeat(np.repeat(queries[1], 8, axis=0), 8, axis=1)  # 64x64 grey
    rgb = np.repeat(big, 3, axis=2)
    jpeg = io.BytesIO()
    Image.fromarray(rgb).save(jpeg, "JPEG", quality=95)
    r = client.post("/api/search", files={"file": ("q.jpg", jpeg.getvalue(), "image/jpeg")},
                    data={"k": "3", "rerank": "false"})
    assert r.status_code == 200 and r.json()["query"]["width"] == 64
    assert len(r.json()["results"]) == 3


# ---------------------------------------------------------------------------- items
def test_item_metadata_and_image(client: TestClient, rerank_path: Path) -> None:
    coll = Collection.open(rerank_path)
    item = coll.items([3])[0]
    meta = client.get("/api/items/3").json()
    assert meta == {"id": 3, "source": item.source, "label": item.label,
                    "label_name": str(item.label), "hash": item.hash,
                    "image_url": "/api/items/3/image", "thumbnail_url": "/api/items/3/image?size=112"}
    r = client.get("/api/items/3/image")
    assert r.headers["content-type"] == "image/png"
    assert np.array_equal(decode_png(r.content), coll.image(3)[:, :, 0])
    thumb = client.get("/api/items/3/image", params={"size": 112})
    big = decode_png(thumb.content)
    assert big.shape == (112, 112)
    # nearest neighbour: each stored pixel becomes a 14x14 block
    assert np.array_equal(big[::14, ::14], coll.image(3)[:, :, 0])
    again = client.get("/api/items/3/image", params={"size": 112},
                       headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content


def test_add_then_search_sees_it_and_delete_removes_it(client: TestClient, rerank_path: Path,
                                                        queries: np.ndarray) -> None:
    count = client.get("/api/stats").json()["count"]
    files = [("files", (f"q{i}.png", png(queries[i]), "image/png")) for i in (10, 11)]
    r = client.post("/api/items", files=files)
    assert r.status_code == 201, r.text
    added = r.json()["items"]
    assert [a["source"] for a in added] == ["upload:q10.png", "upload:q11.png"]
    assert all(a["added"] for a in added) and r.json()["count"] == count + 2
    new_id = added[0]["id"]
    assert client.get(f"/api/items/{new_id}").json()["label"] is None
    # the very next search finds it: a near-copy (one grey level off) ranks it first
    near = queries[10].copy()
    near[0, 0, 0] = near[0, 0, 0] + 1 if near[0, 0, 0] < 255 else 254
    assert ids_of(upload(client, png(near), k="3", rerank="false"))[0] == new_id
    assert new_id in ids_of(upload(client, png(near), k="10"))  # re-ranked too
    # the change is on disk
    assert Collection.open(rerank_path).items([new_id])[0].source == "upload:q10.png"

    assert client.delete(f"/api/items/{new_id}").json() == {"id": new_id, "removed": True,
                                                            "count": count + 1}
    assert client.get(f"/api/items/{new_id}").status_code == 404
    assert new_id not in ids_of(upload(client, png(near), k="20", rerank="false"))
    assert len(Collection.open(rerank_path)) == count + 1


def test_adding_known_content_returns_the_existing_id(client: TestClient, rerank_path: Path,
                                                      queries: np.ndarray) -> None:
    stored = Collection.open(rerank_path).image(7)
    files = [("files", ("a.png", png(queries[20]), "image/png")),
             ("files", ("b.png", png(queries[20]), "image/png")),
             ("files", ("c.png", png(stored), "image/png"))]
    items = client.post("/api/items", files=files).json()["items"]
    assert items[0]["id"] == items[1]["id"] and [i["added"] for i in items] == [True, False, False]
    assert items[2]["id"] == 7


def test_deleting_down_to_one_item(tmp_path: Path, trained, torch_one_thread: None,
                                   run_quietly) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "three.npz", x=rng.integers(0, 256, (3, 8, 8), dtype=np.uint8),
             y=np.array([1, 2, 3]))
    run_quietly(["-q", "index", "--model", str(trained.model), "--dataset",
                 str(tmp_path / "three.npz"), "--out", str(tmp_path / "c")])
    with TestClient(create_app(tmp_path / "c")) as c:
        assert len(ids_of(c.post("/api/search", json={"id": 0, "k": 10}))) == 2  # k > count
        assert c.delete("/api/items/0").status_code == 200
        assert c.delete("/api/items/1").status_code == 200
        r = c.delete("/api/items/2")
        assert r.status_code == 409 and "last item" in r.json()["detail"]
        assert c.get("/api/items/2").status_code == 200
        assert c.get("/api/stats").json()["count"] == 1


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("data", [b"hello, not an image", b"", png(np.zeros((8, 8), np.uint8))[:40]])
def test_not_an_image_is_400(client: TestClient, data: bytes) -> None:
    r = client.post("/api/search", files={"file": ("bad.png", data, "image/png")})
    assert r.status_code == 400 and r.json()["detail"].startswith("bad.png: ")
    count = client.get("/api/stats").json()["count"]
    files = [("files", ("good.png", png(np.full((8, 8), 9, np.uint8)), "image/png")),
             ("files", ("bad.png", data, "image/png"))]
    r = client.post("/api/items", files=files)
    assert r.status_code == 400 and "bad.png" in r.json()["detail"]
    assert client.get("/api/stats").json()["count"] == count  # nothing added


@pytest.mark.parametrize("path", ["/api/items/999999", "/api/items/999999/image"])
def test_unknown_id_is_404(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 404 and r.json() == {"detail": "no item with id 999999"}


def test_unknown_id_is_404_for_search_and_delete(client: TestClient) -> None:
    for r in (client.post("/api/search", json={"id": 999999}), client.delete("/api/items/999999")):
        assert r.status_code == 404 and r.json() == {"detail": "no item with id 999999"}
    assert client.get("/api/nothing").json() == {"detail": "Not Found"}


def test_upload_past_the_limit_is_413(rerank_path: Path) -> None:
    with TestClient(create_app(rerank_path, max_upload_bytes=2000)) as c:
        big = png(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8))
        assert len(big) > 2000
        for path, field in (("/api/search", "file"), ("/api/items", "files")):
            r = c.post(path, files={field: ("big.png", big, "image/png")})
            assert r.status_code == 413, r.text
            assert r.json() == {"detail": "upload is larger than the limit of 2,000 bytes"}
        # no Content-Length (chunked): the streamed read stops at the limit
        parts = [b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\n",
                 big, b"\r\n--b--\r\n"]
        r = c.post("/api/search", content=iter(parts),
                   headers={"content-type": "multipart/form-data; boundary=b"})
        assert "content-length" not in r.request.headers and r.status_code == 413
        r = c.post("/api/search", content=b"x" * 3000, headers={"content-type": "application/json"})
        assert r.status_code == 413
        # within the limit all is well
        small = png(np.zeros((8, 8), np.uint8))
        assert c.post("/api/search", files={"file": ("s.png", small, "image/png")}).status_code == 200
    with pytest.raises(ValueError, match="max_upload_bytes"):
        create_app(rerank_path, max_upload_bytes=0)


def test_decompression_bomb_is_refused_before_decoding(client: TestClient, rerank_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, "PNG")  # 64 Mpx > the 50 Mpx limit, ~60 kB
    assert len(bomb.getvalue()) < 200_000
    loads: list[object] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im) or real_load(im))
    r = client.post("/api/search", files={"file": ("bomb.png", bomb.getvalue(), "image/png")})
    assert r.status_code == 400 and "8000x8000" in r.json()["detail"] and "limit" in r.json()["detail"]
    assert loads == []  # the header was read, the pixels never
    # the pixel limit is a setting
    with TestClient(create_app(rerank_path, max_pixels=1000)) as c:
        r = c.post("/api/search", files={"file": ("p.png", png(np.zeros((40, 40), np.uint8)), "image/png")})
        assert r.status_code == 400 and "1,000" in r.json()["detail"]
    assert loads == []


@pytest.mark.parametrize(("request_kwargs", "message"), [
    ({"json": {"id": 1, "k": 0}}, "k: Input should be greater than or equal to 1"),
    ({"json": {"id": 1, "k": 101}}, "k: must be at most 100, got 101"),
    ({"json": {"id": 1, "k": "many"}}, "k: Input should be a valid integer"),
    ({"json": {"id": -1}}, "id: Input should be greater than or equal to 0"),
    ({"json": {"id": 1, "colour": "red"}}, "colour: Extra inputs are not permitted"),
    ({"json": {"k": 3}}, "id: Field required"),
    ({"json": {"id": 1, "rerank": "perhaps"}}, "rerank: Input should be a valid boolean"),
    ({"json": [1, 2]}, "expected a JSON object"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "not valid JSON"),
    ({"files": {"file": ("q.png", png(np.zeros((8, 8), np.uint8)), "image/png")}, "data": {"k": "x"}},
     "k: Input should be a valid integer"),
    ({"files": {"file": ("q.png", png(np.zeros((8, 8), np.uint8)), "image/png")},
      "data": {"colour": "red"}}, "colour: unknown field"),
])
def test_bad_search_parameters_are_422(client: TestClient, request_kwargs: dict, message: str) -> None:
    r = client.post("/api/search", **request_kwargs)
    assert r.status_code == 422 and message in r.json()["detail"], r.text


def test_bad_path_and_query_parameters_are_422(client: TestClient) -> None:
    for path, message in (("/api/items/abc", "item_id: Input should be a valid integer"),
                          ("/api/items/-3", "item_id: Input should be greater than or equal to 0"),
                          (f"/api/items/{2**70}", "item_id: Input should be less than or equal to"),
                          ("/api/items/3/image?size=4", "size: Input should be greater than or equal to 8"),
                          ("/api/items/3/image?size=big", "size: Input should be a valid integer")):
        r = client.get(path)
        assert r.status_code == 422 and message in r.json()["detail"], (path, r.text)
    assert client.delete("/api/items/x").status_code == 422
    r = client.post("/api/search", files={"k": (None, "3")})  # multipart without a file
    assert r.status_code == 422 and "give an image file" in r.json()["detail"]
    r = client.post("/api/items", files={"k": (None, "3")})
    assert r.status_code == 422 and "no image files" in r.json()["detail"]
    r = client.post("/api/items", files={"files": ("a.png", b"", "image/png")}, data={"x": "1"})
    assert r.status_code == 400  # the empty file is not an image


def test_other_content_types_are_415(client: TestClient) -> None:
    r = client.post("/api/search", content=b"id=3", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data or application/json" in r.json()["detail"]
    r = client.post("/api/items", json={"id": 3})
    assert r.status_code == 415 and "multipart" in r.json()["detail"]


def test_bad_settings_and_collections(tmp_path: Path, rerank_path: Path) -> None:
    with pytest.raises(CollectionError, match="does not exist"):
        create_app(tmp_path / "nothing")
    with pytest.raises(ValueError, match="max_k"):
        create_app(rerank_path, max_k=-1)


# ---------------------------------------------------------------------------- access
def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def changes(client: TestClient, queries: np.ndarray, headers: dict[str, str]) -> list:
    """One add and one delete, with ``headers``."""
    files = {"files": ("new.png", png(queries[30]), "image/png")}
    return [client.post("/api/items", files=files, headers=headers),
            client.delete("/api/items/3", headers=headers)]


def test_changes_need_the_token(rerank_path: Path, queries: np.ndarray,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    import hmac

    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    with TestClient(create_app(rerank_path, access=Access(token=TOKEN))) as c:
        count = c.get("/api/stats").json()["count"]
        for headers, challenge in (({}, "Bearer"), (bearer("wrong-token-0123456789"),
                                                     'Bearer error="invalid_token"'),
                                   ({"Authorization": f"Basic {TOKEN}"}, "Bearer"),
                                   (bearer(TOKEN[:-1]), 'Bearer error="invalid_token"'),
                                   (bearer(TOKEN + "x"), 'Bearer error="invalid_token"')):
            for r in changes(c, queries, headers):
                assert r.status_code == 401, r.text
                assert r.headers["www-authenticate"] == challenge
                assert "token" in r.json()["detail"] and TOKEN not in r.text
        # nothing changed
        assert c.get("/api/stats").json()["count"] == count
        assert c.get("/api/items/3").status_code == 200
        # the token was compared in constant time, as bytes
        assert compared and all(b == TOKEN.encode() for _, b in compared)
        # reads need no token; with it, changes go through
        assert ids_of(c.post("/api/search", json={"id": 5, "k": 3}))
        added, removed = changes(c, queries, bearer(TOKEN))
        assert added.status_code == 201 and removed.status_code == 200
        assert c.get("/api/stats").json()["count"] == count
        assert c.get("/api/stats").json()["access"] == {"writes": "token", "reads": "open"}


def test_every_route_that_writes_is_guarded(rerank_path: Path) -> None:
    """Whatever routes there are: each one that is not a read answers 401 without the token
    and 403 read-only (so a new route cannot be left open by mistake)."""
    reads = {("POST", "/api/search")}
    apps = {"token": create_app(rerank_path, access=Access(token=TOKEN)),
            "read-only": create_app(rerank_path, access=Access(read_only=True))}
    writes = []
    for route in apps["token"].routes:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method not in ("GET", "HEAD") and (method, route.path) not in reads:
                writes.append((method, route.path.replace("{item_id}", "3")))
    assert {("POST", "/api/items"), ("DELETE", "/api/items/3")} <= set(writes)
    for name, status in (("token", 401), ("read-only", 403)):
        with TestClient(apps[name]) as c:
            for method, path in writes:
                r = c.request(method, path, files={"files": ("a.png", b"x", "image/png")}
                              if method == "POST" else None)
                assert r.status_code == status, (name, method, path, r.text)
    with TestClient(apps["read-only"]) as c:
        r = c.delete("/api/items/3", headers=bearer(TOKEN))
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        assert c.get("/api/items/3").status_code == 200
        assert ids_of(c.post("/api/search", json={"id": 3, "k": 2}))
        assert c.get("/api/stats").json()["access"] == {"writes": "off", "reads": "open"}


def test_token_reads(rerank_path: Path) -> None:
    with TestClient(create_app(rerank_path, access=Access(token=TOKEN, token_reads=True))) as c:
        for method, path in (("GET", "/api/stats"), ("GET", "/api/items/3"),
                             ("GET", "/api/items/3/image")):
            assert c.request(method, path).status_code == 401
            assert c.request(method, path, headers=bearer(TOKEN)).status_code == 200
        r = c.post("/api/search", json={"id": 3})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert ids_of(c.post("/api/search", json={"id": 3}, headers=bearer(TOKEN)))
        # liveness, the page, the docs and the schema stay open
        for path in ("/api/health", "/", "/docs", "/openapi.json", "/static/app.js"):
            assert c.get(path).status_code == 200, path
        assert c.get("/api/stats", headers=bearer(TOKEN)).json()["access"]["reads"] == "token"


# ---------------------------------------------------------------------------- headers
def test_hardening_headers_everywhere(rerank_path: Path) -> None:
    with TestClient(create_app(rerank_path, access=Access(token=TOKEN))) as c:
        answers = {path: c.get(path) for path in ("/", "/docs", "/api/stats", "/api/items/3/image",
                                                  "/api/items/999999", "/api/items/x",
                                                  "/static/app.js", "/docs-assets/swagger-ui.css",
                                                  "/openapi.json", "/nothing")}
        answers["401"] = c.delete("/api/items/3")
        for name, r in answers.items():
            assert r.headers["x-content-type-options"] == "nosniff", name
            assert r.headers["referrer-policy"] == "no-referrer", name
            assert r.headers["x-frame-options"] == "DENY", name
            assert "frame-ancestors 'none'" in r.headers["content-security-policy"], name
            assert "x-lookalike-pid" not in r.headers, name  # (tests only, switched on by env)
        for path in ("/", "/docs"):
            csp = answers[path].headers["content-security-policy"]
            assert "default-src 'self'" in csp and "unsafe" not in csp and "script-src" not in csp
        assert answers["/api/stats"].headers["content-security-policy"].startswith("default-src 'none'")
        assert answers["/docs-assets/swagger-ui.css"].status_code == 200


def test_an_internal_error_is_500_with_the_headers(rerank_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(SharedCollection, "stats", broken)
    with TestClient(create_app(rerank_path), raise_server_exceptions=False) as c:
        r = c.get("/api/stats")
    assert r.status_code == 500 and r.json() == {"detail": "internal error (RuntimeError); see the "
                                                           "server log"}
    assert r.headers["x-content-type-options"] == "nosniff"


def test_pages_have_no_inline_script_or_style() -> None:
    import html.parser

    class Scan(html.parser.HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.inline: list[str] = []
            self.scripts: list[str] = []
            self._in_script = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names = dict(attrs)
            if tag == "script":
                self.scripts.append(names.get("src") or "")
                self._in_script = not names.get("src")
            if tag == "style" or "style" in names or any(n.startswith("on") for n in names):
                self.inline.append(f"<{tag} {names}>")

        def handle_data(self, data: str) -> None:
            if self._in_script and data.strip():
                self.inline.append(data[:40])

        def handle_endtag(self, tag: str) -> None:
            self._in_script = False if tag == "script" else self._in_script

    for name, want in (("index.html", ["static/api.js", "static/app.js"]),
                       ("duplicates.html", ["static/api.js", "static/duplicates.js"]),
                       ("docs.html", ["docs-assets/swagger-ui-bundle.js", "static/docs.js"])):
        scan = Scan()
        scan.feed((service.STATIC / name).read_text())
        assert scan.inline == [] and scan.scripts == want, name


def test_openapi_declares_the_errors_and_the_token(rerank_path: Path) -> None:
    with TestClient(create_app(rerank_path, access=Access(token=TOKEN))) as c:
        schema = c.get("/openapi.json").json()
    paths = schema["paths"]
    scheme = schema["components"]["securitySchemes"]["token"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path in (("post", "/api/items"), ("delete", "/api/items/{item_id}")):
        op = paths[path][method]
        assert op["security"] == [{"token": []}] and "401" in op["responses"]
    for method, path in (("post", "/api/search"), ("get", "/api/stats")):
        assert "security" not in paths[path][method] and "401" not in paths[path][method]["responses"]
    error = {"$ref": "#/components/schemas/ErrorBody"}
    for code in ("400", "404", "413", "415", "422"):
        assert paths["/api/search"]["post"]["responses"][code]["content"]["application/json"][
            "schema"] == error
    assert "HTTPValidationError" not in schema["components"]["schemas"]  # our 422 is one line
    with TestClient(create_app(rerank_path, access=Access(read_only=True))) as c:
        schema = c.get("/openapi.json").json()
    assert "403" in schema["paths"]["/api/items"]["post"]["responses"]
    assert "401" not in schema["paths"]["/api/items"]["post"]["responses"]


# ---------------------------------------------------------------------------- concurrency
def test_concurrent_searches_while_adding_and_removing(rerank_path: Path, queries: np.ndarray,
                                                       torch_one_thread: None) -> None:
    with TestClient(create_app(rerank_path)) as client:
        _hammer(client, queries)


def _hammer(client: TestClient, queries: np.ndarray) -> None:
    start = client.get("/api/stats").json()["count"]
    statuses: list[int] = []
    added: list[int] = []
    removed: list[int] = []
    lock = threading.Lock()
    stop = threading.Event()

    def searcher(n: int) -> None:
        i = 0
        while not stop.is_set() or i < 5:
            q = queries[(n * 7 + i) % 100]
            r = (upload(client, png(q), k="5", rerank=("false" if i % 2 else "true")) if i % 3
                 else client.post("/api/search", json={"id": int(i * 13 % 1000), "k": 5}))
            with lock:
                statuses.append(r.status_code)
            i += 1

    def writer(n: int) -> None:
        for j in range(6):
            q = queries[100 + n * 10 + j]
            r = client.post("/api/items", files={"files": (f"w{n}-{j}.png", png(q), "image/png")})
            with lock:
                statuses.append(r.status_code)
            item = r.json()["items"][0]["id"]
            if j % 3 == 2:
                d = client.delete(f"/api/items/{item}")
                with lock:
                    statuses.append(d.status_code)
                    removed.append(item)
            else:
                with lock:
                    added.append(item)

    with ThreadPoolExecutor(8) as pool:
        searches = [pool.submit(searcher, n) for n in range(5)]
        writes = [pool.submit(writer, n) for n in range(2)]
        for f in writes:
            f.result()
        stop.set()
        for f in searches:
            f.result()
    assert set(statuses) <= {200, 201} and len(statuses) > 40, sorted(set(statuses))
    # ids are never reused: the 12 adds got 12 ids, and none of the 4 removed came back
    assert len(set(added)) == 8 and len(set(removed)) == 4 and not set(added) & set(removed)
    assert client.get("/api/stats").json()["count"] == start + 8
    for item in added:  # not lost: stored and found by search
        assert client.get(f"/api/items/{item}").status_code == 200
        near = np.asarray(Image.open(io.BytesIO(client.get(f"/api/items/{item}/image").content)))
        near = near[:, :, None].copy()
        near[0, 0, 0] = near[0, 0, 0] + 1 if near[0, 0, 0] < 255 else 254
        assert item in ids_of(upload(client, png(near), k="3", rerank="false"))
    for item in removed:
        assert client.get(f"/api/items/{item}").status_code == 404


def test_a_search_does_not_wait_for_a_commit_in_progress(
        rerank_path: Path, queries: np.ndarray, monkeypatch: pytest.MonkeyPatch,
        torch_one_thread: None) -> None:
    """Snapshot isolation: while a change is being committed (held half-way, its segment
    written and the manifest not yet switched), searches, items and images answer from the
    last commit; once the commit returns they see all of it."""
    shared = SharedCollection(rerank_path)
    in_commit, release = threading.Event(), threading.Event()
    real_commit = Collection._commit

    def held_commit(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        in_commit.set()
        assert release.wait(30)
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(Collection, "_commit", held_commit)
    new = queries[0]
    near = new.copy()
    near[0, 0, 0] = near[0, 0, 0] + 1 if near[0, 0, 0] < 255 else 254
    before = shared.search_image(near, 3, rerank=False)
    with ThreadPoolExecutor(1) as pool:
        change = pool.submit(shared.add, [new], ["new.png"])
        assert in_commit.wait(30)
        # the commit is held: every read still answers, from the last commit
        during = shared.search_image(near, 3, rerank=False)
        assert [h.id for h in during] == [h.id for h in before]
        assert shared.search_id(5, 3, rerank=True) and shared.stats()["count"] == 1438
        assert shared.item(5)[0] == 5 and shared.image(5)[0].shape == (8, 8, 1)
        with pytest.raises(UnknownItem):
            shared.item(1438)
        assert not change.done()
        release.set()
        (new_id,), _, count = change.result(timeout=60)
    assert count == 1439 and new_id == 1438 and shared.stats()["count"] == 1439
    assert shared.search_image(near, 3, rerank=False)[0].id == new_id


def test_a_reader_keeps_its_snapshot_through_a_compaction(rerank_path: Path, queries: np.ndarray,
                                                          torch_one_thread: None) -> None:
    """A reader holding the last snapshot reads its pictures and codes after a merge has
    deleted their segment files."""
    shared = SharedCollection(rerank_path)
    shared.add([queries[1]], ["one.png"])
    held = shared.snapshot
    segment_files = {f for s in held.store.segments for f in s.files.values()}
    shared._coll.compact()
    shared._publish()
    assert not any((rerank_path / f).exists() for f in segment_files)  # deleted by the merge
    assert np.array_equal(held.image(1438), shared.snapshot.image(1438))
    assert (held.search_ids([1438], 5)[1] == shared.snapshot.search_ids([1438], 5)[1]).all()


def test_a_change_made_by_another_process_is_seen(rerank_path: Path, queries: np.ndarray,
                                                 tmp_path: Path, torch_one_thread: None) -> None:
    """`lookalike add` in another process while the service runs: the next read sees it,
    and the service's own next change builds on it (nothing of either is lost)."""
    shared = SharedCollection(rerank_path)
    count = shared.stats()["count"]
    Image.fromarray(queries[7][:, :, 0]).save(tmp_path / "other.png")
    code = "import sys; from lookalike.app.cli import main; sys.exit(main(['-q', 'add', *sys.argv[1:]]))"
    subprocess.run([sys.executable, "-c", code, str(rerank_path), str(tmp_path / "other.png")],
                   check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert shared.stats()["count"] == count + 1
    near = queries[7].copy()
    near[0, 0, 0] = near[0, 0, 0] + 1 if near[0, 0, 0] < 255 else 254
    found = shared.search_image(near, 3, rerank=False)[0]
    assert found.source == str(tmp_path / "other.png")
    (mine,), _, total = shared.add([queries[8]], ["mine.png"])
    assert total == count + 2 and mine == found.id + 1
    assert len(Collection.open(rerank_path)) == count + 2


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="counts processes through /proc")
def test_workers_share_the_port_and_see_each_others_changes(
        rerank_path: Path, queries: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lookalike serve --workers 2`: two processes answer on one port; whichever answers,
    an item one of them added is there at once, and gone at once once deleted (each
    request on a new connection, spread over both by the kernel)."""
    import httpx

    monkeypatch.setenv(PID_HEADER_ENV, "1")  # each answer names the process that gave it
    answered: set[str] = set()
    seen_by_other = gone_for_other = 0  # a change one process made, seen by the other

    def by(answer: httpx.Response) -> str:
        answered.add(answer.headers["X-Lookalike-Pid"])
        return answer.headers["X-Lookalike-Pid"]

    with serving(rerank_path, "--workers", "2") as url:
        assert serving_processes(rerank_path) == 2
        count = httpx.get(url + "api/stats").json()["count"]
        for n in range(4):
            added = httpx.post(url + "api/items", files=[("files", (f"n{n}.png", png(queries[20 + n])))])
            assert added.status_code == 201, added.text
            (item,) = added.json()["items"]
            for _ in range(12):
                got = httpx.get(url + f"api/items/{item['id']}")
                assert got.status_code == 200
                seen_by_other += by(got) != by(added)
                hits = httpx.post(url + "api/search", json={"id": item["id"], "k": 3})
                assert hits.status_code == 200, hits.text
            assert httpx.get(url + "api/stats").json()["count"] == count + 1
            deleted = httpx.delete(url + f"api/items/{item['id']}")
            assert deleted.status_code == 200
            for _ in range(12):
                got = httpx.get(url + f"api/items/{item['id']}")
                assert got.status_code == 404
                gone_for_other += by(got) != by(deleted)
            assert httpx.get(url + "api/stats").json()["count"] == count
    assert len(answered) == 2, answered  # both processes answered
    assert seen_by_other and gone_for_other, (seen_by_other, gone_for_other)
    assert serving_processes(rerank_path) == 0
    assert len(Collection.open(rerank_path, verify=True)) == count


def test_searches_that_queue_up_share_an_index_search(
        rerank_path: Path, queries: np.ndarray, monkeypatch: pytest.MonkeyPatch,
        torch_one_thread: None) -> None:
    """Searches that arrive while one runs go to the index together, in one call, and
    each gets exactly what it would have got alone (re-ranked or not, by image or id)."""
    from lookalike.search.segments import SegmentedIndex

    shared = SharedCollection(rerank_path)
    asks = [("image", i, bool(i % 2)) for i in range(8)] + [("id", i * 11, bool(i % 2)) for i in range(4)]

    def ask(kind: str, n: int, rerank: bool) -> list[tuple[int, float]]:
        hits = (shared.search_image(queries[n], 5, rerank) if kind == "image"
                else shared.search_id(n, 5, rerank))
        return [(h.id, h.distance) for h in hits]

    alone = [ask(*a) for a in asks]
    sizes: list[int] = []
    real = SegmentedIndex.search
    first, queued = threading.Event(), threading.Event()

    def counted(self, q, k):  # noqa: ANN001, ANN202
        sizes.append(len(q))
        if len(sizes) == 1:  # hold the first batch until every other search has queued
            first.set()
            assert queued.wait(30)
        return real(self, q, k)

    monkeypatch.setattr(SegmentedIndex, "search", counted)
    with ThreadPoolExecutor(len(asks)) as pool:
        lead = pool.submit(ask, *asks[0])
        assert first.wait(30)
        rest = [pool.submit(ask, *a) for a in asks[1:]]
        deadline = time.monotonic() + 30
        while len(shared._searches) < len(asks) - 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        queued.set()
        together = [lead.result(60)] + [f.result(60) for f in rest]
    assert sizes == [1, len(asks) - 1]
    for a, b in zip(alone, together, strict=True):  # (FAISS sums in another order for a batch)
        assert [i for i, _ in a] == [i for i, _ in b]
        assert np.allclose([d for _, d in a], [d for _, d in b], atol=1e-4)


def test_changes_that_queue_up_share_a_commit(rerank_path: Path, queries: np.ndarray,
                                              monkeypatch: pytest.MonkeyPatch,
                                              torch_one_thread: None) -> None:
    shared = SharedCollection(rerank_path)
    calls: list[int] = []
    real_add = Collection.add
    committing, release = threading.Event(), threading.Event()

    def held_add(self, images, sources, labels=None):  # noqa: ANN001, ANN202
        calls.append(len(images))
        if len(calls) == 1:  # the first commit stays in progress until the others queue up
            committing.set()
            assert release.wait(30)
        return real_add(self, images, sources, labels)

    def pending() -> int:
        return len(shared._changes)

    monkeypatch.setattr(Collection, "add", held_add)
    bad = np.zeros((8, 8, 2), np.uint8)  # two channels: the collection refuses it
    with ThreadPoolExecutor(7) as pool:
        first = pool.submit(shared.add, [queries[0]], ["first"])
        assert committing.wait(30)
        queued = [pool.submit(shared.add, *change) for change in (
            ([queries[1]], ["b"]), ([queries[1]], ["b-again"]), ([bad], ["bad"]), ([queries[2]], ["c"]))]
        gone = pool.submit(shared.remove, 0)
        unknown = pool.submit(shared.remove, 999_999)
        deadline = time.monotonic() + 30
        while pending() < 6:  # every change behind the commit is queued (polled, with a deadline)
            assert time.monotonic() < deadline, pending()
            committing.wait(0.005)
        release.set()
        results = [f.result(timeout=60) for f in [first, *queued[:2], queued[3]]]
        with pytest.raises(ImageError, match="channels"):
            queued[2].result(timeout=60)
        with pytest.raises(UnknownItem):
            unknown.result(timeout=60)
        assert isinstance(gone.result(timeout=60), int)
    # one commit for the first, one for the four queued adds (which failed on the bad image,
    # so each was then tried alone)
    assert calls == [1, 4, 1, 1, 1, 1]
    ids = [int(r[0][0]) for r in results]
    assert ids[1] == ids[2] and len(set(ids)) == 3
    assert [bool(r[1][0]) for r in results] == [True, True, False, True]
    assert shared.item(ids[3])[1] == "c"
    with pytest.raises(UnknownItem):
        shared.item(0)
    assert len(Collection.open(rerank_path)) == results[-1][2]


def test_serve_command(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                       rerank_path: Path) -> None:
    calls: list[tuple] = []

    def fake_serve(path, host, port, *, max_upload_bytes, access, on_ready, log_level, workers,
                   move_to):
        calls.append((path, host, port, max_upload_bytes, access, log_level, move_to, workers))
        on_ready(f"http://{host}:{port}/")

    monkeypatch.setattr(service, "serve", fake_serve)
    monkeypatch.delenv("LOOKALIKE_TOKEN", raising=False)
    assert main(["serve", str(rerank_path), "--port", "8123", "--max-upload-mb", "2"]) == 0
    assert calls == [(str(rerank_path), "127.0.0.1", 8123, 2 * 2**20, Access(), "info", None, 1)]
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out
    assert main(["serve", str(rerank_path), "--workers", "3", "--move-to", "dups"]) == 0
    assert calls[-1][-2:] == ("dups", 3)
    for bad in (["--port", "70000"], ["--port", "http"], ["--max-upload-mb", "0"],
                ["--workers", "0"], ["--workers", "two"]):
        with pytest.raises(SystemExit) as exit_:
            main(["serve", str(rerank_path), *bad])
        assert exit_.value.code == 2
    monkeypatch.undo()
    assert main(["serve", str(rerank_path.parent / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_serve_access_options(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                               rerank_path: Path, tmp_path: Path) -> None:
    seen: list[Access] = []

    def fake_serve(path, host, port, *, max_upload_bytes, access, on_ready, log_level, workers,
                   move_to):
        check_bind(host, access)
        seen.append(access)
        on_ready(f"http://{host}:{port}/")

    monkeypatch.setattr(service, "serve", fake_serve)
    monkeypatch.delenv("LOOKALIKE_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    serve = ["serve", str(rerank_path)]
    assert main([*serve, "--token-file", str(token_file), "--host", "0.0.0.0"]) == 0
    assert "changes need the token" in capsys.readouterr().out
    assert main([*serve, "--read-only", "--host", "::"]) == 0
    assert "read-only" in capsys.readouterr().out
    monkeypatch.setenv("LOOKALIKE_TOKEN", TOKEN)
    assert main([*serve, "--token-reads"]) == 0
    assert "reads need the token" in capsys.readouterr().out
    # the file wins over the variable
    token_file.write_text("other-token-0123456789abcdef")
    assert main([*serve, "--token-file", str(token_file)]) == 0
    assert seen == [Access(token=TOKEN), Access(read_only=True), Access(token=TOKEN, token_reads=True),
                    Access(token="other-token-0123456789abcdef")]
    assert [a.token for a in seen] == [TOKEN, None, TOKEN, "other-token-0123456789abcdef"]
    capsys.readouterr()

    # refused, each with one line and exit code 2, before anything is served
    monkeypatch.setenv("LOOKALIKE_TOKEN", "  ")  # blank: unset
    token_file.write_text("")
    for argv, words in (([*serve, "--host", "0.0.0.0"], ["0.0.0.0", "--token-file", "--read-only"]),
                        ([*serve, "--host", "192.168.1.10"], ["--token-file", "--read-only"]),
                        ([*serve, "--token-file", str(token_file)], ["is empty"]),
                        ([*serve, "--token-file", str(tmp_path / "none")], ["does not exist"]),
                        ([*serve, "--token-reads"], ["--token-reads needs a token"])):
        seen.clear()
        assert main(argv) == 2, argv
        out, err = capsys.readouterr()
        assert err.startswith("lookalike: error: ") and err.count("\n") == 1, err
        assert all(w in err for w in words) and "Traceback" not in err, err
        assert seen == [] and out == ""
    monkeypatch.setenv("LOOKALIKE_TOKEN", "short")
    assert main(serve) == 2
    err = capsys.readouterr().err
    assert "$LOOKALIKE_TOKEN" in err and "at least 16" in err and "short" not in err  # never shown


def test_serve_refuses_open_changes_beyond_loopback_before_binding(
        rerank_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    bound: list[object] = []
    monkeypatch.setattr(socket.socket, "bind", lambda self, address: bound.append(address))
    monkeypatch.delenv("LOOKALIKE_TOKEN", raising=False)
    assert main(["serve", str(rerank_path), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token-file" in err and "--read-only" in err
    assert bound == []
    with pytest.raises(LookalikeError, match="--read-only"):
        service.serve(rerank_path, "10.1.2.3", 0)
    assert bound == []


def test_serve_reports_a_port_in_use(rerank_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(rerank_path), "--port", str(port)]) == 2
    assert "in use" in capsys.readouterr().err


def test_serve_binds_a_tcp_socket_with_nodelay(rerank_path: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    import socket

    import uvicorn

    seen: list[tuple[int, str]] = []

    def fake_run(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        seen.append((sockets[0].proto, server.config.log_level))

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    urls: list[str] = []
    service.serve(rerank_path, "127.0.0.1", 0, on_ready=urls.append, log_level="warning")
    # asyncio sets TCP_NODELAY on accepted connections only when the socket says IPPROTO_TCP;
    # without it each keep-alive response waited ~40 ms for a delayed ACK
    assert seen == [(socket.IPPROTO_TCP, "warning")]
    assert urls[0].startswith("http://127.0.0.1:") and not urls[0].endswith(":0/")


def test_importing_the_service_does_not_start_or_import_uvicorn() -> None:
    code = "import sys, lookalike.app.service; print(json.dumps('uvicorn' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                         text=True, check=True, timeout=120).stdout
    assert json.loads(out) is False
