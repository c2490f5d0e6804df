"""Matplotlib figures for retrieval results, reconstructions and training curves.

Each function builds a fresh :class:`~matplotlib.figure.Figure` (no pyplot, no global state:
thread-safe); render it with :func:`to_png` or :func:`save` (Agg). Images are uint8
``(n, H, W, C)``, ``C`` = 1 (grey, drawn on a fixed 0..255 scale) or 3 (RGB).
"""

from __future__ import annotations

import io
import logging
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..errors import LookalikeError

log = logging.getLogger(__name__)

MATCH_COLOUR = "green"
MISMATCH_COLOUR = "red"


def _images(arr: np.ndarray, name: str, ndim: int = 4) -> np.ndarray:
    """Check ``arr`` is a uint8 array of ``ndim`` dimensions whose last axis is 1 or 3."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise LookalikeError(f"{name} must be uint8, got dtype {arr.dtype}")
    if arr.ndim != ndim or arr.shape[-1] not in (1, 3):
        raise LookalikeError(f"{name} must have {ndim} dims ending in 1 or 3, got {arr.shape}")
    return arr


def _shaped(arr: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    """``None`` stays ``None``; anything else must be an array of exactly ``shape``."""
    if arr is not None and np.shape(arr) != shape:
        raise LookalikeError(f"{name} must have shape {shape}, got {np.shape(arr)}")
    return None if arr is None else np.asarray(arr)


def _floats(values: Sequence[float], name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise LookalikeError(f"{name} must be a sequence of numbers, got {values!r}") from None
    if arr.ndim != 1:
        raise LookalikeError(f"{name} must be one-dimensional, got shape {arr.shape}")
    return arr


def _blank(ax: Axes) -> Axes:
    """Remove the ticks, keeping the frame, title and y label."""
    ax.set(xticks=[], yticks=[])
    return ax


def _show(ax: Axes, image: np.ndarray) -> None:
    """Draw one ``(H, W, C)`` uint8 image on ``ax`` with ticks off (grey: fixed 0..255 scale)."""
    pixels = image[..., 0] if image.shape[-1] == 1 else image  # RGB ignores cmap and limits
    _blank(ax).imshow(pixels, cmap="gray", vmin=0, vmax=255, interpolation="nearest")


def _line_axes(xlabel: str, ylabel: str) -> tuple[Figure, Axes]:
    """A 6x4 inch figure with one gridded axes, labelled."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _label(label: int, names: Sequence[str] | None) -> str:
    """``names[label]`` when there is one, else the number itself."""
    return str(names[label]) if names is not None and 0 <= label < len(names) else str(label)


def query_grid(
    queries: np.ndarray,
    results: np.ndarray,
    distances: np.ndarray,
    query_labels: np.ndarray | None = None,
    result_labels: np.ndarray | None = None,
    label_names: Sequence[str] | None = None,
    result_ids: np.ndarray | None = None,
) -> Figure:
    """One row per query: the query image, then its ``k`` results in rank order.

    ``queries`` uint8 ``(q, H, W, C)``; ``results`` uint8 ``(q, k, H, W, C)``; ``distances``
    float ``(q, k)``; ``query_labels`` int ``(q,)`` and ``result_labels`` int ``(q, k)``, each
    optional; ``label_names`` maps an int label to its display name; ``result_ids`` int64
    ``(q, k)`` where -1 marks padding (an empty cell). With both label arrays, each result's
    frame and title are :data:`MATCH_COLOUR` when its label equals the query's, else
    :data:`MISMATCH_COLOUR`. The figure has ``q * (k + 1)`` axes.
    """
    queries = _images(queries, "queries")
    results = _images(results, "results", ndim=5)
    q, k = results.shape[:2]
    if q == 0 or k == 0:
        raise LookalikeError(f"results must hold at least one query and one result, got {q}x{k}")
    if results.shape != (queries.shape[0], k, *queries.shape[1:]):
        raise LookalikeError(f"results shape {results.shape} does not fit queries {queries.shape}")
    dist = np.asarray(_shaped(distances, (q, k), "distances"), dtype=np.float64)
    qlab = _shaped(query_labels, (q,), "query_labels")
    rlab = _shaped(result_labels, (q, k), "result_labels")
    ids = _shaped(result_ids, (q, k), "result_ids")
    fig = Figure(figsize=(1.4 * (k + 1), 1.7 * q), layout="constrained")
    axes = fig.subplots(q, k + 1, squeeze=False)
    for i in range(q):
        _show(axes[i, 0], queries[i])
        title = "query" if qlab is None else f"query\n{_label(int(qlab[i]), label_names)}"
        axes[i, 0].set_title(title, fontsize=8, fontweight="bold")
        for j in range(k):
            ax = axes[i, j + 1]
            if ids is not None and ids[i, j] == -1:
                _blank(ax).set_frame_on(False)
                continue
            _show(ax, results[i, j])
            title = f"#{j + 1} d={dist[i, j]:.3g}"
            colour = "black"
            if rlab is not None:
                title += f"\n{_label(int(rlab[i, j]), label_names)}"
                if qlab is not None:
                    colour = MATCH_COLOUR if rlab[i, j] == qlab[i] else MISMATCH_COLOUR
                    ax.spines[:].set_edgecolor(colour)
                    ax.spines[:].set_linewidth(2.0)
            ax.set_title(title, fontsize=7, color=colour)
    return fig


