"""Tests for lookalike.data.images: decoding files and bytes, conform, float layout, hashing."""

from __future__ import annotations

import gc
import io
import os
import resource
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lookalike.config import InputSpec
from lookalike.data.images import (
    MAX_PIXELS,
    conform,
    content_hash,
    decode_image,
    decode_pictures,
    find_images,
    from_float,
    image_size,
    load_image,
    preview_spec,
    to_float,
)
from lookalike.errors import ImageError

RNG = np.random.default_rng(1234)


def _save(im: Image.Image, path: Path, **kwargs: object) -> Path:
    im.save(path, **kwargs)
    return path


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR (correct CRC) claiming width x height grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))


@pytest.fixture()
def rgb_pixels() -> np.ndarray:
    return RNG.integers(0, 256, size=(12, 17, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------- decode


def test_grey_png_gives_one_channel(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, size=(9, 13), dtype=np.uint8)
    path = _save(Image.fromarray(pixels, mode="L"), tmp_path / "grey.png")
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (9, 13, 1)
    np.testing.assert_array_equal(out[:, :, 0], pixels)


def test_rgb_png_gives_three_channels(tmp_path: Path, rgb_pixels: np.ndarray) -> None:
    path = _save(Image.fromarray(rgb_pixels, mode="RGB"), tmp_path / "rgb.png")
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (12, 17, 3)
    np.testing.assert_array_equal(out, rgb_pixels)


def test_grey_looking_rgb_stays_rgb(tmp_path: Path) -> None:
    grey = np.full((5, 5, 3), 77, dtype=np.uint8)
    out = load_image(_save(Image.fromarray(grey, mode="RGB"), tmp_path / "g.png"))
    assert out.shape == (5, 5, 3)


def test_rgba_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
    rgba[0, 1] = (10, 20, 30, 255)  # opaque -> itself
    rgba[0, 2] = (0, 0, 0, 128)  # half transparent black -> mid grey
    rgba[1, :] = (200, 100, 50, 255)
    out = load_image(_save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "a.png"))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], (255, 255, 255))
    np.testing.assert_array_equal(out[0, 1], (10, 20, 30))
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)
    np.testing.assert_array_equal(out[1], np.tile([200, 100, 50], (3, 1)))


def test_grey_with_alpha_is_composited_over_white(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (0, 0))
    la.putpixel((1, 0), (40, 255))
    out = load_image(_save(la, tmp_path / "la.png"))
    assert out[0, 0].tolist() == [255] * out.shape[2]
    assert out[0, 1].tolist() == [40] * out.shape[2]


def test_palette_image_gives_its_colours(tmp_path: Path) -> None:
    im = Image.new("P", (4, 2))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putdata([0, 1, 2, 0, 1, 2, 0, 1])
    out = load_image(_save(im, tmp_path / "p.png"))
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[0, :3], [(255, 0, 0), (0, 255, 0), (0, 0, 255)])


def test_palette_with_transparency_is_white_where_transparent(tmp_path: Path) -> None:
    im = Image.new("P", (3, 1))
    im.putpalette([10, 20, 30, 40, 50, 60] + [0] * (256 * 3 - 6))
    im.putdata([0, 1, 0])
    path = _save(im, tmp_path / "pt.png", transparency=1)
    out = load_image(path)
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0], [(10, 20, 30), (255, 255, 255), (10, 20, 30)])


def test_one_bit_image_gives_0_and_255(tmp_path: Path) -> None:
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    im = Image.fromarray(bits)
    assert im.mode == "1"
    out = load_image(_save(im, tmp_path / "bits.png"))
    assert out.shape == (2, 3, 1)
    np.testing.assert_array_equal(out[:, :, 0], bits.astype(np.uint8) * 255)


def test_cmyk_jpeg_gives_rgb(tmp_path: Path) -> None:
    im = Image.new("CMYK", (8, 8), (0, 0, 0, 0))  # no ink: white
    for x in range(4, 8):
        for y in range(8):
            im.putpixel((x, y), (0, 255, 255, 0))  # magenta + yellow: red
    path = _save(im, tmp_path / "cmyk.jpg", quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = load_image(path)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.all(out[:, :2] >= 240)  # white, away from the edge
    assert np.all(out[:, 6:, 0] >= 230) and np.all(out[:, 6:, 1:] <= 25)  # red


def test_16_bit_png_is_scaled_to_8_bit(tmp_path: Path) -> None:
    values = np.array([[0, 65535], [257 * 100, 257 * 200]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "deep.png")
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 1)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 255], [100, 200]])


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    first = Image.new("RGB", (6, 5), (255, 0, 0))
    second = Image.new("RGB", (6, 5), (0, 0, 255))
    path = tmp_path / "anim.gif"
    first.save(path, save_all=True, append_images=[second], duration=100, loop=0)
    with Image.open(path) as check:
        assert check.is_animated and check.n_frames == 2
    out = load_image(path)
    assert out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out.reshape(-1, 3), np.tile([255, 0, 0], (30, 1)))


