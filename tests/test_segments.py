"""Segments: a commit writes what it changes; searches merge the segments; the merge
policy and ``compact``; sizes checked on open, checksums by ``verify``; format 1 read and
migrated; SIGKILL during remove, compaction and migration leaves the last commit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import Trained
from conftest import run_cli as run
from lookalike.data.datasets import load_dataset
from lookalike.errors import CollectionError
from lookalike.search.backends import FaissBackend
from lookalike.search.collection import Collection
from lookalike.search.segments import (
    MAX_SEGMENTS,
    IndexSpec,
    Segment,
    SegmentStore,
    _Loaded,
    bytes_per_item,
    decode_picture,
    encode_picture,
)


def _exact(coll: Collection, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force search over the live codes: the reference."""
    codes = np.asarray(coll.embeddings, dtype=np.float64)
    dist = ((q[:, None, :].astype(np.float64) - codes[None]) ** 2).sum(-1)
    order = np.lexsort((np.broadcast_to(coll.ids, dist.shape), dist), axis=1)[:, :k]
    return np.take_along_axis(dist, order, 1), coll.ids[order]


def _content(c: Collection) -> dict[int, tuple[bytes, bytes, str]]:
    """``{id: (code, picture, source)}``: what a collection holds, whatever its layout."""
    sources = {it.id: it.source for it in c.items(c.ids) if it}
    return {int(i): (np.asarray(c.embeddings[r]).tobytes(), c.image(int(i)).tobytes(),
                     sources[int(i)]) for r, i in enumerate(c.ids)}


def _consistent(c: Collection) -> None:
    assert len(c.ids) == len(c.backend) == len(c.embeddings) == c.manifest["count"]
    assert len(np.unique(c.ids)) == len(c.ids)
    assert all(it is not None for it in c.items(c.ids))
    if len(c):
        _, i = c.search_ids(c.ids[:3], 2, rerank=False)
        assert (i >= 0).all()


def _segment_files(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (path / "segments").iterdir()}


def test_a_commit_writes_only_what_changed(tmp_path: Path, trained: Trained) -> None:
    c = tmp_path / "c"
    shutil.copytree(trained.collection, c)
    coll = Collection.open(c)
    before = _segment_files(c)
    queries = load_dataset("digits", "queries").images
    new = coll.add(queries[:1], ["one.png"])
    after = _segment_files(c)
    assert {n: t for n, t in after.items() if n in before} == before  # untouched
    assert sorted(set(after) - set(before)) == [
        f"000001.{p}" for p in ("codes.npy", "faiss", "ids.npy", "offsets.npy", "pictures.bin")]
    assert coll.remove([5, 6]) == 2
    deleted = set(_segment_files(c)) - set(after)
    assert deleted == {"000000.deleted.000002.npy"}
    manifest = json.loads((c / "manifest.json").read_text())
    assert manifest["format_version"] == 2 and len(manifest["segments"]) == 2
    assert manifest["segments"][0]["deleted"] == 2
    again = Collection.open(c)
    assert len(again) == 1438 + 1 - 2 and new[0] in again.ids and 5 not in again.ids
    q = np.asarray(again.embeddings[:20])
    d, i = again.search(q, 7, rerank=False)
    rd, ri = _exact(again, q, 7)
    assert (i == ri).all() and np.allclose(d, rd, atol=1e-4)
    assert np.array_equal(again.image(int(new[0])), again.stored_form(queries[:1])[0])


