"""Decoding image files and converting image arrays to what a model expects.

This is the one place where pixels change form:

* :func:`decode_image` turns bytes or a file into ``uint8 (H, W, C)`` with ``C`` = 1
  (grey) or 3 (RGB). Palette, 1-bit, CMYK, YCbCr and 16-bit images are converted;
  alpha is composited over white; an animated image gives its first frame.
* :func:`conform` brings ``uint8 (n, H, W, C)`` images to an :class:`InputSpec`:
  RGB -> grey by ITU-R 601-2 luma (as Pillow's ``convert("L")``), grey -> RGB by
  replication, and when the size differs a resize that keeps the aspect ratio: the
  shorter side is scaled to fit, the longer one centre-cropped (a 1024x768 photo becomes
  the middle 768x768 square, scaled), with an antialiasing filter when shrinking; a spec
  with ``resize="squash"`` (an imported encoder that was trained so) scales each side instead.
* A large JPEG is decoded at a reduced scale when the size it is wanted at is known
  (``size=`` of :func:`decode_image`: Pillow's ``draft``, a DCT-domain reduction, 1/2 to
  1/8), other formats are halved by ``reduce`` down to twice that size: a 24-megapixel
  photo wanted at 224 px never exists at full size in memory.
* :func:`to_float` gives the model's layout: ``float32 (n, C, H, W)`` in [0, 1].

Anything that cannot be decoded raises :class:`~lookalike.errors.ImageError`, and only that.
Only the formats of :data:`IMAGE_EXTENSIONS` are decoded (:data:`FORMATS`), whatever a file is
called: a renamed PSD, EPS or ICO file is refused before any of Pillow's other decoders sees it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import math
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..config import InputSpec
from ..errors import DataError, ImageError

log = logging.getLogger(__name__)

#: The longest side of the pictures a collection stores to show (see :func:`preview_spec`).
PREVIEW = 96
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Images with more pixels than this are refused before decoding (decompression bombs).
MAX_PIXELS = 50_000_000
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


#: Pillow's names of the formats decoded: those of :data:`IMAGE_EXTENSIONS` (DIB is a BMP
#: without its file header; cameras' multi-picture JPEGs open through JPEG, as MPO).
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "DIB", "TIFF", "WEBP")
#: What Pillow raises for damaged or hostile data: the exceptions its own fuzz tests accept
#: (``Tests/oss-fuzz/test_fuzzers.py``: OSError, SyntaxError, MemoryError, ValueError,
#: NotImplementedError, OverflowError) and those that fuzzing our loader found escaping a
#: decoder (IndexError, struct.error, zlib.error) or that plugins turn into SyntaxError only
#: while opening (KeyError, TypeError, EOFError). Anything else is a bug, ours or Pillow's,
#: and is not hidden as "damaged image".
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, SyntaxError, MemoryError, ValueError, NotImplementedError, OverflowError,
    IndexError, KeyError, TypeError, EOFError, ZeroDivisionError, struct.error, zlib.error)


@contextlib.contextmanager
def _decoding() -> Iterator[None]:
    """Pillow's failures while an image is decoded, as one-line :class:`ImageError`."""
    try:
        yield
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image is too large to decode safely (decompression bomb?)") from None
    except DECODE_ERRORS as exc:
        raise ImageError(f"image data is damaged ({_why(exc)})") from None


@contextlib.contextmanager
def _pillow_warnings() -> Iterator[None]:
    """Decompression-bomb warnings become errors; the UserWarnings Pillow gives about damaged
    metadata it then skips (TIFF and EXIF tags) are not shown (the pixels decide)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


def _why(exc: BaseException) -> str:
    """``Type: message`` on one line, at most 160 characters (a reason in a report)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def file_error(exc: OSError) -> ImageError:
    """The :class:`ImageError` for a file the file system refuses to open or read."""
    if isinstance(exc, FileNotFoundError):
        return ImageError("file not found")
    if isinstance(exc, IsADirectoryError):
        return ImageError("is a directory, not an image")
    if isinstance(exc, PermissionError):
        return ImageError("permission denied")
    return ImageError(f"cannot be read ({exc.strerror or exc})")


