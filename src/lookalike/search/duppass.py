"""The duplicate pass over ``n`` items: candidate pairs from the codes, checked on the pixels,
block by block, in memory O(n·k) beside the items' small grey thumbnails; resumable.

Each item's ``k`` nearest items by cosine of the codes are its candidates, searched ``block``
items at a time: exactly (FAISS's blocked inner products, over the codes a chunk at a time)
while the queries times the items stay within :data:`EXACT_WORK`, else by an inverted file
(``IVF(2·sqrt(n)),SQ8``: 8 bits a dimension, :data:`NPROBE` probes) built a chunk at a time.
With ``queries``, only those rows look for candidates (``--since``: the new items against all).

Every candidate pair then meets the gate (the plain correlation of the two pictures' 8x8
block means, :data:`lookalike.search.alignment.GATE`; each item's block means are worked out
once a pass); only the pairs that pass are scored on their pixels by
:func:`lookalike.search.alignment.pair_scores` and kept when they reach ``floor``.

A :class:`Checkpoint` saves the pairs found and the rows done every few blocks, in one file
written atomically; a pass run again with the same checkpoint (same items, same settings)
starts after the last saved block.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from ..fsutil import atomic_write
from .alignment import GATE, _blocks, pair_scores, standardise

log = logging.getLogger(__name__)

#: Exact candidate search while (queries x items) stays within this (a full pass of up to
#: ~44,000 items, or 1,000 new items against 2,000,000); an inverted file above.
EXACT_WORK = 2_000_000_000
#: Probes of the inverted file (of its ``2·sqrt(n)`` lists): on 1,000,000 random 128-d codes, where
#: an inverted file does worst, 16 probes missed 13 of 10,000 planted copies, 32 missed 1
#: (and take 1.9x the search time; 2026-12-05).
NPROBE = 32
#: Codes are normalised and added this many rows at a time (no normalised copy of them all).
CHUNK = 65536


class Codes(Protocol):
    """``(n, d)`` codes read by rows: an array, a memory map, or rows fetched on demand."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, rows: Any) -> np.ndarray: ...


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
    """``pass.npz`` in ``folder``: the pairs found so far, the rows done and the settings, in
    one file replaced atomically (a crash leaves the last whole checkpoint, never a torn one)."""

    NAME = "pass.npz"

    def __init__(self, folder: Path, settings: PassSettings, every_s: float = 30.0) -> None:
        self.folder = folder
        self.settings = settings
        self.every_s = every_s
        self._last = time.monotonic()

    def load(self) -> tuple[int, np.ndarray, np.ndarray, np.ndarray] | None:
        """``(rows done, i, j, score)`` of an unfinished pass with these settings, or None."""
        try:
            with np.load(self.folder / self.NAME, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
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
        meta = np.array(json.dumps({"settings": asdict(self.settings), "done": done}))

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, i=i, j=j, score=score, meta=meta)

        atomic_write(self.folder / self.NAME, write)
        self._last = time.monotonic()

    def clear(self) -> None:
        # (pass.json and pass-pairs.npz: a checkpoint of an earlier version)
        for name in (self.NAME, "pass.json", "pass-pairs.npz"):
            (self.folder / name).unlink(missing_ok=True)


def _unit(codes: Codes, start: int, stop: int) -> np.ndarray:
    x = np.array(codes[start:stop], dtype=np.float32, copy=True, order="C")
    faiss.normalize_L2(x)
    return x


def unit_rows(codes: Codes) -> np.ndarray:
    """The rows of ``codes`` ``(n, d)`` over their norms, ``float32`` (a copy)."""
    if len(codes.shape) != 2:
        raise ValueError(f"codes must be (n, d), got shape {codes.shape}")
    return _unit(codes, 0, len(codes))


def candidate_index(codes: Codes) -> faiss.Index:
    """An inverted file over the unit rows of ``codes``: ``IVF(2·sqrt(n)),SQ8``, inner
    product, trained on a seeded sample, :data:`NPROBE` probes; codes added a chunk at a time."""
    n, d = codes.shape
    nlist = max(1, int(2 * np.sqrt(n)))
    index = faiss.index_factory(d, f"IVF{nlist},SQ8", faiss.METRIC_INNER_PRODUCT)
    sample = np.sort(np.random.default_rng(0).choice(n, min(n, 40 * nlist), replace=False))
    train = np.array(codes[sample], dtype=np.float32)
    faiss.normalize_L2(train)
    index.train(train)
    for start in range(0, n, CHUNK):
        index.add(_unit(codes, start, start + CHUNK))
    faiss.extract_index_ivf(index).nprobe = NPROBE
    return index


class _Neighbours:
    """``search(rows)``: the ``(m, k)`` row numbers nearest each of ``rows`` by cosine (-1
    pads), exactly or by :func:`candidate_index` (see the module docstring)."""

    def __init__(self, codes: Codes, queries: int, k: int) -> None:
        self.codes, self.k = codes, k
        n = len(codes)
        self.index = None
        if queries * n > EXACT_WORK:
            log.info("building the candidate index over %d codes", n)
            self.index = candidate_index(codes)
        # a pass over few items keeps their unit rows; a --since pass streams them
        self.unit = unit_rows(codes) if self.index is None and n <= 2 * CHUNK else None

    def search(self, rows: np.ndarray) -> np.ndarray:
        q = np.array(self.codes[rows], dtype=np.float32)
        faiss.normalize_L2(q)
        if self.index is not None:
            return self.index.search(q, self.k)[1]  # type: ignore[no-any-return]
        n = len(self.codes)
        best_d = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.full((len(q), 0), -1, np.int64)
        for start in range(0, n, CHUNK):
            xb = self.unit[start:start + CHUNK] if self.unit is not None else _unit(
                self.codes, start, start + CHUNK)
            d, i = faiss.knn(q, xb, min(self.k, len(xb)), metric=faiss.METRIC_INNER_PRODUCT)
            best_d = np.concatenate([best_d, d], axis=1)
            best_i = np.concatenate([best_i, i + start], axis=1)
            order = np.argsort(-best_d, axis=1, kind="stable")[:, :self.k]
            best_d = np.take_along_axis(best_d, order, axis=1)
            best_i = np.take_along_axis(best_i, order, axis=1)
        return best_i


