"""Near-duplicates: a folder of distinct digits with planted copies (resized, re-encoded,
cropped a few pixels), indexed with a small model, must give exactly the planted groups."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from conftest import run_cli as run
from lookalike.config import InputSpec
from lookalike.data.images import conform
from lookalike.search.collection import Collection
from lookalike.search.duplicates import (
    DEFAULT_THRESHOLD,
    aligned_correlation,
    duplicate_rows,
    find_duplicates,
    thumbnails,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SIDE = 32


def _digits(count: int, seed: int = 0) -> list[Image.Image]:
    """``count`` distinct scikit-learn digits (a seeded draw), upscaled to 32x32 (bicubic)."""
    data = load_digits()
    pick = np.random.default_rng(seed).choice(len(data.images), count, replace=False)
    pixels = np.clip(np.rint(data.images[pick] * (255 / 16)), 0, 255).astype(np.uint8)
    return [Image.fromarray(p).resize((SIDE, SIDE), Image.Resampling.BICUBIC) for p in pixels]


def _jpeg(im: Image.Image, quality: int = 70) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue()))


def _scaled(im: Image.Image, factor: float) -> Image.Image:
    return im.resize((round(im.width * factor), round(im.height * factor)),
                     Image.Resampling.BICUBIC)


#: The planted copies: which of the distinct digits, and how each copy was made.
PLANTED: dict[int, list[tuple[str, Callable[[Image.Image], Image.Image]]]] = {
    0: [("0.8x", lambda im: _scaled(im, 0.8)), ("jpeg70", _jpeg)],
    1: [("1.25x", lambda im: _scaled(im, 1.25))],
    2: [("jpeg70", _jpeg)],
    3: [("2px off the bottom", lambda im: im.crop((0, 0, SIDE, SIDE - 2)))],
    4: [("2px off the left, resized back",
         lambda im: im.crop((2, 0, SIDE, SIDE)).resize((SIDE, SIDE), Image.Resampling.BICUBIC))],
    5: [("0.8x", lambda im: _scaled(im, 0.8)),
        ("2px off the top, resized back",
         lambda im: im.crop((0, 2, SIDE, SIDE)).resize((SIDE, SIDE), Image.Resampling.BICUBIC))],
    6: [("1.25x then jpeg70", lambda im: _jpeg(_scaled(im, 1.25)))],
    7: [("1px off the right, jpeg70", lambda im: _jpeg(im.crop((0, 0, SIDE - 1, SIDE))))],
}


def _folder(root: Path, count: int = 40) -> dict[str, int]:
    """Write the distinct digits and the planted copies; returns file name -> digit number."""
    root.mkdir()
    origin: dict[str, int] = {}
    digits = _digits(count)
    for i, im in enumerate(digits):
        im.save(root / f"d{i:02d}.png")
        origin[f"d{i:02d}.png"] = i
    for i, copies in PLANTED.items():
        for c, (_, make) in enumerate(copies):
            name = f"d{i:02d}_copy{c}.png"
            make(digits[i]).convert("L").save(root / name)
            origin[name] = i
    return origin


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """The folder indexed with a small model trained (1 epoch) on it at 32x32."""
    from conftest import _one_thread, _run_quietly

    root = tmp_path_factory.mktemp("dups")
    origin = _folder(root / "images")
    with _one_thread():
        _run_quietly(["-q", "train", "--dataset", str(root / "images"), "--epochs", "1",
                      "--size", str(SIDE), "--device", "cpu", "--seed", "0",
                      "--out", str(root / "model")])
        _run_quietly(["-q", "index", "--model", str(root / "model"), "--dataset",
                      str(root / "images"), "--out", str(root / "coll")])
    return root / "coll", origin


def _expected(origin: dict[str, int], images: Path) -> list[list[str]]:
    return sorted(sorted(str(images / n) for n, i in origin.items() if i == digit)
                  for digit in PLANTED)


def test_finds_every_planted_group_and_nothing_else(planted: tuple[Path, dict[str, int]]) -> None:
    coll_dir, origin = planted
    coll = Collection.open(coll_dir)
    assert len(coll) == len(origin) and coll.images.shape[1:] == (SIDE, SIDE, 1)
    groups = find_duplicates(coll)
    sources = {it.id: it.source for it in coll.items(coll.ids) if it}
    found = sorted(sorted(sources[i] for i in g) for g in groups)
    assert found == _expected(origin, coll_dir.parent / "images")
    assert all(g == sorted(g) for g in groups) and groups == sorted(groups)


def test_blocks_do_not_change_the_groups(planted: tuple[Path, dict[str, int]]) -> None:
    coll = Collection.open(planted[0])
    codes = np.asarray(coll.embeddings)
    whole = duplicate_rows(codes, coll.images)
    assert duplicate_rows(codes, coll.images, block=7) == whole and len(whole) == len(PLANTED)


def test_the_threshold_separates_copies_from_distinct_digits() -> None:
    """The margins behind the default: every planted copy's aligned correlation with its
    original is above it, and every pair of distinct digits below it."""
    digits = _digits(40)
    copies = [(i, make(digits[i])) for i, made in PLANTED.items() for _, make in made]
    spec = InputSpec(1, SIDE, SIDE)
    stored = conform([np.asarray(im.convert("L"))[:, :, None] for im in digits]
                     + [np.asarray(c.convert("L"))[:, :, None] for _, c in copies], spec)
    n = len(digits)
    others = np.array([[j for j in range(n) if j != i] for i in range(n)])
    small, shape = thumbnails(stored)
    distinct = aligned_correlation(small, shape, np.arange(n), others)
    planted = aligned_correlation(small, shape, np.arange(n, len(stored)),
                                  np.array([[i] for i, _ in copies]))
    assert distinct.max() < DEFAULT_THRESHOLD - 0.002
    assert planted.min() > DEFAULT_THRESHOLD + 0.002


def test_aligned_correlation_equals_the_best_warp_done_one_by_one() -> None:
    """The fast path (one sparse operator for all warps, the mean folded out of the
    numerator) against SciPy's warp and NumPy's correlation, pair by pair, on a non-square
    size so that the axes cannot be mixed up."""
    from scipy import ndimage

    from lookalike.search.duplicates import WARPS

    stored = conform([np.asarray(im)[:, :, None] for im in _digits(6, seed=3)],
                     InputSpec(1, 20, 24))
    grey, shape = thumbnails(stored)
    assert shape == (20, 24)
    rows = np.arange(3)
    nbrs = np.array([[3, 4, -1], [5, 3, 4], [4, 5, 0]])
    got = aligned_correlation(grey, shape, rows, nbrs)
    plain = aligned_correlation(grey, shape, rows, nbrs, floor=2.0)  # none can reach 2: plain
    h, w = shape
    for r in rows:
        image = grey[r].reshape(h, w).astype(np.float64)
        for c, j in enumerate(nbrs[r]):
            if j < 0:
                assert got[r, c] == plain[r, c] == -1
                continue
            assert plain[r, c] == pytest.approx(np.corrcoef(grey[r], grey[j])[0, 1], abs=1e-5)
            best = max(
                np.corrcoef(ndimage.affine_transform(
                    image, np.diag([sy, sx]),
                    offset=((h - 1) / 2 * (1 - sy) + dy * h, (w - 1) / 2 * (1 - sx) + dx * w),
                    order=1, mode="nearest").ravel(), grey[j])[0, 1]
                for sy, sx, dy, dx in WARPS)
            assert got[r, c] == pytest.approx(best, abs=1e-5)
            assert got[r, c] >= plain[r, c] - 1e-6


def test_cli_text_and_json(capsys: pytest.CaptureFixture[str],
                           planted: tuple[Path, dict[str, int]]) -> None:
    coll_dir, origin = planted
    code, out, err = run(capsys, ["duplicates", coll_dir, "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["threshold"] == DEFAULT_THRESHOLD and result["items"] == len(origin)
    found = sorted(sorted(item["source"] for item in g) for g in result["groups"])
    assert found == _expected(origin, coll_dir.parent / "images")
    code, out, err = run(capsys, ["duplicates", coll_dir])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"{len(PLANTED)} group(s) of near-duplicates among {len(origin)}")
    assert sum(line.startswith("group ") for line in lines) == len(PLANTED)
    # At -1 every candidate pair joins: each item is in a group (the k-NN graph's pieces).
    code, out, _ = run(capsys, ["duplicates", coll_dir, "--threshold", "-1", "--json"])
    assert code == 0 and sum(len(g) for g in json.loads(out)["groups"]) == len(origin)


@pytest.mark.parametrize("value", ["1.5", "nan", "high"])
def test_cli_refuses_a_bad_threshold(capsys: pytest.CaptureFixture[str],
                                     planted: tuple[Path, dict[str, int]], value: str) -> None:
    code, _, err = run(capsys, ["duplicates", planted[0], "--threshold", value])
    assert code == 2 and "--threshold" in err and err.count("\n") == 1


def _components(pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected components of the graph ``pairs`` (union-find), each sorted, sorted."""
    parent: dict[int, int] = {}

    def root(a: int) -> int:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    for a, b in pairs:
        parent[root(a)] = root(b)
    groups: dict[int, list[int]] = {}
    for a in parent:
        groups.setdefault(root(a), []).append(a)
    return sorted(sorted(g) for g in groups.values())


def test_cli_k_sets_how_many_nearest_codes_are_candidates(
        capsys: pytest.CaptureFixture[str], planted: tuple[Path, dict[str, int]]) -> None:
    """`duplicates -k K`: each item's K nearest codes (by cosine) are its candidates. At
    threshold -1 every candidate pair joins, so the groups are the components of the K-NN
    graph, computed here from the stored codes."""
    coll_dir, origin = planted
    coll = Collection.open(coll_dir)
    x = np.asarray(coll.embeddings, dtype=np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    found = {}
    for k in (1, 3):
        code, out, err = run(capsys, ["duplicates", coll_dir, "-k", str(k), "--threshold", "-1",
                                      "--json"])
        assert code == 0, err
        result = json.loads(out)
        assert result["k"] == k and result["items"] == len(origin)
        found[k] = sorted(sorted(item["id"] for item in g) for g in result["groups"])
        pairs = [(int(coll.ids[r]), int(coll.ids[c])) for r in range(len(x)) for c in order[r, :k]]
        assert found[k] == _components(pairs)
    assert len(found[1]) > len(found[3])  # more candidates, fewer and larger pieces
