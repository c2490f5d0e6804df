"""The duplicate pass over ``n`` items: candidate pairs from the codes, checked on the pixels,
block by block, in memory O(n·k) beside the items' small grey thumbnails; resumable.

Each item's ``k`` nearest items by cosine of the codes are its candidates (FAISS: exact
inner product up to :data:`EXACT_UP_TO` items or queries, an inverted file with
:data:`NPROBE` probes above), searched ``block`` items at a time; every candidate pair is scored by
:func:`lookalike.search.alignment.pair_scores` and kept when it reaches ``floor``. With
``queries``, only those rows look for candidates (``--since``: the new items against all).

A :class:`Checkpoint` saves the pairs found and the rows done every few blocks; a pass run
again with the same checkpoint (same items, same settings) starts after the last saved block.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from ..fsutil import atomic_write_json
from .alignment import GATE, _blocks, pair_scores, standardise

log = logging.getLogger(__name__)

#: Exact candidate search up to this many items; an inverted file above.
EXACT_UP_TO = 100_000
NPROBE = 16


@dataclass(frozen=True)
class PassSettings:
    """What decides a pass's result (a checkpoint only resumes a pass with equal settings)."""

    k: int
    floor: float
    items: int
    fingerprint: str  # what identifies the items (a collection's generation and size)
    refine_above: float | None = None  # see lookalike.search.alignment.pair_scores

    def __post_init__(self) -> None:
        if self.k <= 0:
            raise ValueError(f"k must be positive, got {self.k}")


class Checkpoint:
    """``pass.json`` (settings, rows done) and ``pass-pairs.npz`` in ``folder``."""

    def __init__(self, folder: Path, settings: PassSettings, every_s: float = 30.0) -> None:
        self.folder = folder
        self.settings = settings
        self.every_s = every_s
        self._last = time.monotonic()

    def load(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray] | None:
        """``(rows done, i, j, score)`` of an unfinished pass with these settings, or None."""
        try:
            meta = json.loads((self.folder / "pass.json").read_text())
            with np.load(self.folder / "pass-pairs.npz") as z:
                pairs = z["i"], z["j"], z["score"]
        except (OSError, ValueError, KeyError):
            return None
        if meta.get("settings") != asdict(self.settings):
            return None
        return int(meta["done"]), *pairs

    def save(self, done: int, i: np.ndarray, j: np.ndarray, score: np.ndarray,
             force: bool = False) -> None:
        if not force and time.monotonic() - self._last < self.every_s:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / "pass-pairs.tmp.npz"
        np.savez(tmp, i=i, j=j, score=score)
        os.replace(tmp, self.folder / "pass-pairs.npz")
        atomic_write_json(self.folder / "pass.json",
                          {"settings": asdict(self.settings), "done": done})
        self._last = time.monotonic()

    def clear(self) -> None:
        for name in ("pass.json", "pass-pairs.npz"):
            (self.folder / name).unlink(missing_ok=True)


def candidate_index(x: np.ndarray, queries: int | None = None) -> faiss.Index:
    """An inner-product index over the unit rows ``x``: exact up to :data:`EXACT_UP_TO` rows
    or queries, else ``IVF(4·sqrt(n)),Flat`` trained on a seeded sample, :data:`NPROBE` probes."""
    n, d = x.shape
    index: faiss.Index
    if min(n, n if queries is None else queries) <= EXACT_UP_TO:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.own_fields = False
        ivf.referenced_objects = [quantizer]  # type: ignore[attr-defined]  # (kept alive with it)
        sample = np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False)
        ivf.train(x[np.sort(sample)])
        ivf.nprobe = NPROBE
        index = ivf
    for start in range(0, n, 65536):
        index.add(x[start:start + 65536])
    return index


def unit_rows(codes: np.ndarray) -> np.ndarray:
    x = np.array(codes, dtype=np.float32, copy=True, order="C")
    if x.ndim != 2:
        raise ValueError(f"codes must be (n, d), got shape {x.shape}")
    faiss.normalize_L2(x)
    return x


def scan(codes: np.ndarray, thumbs: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int],
         settings: PassSettings, *, queries: np.ndarray | None = None, block: int = 1024,
         checkpoint: Checkpoint | None = None,
         progress: Callable[[int], Any] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows ``(i, j, score)`` with ``i < j`` and ``score >= settings.floor``, each
    once, sorted by ``(i, j)``.

    ``codes`` is ``(n, d)``; ``thumbs(rows)`` gives the rows' ``uint8 (m, h*w)`` thumbnails
    (:func:`lookalike.search.alignment.thumbnails`); ``queries`` the rows that look for
    candidates (all when ``None``), sorted. ``progress(rows)`` is called after each block.
    """
    n = len(codes)
    if n < 2:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    x = unit_rows(codes)
    todo = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    index = candidate_index(x, len(todo))
    done = 0
    lefts: list[np.ndarray] = []
    rights: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    if checkpoint is not None and (got := checkpoint.load()) is not None:
        done, i0, j0, s0 = got
        lefts, rights, scores = [i0], [j0], [s0]
        log.info("resuming the duplicate pass after %d of %d rows", done, len(todo))
        if progress is not None:
            progress(done)
    for start in range(done, len(todo), block):
        rows = todo[start:start + block]
        _, nbr = index.search(x[rows], min(settings.k + 1, n))
        left = np.repeat(rows, nbr.shape[1])
        right = nbr.ravel().astype(np.int64)
        keep = (right >= 0) & (right != left)
        a, b = np.minimum(left[keep], right[keep]), np.maximum(left[keep], right[keep])
        pairs = np.unique(a * n + b)
        a, b = pairs // n, pairs % n
        need = np.unique(np.concatenate([a, b]))
        if a.size:
            pictures = thumbs(need)
            ia, ib = np.searchsorted(need, a), np.searchsorted(need, b)
            # the gate, on each row's block means once (rows recur in many pairs)
            means = standardise(_blocks(pictures, shape))
            gate = np.einsum("mp,mp->m", means[ia], means[ib])
            s = np.minimum(gate, settings.floor - 1e-3).astype(np.float32)
            flat = np.ptp(pictures, axis=1) == 0  # (two blank pictures are alike)
            go = np.flatnonzero((gate >= GATE) | (flat[ia] & flat[ib]))
            s[go] = pair_scores(pictures[ia[go]], pictures[ib[go]], shape,
                                refine_above=settings.refine_above)
            hit = s >= settings.floor
            lefts.append(a[hit])
            rights.append(b[hit])
            scores.append(s[hit])
        if checkpoint is not None:
            checkpoint.save(start + len(rows), np.concatenate(lefts) if lefts else a[:0],
                            np.concatenate(rights) if rights else b[:0],
                            np.concatenate(scores) if scores else np.empty(0, np.float32))
        if progress is not None:
            progress(len(rows))
    if not lefts:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    i, j, s = np.concatenate(lefts), np.concatenate(rights), np.concatenate(scores)
    key, first = np.unique(i * n + j, return_index=True)
    return key // n, key % n, s[first].astype(np.float32)
