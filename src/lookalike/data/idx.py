"""Read and write IDX files, the format of MNIST, Fashion-MNIST and their relatives.

An IDX file is a 4-byte magic number -- two zero bytes, a dtype code and the number of
dimensions -- followed by one big-endian ``uint32`` per dimension and then the data, in
C order and big-endian byte order. Files are often gzip-compressed; :func:`read_idx`
recognises compression by its content (the gzip magic bytes ``1f 8b``), not by the name.

Type codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
``0x0D`` float32, ``0x0E`` float64.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from ..fsutil import atomic_write

__all__ = ["find_idx_split", "load_idx_split", "read_idx", "write_idx"]

logger = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

#: IDX type code -> big-endian numpy dtype of the data as stored.
_CODE_TO_DTYPE: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
#: (numpy kind, itemsize) -> IDX type code, for writing.
_KIND_TO_CODE: dict[tuple[str, int], int] = {
    (dt.kind, dt.itemsize): code for code, dt in _CODE_TO_DTYPE.items()
}

_GZIP_MAGIC = b"\x1f\x8b"
#: Deflate cannot compress better than about 1032:1; a gzip file claiming more data than
#: this times its own size is lying, and we refuse it before allocating anything.
_MAX_DEFLATE_RATIO = 1032
_CHUNK = 1 << 20

SPLITS = ("train", "t10k")


def _open_idx(path: Path) -> tuple[io.BufferedReader, io.BufferedIOBase, bool, int]:
    """Open ``path``; return (raw file, stream to read, is_gzip, size on disk in bytes)."""
    try:
        raw = open(path, "rb")  # closed by read_idx
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        size = os.fstat(raw.fileno()).st_size
        is_gzip = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
    except OSError as exc:
        raw.close()
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw, mode="rb") if is_gzip else raw
    return raw, stream, is_gzip, size


def _read_exact(stream: io.BufferedIOBase, n: int, path: Path, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise DataError(
            f"{path}: truncated IDX file: expected {n} bytes of {what}, got {len(data)}"
        )
    return data


def _read_body(stream: io.BufferedIOBase, nbytes: int, path: Path) -> bytearray:
    """Read exactly ``nbytes`` into a new buffer; DataError if the stream ends early."""
    buf = bytearray(nbytes)
    view = memoryview(buf)
    got = 0
    while got < nbytes:
        n = stream.readinto(view[got : got + _CHUNK])
        if not n:
            raise DataError(f"{path}: truncated IDX file: expected {nbytes} data bytes, got {got}")
        got += n
    return buf


def read_idx(path: StrPath) -> npt.NDArray[Any]:
    """Read an IDX file, plain or gzip-compressed (detected by content, not by name).

    Args:
        path: the file to read.

    Returns:
        A native-endian array of the shape recorded in the header, with dtype uint8,
        int8, int16, int32, float32 or float64 per the type code.

    Raises:
        DataError: the file is missing or unreadable, has a bad magic number or unknown
            type code, is truncated, has bytes after the data, is a corrupt gzip stream,
            or its header claims more data than the file could hold.
    """
    path = Path(path)
    raw, stream, is_gzip, disk_size = _open_idx(path)
    try:
        with raw, stream:
            magic = _read_exact(stream, 4, path, "header")
            if magic[0] != 0 or magic[1] != 0:
                raise DataError(
                    f"{path}: not an IDX file: magic {magic.hex()} does not start with 0000"
                )
            code, ndim = magic[2], magic[3]
            dtype = _CODE_TO_DTYPE.get(code)
            if dtype is None:
                known = ", ".join(f"0x{c:02X}" for c in _CODE_TO_DTYPE)
                raise DataError(
                    f"{path}: unknown IDX type code 0x{code:02X}; expected one of {known}"
                )
            dims = struct.unpack(f">{ndim}I", _read_exact(stream, 4 * ndim, path, "dimensions"))
            nbytes = math.prod(dims) * dtype.itemsize
            header = 4 + 4 * ndim
            if is_gzip:
                capacity = disk_size * _MAX_DEFLATE_RATIO
                if header + nbytes > capacity:
                    raise DataError(
                        f"{path}: IDX header claims shape {dims} ({nbytes} bytes), more than a "
                        f"{disk_size}-byte gzip file can hold"
                    )
            elif header + nbytes > disk_size:
                raise DataError(
                    f"{path}: truncated IDX file: header claims shape {dims} ({nbytes} data "
                    f"bytes) but only {disk_size - header} follow the header"
                )
            buf = _read_body(stream, nbytes, path)
            if stream.read(1):
                raise DataError(
                    f"{path}: trailing data after the {nbytes} data bytes of shape {dims}"
                )
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt gzip stream: {exc}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    array = np.frombuffer(buf, dtype=dtype).reshape(dims)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    logger.debug("read %s: shape %s, dtype %s", path, array.shape, array.dtype)
    return array


def write_idx(path: StrPath, array: npt.ArrayLike) -> None:
    """Write ``array`` as an IDX file, gzip-compressed if ``path`` ends with ``.gz``.

    The file appears atomically: it is written to a temporary file in the same
    directory and renamed into place.

    Args:
        path: destination file; parent directories must exist.
        array: any shape with 0..255 dimensions, each < 2**32; dtype uint8, int8, int16,
            int32, float32 or float64 (either byte order).

    Raises:
        DataError: unsupported dtype, too many dimensions, or a dimension too large.
    """
    path = Path(path)
    arr = np.asarray(array)
    code = _KIND_TO_CODE.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise DataError(
            f"{path}: cannot write dtype {arr.dtype} as IDX; expected uint8, int8, int16, "
            "int32, float32 or float64"
        )
    if arr.ndim > 255:
        raise DataError(f"{path}: cannot write a {arr.ndim}-dimensional array as IDX (max 255)")
    if any(d >= 2**32 for d in arr.shape):
        raise DataError(f"{path}: shape {arr.shape} has a dimension >= 2**32, too large for IDX")
    data = np.ascontiguousarray(arr, dtype=_CODE_TO_DTYPE[code])
    header = bytes((0, 0, code, arr.ndim)) + struct.pack(f">{arr.ndim}I", *arr.shape)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            if path.name.endswith(".gz"):
                with gzip.GzipFile(filename=path.name, mode="wb", fileobj=f, mtime=0) as gz:
                    gz.write(header)
                    gz.write(data.tobytes())
            else:
                f.write(header)
                f.write(data.tobytes())

    atomic_write(path, write)
    logger.debug("wrote %s: shape %s, dtype %s", path, arr.shape, arr.dtype)


def _candidates(split: str, kind: str, idx_dims: int) -> list[str]:
    names = [f"{split}-{kind}-idx{idx_dims}-ubyte", f"{split}-{kind}.idx{idx_dims}-ubyte"]
    return [n + ext for n in names for ext in ("", ".gz")]


def find_idx_split(directory: StrPath, split: str) -> tuple[Path, Path]:
    """Find the images and labels files of an MNIST-style split in ``directory``.

    Looks for ``{split}-images-idx3-ubyte`` and ``{split}-labels-idx1-ubyte``, also with
    a ``.gz`` suffix and in the dotted spelling ``{split}-images.idx3-ubyte``; the first
    of those that exists wins (uncompressed before ``.gz``, usual before dotted).

    Args:
        directory: the folder holding the files.
        split: ``"train"`` or ``"t10k"``.

    Returns:
        ``(images_path, labels_path)``.

    Raises:
        DataError: bad split, ``directory`` is not a directory, or a file is missing (the
            message lists every name looked for).
    """
    if split not in SPLITS:
        raise DataError(f"unknown IDX split {split!r}; expected one of {', '.join(SPLITS)}")
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (looking for the {split} IDX files)")
    found: list[Path] = []
    missing: list[str] = []
    for kind, idx_dims in (("images", 3), ("labels", 1)):
        names = _candidates(split, kind, idx_dims)
        hit = next((directory / n for n in names if (directory / n).is_file()), None)
        if hit is None:
            missing.append(f"no {split} {kind} (looked for {', '.join(names)})")
        else:
            found.append(hit)
    if missing:
        raise DataError(f"{directory}: {'; '.join(missing)}")
    return found[0], found[1]


def load_idx_split(
    directory: StrPath, split: str
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Load an MNIST-style split (images and labels) from ``directory``.

    Args:
        directory: folder with the files (see :func:`find_idx_split` for the names).
        split: ``"train"`` or ``"t10k"``.

    Returns:
        ``(images, labels)``: images uint8 of shape (n, H, W), labels int64 of shape (n,).

    Raises:
        DataError: files missing or unreadable, images not a 3-d uint8 array, labels not
            a 1-d integer array, or the counts differ.
    """
    images_path, labels_path = find_idx_split(directory, split)
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 images of shape (n, H, W), got {images.dtype} "
            f"{images.shape}"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{labels_path}: expected integer labels of shape (n,), got {labels.dtype} "
            f"{labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path}"
        )
    logger.debug("loaded %s split from %s: %d images of %dx%d", split, directory, *images.shape)
    return images, labels.astype(np.int64)
