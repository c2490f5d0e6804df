"""A collection that lives: resumable indexing, crash safety under SIGKILL, damaged files
named on open, an interrupted replacement undone, approximate indexes chosen by size."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import Trained
from lookalike.data.datasets import load_dataset
from lookalike.errors import CollectionError
from lookalike.models.encoders import ModelEncoder
from lookalike.models.modelio import load_model
from lookalike.search import checkpoint
from lookalike.search.backends import choose_factory
from lookalike.search.collection import Collection


def _same(a: Collection, b: Collection) -> None:
    assert (a.ids == b.ids).all()
    assert np.allclose(np.asarray(a.embeddings), np.asarray(b.embeddings), atol=1e-6)
    assert (np.asarray(a.images) == np.asarray(b.images)).all()
    assert [it.source for it in a.items(a.ids)] == [it.source for it in b.items(b.ids)]


def _consistent(c: Collection) -> None:
    """Everything a reader relies on lines up: arrays, index, metadata rows."""
    assert len(c.ids) == len(c.backend) == len(c.embeddings) == c.manifest["count"]
    assert all(it is not None for it in c.items(c.ids))
    d, i = c.search_ids(c.ids[:3], 2, rerank=False)
    assert (i >= 0).all()


def test_index_resumes_from_its_checkpoints(tmp_path: Path, trained: Trained,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    model = load_model(trained.model)
    ds = load_dataset("digits", "database")
    reference = Collection.create(tmp_path / "ref", model, ds, chunk=200)
    calls = []
    real = ModelEncoder.encode

    def failing(self, images, progress=False):  # noqa: ANN001, ANN202
        calls.append(len(images))
        if len(calls) == 4:
            raise KeyboardInterrupt  # the run is interrupted in its fourth chunk
        return real(self, images, progress)

    monkeypatch.setattr(ModelEncoder, "encode", failing)
    with pytest.raises(KeyboardInterrupt):
        Collection.create(tmp_path / "c", model, ds, chunk=200)
    assert not (tmp_path / "c").exists()
    assert len(list((tmp_path / ".c.partial" / "chunks").glob("codes.*.npy"))) == 3
    calls.clear()
    monkeypatch.setattr(ModelEncoder, "encode", real)
    monkeypatch.setattr(ModelEncoder, "encode", lambda self, im, progress=False: (
        calls.append(len(im)), real(self, im, progress))[1])
    bars: list[dict[str, float]] = []

    class RecordingBar(checkpoint.tqdm):  # type: ignore[name-defined,misc]
        """The progress bar, noting where it starts and where it ends."""

        def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            super().__init__(*args, **kwargs)
            bars.append({"total": self.total, "start": self.n})

        def close(self) -> None:
            if bars and "end" not in bars[-1]:
                bars[-1]["end"] = self.n
            super().close()

    monkeypatch.setattr(checkpoint, "tqdm", RecordingBar)
    with caplog.at_level("WARNING"):
        resumed = Collection.create(tmp_path / "c", model, ds, chunk=200, progress=True)
    assert "resuming: 600 of 1438 images already encoded" in caplog.text
    assert calls == [200, 200, 200, 200, 38]  # only the chunks not done before
    # the progress bar starts where the interrupted run stopped, and counts only the rest
    assert bars == [{"total": 1438, "start": 600, "end": 1438}]
    _same(resumed, reference)
    assert not (tmp_path / ".c.partial").exists()


def test_checkpoints_of_another_model_are_not_reused(tmp_path: Path, trained: Trained) -> None:
    ds = load_dataset("digits", "database")
    first = Collection.create(tmp_path / "a", load_model(trained.model), ds, chunk=500)
    stage = tmp_path / ".b.partial"
    shutil.copytree(tmp_path / "a", tmp_path / "unused")  # keep a copy of the right codes
    (stage / "chunks").mkdir(parents=True)
    (stage / "job.json").write_text('{"key": "another model"}')
    np.save(stage / "chunks" / f"codes.{0:09d}.npy", np.zeros((500, first.dim), np.float32))
    other = Collection.create(tmp_path / "b", load_model(trained.model), ds, chunk=500)
    _same(other, first)


def _index_cmd(trained: Trained, out: Path) -> list[str]:
    return [sys.executable, "-m", "lookalike.app.cli", "-q", "index", "--model", str(trained.model),
            "--dataset", "digits", "--out", str(out), "--checkpoint-every", "16"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _kill_index_run(cmd: list[str], chunks: Path, mid_run: bool, full: float,
                    rng: np.random.Generator) -> None:
    """Start ``cmd`` and SIGKILL it: right after it writes a new checkpoint (``mid_run``:
    surely while encoding) or at a random moment (start-up and the final renames included)."""
    before = len(list(chunks.glob("codes.*.npy")))
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if mid_run:
        deadline = time.perf_counter() + 120
        while (proc.poll() is None and time.perf_counter() < deadline
               and len(list(chunks.glob("codes.*.npy"))) <= before):
            time.sleep(0.01)  # (polling the files, with a deadline)
        time.sleep(rng.uniform(0, 0.05))
    else:
        time.sleep(rng.uniform(0.3, 1.0) * full)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_during_index_then_rerun(tmp_path: Path, trained: Trained) -> None:
    """Kill `lookalike index --overwrite` at random moments: the collection is absent or
    complete, never half-written, and once complete it is never lost (a killed replacement
    leaves the old one, equal to its last commit, or the new one); rerunning the command
    finishes it, equal to an uninterrupted run."""
    ref_path = tmp_path / "ref"
    start = time.perf_counter()
    subprocess.run(_index_cmd(trained, ref_path), check=True, env=_env(), capture_output=True)
    full = time.perf_counter() - start
    reference = Collection.open(ref_path)
    target = tmp_path / "c"
    cmd = _index_cmd(trained, target) + ["--overwrite"]
    rng = np.random.default_rng(0)
    chunks = tmp_path / ".c.partial" / "chunks"
    mid_run = 0  # kills that left checkpoints behind (the run was cut while encoding)
    complete = False  # whether a run has finished: from then on the collection must stay
    for attempt in range(4):
        _kill_index_run(cmd, chunks, attempt % 2 == 0, full, rng)
        mid_run += any(chunks.glob("codes.*.npy"))
        complete = complete or target.exists()
        if complete:  # (opening undoes a replacement cut between its two renames)
            _same(Collection.open(target), reference)
    assert mid_run, "no kill landed while the run was encoding"
    subprocess.run(cmd, check=True, env=_env(), capture_output=True)
    _same(Collection.open(target), reference)

    # Replacing a complete collection: give it a last commit of its own (two items removed),
    # then kill `--overwrite` runs over it. Each time it opens, equal to that commit, unless
    # the run got as far as replacing it with the new one.
    Collection.open(target).remove([0, 1])
    last = tmp_path / "last-commit"
    shutil.copytree(target, last)
    survived = 0
    for attempt in range(2):
        _kill_index_run(cmd, chunks, attempt == 0, full, rng)
        now = Collection.open(target)
        if len(now) == len(reference):
            _same(now, reference)  # replaced: the new collection, complete
            last = ref_path
        else:
            _same(now, Collection.open(last))
            survived += 1
    assert survived, "no kill landed before the old collection was replaced"
    subprocess.run(cmd, check=True, env=_env(), capture_output=True)
    _same(Collection.open(target), reference)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".c.")]


def _digit_folder(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    ds = load_dataset("digits", "queries")
    paths = []
    for i in range(n):  # beyond the 359 queries, the same digits turned by 90 degrees
        paths.append(folder / f"q{i:03d}.png")
        digit = np.rot90(ds.images[i % len(ds), :, :, 0], i // len(ds))
        Image.fromarray(np.ascontiguousarray(digit)).resize((16, 16)).save(paths[-1])
    return paths


def test_sigkill_during_add_then_rerun(tmp_path: Path, trained: Trained) -> None:
    """Kill `lookalike add` at random moments: the collection opens, consistent, holding
    a prefix of the batches; rerunning the command adds the rest, as one run would. (An
    add of a few hundred images takes well under a second now that it runs without
    PyTorch: 960 images in 24 commits give the kills room to land mid-add.)"""
    folder = tmp_path / "new"
    paths = _digit_folder(folder, 960)
    ref = tmp_path / "ref"
    shutil.copytree(trained.collection, ref)
    cmd = [sys.executable, "-m", "lookalike.app.cli", "-q", "add", "--batch", "40"]
    start = time.perf_counter()
    subprocess.run(cmd + [str(ref), str(folder)], check=True, env=_env(), capture_output=True)
    full = time.perf_counter() - start
    reference = Collection.open(ref)
    target = tmp_path / "c"
    shutil.copytree(trained.collection, target)
    base = len(Collection.open(target))
    rng = np.random.default_rng(1)
    counts: list[int] = []
    for _ in range(8):
        stamp = (target / "manifest.json").stat().st_mtime_ns
        proc = subprocess.Popen(cmd + [str(target), str(folder)], env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if len(counts) % 2 == 0:  # just after a commit: surely mid-add
            deadline = time.perf_counter() + 120
            while (proc.poll() is None and time.perf_counter() < deadline
                   and (target / "manifest.json").stat().st_mtime_ns == stamp):
                time.sleep(0.01)
            time.sleep(rng.uniform(0, 0.05))
        else:
            time.sleep(rng.uniform(0.4, 0.9) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        c = Collection.open(target)
        _consistent(c)
        counts.append(len(c) - base)
        assert set(c.sources()) - {it.source for it in reference.items(reference.ids)} == set()
        if len(counts) >= 3 and 0 < counts[-1] < len(paths):
            break
    assert counts == sorted(counts)  # never loses a committed batch
    assert any(0 < n < len(paths) for n in counts), f"no kill landed mid-add: {counts}"
    out = subprocess.run(cmd + [str(target), str(folder)], check=True, env=_env(),
                         capture_output=True, text=True).stdout
    assert f"{counts[-1]} already there by path" in out
    done = Collection.open(target)
    _consistent(done)
    assert set(done.sources()) == set(reference.sources())
    assert len(done) == len(reference) == base + len(paths)


def test_two_processes_adding_at_once_lose_nothing(tmp_path: Path, trained: Trained) -> None:
    """Two `lookalike add` runs on one collection at the same time, 12 commits each: the
    writer lock makes them take turns, each reading the other's commits before its own,
    so every image of both is there and the collection is consistent."""
    target = tmp_path / "c"
    shutil.copytree(trained.collection, target)
    base = len(Collection.open(target))
    paths = _digit_folder(tmp_path / "all", 480)
    halves = [tmp_path / "a", tmp_path / "b"]
    for half, part in zip(halves, (paths[::2], paths[1::2]), strict=True):
        half.mkdir()
        for path in part:
            shutil.move(str(path), half / path.name)
    cmd = [sys.executable, "-m", "lookalike.app.cli", "-q", "add", "--batch", "20", str(target)]
    procs = [subprocess.Popen([*cmd, str(half)], env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for half in halves]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    done = Collection.open(target, verify=True)
    _consistent(done)
    assert len(done) == base + 480
    assert {str(h / p.name) for h in halves for p in h.iterdir()} <= set(done.sources())
    # ids are given out commit by commit: in id order, the two writers' batches alternate
    sources = done.sources()
    order = [Path(src).parent.name for _, src in sorted((i, s) for s, (i, _) in sources.items())
             if Path(src).parent in halves]
    runs = 1 + sum(a != b for a, b in itertools.pairwise(order))
    assert runs >= 3, f"the two writers did not overlap: {runs} runs of commits"


def test_damaged_files_are_named_on_open(tmp_path: Path, trained: Trained) -> None:
    for name, damage, message in [
        ("segments/000000.faiss", lambda p: p.write_bytes(p.read_bytes()[:100]), "truncated"),
        ("segments/000000.codes.npy", lambda p: p.write_bytes(p.read_bytes()[:-4] + b"\x00\x01\x02\x03"),
         "checksum"),
        ("metadata.sqlite", lambda p: p.write_bytes(b"\x00" * p.stat().st_size), "metadata.sqlite"),
    ]:
        c = tmp_path / Path(name).name
        shutil.copytree(trained.collection, c)
        damage(c / name)
        with pytest.raises(CollectionError, match=message) as err:
            Collection.open(c, verify=True)  # (the checksums: 'lookalike verify')
        assert name in str(err.value) and "rebuild" in str(err.value)


def test_an_interrupted_replacement_is_undone(tmp_path: Path, trained: Trained) -> None:
    c = tmp_path / "c"
    shutil.copytree(trained.collection, c)
    reference = Collection.open(c)
    os.replace(c, tmp_path / ".c.old")  # the crash came between the two renames
    _same(Collection.open(c), reference)
    assert not (tmp_path / ".c.old").exists()


def test_choose_factory_by_size() -> None:
    assert choose_factory(1000) == ("Flat", "")
    assert choose_factory(100_000) == ("Flat", "")
    assert choose_factory(1_000_000) == ("IVF1024,Flat", "nprobe=16")
    assert choose_factory(16_000_000) == ("IVF4096,Flat", "nprobe=64")
    assert choose_factory(200_000) == ("IVF512,Flat", "nprobe=16")


def test_ivf_collection_agrees_with_exact_search(tmp_path: Path, trained: Trained) -> None:
    """An approximate index finds what exact search finds on small data (probing every
    list it is exact; with the default few lists, recall@10 stays high)."""
    model = load_model(trained.model)
    ds = load_dataset("digits", "all")
    exact = Collection.create(tmp_path / "flat", model, ds, factory="Flat")
    q = np.asarray(exact.embeddings[:200])
    _, truth = exact.search(q, 10, rerank=False)
    full = Collection.create(tmp_path / "ivf", model, ds, factory="IVF16,Flat",
                             search_params="nprobe=16")
    assert (full.search(q, 10, rerank=False)[1] == truth).all()
    few = Collection.open(tmp_path / "ivf")
    assert few.backend.settings()["search_params"] == "nprobe=16"
    some = Collection.create(tmp_path / "ivf4", model, ds, factory="IVF16,Flat",
                             search_params="nprobe=4")
    found = some.search(q, 10, rerank=False)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
    assert recall >= 0.8
    # removal works on an inverted file, and on HNSW (deleted rows are filtered out)
    assert some.remove([0, 1]) == 2 and len(some.backend) == len(ds) - 2
    hnsw = Collection.create(tmp_path / "hnsw", model, ds, factory="HNSW16")
    assert hnsw.remove([0]) == 1
    assert len(Collection.open(tmp_path / "hnsw")) == len(ds) - 1


def test_sqlite_rows_of_an_interrupted_add_are_not_items(tmp_path: Path, trained: Trained) -> None:
    c = tmp_path / "c"
    shutil.copytree(trained.collection, c)
    coll = Collection.open(c)
    ghost = coll._next_id()
    with sqlite3.connect(c / "metadata.sqlite") as db:  # written before a crash, never committed
        db.execute("INSERT INTO items VALUES (?, 'ghost.png', -1, 'abc')", (ghost,))
    db.close()
    again = Collection.open(c)
    assert "ghost.png" not in again.sources() and again.find(source="ghost.png") is None
    ids = again.add(np.zeros((1, 8, 8, 1), np.uint8) + 7, ["real.png"])
    assert ids.tolist() == [ghost] and again.items(ids)[0].source == "real.png"


#: a process that opens a metadata transaction and writes 2,000 rows into it, its pages
#: spilled to the file (``cache_size=1``), without committing
FILLING_WRITER = (
    "import os, signal, sqlite3, sys\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('PRAGMA cache_size=1'); db.execute('BEGIN')\n"
    "for i in range(2000):\n"
    "    db.execute('INSERT INTO items VALUES (?, ?, -1, ?)', (10**6 + i, 'x' * 200, 'h'))\n"
)


def _catalogue(c: Collection) -> dict[str, int]:
    from lookalike.search import files

    return {r.path: r.id for r in files.rows(files.db(c))}


def test_sigkill_during_sync_then_rerun(tmp_path: Path, trained: Trained) -> None:
    """Kill `lookalike sync` at random moments while it removes, moves and adds: each time
    the collection opens consistent and `verify` passes; committed work is never lost; the
    rerun finishes the job, equal to an uninterrupted sync (moved files kept their items)."""
    from lookalike.app.cli import main

    folder = tmp_path / "photos"
    paths = _digit_folder(folder, 960)
    hidden = tmp_path / "later"
    hidden.mkdir()
    for p in paths[200:]:  # the collection first mirrors 200 files
        os.rename(p, hidden / p.name)
    target = tmp_path / "c"
    shutil.copytree(trained.collection, target)
    assert main(["-q", "sync", str(target), str(folder)]) == 0
    before = _catalogue(Collection.open(target))
    for p in paths[:40]:
        os.remove(p)
    (folder / "moved").mkdir()
    for p in paths[40:80]:
        os.rename(p, folder / "moved" / p.name)
    for p in paths[200:]:
        os.rename(hidden / p.name, p)
    ref = tmp_path / "ref"
    shutil.copytree(target, ref)
    cmd = [sys.executable, "-m", "lookalike.app.cli", "-q", "sync", "--batch", "40"]
    start = time.perf_counter()
    subprocess.run(cmd + [str(ref)], check=True, env=_env(), capture_output=True)
    full = time.perf_counter() - start
    reference = _catalogue(Collection.open(ref))
    new = {str(p) for p in paths[200:]}
    rng = np.random.default_rng(2)
    counts: list[int] = []
    for attempt in range(8):
        stamp = (target / "manifest.json").stat().st_mtime_ns
        proc = subprocess.Popen(cmd + [str(target)], env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if attempt % 2 == 0:  # just after a commit: surely mid-sync
            deadline = time.perf_counter() + 120
            while (proc.poll() is None and time.perf_counter() < deadline
                   and (target / "manifest.json").stat().st_mtime_ns == stamp):
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
        else:
            time.sleep(rng.uniform(0.1, 0.9) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        c = Collection.open(target, verify=True)
        c.verify()
        _consistent(c)
        got = _catalogue(c)
        counts.append(len(new & set(got)))  # the new files catalogued so far
        assert set(got) <= set(reference) | set(before)  # nothing made up
        if len(counts) >= 3 and 0 < counts[-1] < len(new):
            break
    assert counts == sorted(counts)  # never loses a committed batch
    assert any(0 < n < len(new) for n in counts), f"no kill landed mid-add: {counts}"
    subprocess.run(cmd + [str(target)], check=True, env=_env(), capture_output=True)
    done = Collection.open(target, verify=True)
    done.verify()
    _consistent(done)
    got = _catalogue(done)
    assert set(got) == set(reference) and len(done) == len(Collection.open(ref))
    for p in paths[40:80]:  # moved: the same item as before the move
        assert got[str(folder / "moved" / p.name)] == before[str(p)]
    assert all(os.path.isfile(it.source) for it in done.items(done.ids) if it and it.source.startswith("/"))


def test_a_metadata_transaction_killed_midway_is_rolled_back_on_open(tmp_path: Path,
                                                                     trained: Trained) -> None:
    """A process killed inside a metadata transaction, in a collection made before the
    metadata file was in WAL mode, leaves a hot journal: the next open rolls it back (it
    used to fail on it, opening read-only) and the collection is intact."""
    c = tmp_path / "c"
    shutil.copytree(trained.collection, c)
    with sqlite3.connect(c / "metadata.sqlite") as db:
        assert db.execute("PRAGMA journal_mode=DELETE").fetchone()[0] == "delete"
    db.close()
    before = Collection.open(c).sources()
    writer = FILLING_WRITER + (
        "db.execute('UPDATE items SET source = source || \"!\"')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", writer, str(c / "metadata.sqlite")])
    assert proc.returncode == -signal.SIGKILL
    assert (c / "metadata.sqlite-journal").stat().st_size > 0  # hot: pages spilled
    coll = Collection.open(c)
    _consistent(coll)
    assert coll.sources() == before
    assert not (c / "metadata.sqlite-journal").exists()


def test_a_metadata_transaction_killed_midway_leaves_nothing_in_wal_mode(
        tmp_path: Path, trained: Trained) -> None:
    """The same kill in WAL mode (collections now): the log's uncommitted frames are
    ignored, and a search's reads were never blocked by the writer."""
    c = tmp_path / "c"
    shutil.copytree(trained.collection, c)
    with sqlite3.connect(c / "metadata.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    before = Collection.open(c).sources()
    writer = FILLING_WRITER + (
        "print('written', flush=True)\n"
        "sys.stdin.readline()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    with subprocess.Popen([sys.executable, "-c", writer, str(c / "metadata.sqlite")],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "written"
        assert Collection.open(c).sources() == before  # read while the writer holds its lock
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == -signal.SIGKILL
    coll = Collection.open(c)
    _consistent(coll)
    assert coll.sources() == before