def gate_features(pictures: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``float32 (m, 64)``: the standardised 8x8 block means of ``uint8 (m, h*w)`` pictures
    (the gate is the dot product of two pairs' rows), and ``bool (m,)``: which are blank."""
    return standardise(_blocks(pictures, shape)), np.ptp(pictures, axis=1) == 0


def _all_features(thumbs: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int],
                  n: int) -> tuple[np.ndarray, np.ndarray]:
    feats = np.empty((n, 64), np.float32)
    flat = np.empty(n, bool)
    for start in range(0, n, CHUNK):
        rows = np.arange(start, min(n, start + CHUNK))
        feats[rows], flat[rows] = gate_features(thumbs(rows), shape)
    return feats, flat


def scan(codes: Codes, thumbs: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int],
         settings: PassSettings, *, queries: np.ndarray | None = None, block: int = 1024,
         checkpoint: Checkpoint | None = None, progress: Callable[[int], Any] | None = None,
         stats: dict[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows ``(i, j, score)`` with ``i < j`` and ``score >= settings.floor``, each
    once, sorted by ``(i, j)``.

    ``codes`` is ``(n, d)`` (:class:`Codes`: read a chunk or a block's rows at a time); ``thumbs(rows)`` gives
    the rows' ``uint8 (m, h*w)`` thumbnails (:func:`lookalike.search.alignment.thumbnails`);
    ``queries`` the rows that look for candidates (all when ``None``), sorted.
    ``progress(rows)`` is called after each block. ``stats``, when given, receives the
    candidate pairs, the pairs scored on their pixels and the seconds of each stage.
    """
    n = len(codes)
    out: dict[str, float] = dict.fromkeys(
        ("candidates", "scored", "search_s", "gate_s", "pixels_s", "features_s"), 0)
    if stats is not None:
        stats.update(out)
        out = stats
    if n < 2:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    if len(codes.shape) != 2:
        raise ValueError(f"codes must be (n, d), got shape {codes.shape}")
    todo = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
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
    t = time.perf_counter()
    neighbours = _Neighbours(codes, len(todo), min(settings.k + 1, n))
    out["search_s"] += time.perf_counter() - t
    # most rows meet the gate (as candidates of others): their block means once for all
    feats = flat = None
    if len(todo) - done > n // 4:
        t = time.perf_counter()
        feats, flat = _all_features(thumbs, shape, n)
        out["features_s"] += time.perf_counter() - t
    for start in range(done, len(todo), block):
        rows = todo[start:start + block]
        t = time.perf_counter()
        nbr = neighbours.search(rows)
        left = np.repeat(rows, nbr.shape[1])
        right = nbr.ravel().astype(np.int64)
        keep = (right >= 0) & (right != left)
        a, b = np.minimum(left[keep], right[keep]), np.maximum(left[keep], right[keep])
        pairs = np.unique(a * n + b)
        a, b = pairs // n, pairs % n
        out["candidates"] += len(a)
        t2 = time.perf_counter()
        out["search_s"] += t2 - t
        if a.size:
            pictures = None
            if feats is None or flat is None:  # few queries: their candidates' block means now
                need = np.unique(np.concatenate([a, b]))
                pictures = thumbs(need)
                f, fl = gate_features(pictures, shape)
                ia, ib = np.searchsorted(need, a), np.searchsorted(need, b)
                fa, fb, flat_a, flat_b = f[ia], f[ib], fl[ia], fl[ib]
            else:
                fa, fb, flat_a, flat_b = feats[a], feats[b], flat[a], flat[b]
            gate = np.einsum("mp,mp->m", fa, fb)
            s = np.minimum(gate, settings.floor - 1e-3).astype(np.float32)
            go = np.flatnonzero((gate >= GATE) | (flat_a & flat_b))  # (two blanks are alike)
            t3 = time.perf_counter()
            out["gate_s"] += t3 - t2
            if go.size:
                if pictures is None:
                    need = np.unique(np.concatenate([a[go], b[go]]))
                    pictures = thumbs(need)
                ia, ib = np.searchsorted(need, a[go]), np.searchsorted(need, b[go])
                s[go] = pair_scores(pictures[ia], pictures[ib], shape,
                                    refine_above=settings.refine_above)
                out["scored"] += go.size
            out["pixels_s"] += time.perf_counter() - t3
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
    log.info("duplicate pass: %d candidate pairs, %d scored on their pixels; seconds: "
             "search %.1f, block means %.1f, gate %.1f, pixels %.1f", out["candidates"],
             out["scored"], out["search_s"], out["features_s"], out["gate_s"], out["pixels_s"])
    if not lefts:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float32)
    i, j, s = np.concatenate(lefts), np.concatenate(rights), np.concatenate(scores)
    key, first = np.unique(i * n + j, return_index=True)
    return key // n, key % n, s[first].astype(np.float32)
