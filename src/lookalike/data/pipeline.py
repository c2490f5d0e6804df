"""Image files as a stream of decoded batches, for encoding while the next files decode.

Indexing a folder runs in stages (as rom1504/clip-retrieval's reader -> mapper -> writer):

1. **reader**: the files, in a fixed order (:class:`FolderFiles`, or any list of paths);
2. **decoder**: a pool of threads (:func:`stream`); each file is read **once**
   (:func:`read_file`): its bytes digested and decoded from memory, at a reduced scale when it
   is large, into both the model's input and the preview a collection stores, and its header
   and EXIF taken from the image opened to decode it: the facts the catalogue records
   (:mod:`lookalike.search.files`), so nothing opens the file again. Pillow and hashlib
   release the GIL, so these threads work while the encoder computes;
3. **encoder** and 4. **writer**: the consumer of the batches (the collection's resumable
   encoding, ``lookalike add``, the Ray engine's decoding tasks).

Memory is bounded: at most ``ahead`` batches past the one the consumer holds are decoded
(or being decoded) at any time, and nothing of a batch is kept once the consumer drops it.
An unreadable file is skipped and reported in its batch's ``skipped``, never raised.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import InputSpec
from ..errors import DataError, ImageError
from .datasets import DECODE_THREADS, SPLITS, Dataset, folder_dataset, folder_images, split_indices
from .filefacts import FileFacts, Stat, digest, digest_bytes, facts_of
from .images import decode_pictures, file_error, preview_spec

#: Files larger than this are not read into memory whole: decoded from their path, digested
#: in chunks (two reads, for a file of a size no photo has; a renamed video is refused on its
#: header without being read).
WHOLE_READ = 256 << 20


class Decoded(NamedTuple):
    """One file decoded: ``input`` ``uint8`` of the spec's shape, ``preview`` of
    :func:`~lookalike.data.images.preview_spec`'s, and the file's ``facts`` (its stat when it
    was read, header, EXIF and digest: what the catalogue records), ``None`` from a decoder
    that reads none."""

    input: np.ndarray
    preview: np.ndarray
    facts: FileFacts | None = None


Decoder = Callable[[Path, InputSpec], Decoded]


def decode_file(path: str | os.PathLike[str], spec: InputSpec) -> Decoded:
    """One file decoded once, without its facts: ``(input, preview, None)``, ``uint8`` of
    ``spec.shape`` and of :func:`~lookalike.data.images.preview_spec` ``(spec).shape``. The
    preview is made from the model's input (as every stored picture is), so it is the same
    array when ``spec`` is preview-sized.

    Raises:
        ImageError: the file cannot be decoded (its path in the message).
    """
    try:
        return Decoded(*decode_pictures(path, spec, preview_spec(spec)))
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def read_file(path: str | os.PathLike[str], spec: InputSpec) -> Decoded:
    """One file read once: :func:`decode_file`'s pictures, decoded from its bytes in memory,
    with its :class:`~lookalike.data.filefacts.FileFacts`: the stat of the file as it was
    read, the header and EXIF of the image Pillow opened to decode it, the digest of the
    bytes decoded (what :func:`~lookalike.data.filefacts.read_facts` and
    :func:`~lookalike.data.filefacts.digest` read of the same file).

    Raises:
        ImageError: the file cannot be read or decoded (its path in the message).
    """
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read() if st.st_size <= WHOLE_READ else None
    except OSError as exc:
        raise ImageError(f"{path}: {file_error(exc)}") from None
    stat = Stat(int(st.st_size), int(st.st_mtime_ns), int(st.st_ino))
    header: list[FileFacts] = []
    try:
        image, preview = decode_pictures(path if data is None else data, spec, preview_spec(spec),
                                         on_open=lambda im: header.append(facts_of(im, stat)))
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None
    try:
        file_digest = digest(path) if data is None else digest_bytes(data)
    except OSError as exc:
        raise ImageError(f"{path}: {file_error(exc)}") from None
    return Decoded(image, preview, dataclasses.replace(header[0], digest=file_digest))


@dataclass(frozen=True, eq=False)
class Batch:
    """Files ``start:stop`` of a stream, decoded.

    Attributes:
        start, stop: the positions of the batch's files in the stream's list.
        rows: ``int64 (m,)``, the positions of the files decoded (the others are skipped).
        paths: the ``m`` files decoded.
        inputs: ``uint8 (m, H, W, C)`` at the stream's spec.
        previews: ``uint8 (m, h, w, C)`` at its preview spec (``inputs`` itself when equal).
        skipped: ``(path, reason)`` for each file of the batch that could not be decoded.
        facts: the ``m`` files' facts (:attr:`Decoded.facts`: ``None`` each from a decoder
            that reads none).
    """

    start: int
    stop: int
    rows: np.ndarray
    paths: tuple[Path, ...]
    inputs: np.ndarray
    previews: np.ndarray
    skipped: tuple[tuple[str, str], ...]
    facts: tuple[FileFacts | None, ...] = ()


def stream(paths: Sequence[str | os.PathLike[str]], spec: InputSpec, *, batch: int = 64,
           start: int = 0, stop: int | None = None, threads: int = DECODE_THREADS, ahead: int = 2,
           decode: Decoder = read_file) -> Iterator[Batch]:
    """Batches of ``batch`` files of ``paths[start:stop]``, in order, decoded by ``decode``
    (:func:`read_file`: each file read once, its facts with its pictures) in ``threads``
    threads while the caller works on the batch before: at most ``ahead`` batches are
    decoded past the one handed out. A file ``decode`` cannot
    read (:class:`~lookalike.errors.ImageError`) is left out of its batch and listed in its
    ``skipped``; a batch whose files all fail is still yielded (with ``m`` = 0). Any other
    exception stops the stream and is raised. Closing the generator early cancels the
    decoding not started."""
    if batch <= 0 or threads <= 0 or ahead < 0:
        raise ValueError(f"batch and threads must be positive and ahead >= 0, got {batch}, "
                         f"{threads}, {ahead}")
    stop = len(paths) if stop is None else min(stop, len(paths))
    small = preview_spec(spec)
    window = batch * (ahead + 1)  # files decoded or decoding ahead of the caller, at most

    def one(i: int) -> Decoded | ImageError:
        try:
            return decode(Path(paths[i]), spec)
        except ImageError as exc:
            return exc

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lookalike-decode")
    pending: deque[tuple[int, Future[Decoded | ImageError]]] = deque()
    submitted = start
    try:
        for lo in range(start, stop, batch):
            hi = min(lo + batch, stop)
            while submitted < min(stop, lo + window):
                pending.append((submitted, pool.submit(one, submitted)))
                submitted += 1
            rows: list[int] = []
            inputs = np.empty((hi - lo, *spec.shape), np.uint8)
            previews = inputs if small == spec else np.empty((hi - lo, *small.shape), np.uint8)
            skipped: list[tuple[str, str]] = []
            facts: list[FileFacts | None] = []
            while pending and pending[0][0] < hi:
                i, future = pending.popleft()
                got = future.result()
                if isinstance(got, ImageError):
                    path = os.fspath(paths[i])
                    skipped.append((path, str(got).removeprefix(f"{path}: ")))
                    continue
                # (the same array twice when the preview is the input: the same pixels)
                inputs[len(rows)], previews[len(rows)] = got.input, got.preview
                rows.append(i)
                facts.append(got.facts)
            m = len(rows)
            yield Batch(lo, hi, np.array(rows, dtype=np.int64), tuple(Path(paths[i]) for i in rows),
                        inputs[:m], previews[:m], tuple(skipped), tuple(facts))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class FolderFiles:
    """A folder's image files, listed (:func:`~lookalike.data.datasets.folder_images`) but not
    decoded: what ``lookalike index`` streams through the decoder and the encoder at once,
    instead of :func:`~lookalike.data.datasets.load_folder`'s previews read first.

    Attributes:
        root: the folder.
        paths: its image files, in dataset order.
        unlisted: ``(path, reason)`` for each subfolder that could not be listed.
        split: the split wanted of the folder (applied once the readable files are known).
    """

    root: Path
    paths: tuple[Path, ...]
    unlisted: tuple[tuple[str, str], ...] = ()
    split: str = "all"

    @classmethod
    def of(cls, root: str | os.PathLike[str], split: str = "all") -> FolderFiles:
        """The image files below ``root``.

        Raises:
            DataError: no image file there, or an unknown split.
        """
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        unlisted: list[tuple[str, str]] = []
        paths = folder_images(Path(root), unlisted)
        return cls(Path(root), tuple(paths), tuple(unlisted), split)

    def __len__(self) -> int:
        return len(self.paths)

    def dataset(self, previews: Sequence[np.ndarray] | np.ndarray, kept: Sequence[Path],
                skipped: Sequence[tuple[str, str]], spec: InputSpec) -> tuple[Dataset, np.ndarray]:
        """The dataset of the files decoded for ``spec`` (``previews`` of the ``kept`` files,
        in order; ``skipped`` the others), as :func:`~lookalike.data.datasets.load_folder`
        gives it, and the rows of ``kept`` it holds (``int64``: all of them for the split
        ``"all"``, else :func:`~lookalike.data.datasets.split_indices` of them)."""
        full = folder_dataset(self.root, previews, kept, [*self.unlisted, *skipped], len(self.paths))
        if preview_spec(spec) != spec:
            full = dataclasses.replace(full, files=full.sources)
        if self.split == "all":
            return full, np.arange(len(full), dtype=np.int64)
        rows = split_indices(len(full), self.split).astype(np.int64)
        return full.subset(rows, self.split), rows
