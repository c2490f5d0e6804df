"""Shared fixtures: one tiny model (and a second one) trained on digits, and a collection;
a collection made by an articles' preset (no re-ranking); running the CLI quietly; a Milvus
standalone server on loopback for the session (started on first use).

In CI (``CI`` or ``LOOKALIKE_REQUIRE_SCALE`` set to true/1/yes, as ``.ci/run`` does) a test
skipped because a module of the ``scale`` extra (pymilvus, milvus_lite, ray) or the Milvus
server of the ``test`` extra (milvus) cannot be imported fails the run, and so does a Milvus
server that cannot start, and a test skipped for want of the Debian package
dataset-fashion-mnist (:data:`needs_fashion_mnist`; ``make test`` installs it): otherwise the
Milvus, Ray and Fashion-MNIST tests would quietly not run."""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import ExifTags, Image

from lookalike.app.cli import main
from lookalike.data.datasets import FASHION_MNIST_DIRS
from servers import MilvusStartError, milvus_standalone


@dataclass(frozen=True)
class Trained:
    model: Path  # digits, 1 epoch, seed 0
    other_model: Path  # digits, 1 epoch, seed 1
    collection: Path  # the digits database split indexed with `model`


def exif_of(taken: str | None = None, camera: tuple[str, str] | None = None,
            gps: tuple[float, float] | None = None, gps_minutes: tuple[float, float] = (0.0, 0.0)
            ) -> Image.Exif:
    """The EXIF of a test photo: ``taken`` as DateTimeOriginal (``"YYYY:MM:DD HH:MM:SS"``),
    ``camera`` as (Make, Model), ``gps`` as (latitude, longitude) whole degrees, signed, with
    ``gps_minutes`` added to each (so a reader's minutes are checked too)."""
    exif = Image.Exif()
    if taken:
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = taken
    if camera:
        exif[ExifTags.Base.Make], exif[ExifTags.Base.Model] = camera
    if gps:
        (lat, lon), (lat_min, lon_min) = gps, gps_minutes
        info = exif.get_ifd(ExifTags.IFD.GPSInfo)
        info[ExifTags.GPS.GPSLatitudeRef] = "N" if lat >= 0 else "S"
        info[ExifTags.GPS.GPSLatitude] = (abs(lat), lat_min, 0.0)
        info[ExifTags.GPS.GPSLongitudeRef] = "E" if lon >= 0 else "W"
        info[ExifTags.GPS.GPSLongitude] = (abs(lon), lon_min, 0.0)
    return exif


def run_cli(capsys: pytest.CaptureFixture[str], argv: Sequence[object]) -> tuple[int, str, str]:
    """Run the CLI; return (exit code, stdout, stderr). argparse errors exit via SystemExit."""
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _run_quietly(argv: list[str]) -> None:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    assert code == 0, f"{argv}: exit {code}\n{out.getvalue()}\n{err.getvalue()}"


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    # Tiny models: one thread is as fast, and far faster on a busy machine (no spinning).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture()
def torch_one_thread() -> Iterator[None]:
    with _one_thread():
        yield


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    root = tmp_path_factory.mktemp("trained")
    t = Trained(root / "model", root / "other-model", root / "collection")
    with _one_thread():
        for out, seed in ((t.model, "0"), (t.other_model, "1")):
            _run_quietly(["-q", "train", "--dataset", "digits", "--epochs", "1",
                          "--device", "cpu", "--seed", seed, "--out", str(out)])
        _run_quietly(["-q", "index", "--model", str(t.model), "--dataset", "digits",
                      "--out", str(t.collection)])
    return t


@pytest.fixture(scope="session")
def exact_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Digits indexed by an articles' preset: no re-ranking."""
    root = tmp_path_factory.mktemp("exact")
    with _one_thread():
        _run_quietly(["-q", "train", "--dataset", "digits", "--arch", "conv-16-8-8", "--epochs", "1",
                      "--device", "cpu", "--seed", "0", "--out", str(root / "model")])
        _run_quietly(["-q", "index", "--model", str(root / "model"), "--dataset", "digits",
                      "--out", str(root / "collection")])
    return root / "collection"


@pytest.fixture()
def run_quietly() -> Callable[[list[str]], None]:
    """Run the CLI with its output captured; fail with that output on a non-zero exit."""
    return _run_quietly


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI (``http://127.0.0.1:PORT``) of a Milvus standalone server started for this
    session, its data and logs in a temporary directory (servers.milvus_standalone); stopped
    at the end. One that cannot start skips its tests, or fails them in CI."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus")
    root = tmp_path_factory.mktemp("milvus-server")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(milvus_standalone(root))
        except (MilvusStartError, OSError) as exc:
            reason = f"no Milvus server ({root}): {exc}"
            if _required_in_ci():
                pytest.fail(reason, pytrace=False)
            pytest.skip(reason)
        yield server.uri


# ---------------------------------------------------------------------------- CI: no scale skips
SCALE_MODULES = frozenset({"pymilvus", "milvus_lite", "ray", "milvus"})
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
#: Skips a test that reads Fashion-MNIST's IDX files where the Debian package is missing
#: (a skip that fails the run in CI).
needs_fashion_mnist = pytest.mark.skipif(
    not Path(FASHION_MNIST_DIRS[0]).is_dir(),
    reason=f"{FASHION_MNIST_DIRS[0]} absent (Debian package {FASHION_MNIST_PACKAGE} not installed)")
_scale_skips: list[str] = []


def _required_in_ci() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes")
               for name in ("CI", "LOOKALIKE_REQUIRE_SCALE"))


def _scale_skip(report: pytest.CollectReport | pytest.TestReport) -> str | None:
    """The reason, when ``report`` is a skip for want of a module of the scale extra
    (``pytest.importorskip``'s "could not import 'NAME'") or of the Fashion-MNIST package
    (:data:`needs_fashion_mnist`)."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    reason = str(report.longrepr[2])
    if f"Debian package {FASHION_MNIST_PACKAGE} not installed" in reason:
        return reason
    found = re.search(r"could not import '([\w.]+)'", reason)
    return reason if found and found.group(1).split(".")[0] in SCALE_MODULES else None


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if (reason := _scale_skip(report)) is not None:  # a module-level importorskip
        _scale_skips.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if (reason := _scale_skip(report)) is not None:  # an importorskip inside a test
        _scale_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _scale_skips and _required_in_ci() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    if _scale_skips and _required_in_ci():
        terminalreporter.section("the 'scale' extra, the Milvus server or Fashion-MNIST is missing: "
                                 "skips that fail the run in CI", sep="=", red=True, bold=True)
        for line in _scale_skips:
            terminalreporter.line(line, red=True)
        terminalreporter.line("install it: pip install -e '.[scale]' (and milvus, the server: "
                              "'.[test]'; make test installs .[dev], which includes both); "
                              f"apt-get install {FASHION_MNIST_PACKAGE} (make system)")