def _open(source: str | os.PathLike[str] | bytes, max_pixels: int) -> Image.Image:
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with _pillow_warnings():
            im = Image.open(fp, formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("image is too large to decode safely (decompression bomb?)") from None
    except Image.UnidentifiedImageError:
        raise ImageError("not a readable image (not a PNG, JPEG, GIF, BMP, TIFF or WebP "
                         "file, or a damaged one)") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's refusal: ELOOP, EIO, ...
            raise file_error(exc) from None
        raise ImageError(f"not a readable image ({_why(exc)})") from None
    except DECODE_ERRORS as exc:
        raise ImageError(f"not a readable image ({_why(exc)})") from None
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise ImageError(f"image has an empty size {width}x{height}")
    if width * height > max_pixels:
        im.close()
        raise ImageError(
            f"image is {width}x{height} pixels, more than the limit of {max_pixels:,}"
        )
    return im


def _to_array(im: Image.Image) -> np.ndarray:
    if getattr(im, "is_animated", False):
        im.seek(0)
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        scale = 257.0 if mode.startswith("I;16") or arr.max(initial=0) <= 65535 else None
        arr = arr / scale if scale else arr / max(float(arr.max()), 1.0) * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)[:, :, None]
    if mode == "F":
        arr = np.asarray(im).astype(np.float64)
        arr = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)[:, :, None]
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im).convert("RGB")
        mode = "RGB"
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), dtype=np.uint8)[:, :, None]
    if mode != "RGB":
        try:
            im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
        except ValueError:  # no conversion (I;16S, I;32B, ...): not damaged, but not usable
            raise ImageError(f"unsupported pixel format {mode}") from None
    arr = np.asarray(im, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"unexpected decoded shape {arr.shape}")
    return arr


def _cover(width: int, height: int, size: tuple[int, int]) -> tuple[int, int]:
    """The smallest ``(width, height)`` of this aspect ratio that covers ``size`` (h, w)."""
    scale = max(size[0] / height, size[1] / width)
    return max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale))


