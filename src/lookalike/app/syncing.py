"""``lookalike sync``: make a collection mirror its folders, once or live (``--watch``)."""

from __future__ import annotations

import argparse
import json
import logging
import threading

from ..errors import LookalikeError

log = logging.getLogger("lookalike")


def cmd_sync(args: argparse.Namespace) -> int:
    from ..search.collection import Collection
    from ..search.sync import Report, check_folders, folders_of, plan, remember_folders, sync

    coll = Collection.open(args.collection)
    try:
        roots = check_folders(coll, args.folders)
        if args.dry_run:
            todo = plan(coll, roots)
            lines = todo.describe()
            if args.json:
                print(json.dumps({"folders": roots, "changes": lines, "unchanged": todo.unchanged,
                                  "read": todo.reads}, indent=2))
            else:
                print("\n".join(lines + [f"(dry run: {len(lines)} change(s), {todo.unchanged} "
                                         "unchanged; nothing was changed)"]))
            return 0
        if args.folders and [r for r in roots if r not in folders_of(coll)]:
            remember_folders(coll, roots)

        def say(report: Report) -> None:
            if args.json:
                print(json.dumps(report.to_dict()), flush=True)
            else:
                print(f"{coll.path}: {report.summary()} ({report.seconds:.2f} s)", flush=True)

        if not args.watch:
            say(sync(coll, roots, batch=args.batch))
            return 0
    finally:
        coll.close()
    from .watch import WatchConfig, keep_in_sync

    config = WatchConfig(rescan_s=args.rescan, poll=args.poll)
    started = threading.Event()
    stop = threading.Event()
    log.info("watching %s for %s; Ctrl-C to stop", ", ".join(roots), args.collection)
    try:
        keep_in_sync(args.collection, stop, config, roots, on_report=say, started=started)
    except KeyboardInterrupt:
        stop.set()
        print("stopped watching", flush=True)
    return 0


def check_watchable(collection: str) -> list[str]:
    """The folders ``serve --watch`` will follow: the remembered ones, each present."""
    from ..search.collection import Collection
    from ..search.sync import check_folders

    coll = Collection.open(collection)
    try:
        return check_folders(coll, None)
    except LookalikeError as exc:
        raise LookalikeError(f"--watch: {exc}") from None
    finally:
        coll.close()
