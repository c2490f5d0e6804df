"""``lookalike duplicates``: acting on the groups. The review (each group with its keeper
and the reason; a dry run, the default), ``--move-to DIR`` and ``--undo MANIFEST``
(:mod:`lookalike.search.dupmove`)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..errors import LookalikeError
from ..search.dupreview import Decision, Member
from ..search.keeper import KeepRule

if TYPE_CHECKING:
    from ..search.collection import Collection
    from ..search.dupmove import Outcome


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return ""  # pragma: no cover


def _line(mark: str, m: Member) -> str:
    if m.facts is None:
        return f"  {mark:<5} {m.id:>7}  {m.shown}  ({m.problem})"
    f = m.facts
    taken = f", taken {f.taken}" if f.taken else ""
    return f"  {mark:<5} {m.id:>7}  {m.shown}  ({f.width}x{f.height} {f.format}, {_size(f.bytes)}{taken})"


def print_review(decisions: Sequence[Decision]) -> None:
    """Each group: its keeper ('keep', with the reason), the files to move ('move') and the
    items that are not files ('-')."""
    for number, d in enumerate(decisions, start=1):
        print(f"group {number} ({d.tier}, {len(d.members)} items): "
              + (f"keep {d.keeper}: {d.reason}" if d.keeper is not None else d.reason))
        movers = {m.path for m in d.movers}
        for m in d.members:
            mark = ("keep" if m.facts is not None and m.path == d.keeper_path
                    else "move" if m.path in movers else "-")
            print(_line(mark, m))


def _report_move(out: Outcome) -> None:
    moved = sum(int(e["bytes"]) for e in out.done)
    print(f"moved {len(out.done)} file(s) ({_size(moved)}) into {out.manifest.parent}; "
          f"{out.removed} item(s) left the collection; manifest {out.manifest}")
    for entry, why in out.skipped:
        print(f"  not moved: {entry['from']}: {why}")
    print(f"undo with: lookalike duplicates COLLECTION --undo {out.manifest}")


def check_args(args: argparse.Namespace) -> None:
    """Refuse the options that do not go together, before any work."""
    if args.undo and (args.move_to or args.dry_run):
        raise LookalikeError("give --move-to or --undo, not both")
    if args.move_to and args.json:
        raise LookalikeError("--move-to reports in text: leave out --json")
    if args.move_to and args.csv == "-":
        raise LookalikeError("--move-to reports in text: write the table to a file (--csv FILE), "
                             "not to the terminal (--csv -)")
    if args.dry_run and not args.move_to:
        raise LookalikeError("--dry-run goes with --move-to DIR (without it nothing moves anyway)")


def finish_moves(args: argparse.Namespace, coll: Collection) -> None:
    """With ``--move-to DIR`` (no ``--dry-run``), complete the runs interrupted in DIR and
    say what each did: before the groups are found, as a move is decided on the
    collection they leave. (Not with ``--json``: it prints only its own output and moves
    nothing; :func:`check_args` refuses it, and ``--csv -``, beside ``--move-to``.)"""
    from ..search import dupmove

    if not args.move_to or args.dry_run:
        return
    for out in dupmove.finish_pending(coll, args.move_to):
        print(f"completed the interrupted run of {out.manifest}")
        if out.status == "moved":
            _report_move(out)
        else:
            _report_undo(out)
    if dupmove.pending(args.move_to):  # pragma: no cover - finish_pending just did them
        raise LookalikeError(f"{args.move_to} still holds an interrupted run")


def review_command(args: argparse.Namespace, coll: Collection, decisions: Sequence[Decision]) -> int:
    """The text output of ``duplicates`` (groups, keepers, reasons) of the groups'
    ``decisions`` (made after :func:`finish_moves`), then the move when ``--move-to`` is
    given without ``--dry-run``."""
    from ..search import dupmove

    rule = args.keep or KeepRule()
    if rule.kind == "in" and not any(rule.matches(m.path) for d in decisions for m in d.members
                                     if m.facts is not None):
        print(f"warning: --keep {rule} matches no file of the groups (kept by the rule best)",
              file=sys.stderr)
    tally = Counter(d.tier for d in decisions)
    print(f"{len(decisions)} group(s) of duplicates among {len(coll)} items (near: aligned pixel "
          f"correlation >= {args.threshold})"
          + "".join(f", {n} {t}" for t, n in sorted(tally.items())) + f"; keep rule: {rule}")
    print_review(decisions)
    movers = [m for d in decisions for m in d.movers]
    size = _size(sum(m.facts.bytes for m in movers if m.facts))
    if not args.move_to:
        print(f"dry run: nothing moved. --move-to DIR would move the {len(movers)} file(s) "
              f"marked 'move' ({size}) into DIR, keeping their folders, with a manifest to undo it")
        return 0
    if args.dry_run:
        manifest = dupmove.plan(decisions, args.move_to)
        print(f"dry run: nothing moved. Without --dry-run, {len(manifest['moves'])} file(s) "
              f"({size}) would move:")
        for e in manifest["moves"]:
            print(f"  {e['from']} -> {e['to']}")
        for e in manifest["skipped"]:
            print(f"  not moved: {e['from']}: {e['why']}")
        return 0
    if not movers:
        print("nothing to move")
        return 0
    _report_move(dupmove.move(coll, decisions, args.move_to))
    return 0


def _report_undo(out: Outcome) -> None:
    print(f"put back {len(out.done)} file(s) from {out.manifest}; {out.added} added back to the "
          f"collection as new items"
          + (f", {out.kept_by_content} held already by an item with the same pixels"
             if out.kept_by_content else ""))
    for entry, why in out.skipped:
        print(f"  not put back: {entry['to']}: {why}")


def undo_command(args: argparse.Namespace, coll: Collection) -> int:
    """``duplicates COLL --undo MANIFEST``."""
    from ..search import dupmove

    _report_undo(dupmove.undo(coll, args.undo, progress=args.progress))
    return 0