def _shrink(im: Image.Image, size: tuple[int, int] | None) -> Image.Image:
    """``im`` decoded no larger than needed to cover ``size`` (h, w) with some margin for
    resampling: JPEG by ``draft`` (before decoding), others by ``reduce`` (after)."""
    if size is None:
        return im
    want = _cover(im.size[0], im.size[1], size)
    if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
        im.draft(im.mode, want)
    im.load()
    factor = min(im.size[0] // max(want[0], 1), im.size[1] // max(want[1], 1)) // 2
    if factor >= 2 and im.mode in ("RGB", "L", "RGBA", "LA", "P") and not getattr(im, "is_animated", False):
        im = im.convert("RGBA" if im.mode == "P" else im.mode).reduce(factor)
    return im


def decode_image(
    source: str | os.PathLike[str] | bytes, *, max_pixels: int = MAX_PIXELS,
    size: tuple[int, int] | None = None, on_open: Callable[[Image.Image], object] | None = None,
) -> np.ndarray:
    """Decode an image file or bytes to ``uint8 (H, W, C)``, ``C`` = 1 or 3.

    Colour images stay RGB even when their pixels happen to be grey; use
    :func:`conform` to reach a model's channel count. With ``size`` ``(height, width)``,
    a large image may be decoded at a reduced scale that still covers ``size`` at its own
    aspect ratio (so :func:`conform` to that size gives nearly the same pixels, faster).
    ``on_open`` is called with the image Pillow opened, its header read and its pixels not
    yet (to read the header's facts without opening the file again).

    Raises:
        ImageError: for anything that is not a decodable image within ``max_pixels``.
    """
    im = _open(source, max_pixels)
    with _decoding(), im, _pillow_warnings():
        if on_open is not None:
            on_open(im)
        shrunk = _shrink(im, size)
        shrunk.load()
        arr = _to_array(shrunk)
    return np.ascontiguousarray(arr)


def decode_pictures(source: str | os.PathLike[str] | bytes, spec: InputSpec, small: InputSpec, *,
                    max_pixels: int = MAX_PIXELS,
                    on_open: Callable[[Image.Image], object] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``conform([decode_image(source, size=...)], spec)[0]`` and ``conform`` of that to
    ``small`` (a model's input and its preview), the same pixels, with fewer copies: an
    ``RGB`` or ``L`` image that the spec keeps so is resized by Pillow as it was decoded,
    and made an array once at each size (other modes go through :func:`decode_image`).
    ``on_open`` as for :func:`decode_image`.

    Raises:
        ImageError: as :func:`decode_image`.
    """
    im = _open(source, max_pixels)
    with _decoding(), im, _pillow_warnings():
        if on_open is not None:
            on_open(im)
        shrunk = _shrink(im, (spec.height, spec.width))
        shrunk.load()
        same_mode = shrunk.mode == ("L" if spec.channels == 1 else "RGB")
        if same_mode and not getattr(shrunk, "is_animated", False):
            pil = _resize_pil(shrunk, spec.height, spec.width, spec.resize == "squash")
            image = np.array(pil, dtype=np.uint8).reshape(spec.shape)
            if small == spec:
                return image, image
            preview = _resize_pil(pil, small.height, small.width, small.resize == "squash")
            return image, np.array(preview, dtype=np.uint8).reshape(small.shape)
        arr = np.ascontiguousarray(_to_array(shrunk))
    image = conform([arr], spec)[0]
    return image, image if small == spec else conform([image], small)[0]


def load_image(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS,
               size: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`decode_image` for a path, with the path in the error message."""
    try:
        return decode_image(path, max_pixels=max_pixels, size=size)
    except ImageError as exc:
        raise ImageError(f"{path}: {exc}") from None


def load_images(paths: Sequence[str | os.PathLike[str]], spec: InputSpec | None = None,
                progress: bool = False, preview: bool = False
                ) -> tuple[list[np.ndarray], list[Path], list[tuple[str, str]]]:
    """Decode many files, skipping the unreadable ones instead of stopping.

    Returns the images (``uint8 (H, W, C)``, or ``spec``'s shape when given; with
    ``preview``, what a collection stores of them: ``spec``'s shape brought down to
    :func:`preview_spec`), the paths they came from, and ``(path, reason)`` for every
    file skipped (each also logged as a warning).
    """
    images: list[np.ndarray] = []
    kept: list[Path] = []
    skipped: list[tuple[str, str]] = []
    small = None if spec is None or not preview else preview_spec(spec)

    def read(p: str | os.PathLike[str]) -> np.ndarray | ImageError:
        try:
            image = load_image(p, size=None if spec is None else (spec.height, spec.width))
        except ImageError as exc:
            return exc
        if spec is not None:
            image = conform([image], spec)[0]
        if small is not None and small != spec:
            image = conform([image], small)[0]
        return image

    # two threads: Pillow decodes without the GIL; map keeps the files' order
    with ThreadPoolExecutor(max_workers=2) as pool:
        for p, image in tqdm(zip(paths, pool.map(read, paths), strict=True),
                             total=len(paths), desc="reading images", unit="img",
                             disable=not progress):
            if isinstance(image, ImageError):
                skipped.append((str(p), str(image).removeprefix(f"{p}: ")))
                continue
            images.append(image)
            kept.append(Path(p))
    for path, reason in skipped:
        log.warning("skipped %s: %s", path, reason)
    return images, kept, skipped


def image_size(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """``(height, width, channels)`` read from the header only; ``channels`` is 1 or 3."""
    im = _open(os.fspath(path), MAX_PIXELS)
    with im:
        grey = im.mode in ("1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
        return im.size[1], im.size[0], 1 if grey else 3


def _resize_pil(pil: Image.Image, height: int, width: int, squash: bool = False) -> Image.Image:
    """:func:`_resize` of a Pillow image (mode ``RGB`` or ``L``)."""
    w, h = pil.size
    if (h, w) == (height, width):
        return pil
    cw, ch = _cover(w, h, (height, width))
    box = None
    if (cw, ch) != (width, height) and not squash:  # crop in source pixels, centred
        sx, sy = w / cw, h / ch
        left, top = (cw - width) / 2 * sx, (ch - height) / 2 * sy
        box = (left, top, left + width * sx, top + height * sy)
    return pil.resize((width, height), Image.Resampling.BILINEAR, box=box)


def _resize(image: np.ndarray, height: int, width: int, squash: bool = False) -> np.ndarray:
    """Resize keeping the aspect ratio: scale to cover ``height x width``, centre-crop the
    rest (bilinear; with antialiasing when shrinking, as Pillow's filters do); with
    ``squash``, scale each side to fit instead."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    channels = image.shape[2]
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    out = np.asarray(_resize_pil(pil, height, width, squash), dtype=np.uint8)
    return out[:, :, None] if channels == 1 else out


def _channels(images: np.ndarray, channels: int) -> np.ndarray:
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 3 and channels == 1:
        grey = images.astype(np.float32) @ _LUMA
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None]
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    raise ImageError(f"cannot convert {have} channels to {channels}")


def conform(images: np.ndarray | Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Bring images to ``spec``: returns ``uint8 (n, spec.height, spec.width, spec.channels)``.

    ``images`` is a ``uint8 (n, H, W, C)`` array or a sequence of ``uint8 (H, W, C)``
    arrays of any sizes, resized by ``spec.resize``. An empty input gives an empty
    ``(0, H, W, C)`` array.
    """
    squash = spec.resize == "squash"
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
            raise ImageError(
                f"expected uint8 images of shape (n, H, W, 1|3), got {images.dtype} {images.shape}"
            )
        out = _channels(images, spec.channels)
        if len(out) == 0:
            return np.empty((0, *spec.shape), dtype=np.uint8)
        if out.shape[1:3] == (spec.height, spec.width):
            return np.ascontiguousarray(out)
        return np.stack([_resize(im, spec.height, spec.width, squash) for im in out])
    result = np.empty((len(images), *spec.shape), dtype=np.uint8)
    for i, im in enumerate(images):
        if im.ndim != 3 or im.dtype != np.uint8:
            raise ImageError(f"expected uint8 (H, W, C) images, got {im.dtype} {im.shape}")
        result[i] = _resize(_channels(im, spec.channels), spec.height, spec.width, squash)
    return result


def preview_spec(spec: InputSpec) -> InputSpec:
    """What a picture is kept as for display beside a model taking ``spec``: ``spec`` itself
    up to :data:`PREVIEW` pixels a side, else scaled down to that longest side (a 224x224
    input is shown from a 96x96 preview: 27 KB instead of 147 KB a picture)."""
    side = max(spec.height, spec.width)
    if side <= PREVIEW:
        return spec
    scale = PREVIEW / side
    return InputSpec(spec.channels, max(4, round(spec.height * scale)), max(4, round(spec.width * scale)))


def to_float(images: np.ndarray) -> np.ndarray:
    """``uint8 (n, H, W, C)`` -> ``float32 (n, C, H, W)`` in [0, 1] (the models' layout)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


def from_float(images: np.ndarray) -> np.ndarray:
    """``float (n, C, H, W)`` in [0, 1] -> ``uint8 (n, H, W, C)`` (inverse of :func:`to_float`)."""
    arr = np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))


def content_hash(image: np.ndarray) -> str:
    """SHA-256 (hex) of an image's pixels and shape: equal pixels, equal hash."""
    h = hashlib.sha256(str(image.shape).encode())
    h.update(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    return h.hexdigest()


def is_image_path(path: Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(root: str | os.PathLike[str],
                errors: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files below ``root``, recursively, sorted.

    Symlinks to folders are followed, but each real folder is visited once, so a link to a
    parent (a loop) or two links to one folder give each file once. A folder that cannot be
    listed is logged and, when ``errors`` is given, appended to it as ``(path, reason)``.
    """
    root_path = Path(root)
    seen: set[str] = set()
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        reason = f"folder cannot be read ({exc.strerror or exc})"
        log.warning("skipped %s: %s", exc.filename, reason)
        if errors is not None:
            errors.append((str(exc.filename), reason))

    for dirpath, dirnames, filenames in os.walk(root_path, onerror=unreadable, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in filenames if is_image_path(Path(f)))
    return sorted(found)


def image_files(paths: Iterable[str | os.PathLike[str]],
                skipped: list[tuple[str, str]] | None = None) -> list[Path]:
    """The image files named by ``paths``: files, or folders searched recursively
    (:func:`find_images`). What is passed over (other extensions, folders that cannot be
    listed) is logged and appended to ``skipped`` as ``(path, reason)``.

    Raises:
        DataError: a path that does not exist.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(find_images(path, skipped))
        elif path.is_file() and is_image_path(path):
            files.append(path)
        elif path.exists():
            reason = f"not an image file extension ({path.suffix or 'none'})"
            log.warning("skipped %s: %s", path, reason)
            if skipped is not None:
                skipped.append((str(path), reason))
        else:
            raise DataError(f"{path} does not exist")
    return files
