"""Acting on duplicates: the review (keepers and reasons), ``--move-to`` then ``--undo`` on
real files, byte for byte, never overwriting; a crash at every step of either, and a real
SIGKILL at a random moment of either, completed by running the command again."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli as run
from dupdata import GROUPS, index_photos, reset, tree
from lookalike.search import dupmove, files
from lookalike.search.collection import Collection
from lookalike.search.dupreview import decide
from lookalike.search.keeper import KeepRule

pytestmark = pytest.mark.usefixtures("torch_one_thread")

KEEPERS = {rel for files in GROUPS.values() for rel, keep in files if keep}
MOVERS = {rel for files in GROUPS.values() for rel, keep in files if not keep}


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(root, a copy of the indexed collection): tests :func:`reset` ``root`` to start."""
    import shutil

    root = tmp_path_factory.mktemp("dupmove")
    coll = index_photos(root)
    shutil.copytree(coll, root / "coll.master")
    return root, root / "coll.master"


@pytest.fixture()
def photos(master: tuple[Path, Path]) -> Iterator[Path]:
    """A fresh start in the module's folder: yields ``root`` (photos/, coll/; dups/ to use)."""
    root, coll = master
    reset(root, coll)
    yield root


def _sources(coll_dir: Path) -> dict[str, int]:
    coll = Collection.open(coll_dir)
    return {src: label for (src, _), label in zip(
        ((it.source, it.id) for it in coll.items(coll.ids) if it), coll.labels(coll.ids), strict=True)}


def _review(out: str, photos: Path) -> list[tuple[str, set[str]]]:
    """The keeper and the group's files of each group the text output lists."""
    groups: list[tuple[str, set[str]]] = []
    for line in out.splitlines():
        if line.startswith("group "):
            groups.append(("", set()))
        elif groups and line.startswith("  ") and line.split()[0] in ("keep", "move", "-"):
            rel = str(Path(line.split()[2]).relative_to(photos))
            keeper, files = groups[-1]
            groups[-1] = (rel if line.split()[0] == "keep" else keeper, files | {rel})
    return groups


def test_the_review_marks_each_keeper_with_its_reason(capsys: pytest.CaptureFixture[str],
                                                      photos: Path) -> None:
    before = tree(photos / "photos")
    code, out, err = run(capsys, ["duplicates", photos / "coll"])
    assert code == 0, err
    got = _review(out, photos / "photos")
    want = [(next(r for r, k in files if k), {r for r, _ in files}) for files in GROUPS.values()]
    assert sorted(got, key=str) == sorted(want, key=str)
    for reason in ("most pixels (64x64 vs 48x48)", "lossless (PNG vs JPEG)", "least compressed",
                   "oldest date taken (2018-06-01T12:00:00)", "shortest path"):
        assert f": {reason}" in out
    assert "dry run: nothing moved" in out and "6 file(s)" in out
    # other rules: the newest date taken; files under a folder first
    code, out, _ = run(capsys, ["duplicates", photos / "coll", "--keep", "newest"])
    assert ("2019/d-2021.jpg", {"2019/d-2021.jpg", "phone/d-2018.jpg"}) in _review(out, photos / "photos")
    code, out, _ = run(capsys, ["duplicates", photos / "coll", "--keep",
                                f"in:{photos / 'photos' / 'phone'}"])
    assert {k for k, _ in _review(out, photos / "photos")} == {
        "phone/a-small.jpg", "phone/b.jpg", "phone/c-q60.jpg", "phone/d-2018.jpg", "phone/e-copy-2.jpg"}
    # --dry-run with --move-to lists the destinations, moves nothing
    code, out, _ = run(capsys, ["duplicates", photos / "coll", "--move-to", photos / "dups", "--dry-run"])
    assert code == 0 and f"{photos / 'photos' / 'phone/b.jpg'} -> {photos / 'dups/phone/b.jpg'}" in out
    assert tree(photos / "photos") == before and not (photos / "dups").exists()


