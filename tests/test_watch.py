"""Watching folders (lookalike/app/watch.py): a real watcher (watchfiles) on a temporary
folder, files copied in, deleted and moved; the stat-rescan fallback; serve --watch over HTTP."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Trained, run_cli
from lookalike.app.watch import WatchConfig, keep_in_sync, narrowed
from lookalike.search import files
from lookalike.search.collection import Collection
from servers import serving
from test_sync import write_digits

FAST = WatchConfig(debounce_ms=300, step_ms=50, rescan_s=0.3)


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.05)


@pytest.fixture()
def library(capsys: pytest.CaptureFixture[str], tmp_path: Path, trained: Trained) -> Path:
    folder = tmp_path / "photos"
    write_digits(folder, [f"p{i:02d}.png" for i in range(6)])
    code, _, err = run_cli(capsys, ["-q", "index", folder, "--model", trained.model,
                                    "--out", tmp_path / "coll"])
    assert code == 0, err
    return tmp_path / "coll"


@pytest.fixture()
def watching(library: Path) -> Iterator[threading.Event]:
    """keep_in_sync in a thread (as serve --watch runs it), the watch in place."""
    stop, started = threading.Event(), threading.Event()
    thread = threading.Thread(target=keep_in_sync, args=(library, stop, FAST),
                              kwargs={"started": started}, daemon=True)
    thread.start()
    assert started.wait(60)
    yield started
    stop.set()
    thread.join(30)
    assert not thread.is_alive()


def paths_of(library: Path) -> dict[str, int]:
    coll = Collection.open(library)
    try:
        return {r.path: r.id for r in files.rows(files.db(coll))}
    finally:
        coll.close()


def searchable(library: Path, path: Path) -> bool:
    """The file's item is in the index: a search by its id finds its neighbours."""
    item = paths_of(library).get(str(path))
    if item is None:
        return False
    coll = Collection.open(library)
    try:
        _, ids = coll.search_ids([item], 3, rerank=False)
        return bool((ids >= 0).all())
    finally:
        coll.close()


def test_a_watched_folder_follows_copies_deletions_and_moves(
        library: Path, tmp_path: Path, watching: threading.Event) -> None:
    folder = tmp_path / "photos"
    staged = write_digits(tmp_path / "staging", ["n0.png", "n1.png", "n2.png"], start=300)
    for p in staged:  # copied in one by one
        shutil.copy(p, folder / p.name)
    eventually(lambda: all(searchable(library, folder / p.name) for p in staged))
    assert len(Collection.open(library)) == 9
    os.remove(folder / "p00.png")
    eventually(lambda: str(folder / "p00.png") not in paths_of(library))
    assert len(Collection.open(library)) == 8
    moved_id = paths_of(library)[str(folder / "p01.png")]
    (folder / "sub").mkdir()
    os.rename(folder / "p01.png", folder / "sub" / "renamed.png")
    eventually(lambda: paths_of(library).get(str(folder / "sub" / "renamed.png")) == moved_id)
    coll = Collection.open(library)
    assert str(folder / "p01.png") not in paths_of(library)
    assert coll.items([moved_id])[0].source == str(folder / "sub" / "renamed.png")
    # a whole folder moved in at once (one event for the folder): its files are found
    write_digits(tmp_path / "trip", ["t0.png", "t1.png"], start=400)
    os.rename(tmp_path / "trip", folder / "trip")
    eventually(lambda: searchable(library, folder / "trip" / "t1.png"))
    coll.verify()


def test_without_os_events_the_folders_are_rescanned(
        library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    import watchfiles

    def exhausted(*args: object, **kwargs: object) -> Iterator[set[tuple[int, str]]]:
        raise OSError(28, "inotify watch limit reached")
        yield set()  # pragma: no cover

    monkeypatch.setattr(watchfiles, "watch", exhausted)
    stop, started = threading.Event(), threading.Event()
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        thread = threading.Thread(target=keep_in_sync, args=(library, stop, FAST),
                                  kwargs={"started": started}, daemon=True)
        thread.start()
        assert started.wait(60)
        warned = [r.getMessage() for r in caplog.records if "rescan" in r.getMessage()]
        assert len(warned) == 1 and "inotify watch limit reached" in warned[0]
        new = write_digits(tmp_path / "photos", ["late.png"], start=321)[0]
        eventually(lambda: searchable(library, new))
        stop.set()
        thread.join(30)


def test_a_burst_is_synced_by_its_folders() -> None:
    few = [f"/p/a/{i}.png" for i in range(3)]
    assert narrowed(few) == few
    many = [f"/p/a/{i}.png" for i in range(100)] + [f"/p/a/b/{i}.png" for i in range(100)]
    assert narrowed(many) == ["/p/a"]
    assert narrowed([f"/p/{i}/x.png" for i in range(200)]) is None


def test_watch_config_is_checked() -> None:
    with pytest.raises(ValueError):
        WatchConfig(debounce_ms=10, step_ms=50)
    with pytest.raises(ValueError):
        WatchConfig(rescan_s=0)


def _post(url: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_watch_makes_copied_files_searchable_over_http(library: Path, tmp_path: Path,
                                                            workers: str) -> None:
    """With --workers 2 the first process watches and writes; whichever process answers
    reads the commit."""
    folder = tmp_path / "photos"
    with serving(library, "--watch", "--workers", workers) as url:
        new = write_digits(tmp_path / "staging", ["w.png"], start=333)[0]
        next_id = int(Collection.open(library).manifest["next_id"])
        assert _post(url + "api/search", {"id": next_id, "k": 2})[0] == 404
        shutil.copy(new, folder / "w.png")

        def found() -> bool:
            status, body = _post(url + "api/search", {"id": next_id, "k": 2})
            return status == 200 and len(body["results"]) == 2  # type: ignore[arg-type]

        eventually(found)
        with urllib.request.urlopen(f"{url}api/items/{next_id}", timeout=10) as r:
            assert json.loads(r.read())["source"] == str(folder / "w.png")
        os.remove(folder / "w.png")
        eventually(lambda: _post(url + "api/search", {"id": next_id, "k": 2})[0] == 404)


def test_serve_watch_needs_a_remembered_folder(capsys: pytest.CaptureFixture[str],
                                               trained: Trained) -> None:
    code, _, err = run_cli(capsys, ["serve", trained.collection, "--watch", "--port", "0"])
    assert code == 2 and "--watch:" in err and "remembers no folder" in err
