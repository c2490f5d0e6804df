"""Duplicates in tiers, on real image files: windows of scikit-learn's two sample photos as
distinct pictures, with byte copies (identical), PNG copies of a decoded JPEG (same-pixels),
edited copies (near: borders cropped up to 10% a side, resized, brightened, date-stamped,
re-encoded) and a shifted window (similar), indexed with the default model for colour files."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance
from sklearn.datasets import load_sample_images

from conftest import run_cli as run
from lookalike.config import InputSpec
from lookalike.data.images import conform
from lookalike.search import duppass
from lookalike.search.alignment import RING, WARPS, _operator, _refine, pair_scores, thumbnails
from lookalike.search.collection import Collection
from lookalike.search.duplicates import (
    NEAR_THRESHOLD,
    SIMILAR_THRESHOLD,
    DuplicateGroup,
    DuplicatePair,
    find_duplicates,
    find_groups,
    group_pairs,
)
from lookalike.search.finecheck import MAX_BLOCK_RESIDUAL, block_residuals

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _windows() -> dict[str, Image.Image]:
    """Six distinct photos: the left, middle and right thirds of the two sample photos."""
    out = {}
    for name, arr in zip(("china", "flower"), load_sample_images().images, strict=True):
        im = Image.fromarray(arr)
        w = im.width // 3
        for k, letter in enumerate("lmr"):
            out[f"{name}_{letter}"] = im.crop((k * w, 0, (k + 1) * w, im.height))
    return out


def _crop(im: Image.Image, left: float, top: float, right: float, bottom: float) -> Image.Image:
    return im.crop((round(left * im.width), round(top * im.height),
                    round((1 - right) * im.width), round((1 - bottom) * im.height)))


def _stamp(im: Image.Image) -> Image.Image:
    out = im.copy()
    ImageDraw.Draw(out).text((8, im.height - 20), "2019/07/14", fill=(255, 160, 40))
    return out


#: copy name -> (window, how it was made, expected tier with its original)
EDITS = {
    "china_l_crop10.jpg": ("china_l", lambda im: _crop(im, 0.10, 0.10, 0.10, 0.10), "near"),
    "flower_m_crop.jpg": ("flower_m", lambda im: _crop(im, 0.03, 0.08, 0.07, 0.02), "near"),
    "china_m_small.jpg": ("china_m", lambda im: im.resize((128, 256)), "near"),
    "flower_r_bright.jpg": ("flower_r", lambda im: ImageEnhance.Brightness(im).enhance(1.08),
                            "near"),
    "china_r_stamp.jpg": ("china_r", _stamp, "near"),
}


def _folder(root: Path) -> dict[str, str]:
    """Write the photos and their copies; returns file name -> window name."""
    root.mkdir(parents=True)
    origin = {}
    windows = _windows()
    for name, im in windows.items():
        im.save(root / f"{name}.jpg", quality=90)
        origin[f"{name}.jpg"] = name
    for name, (window, make, _) in EDITS.items():
        make(windows[window]).save(root / name, quality=60)
        origin[name] = window
    shutil.copyfile(root / "flower_l.jpg", root / "flower_l_copy.jpg")  # identical
    origin["flower_l_copy.jpg"] = "flower_l"
    with Image.open(root / "china_l.jpg") as im:  # same pixels, another format
        im.save(root / "china_l.png")
    origin["china_l.png"] = "china_l"
    return origin


def _index(root: Path, images: Path, out: str = "coll") -> Path:
    from conftest import _one_thread, _run_quietly

    with _one_thread():
        if not (root / "model" / "config.json").is_file():
            _run_quietly(["-q", "train", "--dataset", str(images), "--seed", "0", "--device", "cpu",
                          "--out", str(root / "model")])
        _run_quietly(["-q", "index", "--model", str(root / "model"), "--dataset", str(images),
                      "--out", str(root / out)])
    return root / out


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("dups")
    origin = _folder(root / "images")
    return _index(root, root / "images"), origin


def _by_source(coll: Collection, groups: list[DuplicateGroup]) -> dict[tuple[str, ...], str]:
    sources = {it.id: Path(it.source).name for it in coll.items(coll.ids) if it}
    return {tuple(sorted(sources[i] for i in g.ids)): g.tier for g in groups}


def _fresh(coll_dir: Path, tmp_path: Path) -> Collection:
    """A copy of the module's collection (each test records its own passes)."""
    shutil.copytree(coll_dir, tmp_path / "coll")
    return Collection.open(tmp_path / "coll")