def test_bytes_input_equals_file_input(tmp_path: Path, rgb_pixels: np.ndarray) -> None:
    im = Image.fromarray(rgb_pixels)
    path = _save(im, tmp_path / "x.png")
    from_bytes = decode_image(path.read_bytes())
    np.testing.assert_array_equal(from_bytes, decode_image(path))
    np.testing.assert_array_equal(from_bytes, rgb_pixels)
    assert from_bytes.flags.c_contiguous


def test_image_size_reads_the_header(tmp_path: Path) -> None:
    grey = _save(Image.new("L", (7, 3)), tmp_path / "g.png")
    colour = _save(Image.new("RGB", (5, 9)), tmp_path / "c.png")
    assert image_size(grey) == (3, 7, 1)
    assert image_size(colour) == (9, 5, 3)


# ---------------------------------------------------------------------------- decode errors


def _truncated(tmp_path: Path, fmt: str) -> Path:
    pixels = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_raises_image_error(tmp_path: Path, fmt: str) -> None:
    path = _truncated(tmp_path, fmt)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert type(info.value) is ImageError
    assert str(path) in str(info.value)
    with pytest.raises(ImageError):
        decode_image(path.read_bytes())


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty.png"):
        load_image(path)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n" * 20)
    with pytest.raises(ImageError, match="not a readable image"):
        load_image(path)


def test_directory(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageError, match="directory") as info:
        load_image(folder)
    assert str(folder) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="not found") as info:
        load_image(path)
    assert str(info.value).startswith(f"{path}: ")


def test_huge_header_is_refused_without_allocating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _png_header_only(100_000, 100_000)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ImageError, match="too large"):
        decode_image(data)
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    # Without Pillow's own bomb check the header parses (so it is well formed: correct
    # CRC), and our limit still refuses it before any pixel is allocated.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(io.BytesIO(data)) as probe:
        assert probe.size == (100_000, 100_000) and probe.mode == "L"
    with pytest.raises(ImageError, match="100000x100000 pixels, more than the limit"):
        decode_image(data)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 64  # 10^10 pixels would be ~10 GB


def test_our_pixel_limit_applies_below_pillows(tmp_path: Path) -> None:
    # 8000 x 8000 = 64 M pixels: above MAX_PIXELS (50 M), below Pillow's own bomb limit.
    assert 8000 * 8000 > MAX_PIXELS
    with pytest.raises(ImageError, match="8000x8000 pixels, more than the limit"):
        decode_image(_png_header_only(8000, 8000))
    small = _png_bytes(Image.new("L", (10, 10)))
    with pytest.raises(ImageError, match="limit of 99"):
        decode_image(small, max_pixels=99)
    assert decode_image(small, max_pixels=100).shape == (10, 10, 1)


def test_refusing_a_large_file_closes_it(tmp_path: Path) -> None:
    path = _save(Image.new("L", (10, 10)), tmp_path / "small.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            load_image(path, max_pixels=10)
        except ImageError:
            pass
        else:  # pragma: no cover
            pytest.fail("no ImageError")
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == [], [str(w.message) for w in leaks]


_VALID_PNG = _png_bytes(Image.fromarray(RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)))


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes_raise_only_image_error(data: bytes) -> None:
    try:
        out = decode_image(data)
    except ImageError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] in (1, 3)


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(0, len(_VALID_PNG) - 1), st.binary(min_size=1, max_size=8))
def test_damaged_png_raises_only_image_error(pos: int, patch: bytes) -> None:
    data = _VALID_PNG[:pos] + patch + _VALID_PNG[pos + len(patch):]
    try:
        out = decode_image(data)
    except ImageError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] in (1, 3)


# ---------------------------------------------------------------------------- conform


def test_rgb_to_grey_matches_pillow(rgb_pixels: np.ndarray) -> None:
    many = RNG.integers(0, 256, size=(3, 12, 17, 3), dtype=np.uint8)
    out = conform(many, InputSpec(channels=1, height=12, width=17))
    assert out.shape == (3, 12, 17, 1) and out.dtype == np.uint8
    for got, src in zip(out, many, strict=True):
        want = np.asarray(Image.fromarray(src).convert("L"), dtype=np.int16)
        assert np.abs(got[:, :, 0].astype(np.int16) - want).max() <= 1