@pytest.mark.parametrize(("argv", "says"), [
    (["--keep", "largest"], "keep rule"), (["--keep", "in:"], "keep rule"),
    (["--undo", "photos/2019/a.png"], "not a readable moves manifest"),
    (["--undo", "photos/missing.json"], "does not exist"),
    (["--undo", "coll/manifest.json"], "not a lookalike moves manifest"),
    (["--undo", "coll/manifest.json", "--move-to", "dups"], "not both"),
    (["--move-to", "dups", "--json"], "leave out --json"),
    (["--move-to", "dups", "--csv", "-"], "not to the terminal"),
    (["--move-to", "photos/2019/a.png"], "is a file, not a folder"),
    (["--move-to", "photos/2019/a.png/dups"], "lies inside the file"),
    (["--dry-run"], "goes with --move-to")])
def test_bad_options_are_one_line(capsys: pytest.CaptureFixture[str], photos: Path,
                                  argv: list[str], says: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(photos)
    before = tree(photos / "photos")
    code, _, err = run(capsys, ["duplicates", "coll", *argv])
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert tree(photos / "photos") == before and not (photos / "dups").exists()


def test_keep_in_glob_that_matches_nothing_is_said(capsys: pytest.CaptureFixture[str],
                                                   photos: Path) -> None:
    code, out, err = run(capsys, ["duplicates", photos / "coll", "--keep", "in:phone/*"])
    assert code == 0 and "warning" not in err
    assert {k for k, _ in _review(out, photos / "photos")} == {
        "phone/a-small.jpg", "phone/b.jpg", "phone/c-q60.jpg", "phone/d-2018.jpg", "phone/e-copy-2.jpg"}
    code, out, err = run(capsys, ["duplicates", photos / "coll", "--keep", "in:camera/*"])
    assert code == 0 and err.count("\n") == 1 and "in:camera/* matches no file" in err


def test_csv_to_a_file_and_the_review_come_from_one_decision(
        capsys: pytest.CaptureFixture[str], photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--csv FILE`` writes the table and prints the review: the keeper rule runs once,
    and both name the same keepers."""
    import csv

    from lookalike.search import dupreview

    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[1]))
        return decide(*args, **kwargs)

    monkeypatch.setattr(dupreview, "decide", counted)
    code, out, err = run(capsys, ["duplicates", photos / "coll", "--csv", photos / "dups.csv"])
    assert code == 0, err
    assert calls == [len(GROUPS)]
    with open(photos / "dups.csv", encoding="utf-8") as f:
        in_csv = {int(r["id"]) for r in csv.DictReader(f) if r["keeper"] == "true"}
    in_review = {int(line.split()[1]) for line in out.splitlines() if line.startswith("  keep ")}
    assert len(in_csv) == len(GROUPS) and in_csv == in_review


def _relative_sources(coll_dir: Path, root: Path) -> None:
    """Store every item's source relative to ``root`` (as ``index --dataset photos`` run in
    ``root`` stores them); the catalogue keeps the absolute paths."""
    import sqlite3

    db = sqlite3.connect(coll_dir / "metadata.sqlite")
    with db:
        db.execute("UPDATE items SET source = substr(source, ?) WHERE source LIKE ?",
                   (len(str(root)) + 2, f"{root}/%"))
    db.close()


def test_files_come_from_the_catalogue_never_the_working_folder(
        capsys: pytest.CaptureFixture[str], photos: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative sources, run from another folder with the same layout: the catalogued files
    move, the look-alike folder is never touched; a file changed since it was catalogued
    stays; a second path showing one item is decided on its own; without catalogue rows
    nothing moves."""
    from dupdata import write_photos

    _relative_sources(photos / "coll", photos)
    assert "photos/2019/a.png" in _sources(photos / "coll")
    write_photos(tmp_path / "photos")  # the same layout elsewhere
    decoy = tree(tmp_path / "photos")
    # one item shown by two files: a byte copy of 2019/e.jpg, catalogued as its item
    e = photos / "photos" / "2019" / "e.jpg"
    (photos / "photos" / "2019" / "e-copy-3.jpg").write_bytes(e.read_bytes())
    coll = Collection.open(photos / "coll")
    e_id = files.rows(files.db(coll), "f.path = ?", (str(e),))[0].id
    files.catalogue(coll, [photos / "photos" / "2019" / "e-copy-3.jpg"], [e_id])
    coll.close()
    # a file edited since it was catalogued (same length, other bytes)
    edited = photos / "photos" / "phone" / "c-q60.jpg"
    data = bytearray(edited.read_bytes())
    data[-3] ^= 0xFF
    edited.write_bytes(bytes(data))
    before = tree(photos / "photos")
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, ["duplicates", photos / "coll", "--move-to", photos / "dups"])
    assert code == 0, err
    assert tree(tmp_path / "photos") == decoy
    moved = {rel for rel in tree(photos / "dups") if not rel.startswith("lookalike-moves-")}
    assert moved == MOVERS - {"phone/c-q60.jpg"} | {"2019/e-copy-3.jpg"}
    assert "changed since it was catalogued" in out
    assert tree(photos / "photos") == {r: h for r, h in before.items() if r not in moved}
    # e.jpg's item stays (e.jpg is kept); the moved copy left the catalogue
    coll = Collection.open(photos / "coll")
    assert coll.items([e_id])[0] is not None
    assert [r.path for r in files.of_ids(files.db(coll), [e_id])[e_id]] == [str(e)]
    coll.close()
    manifest = next((photos / "dups").glob("lookalike-moves-*.json"))
    code, out, err = run(capsys, ["duplicates", photos / "coll", "--undo", manifest])
    assert code == 0, err
    assert tree(photos / "photos") == before
    coll = Collection.open(photos / "coll")
    # (the e copies hold the same pixels: all show e.jpg's item again)
    assert {str(e), str(photos / "photos" / "2019" / "e-copy-3.jpg")} <= {
        r.path for r in files.of_ids(files.db(coll), [e_id])[e_id]}
    coll.close()
    # no catalogue rows: relative sources are not resolved against the working folder
    import sqlite3

    db = sqlite3.connect(photos / "coll" / "metadata.sqlite")
    with db:
        db.execute("DELETE FROM files")
    db.close()
    shutil.rmtree(photos / "dups")
    code, out, err = run(capsys, ["duplicates", photos / "coll", "--move-to", photos / "dups"])
    assert code == 0 and "nothing to move" in out and "no file in the catalogue" in out, out + err
    assert tree(tmp_path / "photos") == decoy and tree(photos / "photos") == before


