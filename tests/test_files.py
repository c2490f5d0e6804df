"""The file catalogue (lookalike/search/files.py) and what a file tells (data/filefacts.py):
real files written with Pillow, EXIF included."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import Trained, exif_of, run_cli
from lookalike.data.filefacts import Stat, digest, exif_date, read_facts
from lookalike.search import files
from lookalike.search.collection import Collection


def photo(path: Path, seed: int, taken: str | None = None, camera: tuple[str, str] | None = None,
          gps: tuple[float, float] | None = None, size: tuple[int, int] = (40, 30)) -> Path:
    """A JPEG of random colour blocks with the EXIF asked for."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (3, 4, 3), dtype=np.uint8)
    im = Image.fromarray(blocks).resize(size, Image.NEAREST)
    exif = exif_of(taken, camera, gps)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, exif=exif, quality=95)
    return path


def test_read_facts_gives_the_exif_written_by_pillow(tmp_path: Path) -> None:
    p = photo(tmp_path / "a.jpg", 0, "2024:03:15 10:20:30", ("Canon", "EOS 80D"), (48.5, -2.25),
              size=(64, 48))
    facts = read_facts(p)
    assert (facts.width, facts.height) == (64, 48)
    assert facts.taken == "2024-03-15T10:20:30"
    assert (facts.make, facts.model) == ("Canon", "EOS 80D")
    assert facts.lat == pytest.approx(48.5) and facts.lon == pytest.approx(-2.25)
    st = os.stat(p)
    assert facts.stat == Stat(st.st_size, st.st_mtime_ns, st.st_ino)
    bare = read_facts(photo(tmp_path / "b.jpg", 1))
    assert (bare.taken, bare.make, bare.model, bare.lat, bare.lon) == (None,) * 5
    (tmp_path / "c.jpg").write_bytes(b"not an image")
    assert read_facts(tmp_path / "c.jpg").width is None


def test_exif_dates_and_digests() -> None:
    assert exif_date("2023:12:31 23:59:59") == "2023-12-31T23:59:59"
    assert exif_date("0000:00:00 00:00:00") is None and exif_date("") is None and exif_date(5) is None


def test_digest_is_of_the_bytes(tmp_path: Path) -> None:
    a = photo(tmp_path / "a.jpg", 0)
    shutil.copy(a, tmp_path / "copy.jpg")
    photo(tmp_path / "other.jpg", 0, taken="2020:01:01 00:00:00")  # same pixels, other bytes
    assert digest(a) == digest(tmp_path / "copy.jpg") != digest(tmp_path / "other.jpg")


def test_index_and_add_catalogue_every_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            trained: Trained) -> None:
    folder = tmp_path / "photos"
    photo(folder / "trips" / "a.jpg", 0, "2024:03:15 10:20:30", ("Canon", "EOS 80D"))
    photo(folder / "home" / "b.jpg", 1, "2021:07:01 08:00:00", ("Apple", "iPhone 12"))
    photo(folder / "home" / "c.jpg", 2)
    code, _, err = run_cli(capsys, ["index", "--model", trained.model, "--dataset", folder,
                                    "--out", tmp_path / "coll"])
    assert code == 0, err
    coll = Collection.open(tmp_path / "coll")
    rows = {Path(r.path).name: r for r in files.rows(files.db(coll))}
    assert sorted(rows) == ["a.jpg", "b.jpg", "c.jpg"]
    assert rows["a.jpg"].taken == "2024-03-15T10:20:30" and rows["b.jpg"].model == "iPhone 12"
    assert rows["a.jpg"].folder == str((folder / "trips").resolve())
    assert rows["a.jpg"].digest == digest(folder / "trips" / "a.jpg")
    by_source = coll.sources()
    assert all(by_source[str(folder / d / n)][0] == rows[n].id
               for d, n in (("trips", "a.jpg"), ("home", "b.jpg"), ("home", "c.jpg")))
    # add: a new file and a byte-identical copy of a stored one; the copy shows the same item
    new = photo(tmp_path / "more" / "d.jpg", 3, "2025:01:02 03:04:05")
    shutil.copy(folder / "trips" / "a.jpg", tmp_path / "more" / "a-copy.jpg")
    code, out, err = run_cli(capsys, ["add", tmp_path / "coll", tmp_path / "more"])
    assert code == 0 and "added 1 image(s)" in out, (out, err)
    coll = Collection.open(tmp_path / "coll")
    rows = {Path(r.path).name: r for r in files.rows(files.db(coll))}
    assert rows["a-copy.jpg"].id == rows["a.jpg"].id and rows["a-copy.jpg"].digest == rows["a.jpg"].digest
    assert rows["d.jpg"].taken == "2025-01-02T03:04:05" and rows["d.jpg"].path == str(new.resolve())
    assert set(files.of_ids(files.db(coll), [rows["a.jpg"].id])[rows["a.jpg"].id]) == {
        rows["a.jpg"], rows["a-copy.jpg"]}
    # a removed item's rows are no longer read
    coll.remove([rows["d.jpg"].id])
    assert "d.jpg" not in {Path(r.path).name for r in files.rows(files.db(coll))}


