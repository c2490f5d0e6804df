"""The frame check of near pairs: the borders that two files' frames leave at the sides of
their union, for warps whose geometry is known (the reference: crops whose borders are the
ones cut), and the sizes read from the catalogue or from the file's header."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike.search.dupgeometry import MAX_BORDER, largest_border


def _warp_of_crop(size: tuple[int, int], box: tuple[int, int, int, int],
                  stored: tuple[int, int] = (96, 96)) -> tuple[float, float, float]:
    """The warp that lays the stored picture of ``size`` (width, height) over the stored
    picture of its crop ``box`` (left, top, right, bottom, file pixels): the region of the
    original's stored picture that the crop's stored picture shows (both scaled to cover the
    stored frame, centre-cropped)."""
    (width, height), (h, w) = size, stored
    cw, ch = box[2] - box[0], box[3] - box[1]
    c_orig = max(h / height, w / width)  # stored pixels per file pixel
    c_crop = max(h / ch, w / cw)
    scale = c_orig / c_crop  # the crop's frame, in the original's stored pixels, over its side
    centre_x = (box[0] + cw / 2 - width / 2) * c_orig
    centre_y = (box[1] + ch / 2 - height / 2) * c_orig
    return scale, centre_y / h, centre_x / w


@pytest.mark.parametrize("size, box, border", [
    ((800, 600), (80, 30, 720, 570), 0.10),    # 10% off the left and right, 5% top and bottom
    ((1600, 600), (160, 0, 1568, 600), 0.10),  # a wide picture, 10% off its left, 2% right
    ((600, 900), (12, 90, 588, 882), 0.10),    # a tall one, 10% off its top
    ((800, 600), (0, 0, 800, 600), 0.0),       # a resized or re-encoded copy
])
def test_a_crop_leaves_the_border_that_was_cut(size: tuple[int, int],
                                                box: tuple[int, int, int, int],
                                                border: float) -> None:
    crop = (box[2] - box[0], box[3] - box[1])
    warp = np.array([_warp_of_crop(size, box)])
    got = largest_border(np.array([size], float), np.array([crop], float), (96, 96), warp)
    assert got[0] == pytest.approx(border, abs=1e-9)
    # either way round, and with the crop resized (a resize does not move a frame)
    back = largest_border(np.array([[crop[0] * 0.6, crop[1] * 0.6]]), np.array([size], float),
                          (96, 96), np.array([_inverse(*warp[0], size, crop)]))
    assert back[0] == pytest.approx(border, abs=1e-9)


def _inverse(scale: float, dy: float, dx: float, size: tuple[int, int],
             crop: tuple[int, int]) -> tuple[float, float, float]:
    """The same geometry with the crop warped over the original (square stored frames): the
    original's stored frame is the crop's region of side 1/scale centred -shift/scale."""
    return 1 / scale, -dy / scale, -dx / scale


def test_two_windows_a_quarter_apart_leave_a_wide_border() -> None:
    """Windows of 40% of a scene's width, the second 24% further right: laid over each other
    as they lie in the scene, each leaves 0.24 / 0.64 of the union's width uncovered."""
    size = np.array([[640.0, 720.0]])
    warp = _warp_of_crop((1600, 720), (384, 0, 1024, 720))  # the second window in the scene
    scene_to_first = _warp_of_crop((1600, 720), (0, 0, 640, 720))
    # the second window's stored frame in the first's: the shift between their centres
    s = warp[0] / scene_to_first[0]
    dx = (warp[2] - scene_to_first[2]) / scene_to_first[0]
    got = largest_border(size, size, (96, 96), np.array([[s, 0.0, dx]]))
    assert got[0] == pytest.approx(0.24 / 0.64) and got[0] > MAX_BORDER
    # the warp the search kept for the benchmark's desert windows (777 x 1024 files)
    desert = largest_border(np.array([[777.0, 1024]]), np.array([[777.0, 1024]]), (96, 96),
                            np.array([[0.862, -0.106, -0.128]]))
    assert 0.18 < desert[0] < 0.2


def test_unknown_sizes_give_nan_and_squashed_pictures_scale_each_axis() -> None:
    got = largest_border(np.array([[np.nan, np.nan], [800, 600]]), np.array([[800, 600]] * 2),
                         (96, 96), np.array([[1.0, 0, 0]] * 2))
    assert np.isnan(got[0]) and got[1] == 0
    # squashed to 96 x 96 (each axis scaled on its own): 5% off every side is a zoom of 0.9
    squashed = largest_border(np.array([[1000.0, 500]]), np.array([[900.0, 450]]), (96, 96),
                              np.array([[0.9, 0, 0]]), squash=True)
    assert squashed[0] == pytest.approx(0.05)


def test_frame_sizes_from_the_file_header_without_a_catalogue(tmp_path: Path) -> None:
    """(The catalogue's sizes: tests/test_duplicates.py, with a file gone.)"""
    from lookalike.search.dupgeometry import frame_sizes

    class _Item:
        def __init__(self, id_: int, source: str) -> None:
            self.id, self.source = id_, source

    class _Coll:  # what frame_sizes reads of a collection: its path and items
        path = tmp_path

        def items(self, ids: list[int]) -> list[_Item | None]:
            known = {1: _Item(1, str(tmp_path / "a.png")), 2: _Item(2, str(tmp_path / "gone.png")),
                     3: _Item(3, "digits/17")}
            return [known.get(i) for i in ids]

    Image.new("RGB", (40, 30)).save(tmp_path / "a.png")
    sqlite3.connect(tmp_path / "metadata.sqlite").close()  # a collection's, with no catalogue
    got = frame_sizes(_Coll(), np.array([1, 2, 3, 1]))  # type: ignore[arg-type]
    assert got[0].tolist() == [40, 30] and got[3].tolist() == [40, 30]
    assert np.isnan(got[1:3]).all()


def test_a_flat_picture_has_no_alignment_to_judge() -> None:
    """Two blank pictures are alike whatever the warp says (the search finds no best one)."""
    from lookalike.search.finecheck import frame_borders

    flat = np.full((2, 96, 96, 3), 128, np.uint8)
    lined = flat.copy()
    lined[1, 40:50] = 0
    warped = (np.array([True, True]), np.array([[0.8, 0.15, 0.15]] * 2))
    sizes = np.array([[800.0, 600]] * 2)
    got = frame_borders(lined, lined, sizes, sizes, warped)  # row 0 flat, row 1 not
    assert np.isnan(got[0]) and got[1] > MAX_BORDER
