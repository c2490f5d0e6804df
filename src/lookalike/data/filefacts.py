"""What a file tells without decoding its pixels: its ``stat`` (size, modification time in
nanoseconds, inode), the digest of its bytes, and from its header the image's size and EXIF
(date taken, camera make and model, GPS position).

Pillow opens a file lazily: ``Image.open`` reads the header and the EXIF block, never the
pixel data, so :func:`read_facts` costs a few kilobytes read per photo. (A PNG whose eXIf
chunk does not come before its pixels is read without EXIF: Pillow would decode the whole
image to reach it.) :func:`digest` reads
the whole file (BLAKE2b, 128 bits), the only way to recognise a file copied elsewhere.

A file that is decoded anyway (indexing, ``add``, ``sync``) is read once instead
(:func:`lookalike.data.pipeline.read_file`): its bytes digested (:func:`digest_bytes`) and
decoded from memory, its facts taken from the image Pillow opened (:func:`facts_of`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image

#: Bytes read at a time by :func:`digest`.
CHUNK = 1 << 20
_EXIF_DATE = re.compile(r"^\s*(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


@dataclass(frozen=True)
class Stat:
    """The part of ``os.stat`` that says whether a file changed: ``size`` in bytes,
    ``mtime_ns`` and ``inode`` (a rename within a file system keeps the inode)."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> Stat:
        st = os.stat(path)
        return cls(int(st.st_size), int(st.st_mtime_ns), int(st.st_ino))


@dataclass(frozen=True)
class FileFacts:
    """A file's :class:`Stat` and what its header says. ``taken`` is the EXIF date taken
    (``DateTimeOriginal``, else ``DateTime``) as ``YYYY-MM-DDTHH:MM:SS`` (camera local
    time, as EXIF stores it), ``None`` without one; ``lat``/``lon`` are decimal degrees
    (south and west negative); ``format`` is Pillow's name for the file's format
    (``"JPEG"``, ``"PNG"``, ...); any field the file does not hold is ``None``."""

    stat: Stat
    width: int | None = None
    height: int | None = None
    taken: str | None = None
    make: str | None = None
    model: str | None = None
    lat: float | None = None
    lon: float | None = None
    format: str | None = None
    digest: str | None = None

    def to_list(self) -> list[object]:
        """The facts as a flat JSON-able list (:meth:`from_list` reads it back)."""
        return [self.stat.size, self.stat.mtime_ns, self.stat.inode, self.width, self.height,
                self.taken, self.make, self.model, self.lat, self.lon, self.format, self.digest]

    @classmethod
    def from_list(cls, values: list[object]) -> FileFacts:
        size, mtime_ns, inode, *rest = values
        return cls(Stat(int(size), int(mtime_ns), int(inode)), *rest)  # type: ignore[arg-type, call-overload]


def digest_bytes(data: bytes) -> str:
    """BLAKE2b-128 hex digest of ``data`` (:func:`digest` of a file holding them)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def digest(path: str | os.PathLike[str]) -> str:
    """BLAKE2b-128 hex digest of the file's bytes."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def exif_date(value: object) -> str | None:
    """An EXIF date (``YYYY:MM:DD HH:MM:SS``) as ISO ``YYYY-MM-DDTHH:MM:SS``; ``None`` for
    anything else (blank, ``0000:00:00 00:00:00``, malformed)."""
    if not isinstance(value, str):
        return None
    m = _EXIF_DATE.match(value)
    if not m:
        return None
    try:
        y, mo, d, h, mi, sec = (int(g) for g in m.groups())
        when = _dt.datetime(y, mo, d, h, mi, sec)
    except ValueError:
        return None
    return when.isoformat(timespec="seconds")


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", "").strip()
    return value or None


def _degrees(dms: object, ref: object) -> float | None:
    try:
        d, m, s = (float(x) for x in dms)  # type: ignore[attr-defined]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    value = d + m / 60 + s / 3600
    if not (value == value) or value > 180:  # NaN from a 0/0 rational, or nonsense
        return None
    return -value if _text(ref) in ("S", "W") else value


def _header_exif(im: Image.Image) -> Image.Exif:
    """The EXIF that came with the header. A PNG's ``getexif()`` decodes the whole image
    when no eXIf chunk came before the pixels (0.2 s for 3000x3000): such a PNG has none."""
    if im.format == "PNG" and "exif" not in im.info:
        return Image.Exif()
    return im.getexif()


def read_facts(path: str | os.PathLike[str]) -> FileFacts:
    """The :class:`FileFacts` of ``path`` (``digest`` ``None``). A file Pillow cannot open
    still gives its stat (its header fields are ``None``); an ``OSError`` from ``stat``
    propagates."""
    stat = Stat.of(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # (as in facts_of)
            im = Image.open(Path(path))
    except Exception:  # noqa: BLE001 - a header Pillow cannot read is a file with no facts
        return FileFacts(stat)
    with im:
        return facts_of(im, stat)


def facts_of(im: Image.Image, stat: Stat, file_digest: str | None = None) -> FileFacts:
    """The :class:`FileFacts` of a file Pillow has just opened as ``im`` (its header read,
    its pixels not yet: call this before ``draft``/``load``), of ``stat``, digest
    ``file_digest``. A header whose EXIF Pillow cannot read gives the stat alone, as
    :func:`read_facts` does."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns on odd EXIF blocks; the facts are optional
            width, height = im.size
            fmt = im.format
            exif = _header_exif(im)
            sub = exif.get_ifd(ExifTags.IFD.Exif)
            gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    except Exception:  # noqa: BLE001 - a header Pillow cannot read is a file with no facts
        return FileFacts(stat, digest=file_digest)
    taken = exif_date(sub.get(ExifTags.Base.DateTimeOriginal)) or exif_date(
        exif.get(ExifTags.Base.DateTime))
    lat = lon = None
    if gps:
        lat = _degrees(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef))
        lon = _degrees(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef))
        if lat is None or lon is None:
            lat = lon = None
    return FileFacts(stat, int(width), int(height), taken, _text(exif.get(ExifTags.Base.Make)),
                     _text(exif.get(ExifTags.Base.Model)), lat, lon, fmt or None, file_digest)