def test_grey_to_rgb_replicates() -> None:
    grey = RNG.integers(0, 256, size=(2, 5, 6, 1), dtype=np.uint8)
    out = conform(grey, InputSpec(channels=3, height=5, width=6))
    assert out.shape == (2, 5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey[..., 0])


def test_same_spec_is_unchanged() -> None:
    images = RNG.integers(0, 256, size=(4, 8, 8, 1), dtype=np.uint8)
    np.testing.assert_array_equal(conform(images, InputSpec(1, 8, 8)), images)


@pytest.mark.parametrize("spec", [InputSpec(1, 28, 28), InputSpec(3, 16, 40), InputSpec(1, 4, 9)])
def test_resize_gives_the_spec_shape(spec: InputSpec) -> None:
    images = RNG.integers(0, 256, size=(3, 20, 30, 3), dtype=np.uint8)
    out = conform(images, spec)
    assert out.shape == (3, *spec.shape) and out.dtype == np.uint8


def test_resize_of_a_constant_image_stays_constant() -> None:
    images = np.full((1, 10, 10, 1), 123, dtype=np.uint8)
    out = conform(images, InputSpec(1, 23, 7))
    assert np.all(out == 123)


def test_list_of_differently_sized_images() -> None:
    images = [RNG.integers(0, 256, size=s, dtype=np.uint8)
              for s in [(5, 5, 1), (30, 20, 3), (28, 28, 1)]]
    spec = InputSpec(channels=1, height=28, width=28)
    out = conform(images, spec)
    assert out.shape == (3, 28, 28, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[2], images[2])


def test_empty_list_gives_empty_array() -> None:
    assert conform([], InputSpec(3, 10, 12)).shape == (0, 10, 12, 3)


def test_empty_array_of_another_size_gives_empty_array() -> None:
    out = conform(np.zeros((0, 10, 10, 1), dtype=np.uint8), InputSpec(1, 28, 28))
    assert out.shape == (0, 28, 28, 1)


@pytest.mark.parametrize("bad", [
    np.zeros((2, 8, 8, 1), dtype=np.float32),  # wrong dtype
    np.zeros((2, 8, 8), dtype=np.uint8),  # no channel axis
    np.zeros((2, 8, 8, 4), dtype=np.uint8),  # 4 channels
    np.zeros((8, 8, 1), dtype=np.uint8),  # a single image, not a batch
])
def test_bad_array_raises_image_error(bad: np.ndarray) -> None:
    with pytest.raises(ImageError):
        conform(bad, InputSpec(1, 8, 8))


@pytest.mark.parametrize("bad", [
    [np.zeros((8, 8, 1), dtype=np.int64)],
    [np.zeros((8, 8), dtype=np.uint8)],
    [np.zeros((8, 8, 2), dtype=np.uint8)],
])
def test_bad_list_item_raises_image_error(bad: list[np.ndarray]) -> None:
    with pytest.raises(ImageError):
        conform(bad, InputSpec(1, 8, 8))


# ---------------------------------------------------------------------------- float, hash


def test_to_float_layout_and_round_trip() -> None:
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    images = np.concatenate([images, images[:, ::-1]])
    rgb = RNG.integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)
    for arr in (images, rgb):
        f = to_float(arr)
        n, h, w, c = arr.shape
        assert f.dtype == np.float32 and f.shape == (n, c, h, w)
        assert f.min() >= 0.0 and f.max() <= 1.0
        np.testing.assert_array_equal(from_float(f), arr)
    assert to_float(images)[0, 0, 15, 15] == np.float32(1.0)
    assert to_float(rgb)[1, 2, 3, 4] == np.float32(rgb[1, 3, 4, 2]) / np.float32(255)


def test_from_float_clips() -> None:
    f = np.array([[[[-0.5, 0.0, 0.5, 1.0, 2.0]]]], dtype=np.float32)
    assert from_float(f)[0, 0, :, 0].tolist() == [0, 0, 128, 255, 255]


def test_content_hash() -> None:
    a = RNG.integers(0, 256, size=(8, 8, 1), dtype=np.uint8)
    b = a.copy()
    assert content_hash(a) == content_hash(b)
    b[3, 4, 0] ^= 1
    assert content_hash(a) != content_hash(b)
    # same bytes, other shape: another hash
    assert content_hash(a) != content_hash(a.reshape(4, 16, 1))


# ---------------------------------------------------------------------------- find_images


def test_find_images(tmp_path: Path) -> None:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    (tmp_path / "a").mkdir()
    names = ["z.png", "a/x.JPG", "a/y.jpeg", "b/deep/q.PnG", "b/w.webp", "b/v.TIFF"]
    for n in names:
        (tmp_path / n).write_bytes(b"")
    for n in ["readme.txt", "a/data.npz", "b/noext", "b/deep/image.png.bak"]:
        (tmp_path / n).write_bytes(b"")
    found = find_images(tmp_path)
    assert found == sorted(tmp_path / n for n in names)
    assert found == sorted(found)