@pytest.mark.parametrize(("change", "says"), [
    (lambda m: m.update(status="sideways"), "status"),
    (lambda m: m.pop("moves"), "'moves' is not a list"),
    (lambda m: m["moves"].append("x"), "moves entry"),
    (lambda m: m["moves"][0].pop("sha256"), "sha256"),
    (lambda m: m["moves"][0].update(to="relative/x.jpg"), "not absolute"),
    (lambda m: m["moves"][0].update(label="1"), "label"),
    (lambda m: m.update(made_folders="dups"), "made_folders"),
    (lambda m: m.update(made_folders=[3]), "made_folders")])
def test_a_malformed_manifest_is_one_line(capsys: pytest.CaptureFixture[str], photos: Path,
                                          change: Callable[[dict[str, Any]], Any], says: str) -> None:
    _move(photos / "coll", photos / "dups")
    path = next((photos / "dups").glob("lookalike-moves-*.json"))
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))
    moved = tree(photos / "dups")
    code, _, err = run(capsys, ["duplicates", photos / "coll", "--undo", path])
    assert code == 2 and says in err and err.count("\n") == 1, err
    assert tree(photos / "dups") == moved


def test_undo_removes_only_the_folders_it_made_under_its_folder(photos: Path, tmp_path: Path) -> None:
    _move(photos / "coll", photos / "dups")
    path = next((photos / "dups").glob("lookalike-moves-*.json"))
    manifest = json.loads(path.read_text())
    outside = tmp_path / "someone-elses-empty-folder"
    outside.mkdir()
    manifest["made_folders"] = [str(outside), *manifest["made_folders"]]
    path.write_text(json.dumps(manifest))
    dupmove.undo(Collection.open(photos / "coll"), path)
    assert outside.is_dir()
    assert not (photos / "dups" / "phone").exists() and not (photos / "dups" / "2019").exists()


