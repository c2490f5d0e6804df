"""A collection's committed state on disk: ``manifest.json``, the commit point of every
change, and the collection-wide files a commit writes beside the segments (the whitening of
a re-ranking collection, the pointer of an index kept elsewhere); read without a lock, and
an interrupted replacement undone. :mod:`lookalike.search.collection` writes the manifest."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..config import RetrievalConfig
from ..errors import CollectionError
from ..fsutil import atomic_write, fsync_dir, read_json
from . import segments as seg
from .backends import IndexBackend

log = logging.getLogger(__name__)

FORMAT = "lookalike-collection"
FORMAT_VERSION = 2


def write_state(directory: Path, generation: int, backend: IndexBackend | None,
                whitening: np.ndarray | None) -> dict[str, str]:
    """Write the collection-wide files of one generation (each atomically) and return their
    names: a new whitening fit when re-ranking, the pointer of an index kept elsewhere
    (``backend``; a FAISS index lives in the segments). Generation 0 uses the plain names;
    later ones add ``.<generation>``."""
    tag = f".{generation}" if generation else ""
    files: dict[str, str] = {}
    if whitening is not None:
        files["whitening"] = f"whitening{tag}.npy"
        atomic_write(directory / files["whitening"], functools.partial(seg.save_npy, array=whitening))
    if backend is not None:
        files["index"] = backend.save(directory, f"index{tag}.{backend.name}")
    return files


def recover(target: Path) -> None:
    """Undo a replacement interrupted between its two renames: the old collection, moved
    aside to ``.<name>.old``, goes back under its name."""
    old = target.parent / f".{target.name}.old"
    if old.is_dir() and not target.exists():
        os.replace(old, target)
        fsync_dir(target.parent)
        log.warning("restored %s from an interrupted replacement", target)
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)


def backend_settings(path: Path) -> dict[str, Any] | None:
    """The backend settings of the collection at ``path``, if it has a readable manifest."""
    try:
        manifest = read_json(path / "manifest.json")
        return dict(manifest["backend"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at ``path``, checked to be a collection's of a format this reads."""
    try:
        manifest = read_json(path / "manifest.json")
    except (OSError, ValueError) as exc:
        raise CollectionError(f"{path / 'manifest.json'} is damaged ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CollectionError(f"{path / 'manifest.json'} is not a lookalike collection manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CollectionError(
            f"{path} was written by a newer lookalike (collection format {version}, this one "
            f"reads up to {FORMAT_VERSION}); upgrade lookalike"
        )
    return manifest


def stamp(manifest: dict[str, Any]) -> tuple[Any, Any]:
    """What tells one commit from the next."""
    return manifest.get("generation"), manifest.get("format_version")


def stored_whitening(path: Path, manifest: dict[str, Any]
                     ) -> tuple[np.ndarray, np.ndarray] | None:
    """The whitening ``(mean, projection)`` the manifest lists, read; None if it lists none."""
    name = (manifest.get("files") or {}).get("whitening")
    if not name:
        return None
    dim = int(manifest["dim"])
    try:
        arr = np.load(path / name, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CollectionError(f"{path}: {name} is damaged ({exc}); run 'lookalike compact'") from None
    if arr.shape != (dim + 1, dim):
        raise CollectionError(f"{path}: {name} does not fit {dim}-d codes")
    return arr[0], arr[1:]


#: How often a reader reads the manifest again when the files of the one it read were
#: deleted under it (another process committed twice meanwhile).
READ_ATTEMPTS = 8


def read_committed(path: Path, verify: bool = False, loaded: dict[str, Any] | None = None,
                   whitening: bool = False
                   ) -> tuple[dict[str, Any], seg.SegmentStore, tuple[np.ndarray, np.ndarray] | None]:
    """The last commit's manifest and segments (and its whitening when asked and listed;
    None otherwise), read without a lock: a writer in another process deletes the files of
    older commits, so a file missing under a manifest that is no longer the last means
    "read the new one", and only one still the last is damaged."""
    for attempt in range(READ_ATTEMPTS):
        manifest = read_manifest(path)
        try:
            manifest, store = seg.open_store(path, manifest, verify, loaded)
            return manifest, store, stored_whitening(path, manifest) if whitening else None
        except CollectionError:
            if attempt + 1 == READ_ATTEMPTS or stamp(read_manifest(path)) == stamp(manifest):
                raise
            log.debug("%s: committed again while it was read; reading it again", path)
    raise AssertionError("unreachable")


def fit_whitening(codes: np.ndarray | seg.SegmentStore, retrieval: RetrievalConfig
                  ) -> np.ndarray | None:
    """The whitening of a re-ranking collection's codes (:func:`lookalike.search.rerank.fit_whitening`
    on a sample spread over them) as one array ``float32 (d + 1, d)``, mean first; None when
    it does not re-rank or whiten, or the codes give no fit."""
    if retrieval.rerank != "diffusion" or not retrieval.diffusion.whiten or not len(codes):
        return None
    from .rerank import fit_whitening as fit_codes
    from .rerank import sample_rows

    rows = sample_rows(len(codes))
    picked = codes.codes_at(rows) if isinstance(codes, seg.SegmentStore) else codes[rows]
    fit = fit_codes(picked, retrieval.diffusion.whiten, None)
    return None if fit is None else np.concatenate([fit[0][None], fit[1]]).astype(np.float32)


def now() -> str:
    """The time now (UTC) as the manifest writes it."""
    return datetime.now(UTC).isoformat(timespec="seconds")
