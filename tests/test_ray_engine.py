"""``lookalike index --engine ray`` against the in-process engine, on one local Ray instance
(2 CPUs) for the whole module: the same ids, sources, labels, images, skipped files and
codes, for a folder of image files and for a built-in dataset."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from lookalike.app.cli import main  # noqa: E402
from lookalike.models.modelio import load_model  # noqa: E402
from lookalike.models.ray_engine import RayConfig, encode_images, shutdown  # noqa: E402
from lookalike.search.collection import Collection  # noqa: E402


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        yield
    finally:
        shutdown(ray)  # and reap what Ray killed, so no Popen is collected while running


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 digits as PNG files in one subfolder per label, of mixed sizes and modes (grey,
    RGB, 16x16), written in shuffled order; one damaged PNG and one empty JPEG."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for n in rng.permutation(40):
        image = Image.fromarray(np.clip(bunch.images[n] * 16, 0, 255).astype(np.uint8))
        if n % 3 == 1:
            image = image.convert("RGB")
        if n % 4 == 2:
            image = image.resize((16, 16))
        sub = root / str(bunch.target[n])
        sub.mkdir(exist_ok=True)
        image.save(sub / f"d{n:03d}.png")
    (root / "3" / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "5" / "empty.jpg").write_bytes(b"")
    return root


def _rows(path: Path) -> list[tuple[int, str, int, str]]:
    with contextlib.closing(sqlite3.connect(path / "metadata.sqlite")) as db:
        return db.execute("SELECT id, source, label, hash FROM items ORDER BY id").fetchall()


def _assert_same_collection(a: Path, b: Path) -> None:
    """Ids, sources, labels, content hashes, images and skipped files exactly equal; codes
    equal to float32 rounding: Ray's actors run the model on other batches and with another
    number of threads than this process, and a CPU kernel may then add in another order (on
    the machine this was written on they were bitwise equal)."""
    assert _rows(a) == _rows(b)
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert ma["skipped"] == mb["skipped"] and ma["label_names"] == mb["label_names"]
    assert ma["count"] == mb["count"]
    ca, cb = Collection.open(a), Collection.open(b)
    assert np.array_equal(ca.ids, cb.ids) and np.array_equal(ca.images, cb.images)
    ea, eb = np.asarray(ca.embeddings), np.asarray(cb.embeddings)
    assert ea.dtype == eb.dtype == np.float32 and ea.shape == eb.shape
    assert np.allclose(ea, eb, rtol=1e-5, atol=1e-6)


def test_folder_ray_equals_in_process(local_ray: None, folder: Path, exact_collection: Path,
                                      tmp_path: Path, torch_one_thread: None,
                                      caplog: pytest.LogCaptureFixture) -> None:
    model = exact_collection.parent / "model"
    base = ["index", "--model", str(model), "--dataset", str(folder)]
    warnings = {}
    for engine in ("in-process", "ray"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lookalike"):
            code, out, err = _run(base + ["--out", str(tmp_path / engine), "--engine", engine])
        assert code == 0 and out.startswith(f"collection written to {tmp_path / engine}: 40 images"), err
        assert f"skipped 2 file(s) (see {tmp_path / engine / 'skipped.jsonl'})" in out
        warnings[engine] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    _assert_same_collection(tmp_path / "in-process", tmp_path / "ray")
    skipped = json.loads((tmp_path / "ray" / "manifest.json").read_text())["skipped"]
    assert [Path(p).name for p, _ in skipped] == ["damaged.png", "empty.jpg"]
    # reported as the in-process engine reports them: one line each, and a summary
    assert warnings["ray"] == warnings["in-process"]
    assert "skipped 2 unreadable file(s) or folder(s)" in warnings["ray"]
    reports = [(tmp_path / e / "skipped.jsonl").read_text().splitlines() for e in ("in-process", "ray")]
    assert [json.loads(r)["path"] for r in reports[0]] == [json.loads(r)["path"] for r in reports[1]]
    # a split of a folder (queries: a seeded permutation of the files) is the same split
    code, _, err = _run(base + ["--out", str(tmp_path / "q-in"), "--split", "queries"])
    assert code == 0, err
    code, _, err = _run(base + ["--out", str(tmp_path / "q-ray"), "--split", "queries",
                                "--engine", "ray"])
    assert code == 0, err
    _assert_same_collection(tmp_path / "q-in", tmp_path / "q-ray")
    assert len(Collection.open(tmp_path / "q-ray")) == 40 // 5


def test_builtin_dataset_ray_equals_in_process(local_ray: None, exact_collection: Path,
                                               tmp_path: Path, torch_one_thread: None) -> None:
    code, _, err = _run(["-q", "index", "--model", str(exact_collection.parent / "model"),
                         "--dataset", "digits", "--out", str(tmp_path / "ray"), "--engine", "ray"])
    assert code == 0, err
    _assert_same_collection(exact_collection, tmp_path / "ray")


def test_encode_images_keeps_the_order_of_many_batches(local_ray: None, exact_collection: Path,
                                                       torch_one_thread: None) -> None:
    coll = Collection.open(exact_collection)
    images = np.asarray(coll.images)[:700]
    model = load_model(exact_collection.parent / "model")
    codes = encode_images(images[::-1], model, RayConfig(batch_size=64))  # 11 batches
    assert np.allclose(codes[::-1], np.asarray(coll.embeddings)[:700], rtol=1e-5, atol=1e-6)
    assert encode_images(images[:0], model).shape == (0, coll.dim)


def test_ray_address_needs_the_ray_engine(exact_collection: Path, tmp_path: Path) -> None:
    code, _, err = _run(["index", "--model", str(exact_collection.parent / "model"), "--dataset",
                         "digits", "--out", str(tmp_path / "c"), "--ray-address", "auto"])
    assert code == 2 and err.strip() == "lookalike: error: --ray-address is for --engine ray"


def test_shutdown_reaps_the_processes_ray_killed() -> None:
    """Ray kills its local node's processes at shutdown but waits only a second for each;
    ``shutdown`` reaps them, so none is left for the garbage collector to find running."""
    import subprocess
    import sys
    from types import SimpleNamespace

    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
             for _ in range(2)]
    node = SimpleNamespace(all_processes={"raylet": [SimpleNamespace(process=procs[0])],
                                          "gcs": [SimpleNamespace(process=procs[1])]})

    def fake_shutdown() -> None:  # what Ray does when a process is slow to go: kill, move on
        for p in procs:
            p.kill()

    fake = SimpleNamespace(_private=SimpleNamespace(worker=SimpleNamespace(_global_node=node)),
                           shutdown=fake_shutdown)
    shutdown(fake)
    assert [p.returncode for p in procs] == [-9, -9]
    shutdown(SimpleNamespace(shutdown=lambda: None))  # no node handle: just shuts down
