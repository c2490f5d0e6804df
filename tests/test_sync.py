"""lookalike sync (lookalike/search/sync.py, app/syncing.py) and add --update on real files:
real renames, copies, deletions, edits and touches of PNGs written with Pillow, the files
read and the images decoded and encoded counted."""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import Trained, run_cli
from lookalike.data.datasets import load_dataset
from lookalike.search import files
from lookalike.search.collection import Collection
from lookalike.search.sync import folders_of, plan, sync


def write_digits(folder: Path, names: list[str], start: int = 0) -> list[Path]:
    """PNGs of distinct digits (16x16 grey), one per name."""
    ds = load_dataset("digits", "database")
    out = []
    for n, name in enumerate(names):
        i = start + n
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        digit = np.rot90(ds.images[i % len(ds), :, :, 0], i // len(ds))
        Image.fromarray(np.ascontiguousarray(digit)).resize((16, 16)).save(p)
        out.append(p)
    return out


@dataclass
class Counts:
    """Files opened under a folder (any read: digest, header, decode), images decoded by
    Pillow (from the file, or from its bytes read by the same thread just before: the
    pipeline's one read), and rows encoded."""

    opened: Counter[str]
    decoded: Counter[str]
    encoded: int = 0

    def clear(self) -> None:
        self.opened.clear()
        self.decoded.clear()
        self.encoded = 0


@pytest.fixture()
def counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Counts]:
    c = Counts(Counter(), Counter())
    real_open, real_image_open = builtins.open, Image.open
    root = str(tmp_path / "photos")
    last = threading.local()  # the file this thread opened last

    def counting_open(file: object, *args: object, **kwargs: object) -> object:
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(root):
            c.opened[os.fspath(file)] += 1
            last.path = os.fspath(file)
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    class Decoding:  # Pillow's image, counted when its pixels are loaded
        pass

    def counting_image_open(fp: object, *args: object, **kwargs: object) -> Image.Image:
        im = real_image_open(fp, *args, **kwargs)  # type: ignore[arg-type]
        load = im.load

        def counted_load() -> object:
            if isinstance(fp, (str, os.PathLike)) and os.fspath(fp).startswith(root):
                c.decoded[os.fspath(fp)] += 1
            elif isinstance(fp, io.BytesIO) and getattr(last, "path", None):
                c.decoded[last.path] += 1
            return load()

        im.load = counted_load  # type: ignore[method-assign]
        return im

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(Image, "open", counting_image_open)
    yield c