def image_rows(rows: Sequence[tuple[str, np.ndarray]], n: int = 10) -> Figure:
    """One row per ``(title, images uint8 (m, H, W, C))``: its first ``n`` images, title at left.

    Has ``len(rows) * min(n, max m)`` axes; shorter rows leave empty cells.
    """
    if n < 1:
        raise LookalikeError(f"n must be at least 1, got {n}")
    if not rows:
        raise LookalikeError("rows must not be empty")
    checked = [(str(title), _images(images, f"row {title!r}")[:n]) for title, images in rows]
    cols = max(len(images) for _, images in checked)
    if cols == 0:
        raise LookalikeError("every row is empty: nothing to show")
    fig = Figure(figsize=(1.2 * cols + 0.6, 1.3 * len(checked)), layout="constrained")
    axes = fig.subplots(len(checked), cols, squeeze=False)
    for r, (title, images) in enumerate(checked):
        for c in range(cols):
            if c < len(images):
                _show(axes[r, c], images[c])
            else:
                _blank(axes[r, c]).set_frame_on(False)
        axes[r, 0].set_ylabel(title, fontsize=9)
    return fig


def loss_curves(history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> Figure:
    """Train (and, if present and non-empty, validation) loss against 1-based epoch.

    ``history["train_loss"]`` is required; ``history.get("val_loss")`` is optional. A dashed
    vertical line marks ``best_epoch`` (1-based, within the training epochs).
    """
    train = _floats(history.get("train_loss", ()), "train_loss")
    if train.size == 0:
        raise LookalikeError("history has no train_loss values")
    val_loss = history.get("val_loss")
    val = _floats(() if val_loss is None else val_loss, "val_loss")
    fig, ax = _line_axes("epoch", "loss")
    ax.plot(np.arange(1, train.size + 1), train, marker=".", label="train")
    if val.size:
        ax.plot(np.arange(1, val.size + 1), val, marker=".", label="validation")
    if best_epoch is not None:
        if not 1 <= best_epoch <= train.size:
            raise LookalikeError(f"best_epoch must be in 1..{train.size}, got {best_epoch}")
        ax.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch {best_epoch}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return fig


def elbow(ks: Sequence[int], inertias: Sequence[float], chosen_k: int | None = None) -> Figure:
    """K-means inertia against ``k`` (line with markers), ``chosen_k`` highlighted in red."""
    k_arr, inertia = _floats(ks, "ks"), _floats(inertias, "inertias")
    if k_arr.size == 0 or k_arr.shape != inertia.shape:
        raise LookalikeError(f"need one inertia per k, got {inertia.size} for {k_arr.size} ks")
    fig, ax = _line_axes("k (clusters)", "inertia")
    ax.plot(k_arr, inertia, marker="o")
    if chosen_k is not None:
        hits = np.flatnonzero(k_arr == chosen_k)
        if hits.size == 0:
            raise LookalikeError(f"chosen_k {chosen_k} is not one of ks {list(ks)}")
        ax.axvline(chosen_k, color="red", linestyle="--", alpha=0.6)
        chosen = inertia[hits[0]]
        ax.plot(
            [chosen_k], [chosen], "o", markersize=11, color="red", label=f"chosen k = {chosen_k}"
        )
        ax.legend()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def lrap_curve(ns: Sequence[int], curves: Mapping[str, Sequence[float]]) -> Figure:
    """One LRAP@n line per name in ``curves`` (each as long as ``ns``), y from 0 to 1.02."""
    n_arr = _floats(ns, "ns")
    if n_arr.size == 0 or not curves:
        raise LookalikeError("lrap_curve needs at least one n and one curve")
    fig, ax = _line_axes("n (results considered)", "LRAP@n")
    for name, values in curves.items():
        y = _floats(values, f"curve {name!r}")
        if y.shape != n_arr.shape:
            raise LookalikeError(f"curve {name!r} has {y.size} values for {n_arr.size} ns")
        ax.plot(n_arr, y, marker=".", label=str(name))
    ax.set_ylim(0.0, 1.02)
    ax.legend()
    return fig


def to_png(fig: Figure, dpi: int = 100) -> bytes:
    """Render ``fig`` with Agg to PNG bytes (``figsize * dpi`` pixels)."""
    if dpi <= 0:
        raise LookalikeError(f"dpi must be positive, got {dpi}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save(fig: Figure, path: str | os.PathLike[str]) -> pathlib.Path:
    """Write ``fig`` as a PNG (100 dpi) to ``path``, creating parent directories."""
    out = pathlib.Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(to_png(fig))
    log.debug("wrote figure %s", out)
    return out