def test_searches_merge_segments_and_skip_deleted_rows(tmp_path: Path, trained: Trained) -> None:
    """Many segments, deletions in several, an update (a deleted row and a new one with the
    same id): the merged search equals exact search over what is left."""
    c = tmp_path / "c"
    shutil.copytree(trained.collection, c)
    coll = Collection.open(c)
    queries = load_dataset("digits", "queries").images
    for b in range(5):
        coll.add(queries[b * 10:(b + 1) * 10], [f"b{b}-{j}" for j in range(10)])
    removed = [0, 1, 2, 1440, 1450]
    n = len(coll)
    coll.remove(removed)
    assert len(coll) == n - 5 and not np.isin(removed, coll.ids).any()
    assert coll.update([3], queries[100:101]) == 1
    assert coll.ids[-1] == 3  # the updated item now lies in the newest segment
    assert len(coll.store.segments) >= 5
    q = np.asarray(load_dataset("digits", "queries").images[200:230])
    codes = coll.encoder.encode(q)
    for k in (1, 10, len(coll) + 5):
        d, i = coll.search(codes, k, rerank=False)
        rd, ri = _exact(coll, codes, min(k, len(coll)))
        assert not np.isin(removed, i).any() and not np.isin(removed, ri).any()
        assert np.allclose(d[:, :ri.shape[1]], rd, atol=1e-3)
        if k < len(coll):
            assert (i == ri).all()
        else:  # (every item: near-ties may swap in float32)
            assert (np.sort(i[:, :len(coll)]) == np.sort(ri)).all() and (i[:, len(coll):] == -1).all()
    assert np.array_equal(coll.image(3), coll.stored_form(queries[100:101])[0])


