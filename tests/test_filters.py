"""Metadata filters (lookalike/search/filters.py): real JPEGs with EXIF written by Pillow,
and filtered searches compared with a brute-force search over the passing items."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import Trained, run_cli
from lookalike.data.datasets import Dataset
from lookalike.errors import LookalikeError
from lookalike.models.modelio import load_model
from lookalike.search import files, filters, queries
from lookalike.search.collection import Collection
from lookalike.search.filters import Filter
from photolib import OLD_MTIME, make_library


def test_a_filter_is_checked_on_construction() -> None:
    assert not Filter() and Filter(camera="canon")
    assert Filter(paths="a/*").paths == ("a/*",)
    for bad in ({"after": "2024-13"}, {"after": "March"}, {"before": "2024-02-30"},
                {"after": "2024", "before": "2023"}, {"camera": " "}, {"paths": [""]},
                {"has_gps": "yes"}, {"paths": ["["]}, {"paths": ["2019/[ab"]}, {"paths": ["a[]"]}):
        with pytest.raises(LookalikeError):
            Filter(**bad)  # type: ignore[arg-type]
    assert filters.parse_date("2024-03").isoformat() == "2024-03-01T00:00:00"
    assert filters.parse_date("2024-03-05T10:20").isoformat() == "2024-03-05T10:20:00"


def test_glob_patterns() -> None:
    assert filters.glob_pattern("trips/2024/*") == ["*/trips/2024/*"]
    assert filters.glob_pattern("/abs/x/*.jpg") == ["/abs/x/*.jpg"]
    assert filters.glob_pattern("trips") == ["*/trips", "*/trips/*"]
    assert filters.glob_pattern("./here", cwd="/home/me") == ["/home/me/here", "/home/me/here/*"]
    for fine in ("[[]2019]*", "a[]]b", "a[^]]b", "[ab]*"):
        filters.check_glob(fine)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Path:
    return make_library(tmp_path_factory.mktemp("library"), trained.model)


def _search(capsys: pytest.CaptureFixture[str], coll: Path, *args: object) -> list[str]:
    code, out, err = run_cli(capsys, ["search", coll, *args, "--json", "-k", "30"])
    assert code == 0, err
    return [r["source"] for r in json.loads(out)["queries"][0]["results"]]


def test_the_cli_filters_by_path_date_camera_and_gps(capsys: pytest.CaptureFixture[str],
                                                     library: Path) -> None:
    coll, q = library / "coll", library / "photos" / "home" / "h0.jpg"
    allof = _search(capsys, coll, q)
    assert len(allof) == 17  # every item but the query's own
    trips = _search(capsys, coll, q, "--in", "trips/2024/*")
    assert len(trips) == 6 and all("/trips/2024/" in s for s in trips)
    assert sorted(_search(capsys, coll, q, "--in", "old")) == sorted(s for s in allof if "/old/" in s)
    march = _search(capsys, coll, q, "--after", "2024-03", "--before", "2024-05")
    assert sorted(os.path.basename(s) for s in march) == ["t2.jpg", "t3.jpg"]
    by_mtime = _search(capsys, coll, q, "--after", "2019-06", "--before", "2019-07")
    assert len(by_mtime) == 6 and all("/old/" in s for s in by_mtime)
    apple = _search(capsys, coll, q, "--camera", "iphone")
    assert len(apple) == 5 and all("/home/" in s for s in apple)  # h0 is the query
    assert sorted(_search(capsys, coll, q, "--has-gps")) == sorted(trips)
    assert len(_search(capsys, coll, q, "--no-gps", "--in", "home/*", "--in", "old/*")) == 11
    assert _search(capsys, coll, q, "--camera", "nikon") == []
    # without re-ranking, the filtered items come in the order of the unfiltered ranking
    assert (_search(capsys, coll, q, "--in", "trips/2024/*", "--exact")
            == [s for s in _search(capsys, coll, q, "--exact") if "/trips/2024/" in s])
    code, _, err = run_cli(capsys, ["search", coll, q, "--after", "2024-99"])
    assert code == 2 and "bad date '2024-99'" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, ["search", coll, q, "--label", "nope"])
    assert code == 2 and "no label named 'nope'" in err
    code, _, err = run_cli(capsys, ["search", coll, q, "--in", "trips/["])
    assert code == 2 and "bad path pattern 'trips/['" in err and len(err.strip().splitlines()) == 1
    assert _search(capsys, coll, q, "--in", "trips/[2]0[0-9][4]/*") == trips


def test_the_label_filter(capsys: pytest.CaptureFixture[str], library: Path) -> None:
    coll = library / "coll"
    names = Collection.open(coll).label_names
    assert names is not None and "old" in names
    got = _search(capsys, coll, library / "photos" / "home" / "h0.jpg", "--label", "old")
    assert len(got) == 6 and all("/old/" in s for s in got)


# ---------------------------------------------------------------------------- against brute force
@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, trained: Trained) -> Path:
    """4,000 items with random codes, an inverted file scanning 1 of 32 lists (approximate
    unfiltered), and a catalogue row per item: folder f{i % 100}, taken day i % 400."""
    root = tmp_path_factory.mktemp("big")
    model = load_model(trained.model)
    n = 4000
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((n, model.module.code_dim)).astype(np.float32)
    spec = model.config.input
    images = rng.integers(0, 255, (n, spec.height, spec.width, spec.channels), dtype=np.uint8)
    ds = Dataset("big", "all", images, (np.arange(n) % 7).astype(np.int64),
                 tuple(f"/lib/f{i % 100}/p{i}.jpg" for i in range(n)))
    coll = Collection.create(root / "coll", model, ds, factory="IVF32,Flat", search_params="nprobe=1",
                             codes=codes)
    start = np.datetime64("2020-01-01T00:00:00")
    rows = [files.FileRow(f"/lib/f{i % 100}/p{i}.jpg", i, f"/lib/f{i % 100}", 1, 0, i, None, 8, 8,
                          str(start + np.timedelta64(i % 400, "D")), "Canon" if i % 3 else "Nikon",
                          "X", None, None) for i in range(n)]
    files.put(files.db(coll), rows)
    return root / "coll"


def _brute(coll: Collection, q: np.ndarray, passing: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    codes = coll.store.codes_at(coll.store.rows(passing))
    d = ((q[:, None, :].astype(np.float64) - codes[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), passing[order]


@pytest.mark.parametrize(("where", "expect"), [
    (Filter(paths=("f7/*",)), lambda i: i % 100 == 7),                 # 1%
    (Filter(paths=("f7/*", "f8/*"), camera="nikon"), lambda i: i % 100 in (7, 8) and i % 3 == 0),
    (Filter(after="2020-03-01", before="2020-03-03"), lambda i: i % 400 in (60, 61)),
    (Filter(labels=("3",)), lambda i: i % 7 == 3),
    (Filter(paths=("/lib/f1*",), labels=("2", "5")), lambda i: (i % 100 == 1 or 10 <= i % 100 < 20)
     and i % 7 in (2, 5)),
])
def test_a_filtered_search_equals_brute_force_over_the_passing_items(big: Path, where: Filter,
                                                                     expect: object) -> None:
    coll = Collection.open(big)
    want = np.array([i for i in range(4000) if expect(i)], np.int64)  # type: ignore[operator]
    assert np.array_equal(filters.passing_ids(coll, where), want)
    q = np.random.default_rng(1).standard_normal((5, coll.dim)).astype(np.float32)
    k = 10
    dist, ids = queries.search(coll, q, k, where=where, rerank=False)
    bd, bi = _brute(coll, q, want, k)
    n = min(k, len(want))
    assert np.array_equal(ids[:, :n], bi[:, :n])
    np.testing.assert_allclose(dist[:, :n], bd[:, :n], rtol=1e-4, atol=1e-3)
    assert (ids[:, n:] == -1).all() and np.isinf(dist[:, n:]).all()
    # re-ranked: only passing items, still k of them
    _, rr = queries.search(coll, q, k, where=where, rerank=True)
    assert np.isin(rr[:, :n], want).all() and (rr[:, :n] >= 0).all()


def test_unfiltered_inverted_file_is_approximate_so_the_filter_must_not_post_filter(big: Path) -> None:
    coll = Collection.open(big)
    where = Filter(paths=("f7/*",))
    want = filters.passing_ids(coll, where)
    q = np.random.default_rng(2).standard_normal((20, coll.dim)).astype(np.float32)
    _, approx = coll.search(q, 200, rerank=False)
    post = [[i for i in row if i in set(want.tolist())][:10] for row in approx]
    _, exact = _brute(coll, q, want, 10)
    assert any(len(p) < 10 or p != e.tolist() for p, e in zip(post, exact, strict=True))
    _, ids = queries.search(coll, q, 10, where=where, rerank=False)
    assert np.array_equal(ids, exact)


def test_changes_are_seen_by_the_next_filtered_search(big: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(big, tmp_path / "c")
    coll = Collection.open(tmp_path / "c")
    where = Filter(paths=("f7/*",))
    q = coll.vector(7)[None]
    _, before = queries.search(coll, q, 5, where=where, rerank=False)
    assert before[0, 0] == 7
    coll.remove([7])
    assert 7 not in filters.passing_ids(coll, where)
    _, after = queries.search(coll, q, 5, where=where, rerank=False)
    assert 7 not in after and after[0, 0] == before[0, 1] and (after % 100 == 7).all()
    files.put(files.db(coll), [files.FileRow("/lib/f7/new.jpg", 8, "/lib/f7", 1, 0, 1, None, 8, 8,
                                             None, None, None, None, None)])
    assert 8 in filters.passing_ids(coll, where)
    _, again = queries.search(coll, coll.vector(8)[None], 1, where=where, rerank=False)
    assert again[0, 0] == 8


def test_examples_and_counter_examples_combine_by_rocchio() -> None:
    a, b, c = np.eye(3, dtype=np.float32) * 2
    np.testing.assert_allclose(queries.combine(np.stack([a, b])), np.array([1, 1, 0]) * 2 / np.sqrt(2),
                               rtol=1e-6)
    got = queries.combine(np.stack([a, b]), np.stack([c]))
    want = np.array([1, 1, -1.0])  # mean (1, 1, 0) minus 0.5 * (0, 0, 2)
    np.testing.assert_allclose(got, want / np.linalg.norm(want) * 2, rtol=1e-6)
    with pytest.raises(LookalikeError):
        queries.combine(np.empty((0, 3)))


def test_together_and_not_in_the_cli(capsys: pytest.CaptureFixture[str], big: Path) -> None:
    coll = Collection.open(big)
    like, unlike = [11, 12], [13]
    query = queries.combine(np.stack([coll.vector(i) for i in like]),
                            np.stack([coll.vector(i) for i in unlike]))
    all_ids = coll.ids[~np.isin(coll.ids, like + unlike)]
    _, want = _brute(coll, query[None], np.sort(all_ids), 8)
    code, out, err = run_cli(capsys, ["search", big, "id:11", "id:12", "--not", "id:13", "--json",
                                      "-k", "8", "--exact", "--in", "/lib/*"])
    assert code == 0, err
    answer = json.loads(out)["queries"]
    assert len(answer) == 1 and answer[0]["query"] == "id:11 + id:12 - id:13"
    assert [r["id"] for r in answer[0]["results"]] == want[0].tolist()
    # every item comes back but the examples and the counter-example
    code, out, err = run_cli(capsys, ["search", big, "id:11", "id:12", "--not", "id:13", "--json",
                                      "-k", "5000", "--exact", "--in", "/lib/*"])
    assert code == 0, err
    got = [r["id"] for r in json.loads(out)["queries"][0]["results"]]
    assert sorted(got) == sorted(set(range(4000)) - {11, 12, 13})


def test_crop_regions() -> None:
    im = np.arange(40 * 60 * 3, dtype=np.uint32).reshape(40, 60, 3).astype(np.uint8)
    assert queries.Crop.parse("0.5,0,0.5,1").apply(im).shape == (40, 30, 3)
    assert np.array_equal(queries.Crop(0.5, 0.25, 0.5, 0.5).apply(im), im[10:30, 30:60])
    for bad in ("0,0,0,1", "0.5,0,0.6,1", "1,2,3", "a,b,c,d", "-0.1,0,0.5,0.5"):
        with pytest.raises(LookalikeError):
            queries.Crop.parse(bad)


def test_the_python_api_takes_filters_examples_and_crops(library: Path, big: Path,
                                                         tmp_path: Path) -> None:
    from PIL import Image

    import lookalike as la

    idx = la.open(library / "coll")
    q = library / "photos" / "home" / "h0.jpg"
    hits = idx.search(q, k=30, where=la.Filter(paths=["trips/*"], camera="canon"))[0]
    assert len(hits) == 6 and all("/trips/2024/" in h.source for h in hits)
    # a region: the left half of a picture made of t0 beside noise finds what t0 finds
    t0 = np.asarray(Image.open(library / "photos" / "trips" / "2024" / "t0.jpg"))
    noise = np.random.default_rng(5).integers(0, 255, t0.shape, dtype=np.uint8)
    both = np.concatenate([t0, noise], axis=1)
    by_crop = [h.id for h in idx.search(both, k=5, exact=True, crop=(0, 0, 0.5, 1))[0]]
    by_t0 = [h.id for h in idx.search(t0, k=5, exact=True)[0]]
    assert by_crop == by_t0 != [h.id for h in idx.search(both, k=5, exact=True)[0]]
    with pytest.raises(LookalikeError, match="bad crop"):
        idx.search(both, crop="0,0,2,1")
    # several stored items as examples, one counter-example
    big_idx = la.open(big)
    coll = big_idx.collection
    query = queries.combine(np.stack([coll.vector(3), coll.vector(4)]), coll.vector(5)[None])
    _, near = coll.search(query[None], 9, rerank=False)  # the index's (approximate) nearest
    got = big_idx.search([3, 4], k=6, exact=True, unlike=5)
    assert len(got) == 1 and [h.id for h in got[0]] == [i for i in near[0] if i not in (3, 4, 5)][:6]
    _, want = _brute(coll, query[None], np.setdiff1d(coll.ids, [3, 4, 5]), 6)  # filtered: exact
    got = big_idx.search([3, 4], k=6, exact=True, unlike=5, where=la.Filter(paths="/lib/*"))
    assert [h.id for h in got[0]] == want[0].tolist()


def test_info_shows_the_dates_and_folders(capsys: pytest.CaptureFixture[str], library: Path) -> None:
    code, out, err = run_cli(capsys, ["info", library / "coll", "--json"])
    assert code == 0, err
    info = json.loads(out)
    photos = library / "photos"
    assert info["files"] == 18
    assert info["folders"] == {str(photos / "home"): 6, str(photos / "old"): 6,
                               str(photos / "trips" / "2024"): 6}
    first = datetime.fromtimestamp(OLD_MTIME).isoformat()
    assert info["dates"] == [first, "2024-06-10T12:00:00"]
    code, out, _ = run_cli(capsys, ["info", library / "coll"])
    assert f"dates: {first} to 2024-06-10T12:00:00" in out and f"6  {photos / 'old'}" in out


def test_a_collection_without_catalogue_filters_paths_by_source(capsys: pytest.CaptureFixture[str],
                                                                 library: Path, tmp_path: Path) -> None:
    import shutil

    from lookalike.search import metadata

    copy = shutil.copytree(library / "coll", tmp_path / "coll")
    metadata.write(copy / metadata.FILE, "DELETE FROM files", [()])
    q = library / "photos" / "home" / "h0.jpg"
    trips = _search(capsys, copy, q, "--in", "trips/2024/*")
    assert len(trips) == 6 and all("/trips/2024/" in s for s in trips)
    assert _search(capsys, copy, q, "--after", "2000") == []  # (no dates known)


def test_paths_are_matched_per_item_in_a_partly_catalogued_collection(
        capsys: pytest.CaptureFixture[str], library: Path, tmp_path: Path) -> None:
    """An older collection where one later ``add`` catalogued one file: the items with no
    row are matched on their sources, the catalogued one on its row (here moved)."""
    import shutil

    from lookalike.search import metadata

    copy = shutil.copytree(library / "coll", tmp_path / "coll")
    db = copy / metadata.FILE
    metadata.write(db, "DELETE FROM files WHERE path NOT LIKE ?", [("%/trips/2024/t0.jpg",)])
    metadata.write(db, "UPDATE files SET path = '/elsewhere/moved/t0.jpg' WHERE path LIKE ?",
                   [("%/t0.jpg",)])
    assert metadata.query(db, "SELECT count(*) FROM files")[0][0] == 1
    q = library / "photos" / "home" / "h0.jpg"
    assert len(_search(capsys, copy, q, "--in", "old")) == 6
    assert len(_search(capsys, copy, q, "--in", "home/*")) == 5  # (h0 is the query)
    trips = _search(capsys, copy, q, "--in", "trips/2024/*")  # t0's row says it moved
    assert sorted(os.path.basename(s) for s in trips) == [f"t{n}.jpg" for n in range(1, 6)]
    assert [os.path.basename(s) for s in _search(capsys, copy, q, "--in", "moved")] == ["t0.jpg"]
    assert len(_search(capsys, copy, q, "--camera", "canon")) == 1  # (only a row tells a camera)


def test_a_region_of_an_uncatalogued_item_is_cut_from_its_source(
        capsys: pytest.CaptureFixture[str], library: Path, tmp_path: Path) -> None:
    """The CLI and the API take a stored item's region from its original file
    (files.original): with no catalogue row, its source, as the service does."""
    import shutil

    import lookalike as la
    from lookalike.search import metadata

    copy = shutil.copytree(library / "coll", tmp_path / "coll")
    source = library / "photos" / "home" / "h1.jpg"
    item = Collection.open(copy).find(source=str(source))
    assert item is not None
    metadata.write(copy / metadata.FILE, "DELETE FROM files WHERE id = ?", [(item,)])

    def cli(query: object) -> dict[int, float]:
        code, out, err = run_cli(capsys, ["search", copy, query, "--crop", "0.5,0,0.5,1", "--exact",
                                          "--json", "-k", "30"])
        assert code == 0, err
        return {r["id"]: r["distance"] for r in json.loads(out)["queries"][0]["results"]}

    by_item, by_file = cli(f"id:{item}"), cli(source)
    assert item not in by_item and by_item == {i: d for i, d in by_file.items() if i != item}
    idx = la.open(copy)
    by_item_api = {h.id: h.distance for h in idx.search(item, k=30, exact=True, crop=(0.5, 0, 0.5, 1))[0]}
    by_file_api = {h.id: h.distance for h in idx.search(source, k=30, exact=True, crop=(0.5, 0, 0.5, 1))[0]}
    assert by_item_api == {i: d for i, d in by_file_api.items() if i != item}


def test_the_scan_merges_its_chunks(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coll = Collection.open(big)
    where = Filter(labels=("3",))
    want = filters.passing_ids(coll, where)
    q = np.random.default_rng(4).standard_normal((3, coll.dim)).astype(np.float32)
    monkeypatch.setattr(filters, "SCAN_CHUNK", 50)  # 572 passing items: 12 chunks
    monkeypatch.setattr(filters, "CACHED_CODES", 0)  # read from the segments, chunk by chunk
    filters._cache.clear()
    dist, ids = queries.search(coll, q, 10, where=where, rerank=False)
    bd, bi = _brute(coll, q, want, 10)
    assert np.array_equal(ids, bi)
    np.testing.assert_allclose(dist, bd, rtol=1e-4, atol=1e-3)
    filters._cache.clear()


def test_the_cache_keeps_to_its_bounds(big: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    coll = Collection.open(big)
    filters._cache.clear()
    monkeypatch.setattr(filters, "CACHED_BYTES", 3 * 40 * coll.dim * 4 + 3 * 40 * 8)
    for n in range(6):  # 40 items each
        filters.passing(coll, Filter(paths=(f"f{n}/*",)))
    assert len(filters._cache) == 3  # the three newest
    assert [k[3].paths for k in filters._cache] == [("f3/*",), ("f4/*",), ("f5/*",)]
    monkeypatch.setattr(filters, "CACHED_FILTERS", 2)
    filters.passing(coll, Filter(paths=("f6/*",)))
    assert len(filters._cache) == 2
    filters._cache.clear()
