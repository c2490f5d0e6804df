"""Which copy of a duplicate group to keep: a pure rule over facts read from each file.

The facts (:func:`file_facts`) come from the file's header, never a full decode: its size
in pixels and format (Pillow opens lazily), its size in bytes, and the date taken
(EXIF ``DateTimeOriginal``, else ``DateTime``), all from
:func:`lookalike.data.filefacts.read_facts`. The rules (:class:`KeepRule`, ``--keep``):

* ``best`` (the default): most pixels; then least compressed: a lossless format before a
  lossy one, then more bytes per pixel; then the oldest date taken (a file without one
  after those with one); then the shortest path; then the path's text (so ties always
  end the same way, whatever the order the group came in);
* ``newest``: the newest date taken first (a file without one last), then ``best``;
* ``in:GLOB``: files whose path matches GLOB first, then ``best``. GLOB reads as the search
  filter ``--in GLOB`` does (:func:`lookalike.search.filters.glob_pattern`): ``*`` also
  matches ``/``, a relative pattern matches anywhere below (``phone/*`` is ``*/phone/*``),
  ``./x`` is from the working folder, and one without wildcards is a folder or a file.

:func:`choose` returns the keeper and the reason: the first criterion on which it beat the
runner-up, in words.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..data import filefacts
from ..errors import LookalikeError
from .filters import glob_pattern

#: Formats that lose nothing: a copy in one of them never lost detail to its own encoding.
LOSSLESS = frozenset({"PNG", "TIFF", "BMP", "GIF", "PPM", "PGM", "PBM", "TGA", "QOI"})


@dataclass(frozen=True)
class FileFacts:
    """What the keep rule knows of one file, derived from
    :func:`lookalike.data.filefacts.read_facts`. ``pixels`` is 0 and ``format`` empty when
    the file is not a readable image; ``taken`` is ISO ``YYYY-MM-DDTHH:MM:SS`` or None."""

    path: str
    width: int
    height: int
    format: str
    bytes: int
    taken: str | None

    @classmethod
    def of(cls, path: str | os.PathLike[str], facts: filefacts.FileFacts) -> FileFacts:
        return cls(str(path), facts.width or 0, facts.height or 0, facts.format or "",
                   facts.stat.size, facts.taken)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def bytes_per_pixel(self) -> float:
        return self.bytes / self.pixels if self.pixels else 0.0

    @property
    def lossless(self) -> bool:
        if self.format == "WEBP":  # (lossless WebP is not told apart from the header)
            return False
        return self.format in LOSSLESS

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "width": self.width, "height": self.height,
                "format": self.format, "bytes": self.bytes, "taken": self.taken}


def file_facts(path: str | os.PathLike[str]) -> FileFacts:
    """The facts of the file at ``path`` (header only, :func:`~lookalike.data.filefacts.read_facts`).
    A file that is not a readable image gets ``width = height = 0``; a missing one raises
    ``OSError``."""
    return FileFacts.of(path, filefacts.read_facts(path))


# ---------------------------------------------------------------------------- the rules
@dataclass(frozen=True)
class KeepRule:
    """``best``, ``newest`` or ``in:GLOB`` (see the module docstring)."""

    kind: str = "best"
    glob: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("best", "newest", "in"):
            raise LookalikeError(f"unknown keep rule {self.kind!r}; expected best, newest or in:GLOB")
        if (self.kind == "in") != bool(self.glob):
            raise LookalikeError("the keep rule in:GLOB needs a GLOB (a folder or a pattern)")

    @classmethod
    def parse(cls, text: str) -> KeepRule:
        """``"best"``, ``"newest"`` or ``"in:GLOB"``; raises :class:`LookalikeError` otherwise."""
        text = text.strip()
        if text.startswith("in:"):
            return cls("in", text[3:])
        if text in ("best", "newest"):
            return cls(text)
        raise LookalikeError(f"unknown keep rule {text!r}; expected best, newest or in:GLOB")

    def __str__(self) -> str:
        return f"in:{self.glob}" if self.kind == "in" else self.kind

    def matches(self, path: str) -> bool:
        """Whether ``path`` (made absolute) matches ``in:GLOB`` (see the module docstring)."""
        assert self.glob is not None
        full = os.path.abspath(path)
        return any(fnmatch.fnmatchcase(full, p) for p in glob_pattern(self.glob))


def _best_key(f: FileFacts) -> tuple[Any, ...]:
    return (-f.pixels, not f.lossless, -f.bytes_per_pixel, f.taken is None, f.taken or "",
            len(f.path), f.path)


def _key(rule: KeepRule, f: FileFacts) -> tuple[Any, ...]:
    if rule.kind == "newest":
        # newest first: the date's characters inverted sort a later date first
        inverted = tuple(-ord(c) for c in f.taken) if f.taken else ()
        return (f.taken is None, inverted, *_best_key(f))
    if rule.kind == "in":
        return (not rule.matches(f.path), *_best_key(f))
    return _best_key(f)


def _mp(f: FileFacts) -> str:
    return f"{f.width}x{f.height}"


def _reason(rule: KeepRule, keeper: FileFacts, other: FileFacts) -> str:
    """Why ``keeper`` came before ``other`` (the runner-up) under ``rule``."""
    if rule.kind == "newest" and keeper.taken != other.taken:
        return f"newest date taken ({keeper.taken})" if other.taken else "the only date taken"
    if rule.kind == "in" and rule.matches(keeper.path) != rule.matches(other.path):
        return f"in {rule.glob}"
    if keeper.pixels != other.pixels:
        return f"most pixels ({_mp(keeper)} vs {_mp(other)})"
    if keeper.lossless != other.lossless:
        return f"lossless ({keeper.format} vs {other.format})"
    if keeper.bytes_per_pixel != other.bytes_per_pixel:
        return (f"least compressed ({keeper.bytes_per_pixel:.2f} vs "
                f"{other.bytes_per_pixel:.2f} bytes per pixel)")
    if keeper.taken != other.taken:
        return f"oldest date taken ({keeper.taken})" if other.taken else "the only date taken"
    if len(keeper.path) != len(other.path):
        return "shortest path"
    return "first path in order (a tie on everything else)"


def choose(facts: Sequence[FileFacts], rule: KeepRule | None = None) -> tuple[int, str]:
    """The index in ``facts`` of the file to keep, and the reason. Deterministic: the same
    files in any order give the same keeper.

    Raises:
        LookalikeError: ``facts`` is empty.
    """
    if not facts:
        raise LookalikeError("a group with no files has no keeper")
    rule = rule or KeepRule()
    order = sorted(range(len(facts)), key=lambda i: _key(rule, facts[i]))
    if len(order) == 1:
        return order[0], "the only file"
    return order[0], _reason(rule, facts[order[0]], facts[order[1]])