def test_merge_policy_and_compact(tmp_path: Path, trained: Trained,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    c = tmp_path / "c"
    shutil.copytree(trained.collection, c)
    coll = Collection.open(c)
    queries = load_dataset("digits", "queries").images
    for b in range(MAX_SEGMENTS + 4):
        coll.add(queries[b:b + 1], [f"a{b}"])
        assert len(coll.store.segments) <= MAX_SEGMENTS
    content = _content(coll)
    # deleting over a fifth of the big segment rewrites it
    coll.remove(np.arange(0, 400))
    assert all(s.deleted <= 0.2 * s.count for s in coll.store.segments)
    content = {i: v for i, v in content.items() if i >= 400}
    assert _content(Collection.open(c)) == content
    assert len(coll.store.segments) == 1  # here: everything, the big segment being the first
    coll.add(queries[50:51], ["late"])
    coll.remove([500])
    content = _content(coll)
    code, out, err = run(capsys, ["compact", str(c)])
    assert code == 0, err
    assert "compacted into one segment" in out
    done = Collection.open(c)
    assert len(done.store.segments) == 1 and _content(done) == content
    assert {p.name.split(".")[0] for p in (c / "segments").iterdir()} == {
        done.store.segments[0].name}
    # a compaction killed between its commit and its deletions leaves the old files behind:
    # compacting again deletes them, and nothing it lists
    (c / "segments" / "000001.codes.npy").write_bytes(b"left by a killed commit")
    code, out, _ = run(capsys, ["compact", str(c)])
    assert "already compact" in out
    assert {p.name.split(".")[0] for p in (c / "segments").iterdir()} == {
        done.store.segments[0].name}
    assert _content(Collection.open(c, verify=True)) == content


def test_open_checks_sizes_and_verify_checks_hashes(tmp_path: Path, trained: Trained,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    c = tmp_path / "c"
    shutil.copytree(trained.collection, c)
    code, out, err = run(capsys, ["verify", str(c)])
    assert code == 0 and "every checksum matches" in out, err
    codes = c / "segments" / "000000.codes.npy"
    data = bytearray(codes.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    codes.write_bytes(bytes(data))
    Collection.open(c)  # sizes only
    code, out, err = run(capsys, ["verify", str(c)])
    assert code == 2 and "000000.codes.npy" in err and "checksum" in err
    codes.write_bytes(bytes(data[:-8]))
    with pytest.raises(CollectionError, match="truncated"):
        Collection.open(c)


def test_pictures_are_compressed(tmp_path: Path, trained: Trained) -> None:
    coll = Collection.open(trained.collection)
    h, w, ch = coll.store.shape
    # 8x8 digits: raw pixels, smaller than a PNG's headers (+ 8 bytes of offset each)
    assert bytes_per_item(coll.path, coll.store.segments) < h * w * ch + 9
    rng = np.random.default_rng(0)
    for shape in ((8, 8, 1), (28, 28, 1), (32, 32, 3)):
        picture = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.array_equal(decode_picture(encode_picture(picture), shape), picture)
        smooth = np.broadcast_to(np.arange(shape[1], dtype=np.uint8)[None, :, None] * 8, shape)
        assert len(encode_picture(smooth)) < 0.5 * smooth.size or shape[0] == 8
        assert np.array_equal(decode_picture(encode_picture(smooth), shape), smooth)


# ---------------------------------------------------------------------------- format 1
def write_format_1(coll: Collection, dest: Path) -> None:
    """The layout lookalike wrote before segments: one array file each for ids, codes and
    pictures, one FAISS index, a manifest of format 1 with every file's checksum."""
    from lookalike.search.segments import checksums

    dest.mkdir()
    shutil.copytree(coll.path / "model", dest / "model")
    shutil.copy(coll.path / "metadata.sqlite", dest / "metadata.sqlite")
    np.save(dest / "ids.npy", coll.ids)
    np.save(dest / "embeddings.npy", np.asarray(coll.embeddings))
    np.save(dest / "images.npy", coll.images)
    index = FaissBackend(coll.dim)
    index.add(coll.ids, np.asarray(coll.embeddings))
    index.save(dest, "index.faiss")
    files = {"ids": "ids.npy", "embeddings": "embeddings.npy", "images": "images.npy",
             "index": "index.faiss"}
    if coll.reranks:  # format 1 stored the exact k-NN graph of a re-ranking collection
        from lookalike.search.rerank import Diffusion

        for key, arr in zip(("graph_sims", "graph_ids"), Diffusion(
                np.asarray(coll.embeddings), coll.retrieval.diffusion).neighbours(), strict=True):
            np.save(dest / f"{key}.npy", arr)
            files[key] = f"{key}.npy"
    manifest = {k: v for k, v in coll.manifest.items()
                if k not in ("segments", "pictures", "whitened_on")}
    manifest.update(format_version=1, generation=0, files=files,
                    checksums=checksums(dest, files))
    (dest / "manifest.json").write_text(json.dumps(manifest))


def test_format_1_opens_as_it_is_and_migrates(tmp_path: Path, trained: Trained,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    reference = Collection.open(trained.collection)
    old = tmp_path / "old"
    write_format_1(reference, old)
    v1 = Collection.open(old, verify=True)
    assert _content(v1) == _content(reference)
    assert (v1.search_ids([4], 5)[1] == reference.search_ids([4], 5)[1]).all()
    # a change to a format 1 collection leaves its files in place, listed as a segment
    changed = tmp_path / "changed"
    shutil.copytree(old, changed)
    c = Collection.open(changed)
    c.remove([7])
    assert (changed / "images.npy").is_file() and not (changed / "embeddings.npy").stat().st_size == 0
    assert _content(Collection.open(changed, verify=True)) == {
        i: v for i, v in _content(reference).items() if i != 7}
    # migrate: segments, compressed pictures, the old files gone
    code, out, err = run(capsys, ["migrate", str(old)])
    assert code == 0 and "migrated to collection format 2" in out, err
    assert not any((old / n).exists() for n in ("ids.npy", "embeddings.npy", "images.npy",
                                                "index.faiss", "graph_ids.npy", "graph_sims.npy"))
    migrated = Collection.open(old, verify=True)
    assert set(migrated.files) == {"whitening"}  # the graph gives way to the whitening fit
    assert _content(migrated) == _content(reference)
    assert (migrated.search_ids([4], 5)[1] == reference.search_ids([4], 5)[1]).all()
    code, out, _ = run(capsys, ["migrate", str(old)])
    assert "already in collection format 2" in out


# ---------------------------------------------------------------------------- SIGKILL
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _listing(root: Path) -> set[Path]:
    return set(root.rglob("*"))


def _started(script: str, args: list[str], root: Path) -> tuple[subprocess.Popen[bytes], float]:
    """Run ``script`` on the collection at ``root`` until it writes its first new file there
    (its work has begun: starting Python and opening the collection write nothing): the
    process and that moment (``perf_counter``)."""
    before = _listing(root)
    proc = subprocess.Popen([sys.executable, "-c", script, *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _listing(root) <= before:
        assert proc.poll() is None and time.monotonic() < deadline, "it never wrote a file"
        time.sleep(0.001)
    return proc, time.perf_counter()


REMOVE = ("import sys; from lookalike.search.collection import Collection\n"
          "c = Collection.open(sys.argv[1])\n"
          "for i in range(int(sys.argv[3])): c.remove([int(sys.argv[2]) + i])\n")
COMPACT = ("import sys; from lookalike.search.collection import Collection\n"
           "c = Collection.open(sys.argv[1]); getattr(c, sys.argv[2])()\n")


def test_sigkill_during_remove(tmp_path: Path, trained: Trained) -> None:
    """Kill a process removing one item per commit (200 commits), at a random moment after
    its first commit: the collection opens, consistent, holding exactly the items of some
    commit (a prefix of the removals)."""
    reference = _content(Collection.open(trained.collection))
    rng = np.random.default_rng(2)
    done: list[int] = []
    for attempt in range(4):
        target = shutil.copytree(trained.collection, tmp_path / f"c{attempt}")
        stamp = (target / "manifest.json").stat().st_mtime_ns
        with subprocess.Popen([sys.executable, "-c", REMOVE, str(target), "100", "200"],
                              env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) as proc:
            deadline = time.monotonic() + 120
            while (proc.poll() is None and time.monotonic() < deadline
                   and (target / "manifest.json").stat().st_mtime_ns == stamp):
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.3))
            proc.send_signal(signal.SIGKILL)
        c = Collection.open(target, verify=True)
        _consistent(c)
        gone = sorted(set(reference) - set(map(int, c.ids)))
        assert gone == list(range(100, 100 + len(gone)))
        assert _content(c) == {i: v for i, v in reference.items() if i not in set(gone)}
        done.append(len(gone))
        c.remove(list(range(100, 300)))  # finishing afterwards works
        assert len(Collection.open(target)) == len(reference) - 200
    assert any(0 < n < 200 for n in done), f"no kill landed mid-run: {done}"


@pytest.mark.parametrize("operation", ["compact", "migrate"])
def test_sigkill_during_compaction_and_migration(tmp_path: Path, trained: Trained,
                                                 operation: str) -> None:
    """Kill a compaction (of many segments, with deletions) or a migration (of format 1) at
    random moments once it has begun (written its first file), up to about its commit: the
    collection opens, consistent, with the same content each time; a kill landed inside it."""
    source = Collection.open(shutil.copytree(trained.collection, tmp_path / "base"))
    if operation == "compact":
        queries = load_dataset("digits", "queries").images
        for b in range(5):
            source.add(queries[b * 5:(b + 1) * 5], [f"b{b}-{j}" for j in range(5)])
        source.remove(list(range(0, 200, 3)))

    def fresh(name: str) -> Path:
        if operation == "compact":
            return shutil.copytree(source.path, tmp_path / name)
        write_format_1(source, tmp_path / name)
        return tmp_path / name

    reference = _content(source)
    # how long the operation runs from its first file to its commit (a new manifest)
    timed = fresh("timed")
    manifest = (timed / "manifest.json").read_bytes()
    proc, began = _started(COMPACT, [str(timed), operation], timed)
    while (timed / "manifest.json").read_bytes() == manifest:
        assert proc.poll() is None, f"the {operation} ended without a commit"
        time.sleep(0.001)
    full = time.perf_counter() - began
    assert proc.wait() == 0
    rng = np.random.default_rng(3)
    outcomes, inside = [], []
    for attempt in range(4):
        target = fresh(f"c{attempt}")
        manifest = (target / "manifest.json").read_bytes()
        proc, began = _started(COMPACT, [str(target), operation], target)
        time.sleep(rng.uniform(0, 1.2) * full)  # mostly before the commit, a few after it
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        c = Collection.open(target, verify=True)
        _consistent(c)
        assert _content(c) == reference
        committed = len(c.store.segments) == 1 and c.manifest["format_version"] == 2
        outcomes.append(committed)
        # killed while it ran, after it had written a file, before its commit: inside it
        inside.append(running and not committed and (target / "manifest.json").read_bytes() == manifest)
        getattr(c, operation)()  # finishing it afterwards works
        assert _content(Collection.open(target, verify=True)) == reference
        listed = {f for s in c.store.segments for f in s.files.values()}
        assert {f"segments/{p.name}" for p in (target / "segments").iterdir()} == listed
    assert not all(outcomes), f"no kill landed before the {operation} committed"
    assert any(inside), f"no kill landed inside the {operation}: {outcomes}"


@pytest.mark.parametrize("how", ["open", "refresh"])
def test_a_reader_reads_again_when_a_commit_deletes_what_it_read(
        tmp_path: Path, trained: Trained, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Readers take no lock: one that read a manifest whose files another writer's commit
    then deleted (a deletion record replaced) reads the new manifest instead of failing."""
    from lookalike.search import segments

    path = shutil.copytree(trained.collection, tmp_path / "c")
    writer = Collection.open(path)
    writer.remove([1])
    reader = Collection.open(path)
    writer.remove([2])  # the reader is one commit behind
    real, read = segments.open_store, []

    def racing(root, manifest, verify=False, loaded=None):  # noqa: ANN001, ANN202
        read.append(manifest["generation"])
        if len(read) == 1:  # between reading this manifest and its files, a commit
            writer.remove([3])
        return real(root, manifest, verify, loaded)

    monkeypatch.setattr(segments, "open_store", racing)
    if how == "open":
        reader = Collection.open(path)
    else:
        assert reader.refresh()
    assert read == [read[0], read[0] + 1]  # the first read failed: its deletions were gone
    assert reader.manifest["generation"] == writer.manifest["generation"]
    assert not set(reader.ids.tolist()) & {1, 2, 3} and len(reader) == len(writer)
    _consistent(reader)


@pytest.mark.parametrize(("factory", "params"), [("Flat", ""), ("IVF16,Flat", "nprobe=16"),
                                                 ("HNSW16", "efSearch=128")])
def test_deleted_rows_are_skipped_by_every_index(factory: str, params: str) -> None:
    """Deleted ids never come back; with every list probed (IVF) or a wide beam (HNSW) the
    rest equals exact search over the live rows."""
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((3000, 16)).astype(np.float32)
    ids = np.arange(3000, dtype=np.int64) * 3
    live = np.ones(len(ids), bool)
    live[:1200:2] = False
    store = SegmentStore.__new__(SegmentStore)  # (one loaded segment, no files)
    index = IndexSpec(factory, params).build(16, ids, codes)
    store.parts = [_Loaded(Segment("x", len(ids), {}, {}), ids, codes, live, index,
                           gone_ids=ids[~live])]
    _, found = store.search(codes[:40], 10)
    assert not np.isin(found, ids[~live]).any()
    truth = ids[live][np.argsort(((codes[:40, None] - codes[live][None]) ** 2).sum(-1), 1)[:, :10]]
    assert np.mean(found == truth) >= (1.0 if factory != "HNSW16" else 0.95)


def test_an_inverted_file_collection_grows_by_exact_segments(tmp_path: Path,
                                                             trained: Trained) -> None:
    """A segment too small to train the collection's IVF gets an exact index; reopened, the
    collection keeps its search parameters and still finds what exact search finds."""
    from lookalike.models.modelio import load_model

    ds = load_dataset("digits", "all")
    coll = Collection.create(tmp_path / "ivf", load_model(trained.model), ds,
                             factory="IVF16,Flat", search_params="nprobe=16")
    queries = load_dataset("digits", "queries").images
    new = coll.add(queries[:3], ["a", "b", "c"])
    coll.remove([5])
    again = Collection.open(tmp_path / "ivf")
    assert again.backend.settings()["search_params"] == "nprobe=16"
    q = coll.encoder.encode(queries[:3])
    _, found = again.search(q, 5, rerank=False)
    assert (found == _exact(again, q, 5)[1]).all() and (found[:, 0] == new).all()
