"""The milvus backend, for real, on Milvus Lite files and on a Milvus standalone server
(conftest's ``milvus_server``, on loopback): the same behaviour as FAISS through the backend
interface, the Collection, the CLI and the service (the behaviour tests run on FAISS, Milvus
Lite and the server); its errors; a failed remote write changes nothing local; an
interrupted change is repaired on open."""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pymilvus = pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from lookalike.app.cli import main  # noqa: E402
from lookalike.data.datasets import load_dataset  # noqa: E402
from lookalike.errors import LookalikeError, RemoteError  # noqa: E402
from lookalike.search import building, state  # noqa: E402
from lookalike.search.backends import FaissBackend, new_backend, open_backend  # noqa: E402
from lookalike.search.collection import Collection  # noqa: E402
from lookalike.search.milvus_backend import MilvusBackend, index_spec  # noqa: E402
from servers import serving_processes  # noqa: E402

#: Where the milvus backend's vectors live in these tests: a Milvus Lite file in the test's
#: temporary directory, or the session's Milvus standalone server.
MILVUS_KINDS = ("milvus", "milvus-server")
BACKENDS = ("faiss", *MILVUS_KINDS)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def _one_line_error(argv: list[str], match: str) -> None:
    code, _, err = _run(argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("lookalike: error:"), err
    assert match in lines[0], lines[0]


def _brute(queries: np.ndarray, x: np.ndarray, ids: np.ndarray, k: int
           ) -> tuple[np.ndarray, np.ndarray]:
    d = ((queries[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), ids[order]


def _same_ranking(d1: np.ndarray, i1: np.ndarray, d2: np.ndarray, i2: np.ndarray) -> None:
    """Equal squared distances (to float32 rounding: FAISS and the milvus backend sum in
    different orders), and equal ids wherever the distance is not tied, to that rounding,
    with a neighbour's (tied items may come in either order)."""
    assert i1.shape == i2.shape
    assert np.allclose(d1, d2, rtol=1e-5, atol=1e-6)
    for r in range(len(i1)):
        tied = np.zeros(i1.shape[1], dtype=bool)
        close = np.abs(np.diff(d1[r])) <= 1e-5 * np.abs(d1[r][:-1]) + 1e-6
        tied[:-1] |= close
        tied[1:] |= close
        assert (i1[r][~tied] == i2[r][~tied]).all(), (i1[r], i2[r])
        assert set(i1[r]) == set(i2[r]) or tied[-1]


def _snapshot(path: Path) -> dict[str, object]:
    """Every file's bytes (the SQLite table as rows: its write-ahead log and index change
    as it is read), to show nothing local changed."""
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*"))
             if p.is_file() and not p.name.startswith("metadata.sqlite")}
    with contextlib.closing(sqlite3.connect(path / "metadata.sqlite")) as db:
        files["items"] = db.execute("SELECT * FROM items ORDER BY id").fetchall()
    return files


def _unique(prefix: str) -> str:
    """A remote collection name of this test's own (the server is shared by the session)."""
    return f"{prefix}_{secrets.token_hex(4)}"


def _remote_names(uri: str) -> set[str]:
    client = pymilvus.MilvusClient(uri)
    try:
        return set(client.list_collections())
    finally:
        client.close()


def _fail(*args: object, **kwargs: object) -> None:
    raise pymilvus.MilvusException(message="simulated server failure")


@pytest.fixture(scope="module")
def digits_queries() -> np.ndarray:
    return load_dataset("digits", "queries").images[:12]


@pytest.fixture()
def exact_model(exact_collection: Path) -> Path:
    """The articles' preset (no re-ranking: searches go to the backend) that made
    ``exact_collection`` (FAISS, digits database)."""
    return exact_collection.parent / "model"


@pytest.fixture()
def milvus_uri(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """The ``--milvus-uri`` of a kind in MILVUS_KINDS: this test's Milvus Lite file, or the
    session's server (started on first use, so tests without it never wait for it)."""
    def uri(kind: str) -> str:
        assert kind in MILVUS_KINDS, kind
        if kind == "milvus-server":
            return str(request.getfixturevalue("milvus_server"))
        return str(tmp_path / "milvus.db")
    return uri


@pytest.fixture()
def index_with(exact_model: Path, tmp_path: Path, torch_one_thread: None,
               milvus_uri: Callable[[str], str]) -> Callable[..., Path]:
    def build(backend: str, name: str = "c", *extra: str) -> Path:
        out = tmp_path / name
        argv = ["-q", "index", "--model", str(exact_model), "--dataset", "digits", "--out", str(out)]
        if backend in MILVUS_KINDS:
            argv += ["--backend", "milvus", "--milvus-uri", milvus_uri(backend)]
        code, stdout, err = _run(argv + list(extra))
        assert code == 0, err
        return out
    return build


@pytest.fixture()
def milvus_coll(request: pytest.FixtureRequest, index_with: Callable[..., Path]
                ) -> Iterator[Collection]:
    """A collection on Milvus Lite, or on the kind given by indirect parametrisation."""
    coll = Collection.open(index_with(getattr(request, "param", "milvus")))
    yield coll
    coll.close()


# ---------------------------------------------------------------------------- the backend
@pytest.mark.parametrize("kind", MILVUS_KINDS)
def test_backend_matches_faiss_exact_search(kind: str, milvus_uri: Callable[[str], str],
                                            tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    ids = rng.permutation(100_000)[:300].astype(np.int64)
    q = rng.normal(size=(9, 16)).astype(np.float32)
    unit = _unique("unit")
    m = new_backend("milvus", 16, uri=milvus_uri(kind), collection=unit)
    f = FaissBackend(16)
    try:
        for b in (m, f):
            b.add(ids, x)
        dm, im = m.search(q, 7)
        df, i_f = f.search(q, 7)
        assert im.dtype == np.int64 and dm.dtype == np.float32 and im.shape == (9, 7)
        _same_ranking(dm, im, df, i_f)
        bd, bi = _brute(q, x, ids, 7)
        _same_ranking(dm, im, bd, bi)  # squared Euclidean, as FAISS
        assert m.remove(np.concatenate([ids[:4], [-5, 10**9]])) == 4 == f.remove(ids[:4])
        assert len(m) == 296 == len(f)
        # fewer items than k: padded with -1 / +inf as FAISS pads
        dm, im = m.search(q[:2], 400)
        df, i_f = f.search(q[:2], 400)
        assert (im[:, 296:] == -1).all() and np.isinf(dm[:, 296:]).all()
        _same_ranking(dm[:, :296], im[:, :296], df[:, :296], i_f[:, :296])
        # saved as a pointer per generation; opened again from it
        name = m.save(tmp_path, "index.3.faiss")
        assert name == "index.3.milvus.json"
        pointer = json.loads((tmp_path / name).read_text())
        assert pointer["collection"] == unit and pointer["count"] == 296
        again = open_backend(tmp_path, {**m.settings(), "file": name}, 16)
        assert (again.search(q, 5)[1] == f.search(q, 5)[1]).all()
        again.close()
        with pytest.raises(LookalikeError, match="shape"):
            m.add(ids[:2], np.zeros((2, 15), np.float32))
        with pytest.raises(LookalikeError, match="positive"):
            m.search(q, 0)
        assert m.search(q[:0], 3)[1].shape == (0, 3)
    finally:
        m.close()


@pytest.mark.parametrize("kind", MILVUS_KINDS)
@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW8"])
def test_ann_index_types_follow_the_factory_string(kind: str, factory: str,
                                                   milvus_uri: Callable[[str], str]) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 8)).astype(np.float32)
    ids = np.arange(500, dtype=np.int64) * 3
    ann = _unique("ann")
    m = MilvusBackend(8, factory, uri=milvus_uri(kind), collection=ann)
    try:
        m.add(ids, x)
        client = m._client
        described = client.describe_index(ann, "vector")
        assert described["index_type"] == index_spec(factory)[0] and described["metric_type"] == "L2"
        q = x[:20] + 0.01
        d, i = m.search(q, 5)
        # an ANN index may miss neighbours, but its distances are the true squared ones
        assert np.allclose(d, ((x[i // 3] - q[:, None]) ** 2).sum(-1), rtol=1e-5, atol=1e-6)
        assert (i[:, 0] == ids[:20]).mean() >= 0.9
    finally:
        m.close()


def test_factory_strings_without_a_milvus_counterpart_are_refused() -> None:
    assert index_spec("Flat") == ("FLAT", {}, {})
    assert index_spec("IVF256,Flat")[:2] == ("IVF_FLAT", {"nlist": 256})
    assert index_spec("HNSW32,Flat")[:2] == ("HNSW", {"M": 32, "efConstruction": 40})
    for bad in ("PQ8", "IVF0,Flat", "IVF64,PQ8", "NotAnIndex"):
        with pytest.raises(LookalikeError, match="Flat, IVF<nlist>,Flat or HNSW<M>"):
            index_spec(bad)


def test_missing_pymilvus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(LookalikeError, match=r"pip install 'lookalike\[scale\]'"):
        new_backend("milvus", 4, uri="/tmp/never.db")


# ---------------------------------------------------------------------------- all backends
@pytest.mark.parametrize("kind", MILVUS_KINDS)
def test_same_top_k_on_the_same_collection(kind: str, index_with: Callable[..., Path],
                                           exact_collection: Path,
                                           digits_queries: np.ndarray) -> None:
    milvus = Collection.open(index_with(kind))
    faiss = Collection.open(exact_collection)
    try:
        assert (milvus.ids == faiss.ids).all()
        assert np.array_equal(milvus.embeddings, faiss.embeddings)
        _same_ranking(*milvus.search_images(digits_queries, 10), *faiss.search_images(digits_queries, 10))
        some = [0, 7, 300, 1000, 1437]
        _same_ranking(*milvus.search_ids(some, 25), *faiss.search_ids(some, 25))
        assert milvus.items([7])[0] == faiss.items([7])[0]  # metadata still in the table
    finally:
        milvus.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_add_remove_search_reopen(backend: str, index_with: Callable[..., Path],
                                        tmp_path: Path, digits_queries: np.ndarray) -> None:
    path = index_with(backend)
    folder = tmp_path / "new"
    folder.mkdir()
    for n, image in enumerate(digits_queries[:5]):
        Image.fromarray(image[:, :, 0]).save(folder / f"q{n}.png")
    code, out, err = _run(["add", str(path), str(folder)])
    assert code == 0 and "added 5 image(s)" in out, err
    code, out, err = _run(["remove", str(path), "0", "1", "2", "999999"])
    assert code == 0 and "removed 3 item(s)" in out, err

    coll = Collection.open(path)
    try:
        assert len(coll) == len(coll.backend) == 1438 + 5 - 3
        assert not {0, 1, 2} & set(coll.ids.tolist()) and {1438, 1442} <= set(coll.ids.tolist())
        emb = np.asarray(coll.embeddings)
        queries = np.concatenate([emb[-5:], np.asarray(coll.encoder.encode(digits_queries[5:]))])
        want = _brute(queries, emb, coll.ids, 8)
        got = coll.search(queries, 8)
        _same_ranking(*got, *want)
        assert got[1][0, 0] == 1438 and got[0][0, 0] == 0  # an added image finds itself
        code, out, err = _run(["search", str(path), "id:1440", "-k", "3", "--json"])
        results = json.loads(out)["queries"][0]["results"]
        assert code == 0 and [r["id"] for r in results] == coll.search_ids([1440], 3)[1][0].tolist()
        # each result carries its own item's source: the dataset's for indexed items, the
        # file's for added ones (q0.png got id 1438, ..., q4.png 1442)
        sources = {i: s for i, s in enumerate(load_dataset("digits", "database").sources)}
        sources.update({1438 + n: str(folder / f"q{n}.png") for n in range(5)})
        assert [r["source"] for r in results] == [sources[r["id"]] for r in results]
        assert [it.source for it in coll.items([1438, 1440, 1442, 3])] == [
            sources[1438], sources[1440], sources[1442], "digits:database:3"]
    finally:
        coll.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_and_info(backend: str, index_with: Callable[..., Path],
                           milvus_uri: Callable[[str], str], exact_collection: Path) -> None:
    path = index_with(backend)
    code, out, err = _run(["evaluate", str(path), "--dataset", "digits", "--json", "--lrap-n", "1,10"])
    assert code == 0, err
    _, reference, _ = _run(["evaluate", str(exact_collection), "--dataset", "digits", "--json",
                            "--lrap-n", "1,10"])
    assert json.loads(out) == json.loads(reference)
    code, out, _ = _run(["info", str(path), "--json"])
    info = json.loads(out)
    assert code == 0 and info["count"] == 1438
    if backend in MILVUS_KINDS:  # on the Milvus Lite file or the server, as asked
        assert info["backend"]["name"] == "milvus" and info["backend"]["uri"] == milvus_uri(backend)
    else:
        assert info["backend"]["name"] == "faiss"


@pytest.mark.parametrize("backend", BACKENDS)
def test_service_search_add_delete(backend: str, index_with: Callable[..., Path],
                                   digits_queries: np.ndarray) -> None:
    from fastapi.testclient import TestClient

    from lookalike.app.service import create_app

    path = index_with(backend)
    coll = Collection.open(path)
    _, want = coll.search_ids([5], 6)
    coll.close()
    with TestClient(create_app(path)) as client:
        r = client.post("/api/search", json={"id": 5, "k": 6})
        assert r.status_code == 200 and [h["id"] for h in r.json()["results"]] == want[0].tolist()
        buf = io.BytesIO()
        Image.fromarray(digits_queries[0][:, :, 0]).save(buf, "PNG")
        added = client.post("/api/items", files=[("files", ("q.png", buf.getvalue(), "image/png"))])
        assert added.status_code == 201, added.text
        new_id = added.json()["items"][0]["id"]
        r = client.post("/api/search", json={"id": new_id, "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
        assert client.delete(f"/api/items/{want[0][0]}").status_code == 200
        r = client.post("/api/search", json={"id": 5, "k": 5})
        assert [h["id"] for h in r.json()["results"]] == want[0][1:].tolist()
    reopened = Collection.open(path)
    try:
        assert len(reopened.backend) == len(reopened) == 1438
    finally:
        reopened.close()


# ---------------------------------------------------------------------------- errors
def test_bad_uris_are_one_line_and_write_nothing(exact_model: Path, tmp_path: Path) -> None:
    base = ["index", "--model", str(exact_model), "--dataset", "digits", "--out", str(tmp_path / "c")]
    _one_line_error(base + ["--backend", "milvus"], "needs --milvus-uri")
    _one_line_error(base + ["--milvus-uri", str(tmp_path / "m.db")], "is for --backend milvus")
    _one_line_error(base + ["--backend", "milvus", "--milvus-uri", "nonsense"], "neither a local")
    _one_line_error(base + ["--backend", "milvus", "--milvus-uri", str(tmp_path / "no" / "m.db")],
                    "is not a directory")
    _one_line_error(base + ["--backend", "milvus", "--milvus-uri", "http://127.0.0.1:9"],
                    "cannot connect to Milvus at http://127.0.0.1:9")
    _one_line_error(base + ["--backend", "milvus", "--milvus-uri", "http://root:secret@host:19530"],
                    "MILVUS_TOKEN")
    _one_line_error(base + ["--backend", "milvus", "--milvus-uri", str(tmp_path / "c" / "m.db")],
                    "outside the collection directory")
    _one_line_error(base + ["--backend", "milvus", "--milvus-uri", str(tmp_path / "m.db"),
                            "--factory", "PQ8"], "HNSW<M>")
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("kind", MILVUS_KINDS)
def test_missing_remote_collection_and_dim_mismatch(kind: str, index_with: Callable[..., Path],
                                                    milvus_uri: Callable[[str], str],
                                                    tmp_path: Path) -> None:
    path = index_with(kind)
    manifest = json.loads((path / "manifest.json").read_text())
    name = manifest["backend"]["collection"]
    # another lookalike collection, 4-d, on the same Milvus
    other_4d = _unique("other_4d")
    other = MilvusBackend(4, uri=milvus_uri(kind), collection=other_4d)
    other.close()
    swapped = tmp_path / "swapped"
    import shutil

    shutil.copytree(path, swapped)
    for f in (swapped / "manifest.json", swapped / "index.milvus.json"):
        f.write_text(f.read_text().replace(name, other_4d))
    from lookalike.search.segments import checksums

    edited = json.loads((swapped / "manifest.json").read_text())  # a consistent pointer
    edited["checksums"] = checksums(swapped, edited["files"])
    (swapped / "manifest.json").write_text(json.dumps(edited))
    _one_line_error(["search", str(swapped), "id:3"], "holds 4-d vectors, the manifest says 8")

    client = pymilvus.MilvusClient(milvus_uri(kind))
    client.drop_collection(name)
    client.close()
    _one_line_error(["search", str(path), "id:3"], f"has no collection {name!r}")
    _one_line_error(["info", str(path)], "rebuild with 'lookalike index'")


def test_lite_file_held_by_another_process(tmp_path: Path) -> None:
    db = tmp_path / "held.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, pymilvus; c = pymilvus.MilvusClient(sys.argv[1]); "
         "print('ready', flush=True); sys.stdin.read()", str(db)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        with pytest.raises(RemoteError, match="in use by another process"):
            MilvusBackend(4, uri=str(db), collection="x")
    finally:
        holder.communicate("", timeout=60)


def test_workers_on_a_lite_file_fail_in_one_line(index_with: Callable[..., Path]) -> None:
    """`serve --workers 2` on Milvus Lite (one process per file): whichever process opens it
    second, the command ends in one line saying why, exit 2, and leaves no process behind."""
    coll = index_with("milvus")
    proc = subprocess.run([sys.executable, "-m", "lookalike.app.cli", "-q", "serve", str(coll),
                           "--port", "0", "--workers", "2"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("lookalike: error:") and "in use by another process" in lines[0]
    assert serving_processes(coll) == 0
    assert len(Collection.open(coll)) == 1438  # and it opens in this process: nobody holds it


def test_unreachable_server_is_a_503_in_the_service(milvus_coll: Collection,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from lookalike.app.service import create_app

    with TestClient(create_app(milvus_coll.path)) as client:
        shared = client.app.state.collection  # type: ignore[attr-defined]
        monkeypatch.setattr(shared._coll.backend._client, "search", _fail)
        r = client.post("/api/search", json={"id": 5, "k": 3})
        assert r.status_code == 503 and "simulated server failure" in r.json()["detail"]


# ---------------------------------------------------------------------------- failures
def test_failed_remote_write_changes_nothing_local(milvus_coll: Collection, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   digits_queries: np.ndarray) -> None:
    path = milvus_coll.path
    before = _snapshot(path)
    monkeypatch.setattr(milvus_coll.backend._client, "upsert", _fail)
    monkeypatch.setattr(milvus_coll.backend._client, "insert", _fail)
    with pytest.raises(RemoteError, match="adding .* simulated server failure"):
        milvus_coll.add(digits_queries[:3], ["a", "b", "c"])
    assert _snapshot(path) == before
    monkeypatch.setattr(milvus_coll.backend._client, "delete", _fail)
    with pytest.raises(RemoteError, match="removing .* simulated server failure"):
        milvus_coll.remove([4, 5])
    assert _snapshot(path) == before
    # the same through the CLI: one line, exit 2, nothing changed
    monkeypatch.setattr(pymilvus.MilvusClient, "upsert", _fail)
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(digits_queries[0][:, :, 0]).save(folder / "a.png")
    _one_line_error(["add", str(path), str(folder)], "simulated server failure")
    assert _snapshot(path) == before
    assert len(Collection.open(path).backend) == 1438


@pytest.mark.parametrize("milvus_coll", MILVUS_KINDS, indirect=True)
def test_interrupted_changes_are_repaired_on_open(milvus_coll: Collection,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  digits_queries: np.ndarray) -> None:
    path = milvus_coll.path

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("power cut")

    # an add written remotely, never committed: the remote side is ahead
    with monkeypatch.context() as m:
        m.setattr(Collection, "_commit", crash)
        with pytest.raises(RuntimeError):
            milvus_coll.add(digits_queries[:4], ["a", "b", "c", "d"])
    assert len(milvus_coll.backend) == 1438 + 4
    coll = Collection.open(path)
    assert len(coll) == len(coll.backend) == 1438
    _, ids = coll.search(np.asarray(coll.encoder.encode(digits_queries[:4])), 5)
    assert (ids < 1438).all()
    # a remove written remotely, never committed: the remote side is behind
    with monkeypatch.context() as m:
        m.setattr(state, "write_state", crash)
        with pytest.raises(RuntimeError):
            coll.remove([10, 11])
    assert len(coll.backend) == 1438 - 2
    coll.close()
    coll = Collection.open(path)
    assert len(coll.backend) == 1438
    _, ids = coll.search(np.asarray(coll.embeddings)[[10, 11]], 1)
    assert ids[:, 0].tolist() == [10, 11]
    coll.close()


@pytest.mark.parametrize("kind", MILVUS_KINDS)
def test_overwrite_and_failed_create_leave_no_remote_collection(
        kind: str, index_with: Callable[..., Path], milvus_uri: Callable[[str], str],
        exact_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = milvus_uri(kind)
    others = _remote_names(uri)  # on the server, other tests' collections
    first = json.loads((index_with(kind) / "manifest.json").read_text())["backend"]["collection"]
    assert _remote_names(uri) - others == {first}
    second = json.loads((index_with(kind, "c", "--overwrite") / "manifest.json").read_text())
    kept = second["backend"]["collection"]
    assert _remote_names(uri) - others == {kept} and kept != first

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(building.shutil, "copytree", disk_full)
    _one_line_error(["index", "--model", str(exact_model), "--dataset", "digits", "--out",
                     str(tmp_path / "d"), "--backend", "milvus", "--milvus-uri", uri],
                    "No space left on device")
    assert _remote_names(uri) - others == {kept}
    assert not (tmp_path / "d").exists()


def test_a_filtered_search_is_exact_on_milvus_too(milvus_coll: Collection) -> None:
    """Filters scan the segments' own codes, which a Milvus collection keeps as well."""
    from lookalike.search import filters, queries

    where = filters.Filter(labels=("3",))
    want = filters.passing_ids(milvus_coll, where)
    assert 100 < len(want) < 200 and (milvus_coll.labels(want) == 3).all()
    q = milvus_coll.store.codes_at(np.array([0, 500, 1000]))
    _, ids = queries.search(milvus_coll, q, 10, where=where, rerank=False)
    codes = milvus_coll.store.codes_at(milvus_coll.store.rows(want)).astype(np.float64)
    d = ((q[:, None, :].astype(np.float64) - codes[None]) ** 2).sum(-1)
    assert np.array_equal(ids, want[np.argsort(d, axis=1, kind="stable")[:, :10]])