def test_find_images_survives_a_symlink_loop(tmp_path: Path) -> None:
    root = tmp_path / "root"
    sub = root / "sub"
    sub.mkdir(parents=True)
    (root / "top.png").write_bytes(b"")
    (sub / "inner.png").write_bytes(b"")
    os.symlink(root, sub / "loop")  # sub/loop -> its own parent
    found = find_images(root)
    assert found == [root / "sub" / "inner.png", root / "top.png"]


def test_find_images_of_empty_folder(tmp_path: Path) -> None:
    assert find_images(tmp_path) == []


def _photo(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour 'photo' (gradients and a disc), saved as JPEG; returns its pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    r = xx / width * 255
    g = yy / height * 255
    disc = ((xx - width * rng.uniform(0.3, 0.7)) ** 2 + (yy - height / 2) ** 2) < (height / 4) ** 2
    b = np.where(disc, 230.0, 40.0)
    pixels = np.stack([r, g, b], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return pixels


def test_aspect_ratio_is_kept_by_centre_crop() -> None:
    wide = np.zeros((40, 80, 3), dtype=np.uint8)
    wide[:, :20] = 255  # a white band on the left quarter: cropped away
    wide[:, 60:] = 255  # and on the right quarter
    out = conform(wide[None], InputSpec(3, 20, 20))[0]
    assert out.shape == (20, 20, 3)
    # the middle square only: no band squashed in (a squash would put 255s in 5 columns
    # a side); the filter reads a pixel past the crop, so the edge columns are faintly grey
    assert out[:, 2:-2].max() <= 2 and out.max() < 100
    tall = np.zeros((90, 30, 1), dtype=np.uint8)
    tall[30:60] = 200
    out = conform(tall[None], InputSpec(1, 10, 10))[0]
    assert out[1:-1].min() >= 198 and out.min() > 150  # the middle third, scaled


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path: Path) -> None:
    _photo(tmp_path / "big.jpg", 4000, 3000)
    full = decode_image(tmp_path / "big.jpg")
    small = decode_image(tmp_path / "big.jpg", size=(224, 224))
    assert full.shape == (3000, 4000, 3)
    assert 224 <= small.shape[0] <= 2 * 224 * 2  # 1/8 of 3000 rounds up to 375
    assert small.shape[0] * 4 / 3 == pytest.approx(small.shape[1], abs=1)
    a = conform(full[None], InputSpec(3, 224, 224))[0].astype(np.float32)
    b = conform(small[None], InputSpec(3, 224, 224))[0].astype(np.float32)
    assert np.abs(a - b).mean() < 3  # the same picture at the size a model wants
    png = tmp_path / "big.png"
    Image.fromarray(full).save(png)
    reduced = decode_image(png, size=(100, 100))
    assert 100 <= reduced.shape[0] < 3000 // 4  # PNGs are reduced after decoding


@pytest.mark.parametrize("mode, size, fmt", [
    ("RGB", (1000, 700), "JPEG"),   # decoded at a reduced DCT scale, then resized
    ("RGB", (150, 400), "PNG"),     # portrait, enlarged
    ("L", (640, 480), "JPEG"),      # grey
    ("RGBA", (500, 300), "PNG"),    # alpha composited first (the general path)
    ("CMYK", (400, 300), "JPEG"),
])
@pytest.mark.parametrize("spec", [InputSpec(3, 192, 192), InputSpec(1, 64, 48),
                                  InputSpec(3, 160, 224, resize="squash")])
def test_decode_pictures_equals_conform_of_decode_image(mode: str, size: tuple[int, int], fmt: str,
                                                        spec: InputSpec) -> None:
    """The pipeline's decode (resized by Pillow as decoded, one array a size) gives the pixels
    of ``conform`` of ``decode_image``, the model's input and its preview."""
    rng = np.random.default_rng(len(mode) + size[0])
    coarse = Image.fromarray(rng.integers(0, 256, (7, 9, 4), dtype=np.uint8), "RGBA")
    im = coarse.resize(size, Image.Resampling.BICUBIC).convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    data = buf.getvalue()
    small = preview_spec(spec)
    image, preview = decode_pictures(data, spec, small)
    expected = conform([decode_image(data, size=(spec.height, spec.width))], spec)[0]
    assert image.shape == spec.shape and preview.shape == small.shape
    np.testing.assert_array_equal(image, expected)
    np.testing.assert_array_equal(preview, expected if small == spec else conform([expected], small)[0])
