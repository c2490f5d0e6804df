"""The keep rule: facts read from real files' headers (Pillow, EXIF dates written with
Pillow), and the order of the criteria, each deciding on its own."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pytest
from PIL import Image

from lookalike.errors import LookalikeError
from lookalike.search.keeper import FileFacts, KeepRule, choose, file_facts


def _exif(date: str) -> Image.Exif:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = date
    return exif


def test_facts_come_from_the_header(tmp_path: Path) -> None:
    im = Image.new("RGB", (640, 480), (200, 30, 30))
    im.save(tmp_path / "a.jpg", quality=90, exif=_exif("2019:05:01 10:11:12"))
    im.save(tmp_path / "b.png", exif=_exif("2020:01:02 03:04:05").tobytes())
    im.save(tmp_path / "c.png")
    im.save(tmp_path / "d.jpg", exif=_exif("0000:00:00 00:00:00"))
    a = file_facts(tmp_path / "a.jpg")
    assert (a.width, a.height, a.format, a.taken) == (640, 480, "JPEG", "2019-05-01T10:11:12")
    assert a.bytes == (tmp_path / "a.jpg").stat().st_size and not a.lossless
    b = file_facts(tmp_path / "b.png")
    assert (b.format, b.taken, b.lossless) == ("PNG", "2020-01-02T03:04:05", True)
    assert file_facts(tmp_path / "c.png").taken is None
    assert file_facts(tmp_path / "d.jpg").taken is None  # not a real date
    # only the header is read: a JPEG cut after its first kilobytes still gives its facts
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 3])
    with pytest.raises(OSError), Image.open(tmp_path / "cut.jpg") as cut:
        cut.load()
    assert file_facts(tmp_path / "cut.jpg").pixels == 640 * 480
    (tmp_path / "notes.jpg").write_text("not an image")
    assert file_facts(tmp_path / "notes.jpg").pixels == 0
    with pytest.raises(OSError):
        file_facts(tmp_path / "missing.jpg")


def _f(path: str, w: int = 100, h: int = 100, fmt: str = "JPEG", size: int = 5000,
       taken: str | None = None) -> FileFacts:
    return FileFacts(path, w, h, fmt, size, taken)


#: Pairs (winner, loser) that differ from the criterion named on, all before it equal.
CRITERIA = [
    ("most pixels", _f("/p/small-but-big-file.jpg", 120, 100, size=100),
     _f("/p/x.jpg", 100, 100, "PNG", size=90000, taken="2001-01-01T00:00:00")),
    ("lossless", _f("/p/long/path/x.png", fmt="PNG", size=100), _f("/p/x.jpg", size=90000)),
    ("least compressed", _f("/p/long/path/x.jpg", size=6000, taken="2022-01-01T00:00:00"),
     _f("/p/x.jpg", size=5000, taken="2001-01-01T00:00:00")),
    ("oldest date taken", _f("/p/long/path/x.jpg", taken="2001-01-01T00:00:00"),
     _f("/p/x.jpg", taken="2002-01-01T00:00:00")),
    ("the only date taken", _f("/p/long/path/x.jpg", taken="2030-01-01T00:00:00"), _f("/p/x.jpg")),
    ("shortest path", _f("/p/x.jpg"), _f("/p/xx.jpg")),
    ("first path in order", _f("/p/a.jpg"), _f("/p/b.jpg")),
]


@pytest.mark.parametrize(("why", "winner", "loser"), CRITERIA, ids=[c[0] for c in CRITERIA])
def test_each_criterion_decides_in_its_turn(why: str, winner: FileFacts, loser: FileFacts) -> None:
    for facts in ([winner, loser], [loser, winner]):
        at, reason = choose(facts)
        assert facts[at] is winner and reason.startswith(why), reason


def test_ties_end_the_same_whatever_the_order() -> None:
    files = [_f("/p/b.jpg"), _f("/p/a.jpg"), _f("/q/c.jpg"), _f("/p/a.jpeg")]
    keepers = {files_[choose(list(files_))[0]].path for files_ in itertools.permutations(files)}
    assert keepers == {"/p/a.jpg"}


def test_newest_and_in_glob() -> None:
    old = _f("/photos/best/x.jpg", 200, 200, taken="2001-01-01T00:00:00")
    new = _f("/photos/phone/x.jpg", 100, 100, taken="2021-03-01T00:00:00")
    undated = _f("/photos/phone/y.jpg", 300, 300)
    assert choose([old, new, undated])[1].startswith("most pixels")
    at, reason = choose([old, new, undated], KeepRule.parse("newest"))
    assert [old, new, undated][at] is new and reason == "newest date taken (2021-03-01T00:00:00)"
    # a folder, then a pattern (where * also crosses '/'); the rest decided as 'best'
    for rule in ("in:/photos/phone", "in:/photos/phone/", "in:*/phone/*"):
        at, reason = choose([old, new, undated], KeepRule.parse(rule))
        assert [old, new, undated][at] is undated and reason.startswith("most pixels")
        at, reason = choose([new, old], KeepRule.parse(rule))  # the runner-up is elsewhere
        assert at == 0 and reason == f"in {rule[3:]}"
    assert choose([old, new], KeepRule.parse("in:/photos/ph"))[0] == 0  # a folder, not a prefix


@pytest.mark.parametrize("text", ["largest", "in:", "", "Newest"])
def test_a_bad_rule_is_refused(text: str) -> None:
    with pytest.raises(LookalikeError, match="keep rule"):
        KeepRule.parse(text)


def test_png_exif_after_the_pixels_is_not_read(tmp_path: Path) -> None:
    """A PNG whose eXIf chunk follows its pixels: reading it would decode the whole image,
    so its date counts as unknown (documented), and the file is not decoded."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    data = buf.getvalue()
    exif = _exif("2019:05:01 10:11:12").tobytes()
    import struct
    import zlib

    chunk = struct.pack(">I", len(exif)) + b"eXIf" + exif
    chunk += struct.pack(">I", zlib.crc32(b"eXIf" + exif))
    end = data.rindex(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(data[:end] + chunk + data[end:])
    assert file_facts(tmp_path / "late.png").taken is None
    with Image.open(tmp_path / "late.png") as im:  # (Pillow does find it after a decode)
        im.load()
        assert im.getexif().get_ifd(0x8769).get(0x9003) == "2019:05:01 10:11:12"


def test_date_taken_is_filefacts_own(tmp_path: Path) -> None:
    """One definition of the date taken: DateTimeOriginal, else DateTime (IFD0)."""
    from lookalike.data.filefacts import read_facts

    exif = Image.Exif()
    exif[0x0132] = "2017:03:04 05:06:07"  # DateTime only
    Image.new("RGB", (32, 24)).save(tmp_path / "dt.jpg", exif=exif)
    assert file_facts(tmp_path / "dt.jpg").taken == "2017-03-04T05:06:07"
    assert read_facts(tmp_path / "dt.jpg").taken == file_facts(tmp_path / "dt.jpg").taken
    assert read_facts(tmp_path / "dt.jpg").format == "JPEG"


def test_in_glob_reads_as_the_search_filter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``in:phone/*`` matches a phone folder anywhere below, as ``--in phone/*`` does; a
    folder named without wildcards is the files under it; ``./x`` is from the working folder."""
    monkeypatch.chdir(tmp_path)
    rule = KeepRule.parse("in:phone/*")
    assert rule.matches("/photos/phone/a.jpg") and rule.matches("/a/b/phone/x/y.jpg")
    assert not rule.matches("/photos/2019/a.jpg")
    assert KeepRule.parse("in:phone").matches("/photos/phone/a.jpg")
    assert not KeepRule.parse("in:phone").matches("/photos/phones/a.jpg")
    assert KeepRule.parse("in:./phone").matches(str(tmp_path / "phone" / "a.jpg"))
    assert not KeepRule.parse("in:./phone").matches("/elsewhere/phone/a.jpg")
    a, b = _f("/photos/2019/a.jpg", 200, 200), _f("/photos/phone/a.jpg", 100, 100)
    assert choose([a, b], rule) == (1, "in phone/*")
