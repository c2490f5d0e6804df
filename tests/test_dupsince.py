"""``duplicates --since last`` after items were added, edited in place (``add --update``,
``sync``), removed or moved by a ``compact``: it checks only the items added or changed and
gives a full pass's groups. On real files (tests/test_duplicates.py's photos and copies), each
test with its own folder and collection, indexed with one small model trained on them."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import _one_thread, _run_quietly
from conftest import run_cli as run
from lookalike.search import duplicates, dupsince
from lookalike.search.collection import Collection
from lookalike.search.duplicates import DuplicateGroup, find_groups
from test_duplicates import _by_source, _crop, _folder, _windows

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dupsince")
    _folder(root / "images")
    with _one_thread():
        _run_quietly(["-q", "train", "--dataset", str(root / "images"), "--seed", "0", "--device",
                      "cpu", "--out", str(root / "model")])
    return root / "model"


@pytest.fixture()
def library(model: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``(images, collection)``: this test's own folder of photos and copies, indexed."""
    _folder(tmp_path / "images")
    with _one_thread():
        _run_quietly(["-q", "index", "--model", str(model), "--dataset", str(tmp_path / "images"),
                      "--out", str(tmp_path / "coll")])
    return tmp_path / "images", tmp_path / "coll"


@pytest.fixture()
def asked(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """How many items each pass checks (None: all of them, a full pass)."""
    seen: list[int | None] = []
    scan = duplicates.scan

    def counting(*args: object, **kwargs: object) -> object:
        queries = kwargs.get("queries")
        seen.append(None if queries is None else len(queries))  # type: ignore[arg-type]
        return scan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(duplicates, "scan", counting)
    return seen


def _cli(*argv: object) -> None:
    with _one_thread():
        _run_quietly([str(a) for a in argv])


def _edit(path: Path, image: Image.Image) -> None:
    """Write ``image`` over the file, as an editor would (a new modification time too)."""
    image.save(path, quality=70)
    later = path.stat().st_mtime + 10
    os.utime(path, (later, later))


def _groups(coll_dir: Path) -> tuple[Collection, list[DuplicateGroup]]:
    coll = Collection.open(coll_dir)
    return coll, find_groups(coll, since="last")


def _full(coll: Collection) -> list[DuplicateGroup]:
    """A full pass's groups, leaving the record of the last pass as it was."""
    record = coll.path / "duplicates" / "last-pairs.npz"
    kept = record.read_bytes()
    try:
        return find_groups(coll, resume=False)
    finally:
        record.write_bytes(kept)


def test_an_item_edited_into_a_copy_of_another_moves_to_its_group(
        library: tuple[Path, Path], asked: list[int | None],
        capsys: pytest.CaptureFixture[str]) -> None:
    images, coll_dir = library
    first = find_groups(Collection.open(coll_dir))
    assert ("china_m.jpg", "china_m_small.jpg") in _by_source(Collection.open(coll_dir), first)
    # china_m_small.jpg, a copy of china_m, edited in place into a crop of flower_m
    windows = _windows()
    _edit(images / "china_m_small.jpg", _crop(windows["flower_m"], 0.04, 0.02, 0.02, 0.04))
    _cli("-q", "add", coll_dir, images / "china_m_small.jpg", "--update")
    coll, since = _groups(coll_dir)
    assert asked[1:] == [1]  # the edited item only
    found = _by_source(coll, since)
    assert ("china_m_small.jpg", "flower_m.jpg", "flower_m_crop.jpg") in found  # its new pair
    assert not any("china_m.jpg" in g for g in found)  # its old pair is gone
    assert since == _full(coll)
    # edited back by sync, and asked through the command line: the first pass's groups
    _edit(images / "china_m_small.jpg", windows["china_m"].resize((128, 256)))
    _cli("-q", "sync", coll_dir)
    del asked[:]
    code, out, err = run(capsys, ["duplicates", coll_dir, "--since", "last", "--json"])
    assert code == 0, err
    assert asked == [1]
    groups = {tuple(sorted(Path(i["source"]).name for i in g["items"])): g["tier"]
              for g in json.loads(out)["groups"]}
    coll = Collection.open(coll_dir)
    assert groups == _by_source(coll, first) == _by_source(coll, _full(coll))


def test_a_removed_items_pairs_do_not_come_back(library: tuple[Path, Path],
                                               asked: list[int | None]) -> None:
    images, coll_dir = library
    first = find_groups(Collection.open(coll_dir))
    assert ("flower_l.jpg", "flower_l_copy.jpg") in _by_source(Collection.open(coll_dir), first)
    (images / "flower_l_copy.jpg").unlink()
    _cli("-q", "sync", coll_dir)
    coll, since = _groups(coll_dir)
    assert asked[1:] == [0]  # nothing to check: the removed item's pair is dropped
    assert not any("flower_l.jpg" in g for g in _by_source(coll, since))
    assert since == _full(coll)
    # and not by a later pass either (the record no longer holds it)
    coll, again = _groups(coll_dir)
    assert again == since


def test_a_compact_moves_rows_without_changing_them(library: tuple[Path, Path],
                                                   asked: list[int | None]) -> None:
    images, coll_dir = library
    first = find_groups(Collection.open(coll_dir))
    _edit(images / "flower_r.jpg", _windows()["flower_r"].rotate(180))  # no copy of it now
    _cli("-q", "sync", coll_dir)
    _cli("-q", "compact", coll_dir)
    coll, since = _groups(coll_dir)
    assert len(coll.store.segments) == 1
    assert asked[1:] == [1]  # the edited item, not every row the compact rewrote
    assert since == _full(coll) != first
    assert not any("flower_r.jpg" in g for g in _by_source(coll, since))


def test_a_change_whose_hash_was_not_written_is_still_checked(
        library: tuple[Path, Path], asked: list[int | None]) -> None:
    """A crash between an update's commit and the write of its new hash leaves the items
    table's old hash: the record goes by the committed code, so the item is checked."""
    _, coll_dir = library
    coll = Collection.open(coll_dir)
    find_groups(coll)
    item = next(it for it in coll.items(coll.ids) if it and it.source.endswith("china_m_small.jpg"))
    copy = np.asarray(_crop(_windows()["flower_m"], 0.04, 0.02, 0.02, 0.04).convert("RGB"))
    coll.update([item.id], [copy])
    with sqlite3.connect(coll_dir / "metadata.sqlite") as db:
        db.execute("UPDATE items SET hash = ? WHERE id = ?", (item.hash, item.id))
    db.close()
    coll, since = _groups(coll_dir)
    assert asked[1:] == [1]
    assert ("china_m_small.jpg", "flower_m.jpg", "flower_m_crop.jpg") in _by_source(coll, since)


def test_a_pass_recorded_before_items_were_makes_a_full_pass_once(
        library: tuple[Path, Path], asked: list[int | None],
        caplog: pytest.LogCaptureFixture) -> None:
    images, coll_dir = library
    coll = Collection.open(coll_dir)
    find_groups(coll)
    # the record as the code before wrote it: the pairs alone, next_id in last.json
    state = coll_dir / "duplicates"
    with np.load(state / "last-pairs.npz") as z:
        pairs = {name: z[name] for name in ("a", "b", "score")}
    np.savez(state / "last-pairs.npz", **pairs)  # type: ignore[arg-type]
    (state / "last.json").write_text(json.dumps({
        "next_id": int(coll.ids.max()) + 1, "floor": 0.85, "k": 10, "fingerprint": "old"}))
    _edit(images / "china_m_small.jpg", _crop(_windows()["flower_m"], 0.04, 0.02, 0.02, 0.04))
    _cli("-q", "add", coll_dir, images / "china_m_small.jpg", "--update")
    with caplog.at_level(logging.WARNING, logger="lookalike.search.duplicates"):
        coll, since = _groups(coll_dir)
    assert asked[1:] == [None]  # every item, this once
    said = [r.getMessage() for r in caplog.records if r.name == "lookalike.search.duplicates"]
    assert len(said) == 1 and "\n" not in said[0]
    assert "recorded before items changed in place were tracked" in said[0]
    assert ("china_m_small.jpg", "flower_m.jpg", "flower_m_crop.jpg") in _by_source(coll, since)
    assert since == _full(coll)
    coll, again = _groups(coll_dir)  # recorded anew: the next one checks nothing
    assert asked[-1] == 0 and again == since


def test_the_record_reuses_the_digests_of_segments_it_saw(library: tuple[Path, Path]) -> None:
    _, coll_dir = library
    coll = Collection.open(coll_dir)
    whole = dupsince.current(coll.store)
    assert np.array_equal(whole.ids, np.sort(coll.ids)) and len(whole.segments) == 1
    # a record that saw the segment: its digests are taken as they are, none read
    planted = dupsince.ItemRecord(whole.ids, whole.digests + np.uint64(1), whole.segments)
    assert np.array_equal(dupsince.current(coll.store, planted).digests, planted.digests)
    # one that did not: read again, and every id tells as changed
    unseen = dupsince.ItemRecord(planted.ids, planted.digests, frozenset({"other"}))
    assert np.array_equal(dupsince.current(coll.store, unseen).digests, whole.digests)
    assert np.array_equal(dupsince.changed(unseen, whole), whole.ids)
    assert len(dupsince.changed(whole, whole)) == 0
    arrays = whole.arrays()
    back = dupsince.ItemRecord.from_arrays(arrays)
    assert back is not None and np.array_equal(back.digests, whole.digests)
    assert back.segments == whole.segments
    assert dupsince.ItemRecord.from_arrays({"a": arrays["item_ids"]}) is None


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "empty"])
def test_a_damaged_record_makes_a_full_pass_with_a_warning(
        library: tuple[Path, Path], asked: list[int | None], capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture, damage: str) -> None:
    _, coll_dir = library
    with _one_thread():
        code, full, _ = run(capsys, ["duplicates", coll_dir, "--json"])
    assert code == 0 and _groups_of(full)
    record = coll_dir / "duplicates" / "last-pairs.npz"
    data = bytearray(record.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
    record.write_bytes(bytes(data[:len(data) // 2] if damage == "truncated" else
                             b"" if damage == "empty" else data))
    with _one_thread(), caplog.at_level(logging.WARNING, logger="lookalike.search.duplicates"):
        code, out, err = run(capsys, ["duplicates", coll_dir, "--since", "last", "--json"])
    assert code == 0, err
    assert asked[1:] == [None]  # every item, this once
    assert _groups_of(out) == _groups_of(full)
    said = [r.getMessage() for r in caplog.records
            if r.name == "lookalike.search.duplicates" and r.levelno >= logging.WARNING]
    assert len(said) == 1 and "\n" not in said[0] and "is damaged" in said[0], said
    with _one_thread():
        code, again, _ = run(capsys, ["duplicates", coll_dir, "--since", "last", "--json"])
    assert code == 0 and asked[-1] == 0 and _groups_of(again) == _groups_of(full)  # recorded anew


def _groups_of(printed: str) -> object:
    """What ``duplicates --json`` printed: its groups and tier counts."""
    out = json.loads(printed)
    return out["groups"], out["tiers"]