def test_every_tier_on_real_files(photos: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    coll_dir, origin = photos
    coll = _fresh(coll_dir, tmp_path)
    groups = find_groups(coll)
    found = _by_source(coll, groups)
    expected = {
        ("china_l.jpg", "china_l.png", "china_l_crop10.jpg"): "near",
        ("flower_l.jpg", "flower_l_copy.jpg"): "identical",
        **{tuple(sorted((f"{w}.jpg", name))): tier for name, (w, _, tier) in EDITS.items()
           if w != "china_l"},
    }
    assert found == expected
    # the pairs inside the china_l group keep their own tiers: same-pixels, then near
    china = next(g for g in groups if len(g.ids) == 3)
    assert sorted(p.tier for p in china.links) == ["near", "same-pixels"]
    assert china.score == min(p.score for p in china.links) >= NEAR_THRESHOLD
    assert find_duplicates(coll) == [list(g.ids) for g in groups]


def test_a_shifted_window_is_similar_only_when_asked(photos: tuple[Path, dict[str, str]],
                                                      tmp_path: Path) -> None:
    """A second shot of a scene (the window moved by 18% of its width) is not an edit: not
    near, but similar with ``similar=True``."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("china_l.jpg", "flower_l.jpg", "china_r.jpg"):
        shutil.copyfile(photos[0].parent / "images" / name, images / name)
    im = Image.fromarray(load_sample_images().images[0])
    w = im.width // 3
    im.crop((round(0.18 * w), 0, round(0.18 * w) + w, im.height)).save(images / "burst.jpg")
    shutil.copytree(photos[0].parent / "model", tmp_path / "model")
    coll = Collection.open(_index(tmp_path, images))
    assert find_groups(coll) == []
    groups = find_groups(coll, similar=True)
    assert _by_source(coll, groups) == {("burst.jpg", "china_l.jpg"): "similar"}
    assert SIMILAR_THRESHOLD <= groups[0].score < NEAR_THRESHOLD


def test_overlapping_windows_that_pass_at_32_px_fail_the_fine_check(
        photos: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """Two windows of the china photo, the second 39 px (30% of a side) lower, correlate above
    the near threshold at 32 px grey, but their aligned colour pictures differ in a block by
    far more than a copy does: not near. A 10% border crop of the first, saved at JPEG
    quality 60, still is."""
    arr = load_sample_images().images[0]
    images = tmp_path / "images"
    images.mkdir()
    first = Image.fromarray(arr[0:130, 43:173])
    first.save(images / "top.jpg", quality=95)
    Image.fromarray(arr[39:169, 43:173]).save(images / "lower.jpg", quality=95)
    _crop(first, 0.10, 0.10, 0.10, 0.10).save(images / "top_crop.jpg", quality=60)
    shutil.copytree(photos[0].parent / "model", tmp_path / "model")
    coll = Collection.open(_index(tmp_path, images))
    by_name = {Path(it.source).name: it.id for it in coll.items(coll.ids) if it}
    pictures = np.stack([coll.image(by_name[n]) for n in ("top.jpg", "lower.jpg", "top_crop.jpg")])
    grey = thumbnails(pictures)
    assert pair_scores(grey[:1], grey[1:2], (32, 32))[0] >= NEAR_THRESHOLD  # the 32 px check alone
    residual = block_residuals(pictures[[0, 0]], pictures[[1, 2]])
    assert residual[0] > 2 * MAX_BLOCK_RESIDUAL and residual[1] < MAX_BLOCK_RESIDUAL
    assert _by_source(coll, find_groups(coll)) == {("top.jpg", "top_crop.jpg"): "near"}
    assert _by_source(coll, find_groups(coll, similar=True)) == {
        ("lower.jpg", "top.jpg", "top_crop.jpg"): "similar"}


def test_border_crops_up_to_ten_percent_a_side_are_near_and_distinct_photos_are_not() -> None:
    windows = _windows()
    names = list(windows)
    crops = [(0.10, 0.10, 0.10, 0.10), (0.02, 0.10, 0.10, 0.02), (0.10, 0.02, 0.02, 0.10),
             (0.05, 0.0, 0.10, 0.07)]
    spec = InputSpec(3, 96, 96)
    stored = conform([np.asarray(im) for im in windows.values()], spec)
    copies = conform([np.asarray(_crop(windows[n], *c)) for n in names for c in crops], spec)
    grey, copied = thumbnails(stored), thumbnails(copies)
    near = pair_scores(copied, np.repeat(grey, len(crops), axis=0), (32, 32))
    # (one of the 24, 10% off every side of a portrait window, scores 0.972: the limit)
    assert (near >= NEAR_THRESHOLD).sum() >= 23 and near.min() > 0.97
    i, j = np.triu_indices(len(names), 1)
    assert pair_scores(grey[i], grey[j], (32, 32)).max() < SIMILAR_THRESHOLD


def test_the_grid_search_equals_warps_done_one_by_one() -> None:
    """The fast path (one sparse operator for every warp) and the refinement (dense per-axis
    matrices) against SciPy's warp and NumPy's correlation, pair by pair, on a non-square size
    so that the axes cannot be mixed up."""
    from scipy import ndimage

    from lookalike.search.alignment import _one_way, standardise

    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((3, 20, 24)), (0, 2, 2))
    a = np.rint(255 * (base - base.min()) / np.ptp(base)).reshape(3, -1).astype(np.uint8)
    b = a[[1, 2, 0]]
    h, w = 20, 24
    got, which = _one_way(a, standardise(b), (h, w))

    def warped(image: np.ndarray, s: float, dy: float, dx: float) -> np.ndarray:
        return ndimage.affine_transform(
            image.reshape(h, w).astype(np.float64), np.diag([s, s]),
            offset=((h - 1) / 2 * (1 - s) + dy * h, (w - 1) / 2 * (1 - s) + dx * w),
            order=1, mode="nearest").ravel()

    for r in range(3):
        each = [np.corrcoef(warped(a[r], *warp), b[r])[0, 1] for warp in WARPS]
        assert got[r] == pytest.approx(max(each), abs=1e-4)
        assert int(which[r]) == int(np.argmax(each))
    refined, moved, _ = _refine(a, standardise(b), (h, w), np.asarray(WARPS)[which])
    assert np.all(refined >= got - 1e-5)
    assert _operator(h, w)[0].shape == (len(WARPS) * h * w, h * w)
    inner = np.zeros((h, w), dtype=bool)
    inner[RING:h - RING, RING:w - RING] = True
    for r in range(3):  # the better of the whole frame and the frame without its ring
        whole = np.corrcoef(moved[r], b[r])[0, 1]
        ringless = np.corrcoef(moved[r][inner.ravel()], b[r][inner.ravel()])[0, 1]
        assert refined[r] == pytest.approx(max(whole, ringless), abs=1e-4)


def test_a_group_takes_the_weakest_tier_that_holds_it_together() -> None:
    pairs = [DuplicatePair(1, 2, "identical", 1.0), DuplicatePair(2, 3, "near", 0.98),
             DuplicatePair(1, 3, "near", 0.99), DuplicatePair(7, 8, "same-pixels", 1.0),
             DuplicatePair(7, 9, "similar", 0.9)]
    groups = group_pairs(pairs)
    assert [g.ids for g in groups] == [(1, 2, 3), (7, 8, 9)]
    assert [(g.tier, g.score) for g in groups] == [("near", 0.99), ("similar", 0.9)]
    # the spanning links: the identical pair and the stronger near pair
    assert groups[0].links == (DuplicatePair(1, 2, "identical", 1.0),
                               DuplicatePair(1, 3, "near", 0.99))
    assert group_pairs([DuplicatePair(4, 5, "identical", 1.0)])[0].tier == "identical"


def test_since_checks_only_the_new_items_and_gives_the_full_groups(
        photos: tuple[Path, dict[str, str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    coll = _fresh(photos[0], tmp_path)
    with pytest.raises(Exception, match="no earlier duplicate pass"):
        find_groups(coll, since="last")
    find_groups(coll)
    new = tmp_path / "new"
    new.mkdir()
    windows = _windows()
    _crop(windows["flower_m"], 0.06, 0.02, 0.02, 0.06).save(new / "flower_m_again.jpg")
    windows["china_m"].rotate(180).save(new / "upside_down.jpg")  # distinct from all
    from conftest import _one_thread, _run_quietly

    with _one_thread():
        _run_quietly(["-q", "add", str(tmp_path / "coll"), str(new)])
    coll = Collection.open(tmp_path / "coll")
    asked: list[int] = []
    scan = duppass.scan

    def counting(*args: object, **kwargs: object) -> object:
        queries = kwargs.get("queries")
        asked.append(len(coll) if queries is None else len(queries))  # type: ignore[arg-type]
        return scan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("lookalike.search.duplicates.scan", counting)
    since = find_groups(coll, since="last")
    full = find_groups(coll, resume=False)
    assert asked == [2, len(coll)]
    assert since == full
    assert ("flower_m.jpg", "flower_m_again.jpg", "flower_m_crop.jpg") in _by_source(coll, since)
    # a removed item leaves the recorded pairs too
    gone = next(it.id for it in coll.items(coll.ids) if it and it.source.endswith("_copy.jpg"))
    coll.remove([gone])
    coll = Collection.open(tmp_path / "coll")
    assert find_groups(coll, since="last") == find_groups(coll, resume=False)


def test_an_interrupted_pass_resumes_after_its_last_saved_block(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (40, 16, 16), dtype=np.uint8)
    from scipy import ndimage

    smooth = np.stack([ndimage.gaussian_filter(b.astype(float), 1.5) for b in base])
    thumbs = np.clip(np.rint(smooth * 3 - 250), 0, 255).astype(np.uint8).reshape(40, -1)
    thumbs[20:30] = thumbs[:10]  # ten exact copies
    codes = thumbs.astype(np.float32) + rng.normal(0, 1, thumbs.shape).astype(np.float32)
    settings = duppass.PassSettings(k=3, floor=0.9, items=40, fingerprint="test")
    whole = duppass.scan(codes, thumbs.__getitem__, (16, 16), settings, block=8)
    assert len(whole[0]) == 10
    checkpoint = duppass.Checkpoint(tmp_path, settings, every_s=0)
    seen: list[int] = []

    def stop_after_two(rows: int) -> None:
        seen.append(rows)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        duppass.scan(codes, thumbs.__getitem__, (16, 16), settings, block=8,
                     checkpoint=checkpoint, progress=stop_after_two)
    assert checkpoint.load() is not None and checkpoint.load()[0] == 16  # type: ignore[index]
    seen.clear()
    again = duppass.scan(codes, thumbs.__getitem__, (16, 16), settings, block=8,
                         checkpoint=checkpoint, progress=seen.append)
    assert seen == [16, 8, 8, 8]  # the 16 rows done, then the three blocks left
    assert all(np.array_equal(x, y) for x, y in zip(again, whole, strict=True))
    other = duppass.Checkpoint(tmp_path, duppass.PassSettings(3, 0.9, 41, "test"))
    assert other.load() is None  # other items: starts over


def test_cli_text_json_and_csv(capsys: pytest.CaptureFixture[str],
                               photos: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    coll = _fresh(photos[0], tmp_path)
    expected = _by_source(coll, find_groups(coll))
    code, out, err = run(capsys, ["duplicates", coll.path, "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["threshold"] == NEAR_THRESHOLD and result["items"] == len(coll)
    assert result["tiers"] == {"identical": 1, "same-pixels": 0, "near": 5, "similar": 0}
    assert {tuple(sorted(Path(i["source"]).name for i in g["items"])): g["tier"]
            for g in result["groups"]} == expected
    # every group's keeper by the default rule, with its reason (all the items are files)
    assert all(g["keeper"] in {i["id"] for i in g["items"]} and g["reason"] for g in result["groups"])
    code, out, err = run(capsys, ["duplicates", coll.path, "--csv", tmp_path / "dups.csv"])
    assert code == 0 and out.startswith("6 group(s) of duplicates"), err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "dups.csv").read_text())))
    assert sum(len(g) for g in expected) == len(rows)
    assert {r["tier"] for r in rows if Path(r["source"]).name == "flower_l_copy.jpg"} == {"identical"}
    code, out, err = run(capsys, ["duplicates", coll.path, "--csv", "-"])
    assert code == 0 and out == (tmp_path / "dups.csv").read_text()
    code, out, err = run(capsys, ["duplicates", coll.path, "--since", "last", "--json"])
    assert code == 0 and json.loads(out)["groups"] == result["groups"]


@pytest.mark.parametrize("argv", [["--since", "yesterday"], ["--since", "-3"],
                                  ["--threshold", "1.5"], ["--threshold", "nan"]])
def test_cli_refuses_bad_values_in_one_line(capsys: pytest.CaptureFixture[str],
                                            photos: tuple[Path, dict[str, str]],
                                            argv: list[str]) -> None:
    code, _, err = run(capsys, ["duplicates", photos[0], *argv])
    assert code == 2 and argv[0] in err and err.count("\n") == 1


def test_cli_since_last_without_an_earlier_pass(capsys: pytest.CaptureFixture[str],
                                                photos: tuple[Path, dict[str, str]],
                                                tmp_path: Path) -> None:
    coll = _fresh(photos[0], tmp_path)
    code, _, err = run(capsys, ["duplicates", coll.path, "--since", "last"])
    assert code == 2 and "no earlier duplicate pass" in err and err.count("\n") == 1


def test_blocks_do_not_change_the_groups(photos: tuple[Path, dict[str, str]],
                                         tmp_path: Path) -> None:
    coll = _fresh(photos[0], tmp_path)
    assert find_groups(coll, block=3, resume=False) == find_groups(coll, resume=False)


def _flat_scenes(images: Path) -> None:
    """Windows of two drawn scenes whose overlap holds nothing to align on, as on the
    benchmark's desert and ink wallpapers: flat colours split by a straight edge (with a sun
    that only the second window shows, at its right border), and a smooth glow. Each scene
    gives a window of 40% of its width at its left and one 24% further right; the first
    window of the edge scene also gets a copy cropped 8%, 5%, 10%, 3% (left, top, right,
    bottom) and saved at JPEG quality 60."""
    images.mkdir()
    width, height = 1600, 900
    edge = Image.new("RGB", (width, height), (114, 193, 180))
    draw = ImageDraw.Draw(edge)
    draw.polygon([(0, 0.6 * height), (width, -0.1 * height), (width, height), (0, height)],
                 fill=(2, 92, 104))
    draw.ellipse((0.63 * width, 0.059 * height, 0.85 * width, 1.1 * height), fill=(250, 186, 76))
    y, x = np.mgrid[0:height, 0:width]
    glow = 30 + 60 * np.exp(-1.2 * np.hypot(x / width - 1.1, 0.6 * (y / height - 1.2)))
    glow_im = Image.fromarray(np.stack([glow, glow + 8, glow + 25], -1).astype(np.uint8))
    box = (round(0.4 * width), round(0.8 * height))
    for name, scene in (("edge", edge), ("glow", glow_im)):
        for letter, left in (("a", 0), ("b", round(0.24 * width))):
            top = round(0.1 * height)
            scene.crop((left, top, left + box[0], top + box[1])).save(
                images / f"{name}_{letter}.jpg", quality=92)
    with Image.open(images / "edge_a.jpg") as im:
        _crop(im, 0.08, 0.05, 0.10, 0.03).save(images / "edge_a_crop.jpg", quality=60)


@pytest.fixture()
def flat_scenes(photos: tuple[Path, dict[str, str]], tmp_path: Path) -> Collection:
    _flat_scenes(tmp_path / "images")
    shutil.copytree(photos[0].parent / "model", tmp_path / "model")
    return Collection.open(_index(tmp_path, tmp_path / "images"))


def test_windows_matched_at_a_wrong_offset_are_not_near_by_their_frames(
        flat_scenes: Collection) -> None:
    """The second window of each scene matches the first at 32 px and in the fine check of
    the pixels (a zoom and shift of it lays the edge, or the glow, over the first's), but
    that zoom and shift put its frame so far past the first's that no crop of 10% a side
    explains it: not near. The first window's cropped, re-encoded copy is."""
    coll = flat_scenes
    by_name = {Path(it.source).name: it.id for it in coll.items(coll.ids) if it}
    names = ("edge_a.jpg", "edge_b.jpg", "glow_a.jpg", "glow_b.jpg")
    pictures = np.stack([coll.image(by_name[n]) for n in names])
    grey = thumbnails(pictures)
    assert (pair_scores(grey[[0, 2]], grey[[1, 3]], (32, 32)) >= NEAR_THRESHOLD).all()
    assert (block_residuals(pictures[[0, 2]], pictures[[1, 3]]) < MAX_BLOCK_RESIDUAL).all()
    assert _by_source(coll, find_groups(coll)) == {("edge_a.jpg", "edge_a_crop.jpg"): "near"}
    assert _by_source(coll, find_groups(coll, similar=True)) == {
        ("edge_a.jpg", "edge_a_crop.jpg", "edge_b.jpg"): "similar",
        ("glow_a.jpg", "glow_b.jpg"): "similar"}


def test_frames_of_files_gone_come_from_the_catalogue_and_without_it_the_pixels_decide(
        flat_scenes: Collection) -> None:
    from lookalike.search import files

    coll = flat_scenes
    by_name = {Path(it.source).name: it for it in coll.items(coll.ids) if it}
    for name in ("edge_b.jpg", "glow_b.jpg"):
        Path(by_name[name].source).unlink()
    # the catalogue recorded every file's size when it was read: the same decision
    assert _by_source(coll, find_groups(coll)) == {("edge_a.jpg", "edge_a_crop.jpg"): "near"}
    # no catalogue row and no file: no frame to judge, the pixels alone decide (as before the
    # frame check), and these windows are near
    files.drop_ids(files.db(coll), [by_name["edge_b.jpg"].id, by_name["glow_b.jpg"].id])
    assert _by_source(coll, find_groups(coll)) == {
        ("edge_a.jpg", "edge_a_crop.jpg", "edge_b.jpg"): "near", ("glow_a.jpg", "glow_b.jpg"): "near"}


def test_thumbnails_are_kept_per_segment_and_follow_changed_pictures(
        photos: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    from lookalike.search.dupthumbs import segment_thumbs

    coll = _fresh(photos[0], tmp_path)
    find_groups(coll)
    kept = tmp_path / "coll" / "duplicates" / "thumbs"
    assert sorted(p.name for p in kept.iterdir()) == [
        f"{s.name.replace('/', '_')}-32x32.npy" for s in coll.store.segments]
    # an item's picture changed (a flipped file): its row now lies in a new segment
    changed = int(coll.ids[2])
    coll.update([changed], [coll.store.picture(2)[:, ::-1]])
    coll = Collection.open(tmp_path / "coll")
    thumbs, _ = segment_thumbs(coll.store, tmp_path / "coll" / "duplicates")
    rows = np.arange(len(coll))
    assert np.array_equal(thumbs(rows[::-1]), thumbnails(coll.store.pictures())[::-1])
    assert len(list(kept.iterdir())) == len(coll.store.segments)
    # a segment that no longer exists (merged away) loses its file
    (kept / "gone-32x32.npy").write_bytes(b"")
    segment_thumbs(coll.store, tmp_path / "coll" / "duplicates")
    assert not (kept / "gone-32x32.npy").exists()


def test_a_crash_while_recording_a_pass_keeps_the_last_record_whole(
        photos: tuple[Path, dict[str, str]], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    coll = _fresh(photos[0], tmp_path)
    groups = find_groups(coll)
    record = tmp_path / "coll" / "duplicates" / "last-pairs.npz"
    before = record.read_bytes()
    savez = np.savez

    def torn(file: object, **arrays: np.ndarray) -> None:  # half a file, then the disk fails
        savez(file, a=arrays["a"])  # type: ignore[arg-type]
        raise OSError("disk gone")

    monkeypatch.setattr(np, "savez", torn)
    assert find_groups(coll, resume=False) == groups  # the pass stands, with a warning
    monkeypatch.setattr(np, "savez", savez)
    assert record.read_bytes() == before
    assert [p.name for p in record.parent.iterdir() if p.name.startswith(".")] == []
    assert find_groups(coll, since="last") == groups
