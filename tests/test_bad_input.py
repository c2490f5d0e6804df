"""Bad input tried on purpose: a corpus of broken, hostile and awkward files (tests/badcorpus.py)
through the loader and the CLI, and random bytes through the decoder."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from badcorpus import AS_ROOT, Case, build, digit, unlock
from conftest import run_cli as run
from lookalike.config import InputSpec
from lookalike.data.datasets import load_dataset
from lookalike.data.images import (
    FORMATS,
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    conform,
    decode_image,
    find_images,
    load_image,
    load_images,
)
from lookalike.data.skipreport import read_report
from lookalike.errors import ImageError
from lookalike.search.collection import Collection

if TYPE_CHECKING:
    from conftest import Trained

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SPEC = InputSpec(channels=1, height=8, width=8)  # the digits model's input


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Case]]]:
    root = tmp_path_factory.mktemp("bad") / "corpus"
    cases = build(root)
    yield root, cases
    unlock(root)


def _indexed(root: Path, cases: list[Case]) -> set[str]:
    return {str(root / c.name) for c in cases if c.indexed}


def _skipped(root: Path, cases: list[Case]) -> dict[str, str]:
    """path -> the pattern its reason must match."""
    return {str(root / c.name): c.reason for c in cases if c.listed and c.reason}


def _check_reasons(got: dict[str, str], root: Path, cases: list[Case]) -> None:
    want = _skipped(root, cases)
    assert set(got) == set(want)
    for path, pattern in want.items():
        assert re.search(pattern, got[path]), (path, got[path], pattern)
        assert "\n" not in got[path] and not got[path].startswith(str(root))


# ---------------------------------------------------------------------------- the corpus


def test_folder_keeps_every_good_image_and_names_every_bad_one(
        corpus: tuple[Path, list[Case]]) -> None:
    root, cases = corpus
    ds = load_dataset(root, "all", input_spec=SPEC)
    assert set(ds.sources) == _indexed(root, cases) and len(ds.sources) == len(set(ds.sources))
    assert not any("/up/" in s for s in ds.sources)  # the folder loop is not walked twice
    _check_reasons(dict(ds.skipped), root, cases)
    # The valid-but-awkward files decode to the digit they show (CMYK, 16-bit, alpha,
    # the animation's first frame, the 50-megapixel image), not to some other picture.
    refs = conform([np.asarray(digit(i))[:, :, None] for i in range(20)], SPEC)
    refs = refs.reshape(20, -1).astype(np.float64)
    for case in cases:
        if case.indexed and case.digit is not None:
            image = ds.images[ds.sources.index(str(root / case.name))].reshape(-1)
            corr = [np.corrcoef(image.astype(np.float64), r)[0, 1] for r in refs]
            assert int(np.argmax(corr)) == case.digit and max(corr) > 0.95, (case.name, max(corr))


def test_awkward_modes_convert_as_documented(corpus: tuple[Path, list[Case]]) -> None:
    root, _ = corpus
    grey = np.asarray(digit(10))
    np.testing.assert_array_equal(load_image(root / "deep16.png")[:, :, 0], grey)  # /257 exactly
    palette = load_image(root / "palette.png")  # transparent background -> white, ink kept
    ink = np.asarray(digit(11))
    assert palette.shape == (32, 32, 3) and np.any(ink == 0) and np.any(ink > 0)
    for c in range(3):
        np.testing.assert_array_equal(palette[:, :, c], np.where(ink == 0, 255, ink))
    assert load_image(root / "animated.gif").shape == (32, 32, 3)
    side = math.isqrt(MAX_PIXELS)
    assert load_image(root / "huge.png").shape == (side, side, 1)


def test_index_skips_and_reports_every_bad_file(
        capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, tmp_path: Path,
        corpus: tuple[Path, list[Case]], trained: Trained) -> None:
    root, cases = corpus
    out_dir = tmp_path / "coll"
    code, out, err = run(capsys, ["index", "--model", trained.model, "--dataset", root,
                                  "--out", out_dir])
    assert code == 0, err
    assert "Traceback" not in err
    indexed, skipped = _indexed(root, cases), _skipped(root, cases)
    report = out_dir / "skipped.jsonl"
    assert out.strip() == (f"collection written to {out_dir}: {len(indexed)} images, 128-d codes; "
                           f"skipped {len(skipped)} file(s) (see {report})")
    entries = read_report(report)
    assert len(entries) == len(skipped) and {e["command"] for e in entries} == {"index"}
    _check_reasons({e["path"]: e["reason"] for e in entries}, root, cases)
    for path in skipped:  # each one was also logged (to stderr, outside pytest)
        assert f"skipped {path}: " in caplog.text
    coll = Collection.open(out_dir)
    assert {it.source for it in coll.items(coll.ids) if it} == indexed
    assert len(coll.manifest["skipped"]) == len(skipped)


def test_add_appends_to_the_report_and_loses_nothing(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, corpus: tuple[Path, list[Case]],
        trained: Trained) -> None:
    root, cases = corpus
    coll_dir = tmp_path / "coll"
    shutil.copytree(trained.collection, coll_dir)
    before = len(Collection.open(coll_dir))
    notes = root / "notes.txt"
    code, out, err = run(capsys, ["add", coll_dir, root, notes])
    assert code == 0, err
    skipped = _skipped(root, cases)
    report = coll_dir / "skipped.jsonl"
    assert f"{len(skipped) + 1} skipped (see {report})" in out
    entries = read_report(report)
    assert {e["command"] for e in entries} == {"add"}
    got = {e["path"]: e["reason"] for e in entries}
    assert got.pop(str(notes)) == "not an image file extension (.txt)"
    _check_reasons(got, root, cases)
    coll = Collection.open(coll_dir)
    stored = {it.source for it in coll.items(coll.ids) if it}
    assert _indexed(root, cases) <= stored
    # Only bad files: exit 2 with one line; the collection is as it was; the report grows.
    count = len(coll)
    code, out, err = run(capsys, ["add", coll_dir, root / "text.png", root / "empty.png"])
    lines = err.strip().splitlines()
    assert code == 2 and lines[-1] == f"lookalike: error: no readable image to add; 2 skipped (see {report})"
    assert "Traceback" not in err
    assert len(Collection.open(coll_dir)) == count > before
    assert len(read_report(report)) == len(entries) + 2


@pytest.mark.skipif(not AS_ROOT, reason="as another user the corpus's locked files check this")
def test_unreadable_file_and_folder_as_another_user() -> None:
    """Root reads any file, so the permission cases are checked in a forked child that has
    become user 'nobody' (uid 65534)."""
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        root.chmod(0o755)
        digit(1).save(root / "open.png")
        digit(2).save(root / "locked.png")
        (root / "locked.png").chmod(0)
        (root / "closed").mkdir()
        digit(3).save(root / "closed" / "inside.png")
        (root / "closed").chmod(0)
        Image.init()  # every Pillow plugin imported before the child drops its rights
        read_end, write_end = os.pipe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # (fork of a threaded process)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_end)
            try:
                os.setgid(65534)
                os.setuid(65534)
                errors: list[tuple[str, str]] = []
                _, kept, skipped = load_images(find_images(root, errors))
                result = {"kept": [str(p) for p in kept], "skipped": errors + skipped}
            except BaseException as exc:  # noqa: B036 - reported to the parent, then exit
                result = {"error": repr(exc)}
            os.write(write_end, json.dumps(result).encode())
            os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as fh:
            result = json.loads(fh.read())
        os.waitpid(pid, 0)
    finally:
        for p in (root / "locked.png", root / "closed"):
            p.chmod(0o755)
        shutil.rmtree(root)
    if "error" in result:
        pytest.skip(f"cannot become another user here: {result['error']}")
    assert result["kept"] == [str(root / "open.png")]
    assert dict(map(tuple, result["skipped"])) == {
        str(root / "closed"): "folder cannot be read (Permission denied)",
        str(root / "locked.png"): "permission denied"}


# ---------------------------------------------------------------------------- random bytes

SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"GIF87a", b"BM",
              b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b""]


def _decodes_or_refuses(data: bytes) -> None:
    """Decoding gives a uint8 (H, W, 1|3) image or raises ImageError: nothing else."""
    try:
        out = decode_image(data)
    except ImageError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] in (1, 3)
    assert out.shape[0] * out.shape[1] > 0


@settings(max_examples=400, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SIGNATURES), st.binary(max_size=1500))
def test_random_bytes_behind_a_real_signature(signature: bytes, tail: bytes) -> None:
    _decodes_or_refuses(signature + tail)


def _header_of(fmt: str) -> bytes:
    im = Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


HEADS = {fmt: _header_of(fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")}


@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(HEADS)), st.data())
def test_real_header_then_random_bytes(fmt: str, data: st.DataObject) -> None:
    valid = HEADS[fmt]
    cut = data.draw(st.integers(0, len(valid)))
    _decodes_or_refuses(valid[:cut] + data.draw(st.binary(max_size=200)))


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SIGNATURES), st.binary(max_size=600))
def test_random_file_raises_only_image_error_naming_it(signature: bytes, tail: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.png"
        path.write_bytes(signature + tail)
        try:
            out = load_image(path)
        except ImageError as exc:
            assert str(exc).startswith(f"{path}: ")
            return
        assert out.dtype == np.uint8 and out.ndim == 3


def test_only_the_listed_formats_are_decoded() -> None:
    Image.init()
    assert set(FORMATS) <= set(Image.OPEN)
    extensions = Image.registered_extensions()
    assert {extensions[e] for e in IMAGE_EXTENSIONS} <= set(FORMATS)
    for fmt in ("PPM", "ICO", "PCX", "TGA"):  # Pillow reads these; lookalike refuses them
        buf = io.BytesIO()
        Image.new("RGB", (4, 4)).save(buf, format=fmt)
        assert Image.open(io.BytesIO(buf.getvalue())).format == fmt
        with pytest.raises(ImageError, match="not a readable image"):
            decode_image(buf.getvalue())
