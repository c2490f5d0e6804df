"""Tests for lookalike.app.figures on real (small) digit images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image
from sklearn.datasets import load_digits

from lookalike.app import figures
from lookalike.errors import LookalikeError


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Digit images as uint8 ``(n, 8, 8, 1)`` in 0..255 and their int labels ``(n,)``."""
    data = load_digits()
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, data.target.astype(np.int64)


def _rgb(images: np.ndarray) -> np.ndarray:
    """A 3-channel variant: grey in R, inverted in G, grey/2 in B."""
    g = images[..., 0]
    return np.stack([g, 255 - g, g // 2], axis=-1).astype(np.uint8)


def _png_size(fig: Figure, dpi: int) -> tuple[int, int]:
    data = figures.to_png(fig, dpi=dpi)
    assert data.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.format == "PNG"
        return img.size


def _expected_size(fig: Figure, dpi: int) -> tuple[int, int]:
    w, h = fig.get_size_inches()
    return round(w * dpi), round(h * dpi)


def _search(images: np.ndarray, labels: np.ndarray, q: int, k: int):
    """Brute-force pixel-space nearest neighbours of the first q images among the rest."""
    flat = images.reshape(len(images), -1).astype(np.float64)
    queries, pool = flat[:q], flat[q:]
    dist = np.sqrt(((queries[:, None, :] - pool[None, :, :]) ** 2).sum(-1))
    idx = np.argsort(dist, axis=1)[:, :k]
    return (
        images[:q],
        images[q:][idx],
        np.take_along_axis(dist, idx, axis=1),
        labels[:q],
        labels[q:][idx],
        (idx + q).astype(np.int64),
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_query_grid_layout_and_colours(digits, channels: int) -> None:
    images, labels = digits
    images = images[:300] if channels == 1 else _rgb(images[:300])
    queries, results, dist, qlab, rlab, ids = _search(images, labels[:300], q=3, k=5)
    # force one known mismatch and one known match
    rlab = rlab.copy()
    rlab[0, 4] = (qlab[0] + 1) % 10
    rlab[1, 0] = qlab[1]
    names = [f"digit {d}" for d in range(10)]
    fig = figures.query_grid(queries, results, dist, qlab, rlab, names, ids)
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 3 * 6
    grid = np.array(axes, dtype=object).reshape(3, 6)
    green, red = to_rgba(figures.MATCH_COLOUR), to_rgba(figures.MISMATCH_COLOUR)
    assert green != red
    for i in range(3):
        assert grid[i, 0].get_title().startswith("query")
        assert f"digit {qlab[i]}" in grid[i, 0].get_title()
        for j in range(5):
            ax = grid[i, j + 1]
            title = ax.get_title()
            assert title.startswith(f"#{j + 1} d={dist[i, j]:.3g}")
            assert f"digit {rlab[i, j]}" in title
            want = green if rlab[i, j] == qlab[i] else red
            assert to_rgba(ax.title.get_color()) == want
            assert to_rgba(ax.spines["left"].get_edgecolor()) == want
            assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0
            assert len(ax.images) == 1
    assert to_rgba(grid[0, 5].title.get_color()) == red
    assert to_rgba(grid[1, 1].title.get_color()) == green
    img = grid[0, 0].images[0]
    if channels == 1:
        assert img.get_cmap().name == "gray"
        assert img.get_clim() == (0, 255)
        np.testing.assert_array_equal(img.get_array(), queries[0, ..., 0])
    else:
        np.testing.assert_array_equal(img.get_array(), queries[0])
    assert _png_size(fig, 40) == _expected_size(fig, 40)


def test_query_grid_without_labels_and_padding(digits) -> None:
    images, labels = digits
    queries, results, dist, _, _, ids = _search(images[:100], labels[:100], q=2, k=4)
    ids = ids.copy()
    ids[0, 2:] = -1  # only two real results for the first query
    results = results.copy()
    results[0, 2:] = 0
    fig = figures.query_grid(queries, results, dist, result_ids=ids)
    grid = np.array(fig.axes, dtype=object).reshape(2, 5)
    assert grid[0, 0].get_title() == "query"
    assert [len(ax.images) for ax in grid[0]] == [1, 1, 1, 0, 0]
    assert [len(ax.images) for ax in grid[1]] == [1, 1, 1, 1, 1]
    assert grid[0, 3].get_title() == "" and not grid[0, 3].get_frame_on()
    assert to_rgba(grid[1, 1].title.get_color()) == to_rgba("black")
    assert _png_size(fig, 50) == _expected_size(fig, 50)


def test_query_grid_labels_without_names(digits) -> None:
    images, labels = digits
    queries, results, dist, qlab, rlab, _ = _search(images[:50], labels[:50], q=1, k=2)
    fig = figures.query_grid(queries, results, dist, query_labels=qlab, result_labels=rlab)
    assert fig.axes[0].get_title() == f"query\n{qlab[0]}"
    assert fig.axes[1].get_title().endswith(f"\n{rlab[0, 0]}")


@pytest.mark.parametrize(
    "change",
    [
        "results_q",
        "results_hw",
        "results_c",
        "distances",
        "query_labels",
        "result_labels",
        "result_ids",
        "float_images",
        "two_channels",
        "empty_k",
    ],
)
def test_query_grid_rejects_bad_shapes(digits, change: str) -> None:
    images, labels = digits
    queries, results, dist, qlab, rlab, ids = _search(images[:60], labels[:60], q=2, k=3)
    kwargs = dict(
        queries=queries,
        results=results,
        distances=dist,
        query_labels=qlab,
        result_labels=rlab,
        result_ids=ids,
    )
    bad = {
        "results_q": ("results", results[:1]),
        "results_hw": ("results", results[:, :, :4]),
        "results_c": ("results", np.repeat(results, 3, axis=-1)),
        "distances": ("distances", dist[:, :2]),
        "query_labels": ("query_labels", qlab[:1]),
        "result_labels": ("result_labels", rlab.T),
        "result_ids": ("result_ids", ids[:, :1]),
        "float_images": ("queries", queries.astype(np.float32)),
        "two_channels": ("queries", np.repeat(queries, 2, axis=-1)),
        "empty_k": ("results", results[:, :0]),
    }
    key, value = bad[change]
    kwargs[key] = value
    if change == "empty_k":
        kwargs["distances"] = dist[:, :0]
    with pytest.raises(LookalikeError):
        figures.query_grid(**kwargs)


def test_image_rows(digits) -> None:
    images, _ = digits
    grey = images[:12]
    noisy = np.clip(grey.astype(np.int16) + 40, 0, 255).astype(np.uint8)
    fig = figures.image_rows([("original", grey), ("noisy", noisy), ("few", grey[:3])], n=8)
    assert len(fig.axes) == 3 * 8
    grid = np.array(fig.axes, dtype=object).reshape(3, 8)
    assert [grid[r, 0].get_ylabel() for r in range(3)] == ["original", "noisy", "few"]
    assert sum(len(ax.images) for ax in grid[0]) == 8
    assert sum(len(ax.images) for ax in grid[2]) == 3
    np.testing.assert_array_equal(grid[1, 7].images[0].get_array(), noisy[7, ..., 0])
    assert _png_size(fig, 60) == _expected_size(fig, 60)

    rgb = _rgb(images[:4])
    fig = figures.image_rows([("original", rgb), ("reconstruction", rgb[::-1])])
    assert len(fig.axes) == 2 * 4  # fewer images than n: only as many columns as needed
    np.testing.assert_array_equal(fig.axes[4].images[0].get_array(), rgb[3])
    assert _png_size(fig, 30) == _expected_size(fig, 30)


@pytest.mark.parametrize(
    "rows, n",
    [
        ([], 10),
        ([("a", np.zeros((2, 8, 8, 1), np.uint8))], 0),
        ([("a", np.zeros((2, 8, 8), np.uint8))], 5),
        ([("a", np.zeros((2, 8, 8, 1), np.float32))], 5),
        ([("a", np.zeros((0, 8, 8, 1), np.uint8))], 5),
    ],
)
def test_image_rows_rejects_bad_input(rows, n: int) -> None:
    with pytest.raises(LookalikeError):
        figures.image_rows(rows, n=n)


def test_loss_curves() -> None:
    history = {"train_loss": [0.9, 0.5, 0.3, 0.25], "val_loss": [1.0, 0.6, 0.4, 0.45]}
    fig = figures.loss_curves(history, best_epoch=3)
    (ax,) = fig.axes
    assert ax.get_ylabel() == "loss"
    train, val, best = ax.lines
    np.testing.assert_array_equal(train.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_array_equal(val.get_ydata(), history["val_loss"])
    assert best.get_linestyle() == "--"
    np.testing.assert_array_equal(best.get_xdata(), [3, 3])
    assert _png_size(fig, 50) == _expected_size(fig, 50)

    fig = figures.loss_curves({"train_loss": [0.5, 0.4], "val_loss": []})
    assert len(fig.axes[0].lines) == 1
    fig = figures.loss_curves({"train_loss": [0.5]})
    assert len(fig.axes[0].lines) == 1
    assert figures.to_png(fig).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "history, best",
    [({"train_loss": [0.5, 0.4]}, 3), ({"train_loss": [0.5, 0.4]}, 0), ({"val_loss": [1.0]}, None)],
)
def test_loss_curves_rejects_bad_input(history, best) -> None:
    with pytest.raises(LookalikeError):
        figures.loss_curves(history, best_epoch=best)


def test_elbow() -> None:
    ks, inertias = [2, 4, 6, 8, 10], [900.0, 500.0, 320.0, 300.0, 290.0]
    fig = figures.elbow(ks, inertias, chosen_k=6)
    (ax,) = fig.axes
    curve = ax.lines[0]
    assert curve.get_marker() == "o"
    np.testing.assert_array_equal(curve.get_xdata(), ks)
    marked = [line for line in ax.lines[1:] if line.get_marker() == "o"]
    assert len(marked) == 1
    np.testing.assert_array_equal(marked[0].get_xdata(), [6])
    np.testing.assert_array_equal(marked[0].get_ydata(), [320.0])
    assert _png_size(fig, 50) == _expected_size(fig, 50)
    assert len(figures.elbow(ks, inertias).axes[0].lines) == 1
    with pytest.raises(LookalikeError, match="7"):
        figures.elbow(ks, inertias, chosen_k=7)
    with pytest.raises(LookalikeError):
        figures.elbow(ks, inertias[:-1])


def test_lrap_curve() -> None:
    ns = [1, 5, 10, 50]
    fig = figures.lrap_curve(ns, {"model": [0.9, 0.8, 0.7, 0.6], "pixels": [0.8, 0.6, 0.5, 0.4]})
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["model", "pixels"]
    assert ax.get_xlabel() == "n (results considered)" and ax.get_ylabel() == "LRAP@n"
    assert ax.get_ylim() == pytest.approx((0.0, 1.02))
    assert _png_size(fig, 50) == _expected_size(fig, 50)
    with pytest.raises(LookalikeError, match="pixels"):
        figures.lrap_curve(ns, {"model": [0.9] * 4, "pixels": [0.8] * 3})
    with pytest.raises(LookalikeError):
        figures.lrap_curve(ns, {})


def test_to_png_and_save(tmp_path, digits) -> None:
    images, _ = digits
    fig = figures.image_rows([("original", images[:5])])
    with pytest.raises(LookalikeError):
        figures.to_png(fig, dpi=0)
    out = figures.save(fig, tmp_path / "deep" / "er" / "rows.png")
    assert out == tmp_path / "deep" / "er" / "rows.png"
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG")
    with Image.open(out) as img:
        assert img.size == _expected_size(fig, 100)
    assert isinstance(figures.save(fig, str(tmp_path / "s.png")), type(out))