def _index(capsys: pytest.CaptureFixture[str], folder: Path, out: Path, model: Path) -> Collection:
    code, _, err = run_cli(capsys, ["index", "--model", model, "--dataset", folder, "--out", out])
    assert code == 0, err
    return Collection.open(out)


def test_original_is_a_catalogued_file_still_there_else_the_source(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, trained: Trained) -> None:
    from lookalike.search import metadata

    folder = tmp_path / "photos"
    a, b = photo(folder / "a.jpg", 0), photo(folder / "b.jpg", 1)
    coll = _index(capsys, folder, tmp_path / "coll", trained.model)
    ids = coll.sources()
    id_a, id_b = ids[str(a)][0], ids[str(b)][0]
    assert files.original(coll, id_a) == str(a)
    # a second catalogued path of the item (a copy elsewhere): the first that is still a file
    copy = Path(shutil.copy(a, tmp_path / "z-copy.jpg"))
    files.catalogue(coll, [copy], [id_a])
    assert files.original(coll, id_a) == str(a)
    a.unlink()
    assert files.original(coll, id_a) == str(copy)
    copy.unlink()
    assert files.original(coll, id_a) is None  # (its source is gone too)
    # an item with no catalogue row (an older collection): its source, an absolute file
    metadata.write(files.db(coll), "DELETE FROM files WHERE id = ?", [(id_b,)])
    assert files.original(coll, id_b) == str(b)
    # a row wins over the source: the file moved, the catalogue says where
    moved = Path(shutil.copy(b, tmp_path / "moved.jpg"))
    files.catalogue(coll, [moved], [id_b])
    assert files.original(coll, id_b) == str(moved)
    assert files.original(coll, 10_000) is None
    # a relative source is never looked up (it would be read from the current directory)
    metadata.write(files.db(coll), "DELETE FROM files WHERE id = ?", [(id_b,)])
    metadata.write(files.db(coll), "UPDATE items SET source = 'b.jpg' WHERE id = ?", [(id_b,)])
    cwd = os.getcwd()
    try:
        os.chdir(folder)
        assert Path("b.jpg").is_file() and files.original(coll, id_b) is None
    finally:
        os.chdir(cwd)


def test_removing_items_deletes_their_rows(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           trained: Trained) -> None:
    """``lookalike remove`` and ``Index.remove`` delete the removed items' catalogue rows
    (the service's DELETE: tests/test_richsearch.py); the files themselves stay."""
    import lookalike as la
    from lookalike.search import metadata

    folder = tmp_path / "photos"
    shots = [photo(folder / f"p{n}.jpg", n) for n in range(4)]
    coll = _index(capsys, folder, tmp_path / "coll", trained.model)
    ids = [coll.sources()[str(p)][0] for p in shots]
    copy = Path(shutil.copy(shots[0], tmp_path / "copy.jpg"))
    files.catalogue(coll, [copy], [ids[0]])  # two rows for one item

    def raw(item: int) -> int:  # (files.rows hides a removed item's rows: count them all)
        return int(metadata.query(files.db(coll), "SELECT count(*) FROM files WHERE id = ?", (item,))[0][0])

    assert [raw(i) for i in ids] == [2, 1, 1, 1]
    code, out, err = run_cli(capsys, ["remove", tmp_path / "coll", str(ids[0])])
    assert code == 0 and "removed 1 item(s)" in out, err
    code, out, err = run_cli(capsys, ["remove", tmp_path / "coll", "--source", "*/p1.jpg"])
    assert code == 0 and "removed 1 item(s)" in out, err
    assert [raw(i) for i in ids] == [0, 0, 1, 1]
    index = la.open(tmp_path / "coll")
    assert index.remove([ids[2]]) == 1
    index.close()
    assert [raw(i) for i in ids] == [0, 0, 0, 1]
    assert all(p.is_file() for p in shots) and copy.is_file()


def test_read_facts_never_decodes_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PNG whose eXIf chunk follows the pixels: Pillow's getexif() would decode the whole
    image to reach it; read_facts gives its size (and no date) without loading a pixel."""
    import io
    import struct
    import zlib

    from PIL import Image, ImageFile

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(buf, format="PNG")
    data = buf.getvalue()
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:05:01 10:11:12"
    raw = exif.tobytes()
    chunk = struct.pack(">I", len(raw)) + b"eXIf" + raw + struct.pack(">I", zlib.crc32(b"eXIf" + raw))
    end = data.rindex(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(data[:end] + chunk + data[end:])
    loads: list[object] = []

    def no_load(self: object) -> None:
        loads.append(self)
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    facts = read_facts(tmp_path / "late.png")
    assert (facts.width, facts.height, facts.format, facts.taken) == (40, 30, "PNG", None)
    assert loads == []
