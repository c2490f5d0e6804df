"""Synthetic items for the scale rows of benchmarks/duplicates.py: smooth 32x32 grey
thumbnails (a random 6x6 grid, bilinear up to 32x32, plus noise), 1% of them edited copies of
others (zoomed to 85-100% and shifted, brightened, noised), and random 128-d codes (a copy's:
its original's plus noise, so that the codes put it among the original's nearest)."""

from __future__ import annotations

import numpy as np

from lookalike.search.alignment import _axis_dense


def _upsample(n_in: int, n_out: int) -> np.ndarray:
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - frac
    m[np.arange(n_out), lo + 1] = frac
    return m


def items(n: int, seed: int = 0, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """``codes float32 (n, 128)``, ``thumbs uint8 (n, 1024)``, and the planted ``(original,
    copy)`` row pairs (copies sit anywhere, originals before them or after)."""
    rng = np.random.default_rng(seed)
    up = _upsample(6, 32)
    thumbs = np.empty((n, 1024), np.uint8)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        grid = rng.random((m, 6, 6), dtype=np.float32) * 255
        img = up @ grid @ up.T + rng.normal(0, 4, (m, 32, 32)).astype(np.float32)
        thumbs[s:s + m] = np.clip(img, 0, 255).reshape(m, -1).astype(np.uint8)
    copies = []
    rows = rng.permutation(n)[: 2 * (n // 100)].reshape(-1, 2)
    for orig, dup in rows.tolist():
        z = rng.uniform(0.85, 1.0)
        dy, dx = rng.uniform(-(1 - z) / 2, (1 - z) / 2, 2)
        r = _axis_dense(32, round(z, 3), round(dy, 3))
        c = _axis_dense(32, round(z, 3), round(dx, 3))
        img = r @ thumbs[orig].reshape(32, 32).astype(np.float32) @ c.T
        img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 2, (32, 32))
        thumbs[dup] = np.clip(img, 0, 255).reshape(-1).astype(np.uint8)
        copies.append((orig, dup))
    codes = rng.normal(0, 1, (n, 128)).astype(np.float32)
    for orig, dup in copies:
        codes[dup] = codes[orig] + rng.normal(0, 0.3, 128).astype(np.float32)
    return codes, thumbs, copies
