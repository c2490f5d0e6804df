"""The duplicate pass over arrays of codes and thumbnails: its candidate search (exact, streamed
over the codes, and the inverted file used at scale), the gate, resuming, and its checkpoint
written atomically."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pytest
from scipy import ndimage

from lookalike.search import duppass
from lookalike.search.alignment import _axis_dense

SHAPE = (32, 32)
SETTINGS = duppass.PassSettings(k=5, floor=0.85, items=0, fingerprint="test", refine_above=0.875)


def _items(n: int, copies: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, set[tuple[int, int]]]:
    """Smooth random grey 32x32 pictures, the last ``copies`` of them edited copies (zoomed to
    88-100%, shifted, brightened, noised) of the first ones; codes: random, a copy's its
    original's plus a little noise."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (n, 32, 32))
    pics = np.stack([ndimage.gaussian_filter(p, 3) for p in noise])
    pics = (pics - pics.mean()) / pics.std() * 40 + 128
    planted = set()
    for c in range(copies):
        orig, dup = c, n - copies + c
        z = round(rng.uniform(0.88, 1.0), 3)
        dy, dx = (round(v, 3) for v in rng.uniform(-(1 - z) / 2, (1 - z) / 2, 2))
        pics[dup] = (_axis_dense(32, z, dy) @ pics[orig] @ _axis_dense(32, z, dx).T
                     * rng.uniform(0.92, 1.08) + rng.normal(0, 1.5, (32, 32)))
        planted.add((orig, dup))
    thumbs = np.clip(np.rint(pics), 0, 255).astype(np.uint8).reshape(n, -1)
    codes = rng.normal(0, 1, (n, 48)).astype(np.float32)
    for orig, dup in planted:
        codes[dup] = codes[orig] + rng.normal(0, 0.2, 48).astype(np.float32)
    return codes, thumbs, planted


def _pairs(result: tuple[np.ndarray, np.ndarray, np.ndarray]) -> set[tuple[int, int]]:
    return set(zip(result[0].tolist(), result[1].tolist(), strict=True))


def _scores(result: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[tuple[int, int], float]:
    return dict(zip(zip(result[0].tolist(), result[1].tolist(), strict=True),
                    result[2].tolist(), strict=True))


def test_exact_search_streamed_in_chunks_finds_what_a_flat_index_finds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    codes = np.random.default_rng(3).normal(0, 1, (500, 16)).astype(np.float32)
    flat = faiss.IndexFlatIP(16)
    flat.add(duppass.unit_rows(codes))
    expected = flat.search(duppass.unit_rows(codes[::7]), 6)[1]
    monkeypatch.setattr(duppass, "CHUNK", 64)  # 8 chunks, streamed (no copy of them all)
    nbr = duppass._Neighbours(codes, 72, 6)
    assert nbr.index is None
    got = nbr.search(np.arange(0, 500, 7))
    assert all(set(g) == set(e) for g, e in zip(got.tolist(), expected.tolist(), strict=True))


def test_the_inverted_file_finds_the_planted_copies_the_exact_search_finds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    codes, thumbs, planted = _items(3000, 40)
    settings = SETTINGS
    exact = _pairs(duppass.scan(codes, thumbs.__getitem__, SHAPE, settings))
    assert planted <= exact
    monkeypatch.setattr(duppass, "EXACT_WORK", 0)
    stats: dict[str, float] = {}
    ivf = _pairs(duppass.scan(codes, thumbs.__getitem__, SHAPE, settings, stats=stats))
    assert planted <= ivf
    # the gate: only the pairs whose block means correlate reach the pixels, copies among them
    assert 40 <= stats["scored"] < stats["candidates"] / 10


def test_a_since_pass_finds_the_pairs_of_the_full_pass_with_a_new_item() -> None:
    codes, thumbs, planted = _items(2000, 30)
    full = duppass.scan(codes, thumbs.__getitem__, SHAPE, SETTINGS)
    new = np.arange(1980, 2000)
    since = duppass.scan(codes, thumbs.__getitem__, SHAPE, SETTINGS, queries=new)
    with_new = {p for p in _pairs(full) if p[1] >= 1980}
    assert with_new == _pairs(since) and len(with_new) >= 20
    scores = _scores(full)
    assert all(scores[p] == s for p, s in _scores(since).items())


def test_an_interrupted_pass_over_the_inverted_file_resumes_to_the_same_pairs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duppass, "EXACT_WORK", 0)
    codes, thumbs, _ = _items(1200, 20)
    whole = duppass.scan(codes, thumbs.__getitem__, SHAPE, SETTINGS, block=256)
    checkpoint = duppass.Checkpoint(tmp_path, SETTINGS, every_s=0)
    blocks: list[int] = []

    def stop_after_three(rows: int) -> None:
        blocks.append(rows)
        if len(blocks) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        duppass.scan(codes, thumbs.__getitem__, SHAPE, SETTINGS, block=256,
                     checkpoint=checkpoint, progress=stop_after_three)
    assert checkpoint.load() is not None and checkpoint.load()[0] == 768  # type: ignore[index]
    blocks.clear()
    again = duppass.scan(codes, thumbs.__getitem__, SHAPE, SETTINGS, block=256,
                         checkpoint=checkpoint, progress=blocks.append)
    assert blocks == [768, 256, 176]
    assert all(np.array_equal(x, y) for x, y in zip(again, whole, strict=True))


def test_a_crash_while_saving_leaves_the_last_whole_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = duppass.Checkpoint(tmp_path, SETTINGS, every_s=0)
    i, j, s = np.array([1, 2]), np.array([5, 9]), np.array([0.99, 0.9], np.float32)
    checkpoint.save(10, i, j, s)
    savez = np.savez

    def torn(file: object, **arrays: np.ndarray) -> None:  # half a file, then the crash
        savez(file, i=arrays["i"])  # type: ignore[arg-type]
        raise OSError("disk gone")

    monkeypatch.setattr(np, "savez", torn)
    with pytest.raises(OSError, match="disk gone"):
        checkpoint.save(20, np.arange(5), np.arange(5) + 10, np.ones(5, np.float32))
    monkeypatch.setattr(np, "savez", savez)
    done, i2, j2, s2 = checkpoint.load()  # type: ignore[misc]
    assert done == 10 and i2.tolist() == [1, 2] and j2.tolist() == [5, 9]
    assert np.array_equal(s2, s)
    assert [p.name for p in tmp_path.iterdir()] == ["pass.npz"]  # no temporary file left
    checkpoint.clear()
    assert not list(tmp_path.iterdir())
