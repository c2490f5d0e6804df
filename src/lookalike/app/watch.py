"""Keep a collection in step with its folders live (``sync --watch``, ``serve --watch``).

The OS tells what changed (``watchfiles``: inotify, FSEvents... underneath); a burst of
changes is gathered until the folders are quiet for a moment (or for at most
:attr:`WatchConfig.debounce_ms`), then handed to :func:`lookalike.search.sync.sync`, the
same step a manual ``lookalike sync`` runs, narrowed to the paths that changed. Where the OS
cannot watch (its watch limit exhausted) or would not be told (a network file system: a
change made on another machine raises no event here), the folders are rescanned every
:attr:`WatchConfig.rescan_s` seconds instead, by stat, with a one-line warning.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..data.images import is_image_path
from ..errors import LookalikeError
from ..search.sync import Report

log = logging.getLogger(__name__)

#: File systems whose changes made elsewhere raise no local event.
NETWORK_FS = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs",
                        "lustre", "davfs", "fuse.sshfs", "fuse.rclone", "fuse.gcsfuse", "fuse.s3fs"})
#: Past this many changed paths a burst is synced by their folders rather than one by one.
MAX_PATHS = 64


@dataclass(frozen=True)
class WatchConfig:
    """``debounce_ms``: the longest a burst of changes is gathered before it is synced;
    ``step_ms``: the quiet time that ends a burst sooner; ``rescan_s``: the interval of the
    stat rescans that replace OS events where there are none (or with ``poll``)."""

    debounce_ms: int = 1000
    step_ms: int = 100
    rescan_s: float = 5.0
    poll: bool = False

    def __post_init__(self) -> None:
        if not (0 < self.step_ms <= self.debounce_ms):
            raise ValueError(f"need 0 < step_ms <= debounce_ms, got {self.step_ms}, {self.debounce_ms}")
        if not self.rescan_s > 0:
            raise ValueError(f"rescan_s must be positive, got {self.rescan_s}")


def network_fs(path: str | os.PathLike[str]) -> str | None:
    """The type of the network file system ``path`` lies on (from ``/proc/mounts``), or None."""
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return None
    real = os.path.realpath(path)
    best, kind = "", ""
    for point, fstype in mounts:
        point = point.replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fstype
    return kind if kind in NETWORK_FS else None


def _wanted(change: object, path: str) -> bool:
    """An image file, or what may be a folder (moved or deleted folders carry files)."""
    p = Path(path)
    return is_image_path(p) or not p.suffix or os.path.isdir(path)


def narrowed(paths: Sequence[str]) -> list[str] | None:
    """What a burst's sync looks at: the paths, their folders when there are many, None
    (everything) when there are many folders too."""
    if len(paths) <= MAX_PATHS:
        return list(paths)
    parents = sorted({os.path.dirname(p) for p in paths})
    top = [p for p in parents if not any(p.startswith(q + os.sep) for q in parents)]
    return top if len(top) <= MAX_PATHS else None


def follow(folders: Sequence[str], step: Callable[[list[str] | None], None],
           stop: threading.Event, config: WatchConfig = WatchConfig(),
           on_ready: Callable[[], None] | None = None) -> None:
    """Call ``step(paths)`` for each burst of changes below ``folders`` (``None``: look at
    everything, a rescan) until ``stop`` is set: first ``step(None)`` once the watch is in
    place (what changed before it), then ``on_ready()``. A failing step is logged and the
    next one looks at everything, so that no change is lost to it."""
    dirty = False

    def run(paths: list[str] | None) -> None:
        nonlocal dirty
        try:
            step(None if dirty else paths)
            dirty = False
        except LookalikeError as exc:
            log.error("sync failed: %s; trying again at the next change", exc)
            dirty = True
        except Exception:
            log.exception("sync failed; trying again at the next change")
            dirty = True

    why = "asked to" if config.poll else next(
        (f"{f} is on a network file system ({fs})" for f in folders if (fs := network_fs(f))), None)
    if why is None:
        try:
            import watchfiles

            first = True
            for changes in watchfiles.watch(*folders, watch_filter=_wanted, stop_event=stop,
                                            debounce=config.debounce_ms, step=config.step_ms,
                                            rust_timeout=200, yield_on_timeout=True,
                                            raise_interrupt=False):
                if first:  # (the watch is in place once the generator first yields)
                    first = False
                    run(None)
                    if on_ready is not None:
                        on_ready()
                if changes:
                    run(narrowed(sorted({p for _, p in changes})))
            return
        except (OSError, RuntimeError) as exc:
            if stop.is_set():
                return
            why = f"the OS cannot watch them ({exc})"
    log.warning("watching %s by a stat rescan every %g s: %s", ", ".join(folders),
                config.rescan_s, why)
    run(None)
    if on_ready is not None:
        on_ready()
    while not stop.wait(config.rescan_s):
        run(None)


def keep_in_sync(collection: str | os.PathLike[str], stop: threading.Event,
                 config: WatchConfig = WatchConfig(), folders: Sequence[str] | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 started: threading.Event | None = None) -> None:
    """Sync the collection with its folders (remembered, or ``folders``) once, then after
    each burst of changes until ``stop`` is set; ``on_report`` sees each sync that changed
    something. The collection is opened here, by this thread: its changes take the
    collection's writer lock as any other process's, and a service reads them as such."""
    from ..search.collection import Collection
    from ..search.sync import check_folders, sync

    coll = Collection.open(collection)
    try:
        roots = check_folders(coll, folders)

        def step(paths: list[str] | None) -> None:
            report = sync(coll, roots, within=paths)
            if on_report is not None and (report.added or report.removed or report.moved
                                          or report.updated or report.skipped):
                on_report(report)

        follow(roots, step, stop, config, on_ready=None if started is None else started.set)
    finally:
        coll.close()
