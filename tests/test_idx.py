"""Tests for lookalike.data.idx: reading, writing and finding IDX (MNIST-format) files."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_fashion_mnist
from lookalike.data.datasets import FASHION_MNIST_DIRS
from lookalike.data.idx import find_idx_split, load_idx_split, read_idx, write_idx
from lookalike.errors import DataError

FASHION_MNIST = Path(FASHION_MNIST_DIRS[0])


def _header(code: int, dims: tuple[int, ...]) -> bytes:
    return bytes((0, 0, code, len(dims))) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    ("dtype", "shape"),
    [
        (np.uint8, (5, 3, 4)),
        (np.int8, (7,)),
        (np.int16, (2, 3)),
        (np.int32, (3, 1, 2, 2)),
        (np.float32, (4, 4)),
        (np.float64, (2, 0, 3)),
        (np.uint8, ()),
    ],
)
def test_round_trip(tmp_path: Path, dtype: type, shape: tuple[int, ...], suffix: str) -> None:
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    array: np.ndarray
    if info is not None:
        array = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    else:
        array = rng.standard_normal(shape).astype(dtype)
    path = tmp_path / f"data{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_big_endian_input_and_layout(tmp_path: Path) -> None:
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    path = tmp_path / "x"
    write_idx(path, array)
    assert path.read_bytes() == _header(0x0C, (2, 3)) + array.tobytes()
    np.testing.assert_array_equal(read_idx(path), array)
    write_idx(path, np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)))
    np.testing.assert_array_equal(read_idx(path), np.arange(6).reshape(2, 3))


def test_gzip_detected_by_content_not_name(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "images-no-suffix"
    path.write_bytes(gzip.compress(_header(0x08, (2, 3, 4)) + array.tobytes()))
    np.testing.assert_array_equal(read_idx(path), array)
    # and a plain file that is misleadingly named .gz
    plain = tmp_path / "plain.gz"
    plain.write_bytes(_header(0x08, (2, 3, 4)) + array.tobytes())
    np.testing.assert_array_equal(read_idx(plain), array)


def test_write_rejects_unsupported_dtype(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="bad.idx.*int64"):
        write_idx(tmp_path / "bad.idx", np.zeros(3, dtype=np.int64))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compress", [False, True])
def test_bad_magic(tmp_path: Path, compress: bool) -> None:
    data = b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00"
    path = tmp_path / "badmagic.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match="badmagic.idx.*magic"):
        read_idx(path)


def test_unknown_type_code(tmp_path: Path) -> None:
    path = tmp_path / "badcode.idx"
    path.write_bytes(_header(0x0A, (1,)) + b"\x00")
    with pytest.raises(DataError, match="badcode.idx.*0x0A"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated(tmp_path: Path, compress: bool) -> None:
    data = _header(0x08, (4, 5)) + bytes(19)
    path = tmp_path / "short.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match="short.idx.*truncated"):
        read_idx(path)


@pytest.mark.parametrize("cut", [0, 2, 6])
def test_truncated_header(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "tiny.idx"
    path.write_bytes(_header(0x08, (1, 1))[:cut])
    with pytest.raises(DataError, match="tiny.idx.*truncated"):
        read_idx(path)


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    blob = gzip.compress(_header(0x08, (100, 100)) + bytes(range(256)) * 40)
    path = tmp_path / "cutgz.idx.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="cutgz.idx.gz"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_trailing_bytes(tmp_path: Path, compress: bool) -> None:
    data = _header(0x08, (2, 2)) + bytes(4) + b"\x07"
    path = tmp_path / "long.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match="long.idx.*trailing"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_huge_dims_refused_before_allocating(tmp_path: Path, compress: bool) -> None:
    # 2**96 float64 values: allocating would fail loudly; the guard must come first.
    data = _header(0x0E, (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)) + bytes(16)
    path = tmp_path / "huge.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(DataError, match="huge.idx"):
        read_idx(path)


def test_huge_dims_within_int64_refused(tmp_path: Path) -> None:
    # 16 GB claimed by a 40-byte gzip file
    data = gzip.compress(_header(0x08, (4_000_000, 4_000)) + bytes(8))
    path = tmp_path / "bomb.gz"
    path.write_bytes(data)
    with pytest.raises(DataError, match="bomb.gz.*gzip file can hold"):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nothere.idx.*no such file"):
        read_idx(tmp_path / "nothere.idx")


def _write_split(
    directory: Path, split: str, n: int, *, dotted: bool = False, gz: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 6, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    sep = "." if dotted else "-"
    ext = ".gz" if gz else ""
    write_idx(directory / f"{split}-images{sep}idx3-ubyte{ext}", images)
    write_idx(directory / f"{split}-labels{sep}idx1-ubyte{ext}", labels)
    return images, labels


@pytest.mark.parametrize("dotted", [False, True])
@pytest.mark.parametrize("gz", [False, True])
def test_find_idx_split_name_variants(tmp_path: Path, dotted: bool, gz: bool) -> None:
    _write_split(tmp_path, "t10k", 3, dotted=dotted, gz=gz)
    images, labels = find_idx_split(tmp_path, "t10k")
    sep = "." if dotted else "-"
    ext = ".gz" if gz else ""
    assert images == tmp_path / f"t10k-images{sep}idx3-ubyte{ext}"
    assert labels == tmp_path / f"t10k-labels{sep}idx1-ubyte{ext}"


def test_find_idx_split_errors(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", 2)
    with pytest.raises(DataError, match=r"no t10k images .*t10k-images-idx3-ubyte\.gz.*labels"):
        find_idx_split(tmp_path, "t10k")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"no train labels \(looked for train-labels-idx1-ubyte,"):
        find_idx_split(tmp_path, "train")
    with pytest.raises(DataError, match="'test'.*train, t10k"):
        find_idx_split(tmp_path, "test")
    with pytest.raises(DataError, match="absent.*not a directory"):
        find_idx_split(tmp_path / "absent", "train")


def test_load_idx_split(tmp_path: Path) -> None:
    images, labels = _write_split(tmp_path, "train", 7)
    got_images, got_labels = load_idx_split(tmp_path, "train")
    assert got_images.dtype == np.uint8 and got_images.shape == (7, 6, 5)
    assert got_labels.dtype == np.int64 and got_labels.shape == (7,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


def test_load_idx_split_count_mismatch(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", 7)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(6, dtype=np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: 6 labels for 7 images"):
        load_idx_split(tmp_path, "train")


def test_load_idx_split_wrong_shapes(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", 4)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 30), dtype=np.uint8))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: expected uint8 images"):
        load_idx_split(tmp_path, "train")
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 2, 2), dtype=np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, dtype=np.float32))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: expected integer labels"):
        load_idx_split(tmp_path, "train")


@needs_fashion_mnist
def test_fashion_mnist_t10k() -> None:
    images, labels = load_idx_split(FASHION_MNIST, "t10k")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert labels.min() >= 0 and labels.max() <= 9
    assert set(np.unique(labels).tolist()) == set(range(10))