def counted_encoder(coll: Collection, c: Counts, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = coll.encoder
    encode = enc.encode

    def counting(images: np.ndarray) -> np.ndarray:
        c.encoded += len(images)
        return encode(images)

    monkeypatch.setattr(enc, "encode", counting)


@pytest.fixture()
def library(capsys: pytest.CaptureFixture[str], tmp_path: Path, trained: Trained) -> Path:
    """A folder of 24 digits in two subfolders, indexed (the collection remembers it)."""
    folder = tmp_path / "photos"
    write_digits(folder, [f"a/p{i:02d}.png" for i in range(12)])
    write_digits(folder, [f"b/p{i:02d}.png" for i in range(12)], start=12)
    code, _, err = run_cli(capsys, ["-q", "index", folder, "--model", trained.model,
                                    "--out", tmp_path / "coll"])
    assert code == 0, err
    return tmp_path / "coll"


def test_sync_mirrors_edits_moves_deletions_and_new_files(
        library: Path, tmp_path: Path, counts: Counts, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "photos"
    coll = Collection.open(library)
    assert folders_of(coll) == [str(folder)]
    ids = {r.path: r.id for r in files.rows(files.db(coll))}
    a = folder / "a"
    moved_id, code_before = ids[str(a / "p01.png")], coll.vector(ids[str(a / "p01.png")])
    os.remove(a / "p00.png")                                      # deleted
    (folder / "c").mkdir()
    os.rename(a / "p01.png", folder / "c" / "renamed.png")        # moved (same inode)
    shutil.copyfile(a / "p02.png", folder / "c" / "copied.png")   # moved as copy + delete
    os.remove(a / "p02.png")
    write_digits(folder, ["a/p03.png"], start=500)                # edited
    write_digits(folder, ["c/new.png"], start=600)                # new
    shutil.copy(a / "p04.png", folder / "c" / "twin.png")         # new, same bytes as a live file
    os.utime(a / "p05.png", ns=(1, 10**18))                       # touched: bytes unchanged
    counts.clear()
    counted_encoder(coll, counts, monkeypatch)
    report = sync(coll)
    assert (report.added, report.removed, report.moved, report.updated, report.unchanged) == (
        2, 1, 2, 1, 20)
    assert report.skipped == [] and report.items_removed == 1
    # decoded and encoded: only the edited and the new file; read: those, the files whose stat
    # changed (digest), and the new paths no vanished stat explains (digest)
    assert set(counts.decoded) == {str(a / "p03.png"), str(folder / "c" / "new.png")}
    assert counts.encoded == 2 == report.encoded
    assert str(folder / "c" / "renamed.png") not in counts.opened  # a rename: not even read
    # the edited and the new file: opened twice, once for the plan's digest, once to be decoded,
    # digested and catalogued (the pipeline's one read; no header read after)
    assert counts.opened[str(a / "p03.png")] == counts.opened[str(folder / "c" / "new.png")] == 2
    assert set(counts.opened) == {str(a / "p03.png"), str(folder / "c" / "new.png"),
                                  str(folder / "c" / "copied.png"), str(folder / "c" / "twin.png"),
                                  str(a / "p05.png")}
    coll = Collection.open(library)
    rows = {r.path: r for r in files.rows(files.db(coll))}
    assert str(a / "p00.png") not in rows and coll.find(source=str(a / "p00.png")) is None
    assert len(coll) == 24 - 1 + 1  # one removed, one new; the twin shows an item already there
    moved = rows[str(folder / "c" / "renamed.png")]
    assert moved.id == moved_id and np.array_equal(coll.vector(moved_id), code_before)
    assert coll.items([moved_id])[0].source == str(folder / "c" / "renamed.png")
    assert rows[str(folder / "c" / "copied.png")].id == ids[str(a / "p02.png")]
    assert coll.items([ids[str(a / "p02.png")]])[0].source == str(folder / "c" / "copied.png")
    assert rows[str(a / "p03.png")].id == ids[str(a / "p03.png")]  # edited: same id...
    assert rows[str(folder / "c" / "twin.png")].id == ids[str(a / "p04.png")]
    assert rows[str(a / "p05.png")].mtime_ns == 10**18
    coll.verify()
    # ...and a new code: its stored picture is the new file's
    from lookalike.data.images import load_image

    stored = coll.image(ids[str(a / "p03.png")])
    assert np.array_equal(stored, coll.stored_form([load_image(a / "p03.png")])[0])
    # nothing changed: not one file read, decoded or encoded
    counts.clear()
    counted_encoder(coll, counts, monkeypatch)
    idle = sync(coll)
    assert (idle.added, idle.removed, idle.moved, idle.updated, idle.unchanged) == (0, 0, 0, 0, 25)
    assert not counts.opened and not counts.decoded and counts.encoded == 0 and idle.read == 0


def test_a_vanished_source_points_at_a_live_copy_and_an_edited_twin_splits(
        library: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    a = folder / "a"
    shutil.copy(a / "p00.png", folder / "b" / "copy0.png")
    shutil.copy(a / "p01.png", folder / "b" / "copy1.png")
    coll = Collection.open(library)
    sync(coll)
    item0 = coll.find(source=str(a / "p00.png"))
    item1 = coll.find(source=str(a / "p01.png"))
    assert item0 is not None and item1 is not None
    os.remove(a / "p00.png")  # its item's source, but another path shows it
    write_digits(folder, ["a/p01.png"], start=700)  # edited; its twin still shows the old item
    report = sync(coll)
    assert (report.removed, report.added, report.updated, report.items_removed) == (1, 1, 0, 0)
    coll = Collection.open(library)
    assert coll.items([item0])[0].source == str(folder / "b" / "copy0.png")
    assert coll.items([item1])[0].source == str(folder / "b" / "copy1.png")
    rows = {r.path: r for r in files.rows(files.db(coll))}
    assert rows[str(folder / "b" / "copy1.png")].id == item1
    assert rows[str(a / "p01.png")].id not in (item1, -1)
    assert len(coll) == 24 + 1


def test_sync_cli_dry_run_json_and_a_missing_folder(
        capsys: pytest.CaptureFixture[str], library: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    os.remove(folder / "a" / "p00.png")
    write_digits(folder, ["new.png"], start=800)
    code, out, _ = run_cli(capsys, ["sync", library, "--dry-run"])
    assert code == 0
    assert f"remove  {folder / 'a' / 'p00.png'}" in out and f"add     {folder / 'new.png'}" in out
    assert len(Collection.open(library)) == 24  # nothing done
    code, out, _ = run_cli(capsys, ["sync", library, "--json"])
    got = json.loads(out)
    assert code == 0 and (got["added"], got["removed"], got["unchanged"]) == (1, 1, 23)
    code, out, _ = run_cli(capsys, ["sync", library])
    assert code == 0 and "added 0, removed 0, moved 0, updated 0, unchanged 24, skipped 0" in out
    # another folder given: synced, and remembered
    extra = tmp_path / "more"
    write_digits(extra, ["x.png", "y.png"], start=900)
    code, out, _ = run_cli(capsys, ["sync", library, extra])
    assert code == 0 and "added 2" in out
    assert folders_of(Collection.open(library)) == [str(folder), str(extra)]
    # a remembered folder gone, or left empty (a drive not mounted): refused, nothing removed
    os.rename(extra, tmp_path / "elsewhere")
    code, _, err = run_cli(capsys, ["sync", library])
    assert code == 2 and "is missing" in err and len(err.strip().splitlines()) == 1
    extra.mkdir()
    code, _, err = run_cli(capsys, ["sync", library])
    assert code == 2 and "is empty" in err and len(err.strip().splitlines()) == 1
    assert len(Collection.open(library)) == 26


def test_sync_adopts_items_without_rows(library: Path, tmp_path: Path) -> None:
    """Items whose rows were never written (a collection made before the catalogue, or a
    crash after an add's commit): their files are recorded, not added again."""
    folder = tmp_path / "photos"
    coll = Collection.open(library)
    files.drop(files.db(coll), [str(folder / "a" / "p00.png"), str(folder / "a" / "p01.png")])
    todo = plan(coll, folders_of(coll))
    assert [p for p, _ in todo.adopted] == [str(folder / "a" / "p00.png"), str(folder / "a" / "p01.png")]
    with sqlite3.connect(files.db(coll)) as conn:
        conn.execute("DROP TABLE files")
    assert len(plan(coll, folders_of(coll)).adopted) == 24
    report = sync(coll)
    assert report.added == 0 and report.encoded == 0 and report.unchanged == 24
    assert len(files.rows(files.db(coll))) == 24


def test_an_unreadable_file_is_skipped_and_not_read_again_until_it_changes(
        library: Path, tmp_path: Path, counts: Counts) -> None:
    folder = tmp_path / "photos"
    broken = folder / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    coll = Collection.open(library)
    report = sync(coll)
    assert [Path(p).name for p, _ in report.skipped] == ["broken.png"] and report.added == 0
    counts.clear()
    again = sync(coll)
    assert [Path(p).name for p, _ in again.skipped] == ["broken.png"]
    assert not counts.opened and again.read == 0  # known unreadable, unchanged: not read
    write_digits(folder, ["broken.png"], start=777)  # now a real image
    fixed = sync(coll)
    assert fixed.added == 1 and not fixed.skipped
    assert str(broken) in {r.path for r in files.rows(files.db(coll))}


def test_add_update_reads_only_the_files_whose_stat_changed(
        capsys: pytest.CaptureFixture[str], library: Path, tmp_path: Path, counts: Counts) -> None:
    folder = tmp_path / "photos"
    counts.clear()
    code, out, err = run_cli(capsys, ["add", library, folder, "--update"])
    assert code == 0 and "0 updated" in out, err
    assert not counts.decoded and not counts.opened
    write_digits(folder, ["a/p03.png"], start=555)
    counts.clear()
    code, out, err = run_cli(capsys, ["add", library, folder, "--update"])
    assert code == 0 and "1 updated" in out, err
    assert set(counts.decoded) == {str(folder / "a" / "p03.png")}


def test_index_a_folder_checks_before_training(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    write_digits(folder, ["a.png"])
    (tmp_path / "coll").mkdir()
    code, _, err = run_cli(capsys, ["index", folder, "--out", tmp_path / "coll"])
    assert code == 2 and "already exists" in err and not (tmp_path / ".coll.model").exists()
    code, _, err = run_cli(capsys, ["index", folder, "--dataset", "digits", "--out", tmp_path / "c2"])
    assert code == 2 and "not both" in err
