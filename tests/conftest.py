"""Shared fixtures: one tiny model (and a second one) trained on digits, and a collection;
a collection made by an articles' preset (no re-ranking); running the CLI quietly."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lookalike.cli import main


@dataclass(frozen=True)
class Trained:
    model: Path  # digits, 1 epoch, seed 0
    other_model: Path  # digits, 1 epoch, seed 1
    collection: Path  # the digits database split indexed with `model`


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