def test_the_folder_is_locked_before_any_manifest_is_read_or_written(photos: Path) -> None:
    """While another process works in DIR, a move writes nothing there and an interrupted
    run is not read; a run finished meanwhile (listed, then done by another) is not redone."""
    import fcntl

    (photos / "dups").mkdir()
    coll = Collection.open(photos / "coll")
    from lookalike.search.duplicates import find_groups

    decisions = decide(coll, find_groups(coll), KeepRule())
    fd = os.open(photos / "dups" / dupmove.LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(dupmove.Busy):
            dupmove.move(coll, decisions, photos / "dups")
        assert list((photos / "dups").glob("lookalike-moves-*.json")) == []
    finally:
        os.close(fd)
    out = dupmove.move(coll, decisions, photos / "dups")
    manifest = json.loads(out.manifest.read_text())
    assert manifest["status"] == "moved"
    # listed as interrupted just before another process finished it: read again, not redone
    real = dupmove.pending
    calls = iter([[out.manifest], [out.manifest]])
    dupmove.pending = lambda target: next(calls, real(target))  # type: ignore[assignment]
    try:
        assert dupmove.finish_pending(coll, photos / "dups") == []
    finally:
        dupmove.pending = real  # type: ignore[assignment]
    assert json.loads(out.manifest.read_text()) == manifest


def test_a_group_given_twice_is_one_entry(photos: Path) -> None:
    coll = Collection.open(photos / "coll")
    from lookalike.search.duplicates import find_groups

    decisions = decide(coll, find_groups(coll), KeepRule())
    out = dupmove.move(coll, decisions + decisions, photos / "dups")
    froms = [e["from"] for e in json.loads(out.manifest.read_text())["moves"]]
    assert len(froms) == len(set(froms)) == len(MOVERS)


def _check_moved(root: Path, before: dict[str, str], sources: dict[str, int]) -> None:
    """The state after a complete move: every non-keeper under dups/ with its bytes, the
    rest in place with theirs, and the moved items out of the collection."""
    after, moved = tree(root / "photos"), tree(root / "dups")
    assert after == {rel: h for rel, h in before.items() if rel not in MOVERS}
    assert {rel: h for rel, h in moved.items() if not rel.startswith("lookalike-moves-")} == {
        rel: before[rel] for rel in MOVERS}
    left = _sources(root / "coll")
    assert set(left) == set(sources) - {str(root / "photos" / rel) for rel in MOVERS}


def _check_undone(root: Path, before: dict[str, str], sources: dict[str, int]) -> None:
    """The state after a complete undo: every file back with its bytes, dups/ holding only
    manifests, and every file in the collection again: under its own source and label, or
    (a copy whose stored pixels another item has) by that item's content."""
    assert tree(root / "photos") == before
    assert all(rel.startswith("lookalike-moves-") for rel in tree(root / "dups"))
    coll = Collection.open(root / "coll")
    now = _sources(root / "coll")
    for src, label in sources.items():
        if src in now:
            assert now[src] == label
        else:
            from lookalike.data.images import load_images

            images, _, _ = load_images([src], coll.encoder.spec)
            assert coll.stored_ids(images)[0] >= 0, src
    # every file put back is catalogued again, as showing the item that holds its pixels
    rows = {r.path: r.id for r in files.rows(files.db(coll))}
    assert set(rows) == {str(root / "photos" / rel) for rel in before}
    for path, item in rows.items():
        from lookalike.data.images import load_images

        images, _, _ = load_images([path], coll.encoder.spec)
        assert coll.stored_ids(images)[0] == item, path


def test_move_then_undo_restores_every_byte(capsys: pytest.CaptureFixture[str], photos: Path) -> None:
    before, sources = tree(photos / "photos"), _sources(photos / "coll")
    assert set(sources.values()) == {0, 1}  # (labels from the two folders: kept on undo)
    # a file already where one would go is never overwritten: that one stays
    (photos / "dups" / "phone").mkdir(parents=True)
    (photos / "dups" / "phone" / "b.jpg").write_bytes(b"someone else's file")
    code, out, err = run(capsys, ["duplicates", photos / "coll", "--move-to", photos / "dups"])
    assert code == 0, err
    assert "moved 5 file(s)" in out and "not moved" in out and "phone/b.jpg exists" in out
    assert (photos / "dups" / "phone" / "b.jpg").read_bytes() == b"someone else's file"
    assert tree(photos / "photos")["phone/b.jpg"] == before["phone/b.jpg"]
    (photos / "dups" / "phone" / "b.jpg").unlink()
    # the next pass finds the one group left and moves it too; a second manifest
    code, out, err = run(capsys, ["duplicates", photos / "coll", "--move-to", photos / "dups"])
    assert code == 0 and "moved 1 file(s)" in out, out + err
    _check_moved(photos, before, sources)
    manifests = sorted((photos / "dups").glob("lookalike-moves-*.json"))
    assert len(manifests) == 2
    first = json.loads(manifests[0].read_text())
    assert first["status"] == "moved" and first["root"] == str(photos / "photos")
    assert {Path(e["from"]).relative_to(photos / "photos").as_posix() for e in first["moves"]} == \
        MOVERS - {"phone/b.jpg"}
    assert first["skipped"][0]["to"] == str(photos / "dups" / "phone" / "b.jpg")
    code, out, _ = run(capsys, ["duplicates", photos / "coll"])
    assert out.startswith("0 group(s)")
    # undo both, newest first; a manifest of another collection is refused in one line
    code, _, err = run(capsys, ["duplicates", photos / "coll.master", "--undo", manifests[0]])
    assert code == 2 and "not" in err and err.count("\n") == 1
    for manifest in reversed(manifests):
        code, out, err = run(capsys, ["duplicates", photos / "coll", "--undo", manifest])
        assert code == 0 and "put back" in out, err
    _check_undone(photos, before, sources)
    assert json.loads(manifests[0].read_text())["status"] == "undone"
    # the folders the moves made are gone; dups/phone was there before (the test made it)
    assert sorted(p.name for p in (photos / "dups").iterdir()) == sorted(
        [m.name for m in manifests] + [dupmove.LOCK, "phone"])
    assert not any((photos / "dups" / "phone").iterdir())
    # undoing again changes nothing
    code, out, _ = run(capsys, ["duplicates", photos / "coll", "--undo", manifests[0]])
    assert code == 0 and "0 added back" in out
    _check_undone(photos, before, sources)


class Crash(BaseException):
    """A crash at a chosen step (nothing catches it but the test)."""


def _cross_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every folder another file system, as far as ``link`` can tell: a link between two
    folders fails with EXDEV (the move then copies)."""
    link = os.link

    def no_link(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if Path(src).parent != Path(dst).parent:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", no_link)


def _crash_at(monkeypatch: pytest.MonkeyPatch, root: Path, step: int) -> Callable[[], int]:
    """Make the ``step``-th step raise :class:`Crash` before it is done. Steps: every link,
    unlink, replace (an atomic write's rename) and rmdir under ``root``, and each
    Collection.add and Collection.remove. Returns a function giving how many steps ran."""
    count = 0

    def counted(name: str, fn: Callable[..., Any], mine: Callable[..., bool]) -> Callable[..., Any]:
        def step_fn(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            if mine(*args):
                count += 1
                if count == step:
                    raise Crash(f"{name} {args[:2]}")
            return fn(*args, **kwargs)
        return step_fn

    def under(*args: Any) -> bool:
        # (not the detection pass's own checkpoint, COLL/duplicates/: written before any move)
        return any(str(a).startswith(str(root)) and "/duplicates/" not in str(a) for a in args[:2])

    for name in ("link", "unlink", "replace", "rmdir"):
        monkeypatch.setattr(os, name, counted(name, getattr(os, name), under))
    for name in ("add", "remove"):
        monkeypatch.setattr(Collection, name, counted(name, getattr(Collection, name),
                                                      lambda *a: True))
    return lambda: count


def _move(coll_dir: Path, dups: Path) -> None:
    coll = Collection.open(coll_dir)
    dupmove.finish_pending(coll, dups)
    from lookalike.search.duplicates import find_groups

    dupmove.move(coll, decide(coll, find_groups(coll), KeepRule()), dups)


@pytest.mark.parametrize("devices", ["one", "many"])
def test_a_crash_at_any_step_is_completed_by_a_rerun(photos: Path, master: tuple[Path, Path],
                                                     devices: str, monkeypatch: pytest.MonkeyPatch
                                                     ) -> None:
    """Every step of a move, then of an undo, crashed in turn; running the same again must
    complete it, byte for byte, and the collection must follow. On one file system files
    move as links; on many (every folder its own, as ``link`` sees it) as verified copies."""
    root = photos
    if devices == "many":
        _cross_device(monkeypatch)
    before, sources = tree(root / "photos"), _sources(root / "coll")
    steps = {}
    for what in ("move", "undo"):
        step = 1
        while True:
            reset(root, master[1])
            if what == "undo":
                _move(root / "coll", root / "dups")
            manifest = next(iter((root / "dups").glob("lookalike-moves-*.json")), None)
            with pytest.MonkeyPatch.context() as mp:
                ran = _crash_at(mp, root, step)
                try:
                    if what == "move":
                        _move(root / "coll", root / "dups")
                    else:
                        assert manifest is not None
                        dupmove.undo(Collection.open(root / "coll"), manifest)
                    crashed = False
                except Crash:
                    crashed = True
            if what == "move":
                _move(root / "coll", root / "dups")  # the rerun
                _check_moved(root, before, sources)
            else:
                assert manifest is not None
                dupmove.undo(Collection.open(root / "coll"), manifest)
                _check_undone(root, before, sources)
            if not crashed:
                steps[what] = ran()
                break
            step += 1
    print(f"steps crashed in turn: {steps}")  # (pytest -rP)
    # (every file's link and unlink, the manifest's writes, the collection's commit were hit)
    assert steps["move"] >= 2 * len(MOVERS) + 3 and steps["undo"] >= 2 * len(MOVERS) + 3, steps


SLOW = """
import os, sys, time
_link = os.link
def link(*args, **kwargs):
    time.sleep(0.05)  # each file's step slowed, so that a kill lands among them
    return _link(*args, **kwargs)
os.link = link
from lookalike.search.collection import Collection
_add = Collection.add
def add(*args, **kwargs):
    time.sleep(0.3)  # and so is adding back, which an undo ends with
    return _add(*args, **kwargs)
Collection.add = add
from lookalike.app.cli import main
sys.exit(main(sys.argv[1:]))
"""


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _argv(*argv: object, slow: bool = False) -> list[str]:
    head = ["-c", SLOW] if slow else ["-m", "lookalike.app.cli"]
    return [sys.executable, *head, "-q", "duplicates", *map(str, argv)]


def _cli(*argv: object) -> subprocess.Popen[bytes]:
    """The slowed command, started."""
    return subprocess.Popen(_argv(*argv, slow=True), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)


def _rerun(*argv: object) -> subprocess.CompletedProcess[bytes]:
    """The command, run to its end."""
    return subprocess.run(_argv(*argv), capture_output=True, check=False, env=ENV)


def _kill_when(proc: subprocess.Popen[bytes], ready: Callable[[], bool], delay: float) -> bool:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready()`` holds; whether it was still running."""
    while not ready():
        if proc.poll() is not None:
            break
        time.sleep(0.002)
    time.sleep(delay)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    return running


def _status(dups: Path) -> str | None:
    for p in dups.glob("lookalike-moves-*.json"):
        try:
            return str(json.loads(p.read_text())["status"])
        except (OSError, ValueError):
            return None
    return None


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_in_the_middle_of_a_move_and_of_an_undo(photos: Path, seed: int) -> None:
    """A real SIGKILL at a random moment once the manifest says the work has begun, then the
    same command again (unslowed): every byte in its place, the collection following."""
    rng = random.Random(seed)
    root = photos
    before, sources = tree(root / "photos"), _sources(root / "coll")
    proc = _cli(root / "coll", "--move-to", root / "dups")
    assert _kill_when(proc, lambda: _status(root / "dups") == "moving",
                      rng.uniform(0, 0.045 * len(MOVERS)))
    assert _status(root / "dups") == "moving"
    done = _rerun(root / "coll", "--move-to", root / "dups")
    assert done.returncode == 0, done.stderr
    assert b"completed the interrupted run" in done.stdout
    _check_moved(root, before, sources)
    manifest = next((root / "dups").glob("lookalike-moves-*.json"))
    proc = _cli(root / "coll", "--undo", manifest)
    assert _kill_when(proc, lambda: _status(root / "dups") == "undoing",
                      rng.uniform(0, 0.045 * len(MOVERS) + 0.25))
    assert _status(root / "dups") == "undoing"
    done = _rerun(root / "coll", "--undo", manifest)
    assert done.returncode == 0, done.stderr
    _check_undone(root, before, sources)


def test_files_edited_meanwhile_are_never_lost(photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file edited after the plan, before an interrupted move reached it, stays where it is
    (and in the collection); a moved file edited in DIR comes back as edited, across file
    systems too."""
    root = photos
    before = tree(root / "photos")
    with pytest.MonkeyPatch.context() as mp:
        _crash_at(mp, root, 2)  # (1: the manifest's write; 2: the first file's link)
        with pytest.raises(Crash):
            _move(root / "coll", root / "dups")
    assert _status(root / "dups") == "moving"
    edited = root / "photos" / "phone" / "b.jpg"
    edited.write_bytes(edited.read_bytes() + b"edited")
    coll = Collection.open(root / "coll")
    out = dupmove.finish_pending(coll, root / "dups")[0]
    assert [why for _, why in out.skipped] == [f"{edited} changed since the move was planned"]
    assert edited.read_bytes() == before_bytes(before, root, edited) + b"edited"
    assert str(edited) in _sources(root / "coll") and len(out.done) == len(MOVERS) - 1
    manifest = out.manifest
    dupmove.undo(Collection.open(root / "coll"), manifest)
    assert {r: h for r, h in tree(root / "photos").items() if r != "phone/b.jpg"} == {
        r: h for r, h in before.items() if r != "phone/b.jpg"}
    # across file systems: a file edited in DIR comes back as it is now
    _cross_device(monkeypatch)
    _move(root / "coll", root / "dups")
    moved = root / "dups" / "phone" / "b.jpg"
    moved.write_bytes(moved.read_bytes() + b" again")
    newest = sorted((root / "dups").glob("lookalike-moves-*.json"))[-1]
    out = dupmove.undo(Collection.open(root / "coll"), newest)
    assert out.skipped == [] and edited.read_bytes().endswith(b"edited again")


def before_bytes(before: dict[str, str], root: Path, path: Path) -> bytes:
    """The bytes ``path`` had (written again by :func:`dupdata.write_photos`)."""
    from dupdata import write_photos

    files = write_photos(root / "regenerated")
    rel = str(path.relative_to(root / "photos"))
    assert tree(root / "regenerated")[rel] == before[rel]
    return files[rel]
