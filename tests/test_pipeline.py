"""The streaming pipeline (``lookalike.data.pipeline``) that ``index`` and ``add`` run on a
folder of photos: each file read once (decoded, digested and catalogued from one read), the
same codes, previews and skips as the path that read the files twice, the same catalogue facts
as reading them apart, a damaged file skipped and reported, an interrupted run resumed without
decoding the chunks done, and decoding ahead of the encoder bounded."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import exif_of, run_cli
from lookalike import api
from lookalike.config import InputSpec, ModelConfig, default_train_config
from lookalike.data import images as images_module
from lookalike.data import pipeline as pipeline_module
from lookalike.data.datasets import load_dataset
from lookalike.data.filefacts import digest, read_facts
from lookalike.data.images import IMAGE_EXTENSIONS
from lookalike.data.pipeline import Decoded, FolderFiles, decode_file, read_file, stream
from lookalike.models.adaptation import train_backbone
from lookalike.models.encoders import ModelEncoder
from lookalike.models.modelio import LoadedModel, save_model
from lookalike.search import files as catalogue
from lookalike.search.collection import Collection

SPEC = InputSpec(3, 128, 128)  # over the 96-px previews: the case that used to read twice


def _photo(path: Path, seed: int, size: tuple[int, int] = (640, 480)) -> None:
    """A JPEG with smooth colour areas and grain, large enough for a reduced-scale decode."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    grain = rng.normal(0, 5, smooth.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).save(path, quality=90)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten JPEGs in two labelled subfolders (one portrait, one PNG with alpha) and, in the
    middle of the file order, a truncated JPEG."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(10):
        _photo(root / ("sea" if i % 2 else "wood") / f"p{i:02d}.jpg", i,
               (480, 640) if i == 3 else (640, 480))
    rgba = np.zeros((300, 400, 4), dtype=np.uint8)
    rgba[..., 0], rgba[50:250, 100:300, 3] = 200, 255
    Image.fromarray(rgba).save(root / "sea" / "p10.png")
    whole = (root / "wood" / "p04.jpg").read_bytes()
    (root / "wood" / "p05-damaged.jpg").write_bytes(whole[:len(whole) // 3])
    return root


@pytest.fixture(scope="module")
def model(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    data = load_dataset(photos, "all", input_spec=SPEC)
    config = ModelConfig(arch="efficientnet-lite0", input=SPEC, latent_dim=8)
    result = train_backbone(data, config, default_train_config(config.arch))
    return save_model(tmp_path_factory.mktemp("model") / "m", result.model, result.train, result.history)


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each image file is opened: every read of a file's bytes (ours, Pillow's
    ``Image.open`` of a path, the digest's, the catalogue's header reads) goes through
    ``open``."""
    counts: Counter[str] = Counter()
    real = builtins.open

    def counting(file, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(file, (str, os.PathLike)) and Path(file).suffix.lower() in IMAGE_EXTENSIONS:
            counts[str(file)] += 1
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting)
    return counts


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images are decoded (every decode goes through ``decode_image`` or
    ``decode_pictures``)."""
    calls: list[int] = []
    real = images_module.decode_image

    real_pictures = images_module.decode_pictures

    def counting(source, **kwargs):  # noqa: ANN001, ANN003, ANN202
        calls.append(1)
        return real(source, **kwargs)

    def counting_pictures(source, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(1)
        return real_pictures(source, *args, **kwargs)

    monkeypatch.setattr(images_module, "decode_image", counting)
    monkeypatch.setattr(images_module, "decode_pictures", counting_pictures)
    monkeypatch.setattr(pipeline_module, "decode_pictures", counting_pictures)
    return calls


def _files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def test_index_and_add_read_each_file_once(photos: Path, model: LoadedModel, tmp_path: Path,
                                           opens: Counter[str], decodes: list[int],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``index`` (the whole flow: codes, previews and the catalogue), the API's ``add`` and
    ``lookalike add`` open each file once and decode it once."""
    coll = api.index(model, photos, tmp_path / "c", chunk=4).collection
    assert len(coll) == 11  # the damaged file left out
    assert opens == Counter(_files(photos))  # every file once, the damaged one too
    assert len(decodes) == 12
    rows = catalogue.rows(catalogue.db(coll))
    assert sorted(r.path for r in rows) == [f for f in _files(photos) if "damaged" not in f]
    extra = tmp_path / "extra"
    for i in range(3):
        _photo(extra / f"x{i}.jpg", 100 + i)
    opens.clear()
    decodes.clear()
    ids = api.Index(coll).add([extra])
    assert ids.tolist() == [11, 12, 13]
    assert opens == Counter(_files(extra)) and len(decodes) == 3
    assert {r.path: r.id for r in catalogue.rows(catalogue.db(coll)) if "extra" in r.path} == dict(
        zip(_files(extra), [11, 12, 13], strict=True))
    coll.close()
    more = tmp_path / "more"
    for i in range(2):
        _photo(more / f"m{i}.jpg", 200 + i)
    opens.clear()
    code, out, err = run_cli(capsys, ["add", tmp_path / "c", more])
    assert code == 0 and "added 2 image(s)" in out, (out, err)
    assert opens == Counter(_files(more))
    coll = Collection.open(tmp_path / "c")
    assert sorted(r.path for r in catalogue.rows(catalogue.db(coll)) if "more" in r.path) == _files(more)


def _exif_photo(path: Path, seed: int, size: tuple[int, int], fmt: str = "JPEG", *,
                taken: str | None = None, camera: tuple[str, str] | None = None,
                gps: tuple[float, float] | None = None) -> Path:
    """A photo with the EXIF asked for (a PNG's in an eXIf chunk before its pixels); its GPS
    30' north and 15' east of the whole degrees given."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    im = coarse.resize(size, Image.Resampling.BICUBIC)
    exif = exif_of(taken, camera, gps, gps_minutes=(30.0, 15.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, fmt, exif=exif, **({"quality": 90} if fmt == "JPEG" else {}))
    return path


def test_catalogue_facts_read_with_the_pixels_equal_those_read_apart(model: LoadedModel,
                                                                     tmp_path: Path) -> None:
    """What the one read records of each file (stat, size from the header, EXIF date, camera,
    GPS, format, digest) is what reading its header and digest apart gives, for JPEGs decoded
    at a reduced scale (so a header read after ``draft`` would show the reduced size) and
    PNGs; the pixels are those of the decode alone."""
    folder = tmp_path / "photos"
    made = [
        _exif_photo(folder / "a.jpg", 0, (1600, 1200), taken="2024:03:15 10:20:30",
                    camera=("Canon", "EOS 80D"), gps=(48.0, -2.0)),
        _exif_photo(folder / "b.jpg", 1, (900, 1400), taken="2021:07:01 08:00:00",
                    camera=("Apple", "iPhone 12")),
        _exif_photo(folder / "c.jpg", 2, (640, 480)),
        _exif_photo(folder / "d.png", 3, (500, 400), "PNG", taken="2019:05:01 10:11:12",
                    camera=("Nikon", "D750")),
        _exif_photo(folder / "e.png", 4, (300, 200), "PNG"),
    ]
    for p in made:
        got = read_file(p, SPEC)
        assert got.facts is not None and got.facts.digest == digest(p)
        np.testing.assert_array_equal(got.input, decode_file(p, SPEC).input)
    coll = api.index(model, folder, tmp_path / "c").collection
    rows = {r.path: r for r in catalogue.rows(catalogue.db(coll))}
    by_source = coll.sources()
    expected = {str(p): catalogue.FileRow.made(str(p), by_source[str(p)][0], read_facts(p), digest(p))
                for p in made}
    assert rows == expected
    a = rows[str(made[0])]
    assert (a.width, a.height, a.taken, a.make, a.model) == (1600, 1200, "2024-03-15T10:20:30",
                                                             "Canon", "EOS 80D")
    assert a.lat == pytest.approx(48.5) and a.lon == pytest.approx(-2.25)
    assert rows[str(made[3])].taken == "2019-05-01T10:11:12" and rows[str(made[4])].taken is None


def test_streamed_index_equals_the_index_that_read_files_twice(photos: Path, model: LoadedModel,
                                                               tmp_path: Path) -> None:
    old = Collection.create(tmp_path / "old", model, load_dataset(photos, "all", input_spec=SPEC))
    new = Collection.create(tmp_path / "new", model, FolderFiles.of(photos), chunk=4)
    assert len(new) == len(old) == 11
    np.testing.assert_allclose(np.asarray(new.embeddings), np.asarray(old.embeddings), rtol=0, atol=1e-6)
    assert np.array_equal(new.images, old.images) and new.images.shape == (11, 96, 96, 3)
    assert new.items(new.ids) == old.items(old.ids)  # sources, labels and content hashes
    for key in ("skipped", "label_names", "count"):
        assert new.manifest[key] == old.manifest[key]
    # and the streamed codes are the model's codes of each file at its input
    direct = ModelEncoder(model).encode(np.stack([decode_file(p, SPEC)[0] for p in
                                                  [Path(it.source) for it in new.items(new.ids)]]))
    np.testing.assert_allclose(np.asarray(new.embeddings), direct, rtol=0, atol=1e-6)


def test_a_damaged_file_in_the_middle_is_skipped_and_reported(
        photos: Path, model: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        code, out, err = run_cli(capsys, ["index", "--model", model.path, "--dataset", photos,
                                          "--out", tmp_path / "c", "--checkpoint-every", "3"])
    assert code == 0, err
    report = tmp_path / "c" / "skipped.jsonl"
    assert "11 images" in out and f"skipped 1 file(s) (see {report})" in out
    warned = [r.getMessage() for r in caplog.records]
    assert [m for m in warned if "p05-damaged.jpg: image data is damaged" in m]
    assert "skipped 1 unreadable file(s) or folder(s)" in warned
    lines = [json.loads(line) for line in report.read_text().splitlines()]
    assert [Path(r["path"]).name for r in lines] == ["p05-damaged.jpg"]
    coll = Collection.open(tmp_path / "c")
    kept = [f for f in _files(photos) if "damaged" not in f]
    assert [it.source for it in coll.items(coll.ids)] == kept  # ids in file order, none missing
    assert coll.ids.tolist() == list(range(11))


def test_an_interrupted_index_resumes_without_decoding_the_chunks_done(
        photos: Path, model: LoadedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        opens: Counter[str], caplog: pytest.LogCaptureFixture) -> None:
    reference = Collection.create(tmp_path / "ref", model, FolderFiles.of(photos), chunk=4)
    real = ModelEncoder.encode
    calls: list[int] = []

    def failing(self, images, progress=False):  # noqa: ANN001, ANN202
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt  # in the third chunk of four files
        return real(self, images, progress)

    monkeypatch.setattr(ModelEncoder, "encode", failing)
    with pytest.raises(KeyboardInterrupt):
        Collection.create(tmp_path / "c", model, FolderFiles.of(photos), chunk=4)
    assert not (tmp_path / "c").exists()
    assert len(list((tmp_path / ".c.partial" / "chunks").glob("files.*.npz"))) == 2
    monkeypatch.setattr(ModelEncoder, "encode", real)
    opens.clear()
    with caplog.at_level("WARNING"):
        resumed = Collection.create(tmp_path / "c", model, FolderFiles.of(photos), chunk=4)
    assert "resuming: 8 of 12 files already encoded" in caplog.text
    assert opens == Counter(_files(photos)[8:])  # only the last chunk's files, once each
    assert resumed.items(resumed.ids) == reference.items(reference.ids)
    assert resumed.manifest["skipped"] == reference.manifest["skipped"]  # kept in the checkpoint
    np.testing.assert_allclose(np.asarray(resumed.embeddings), np.asarray(reference.embeddings),
                               rtol=0, atol=1e-6)
    assert np.array_equal(resumed.images, reference.images)
    assert not (tmp_path / ".c.partial").exists()
    # a file changed since is another job: nothing is reused
    monkeypatch.setattr(ModelEncoder, "encode", failing)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        Collection.create(tmp_path / "d", model, FolderFiles.of(photos), chunk=4)
    _photo(photos / "sea" / "p01.jpg", 99)
    try:
        monkeypatch.setattr(ModelEncoder, "encode", real)
        opens.clear()
        Collection.create(tmp_path / "d", model, FolderFiles.of(photos), chunk=4)
        assert opens == Counter(_files(photos))
    finally:
        _photo(photos / "sea" / "p01.jpg", 1)


def test_decoding_runs_ahead_of_the_encoder_by_a_bounded_number_of_batches(photos: Path) -> None:
    paths = _files(photos) * 4  # 48 files
    started: list[str] = []
    more = threading.Condition()

    def recording(path: Path, spec: InputSpec) -> Decoded:
        with more:
            started.append(str(path))
            more.notify_all()
        return decode_file(path, spec)

    seen = 0
    for k, batch in enumerate(stream(paths, SPEC, batch=5, ahead=2, threads=3, decode=recording)):
        # the consumer holds batch k (a slow encoder): at most batches k+1 and k+2 are
        # decoded or decoding; give the threads time to start more if they were allowed to
        bound = min(len(paths), 5 * (k + 3))
        with more:
            more.wait_for(lambda bound=bound: len(started) > bound, timeout=0.3)
        assert len(started) <= bound, (k, len(started))
        assert batch.start == 5 * k and batch.stop == min(5 * k + 5, len(paths))
        assert [str(p) for p in batch.paths] == [paths[i] for i in batch.rows]
        assert len(batch.paths) + len(batch.skipped) == batch.stop - batch.start
        assert batch.inputs.shape[1:] == SPEC.shape and batch.previews.shape[1:] == (96, 96, 3)
        seen += batch.stop - batch.start
    assert seen == len(paths) and sorted(started) == sorted(paths)


def test_a_file_too_large_to_hold_is_decoded_from_its_path_with_the_same_facts(
        photos: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above ``WHOLE_READ`` bytes a file is not held in memory: decoded from its path and
    digested in chunks, the same pixels and facts as the one read."""
    paths = [p for p in map(Path, _files(photos)) if "damaged" not in p.name]
    held = [read_file(p, SPEC) for p in paths]
    monkeypatch.setattr(pipeline_module, "WHOLE_READ", 0)
    for p, one in zip(paths, held, strict=True):
        streamed = read_file(p, SPEC)
        np.testing.assert_array_equal(streamed.input, one.input)
        np.testing.assert_array_equal(streamed.preview, one.preview)
        assert streamed.facts == one.facts and one.facts is not None and one.facts.digest == digest(p)
    with pytest.raises(pipeline_module.ImageError, match="p05-damaged.jpg: image data is damaged"):
        read_file(photos / "wood" / "p05-damaged.jpg", SPEC)


@pytest.fixture
def batches(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Each batch a model encodes, as ``(the thread that ran it, PyTorch's threads there)``;
    every model's batches made of 2 images, so that a few files give several batches."""
    import torch

    from lookalike.models import encoders

    seen: list[tuple[str, int]] = []
    real = encoders.ModelEncoder._encode_batch

    def recording(self, module, images):  # noqa: ANN001, ANN202
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return real(self, module, images)

    monkeypatch.setattr(encoders, "batch_for", lambda spec, cap=256: 2)
    monkeypatch.setattr(encoders.ModelEncoder, "_encode_batch", recording)
    return seen


def test_index_add_and_sync_encode_batches_at_once_on_one_thread_each(
        photos: Path, model: LoadedModel, tmp_path: Path, batches: list[tuple[str, int]],
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """While files stream, ``index``, ``add`` (the CLI's and the API's) and ``sync`` (these when
    PyTorch encodes) encode a batch in each of the cores' threads, PyTorch on one thread in
    each (given back after), and ``index`` gives the same codes, bit for bit, as one batch at a time on every
    core."""
    import torch

    from lookalike.models import encoders
    from lookalike.search.sync import sync

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cores < 2:
        pytest.skip("needs 2 cores to encode 2 batches at once")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setattr(encoders, "BATCHES_AT_ONCE", 0)
        one = Collection.create(tmp_path / "one", model, FolderFiles.of(photos), chunk=4)
        assert {b for b in batches} == {("MainThread", 2)}  # one batch at a time, as before
        batches.clear()
        monkeypatch.setattr(encoders, "BATCHES_AT_ONCE", 2)
        library = tmp_path / "library"
        shutil.copytree(photos, library)
        coll = Collection.create(tmp_path / "at-once", model, FolderFiles.of(library), chunk=4)
        assert torch.get_num_threads() == 2  # given back
        assert np.array_equal(np.asarray(coll.embeddings), np.asarray(one.embeddings))
        assert len(batches) == 6 and {n for _, n in batches} == {1}
        names = {name for name, _ in batches}
        assert len(names) == 2 and all(n.startswith("lookalike-encode") for n in names), names
        coll.close()
        monkeypatch.setenv("LOOKALIKE_ENCODER", "torch")  # (else ONNX Runtime encodes, its own threads)
        for step in ("cli add", "add", "sync"):
            batches.clear()
            new = library / "new" if step == "sync" else tmp_path / step.replace(" ", "-")
            for i in range(3):
                _photo(new / f"{step[-3:]}{i}.jpg", 300 + i + 10 * len(step))
            if step == "cli add":
                assert run_cli(capsys, ["add", tmp_path / "at-once", new])[0] == 0
                coll = Collection.open(tmp_path / "at-once")
                assert len(coll) == len(one) + 3
            elif step == "add":
                assert len(api.Index(coll).add([new])) == 3
            else:
                assert sync(coll, [library]).added == 3
            assert len(batches) == 2 and all(name.startswith("lookalike-encode") and n == 1
                                             for name, n in batches), (step, batches)
            assert torch.get_num_threads() == 2
        coll.close()
        one.close()
    finally:
        torch.set_num_threads(before)


def test_at_most_two_batches_at_once_sharing_pytorchs_threads(
        model: LoadedModel, batches: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """On many cores, still 2 batches in flight (each holds its activations), PyTorch's threads
    shared out between them; ``BATCHES_AT_ONCE = 0``: one batch at a time on all of them."""
    import torch

    from lookalike.models import encoders

    monkeypatch.setattr(encoders, "_cores", lambda: 8)  # what an 8-core server gets
    encoder = ModelEncoder(model, precision="fp32")
    images = np.random.default_rng(0).integers(0, 255, (8, 40, 40, 3), dtype=np.uint8)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        one = encoder.encode(images)
        batches.clear()
        with encoder.batches_at_once() as n:
            codes = encoder.encode(images)
        assert n == 2 and torch.get_num_threads() == 4
        assert len(batches) == 4 and {k for _, k in batches} == {2}, batches
        assert len({name for name, _ in batches}) == 2
        np.testing.assert_array_equal(codes, one)
        batches.clear()
        monkeypatch.setattr(encoders, "BATCHES_AT_ONCE", 0)
        with encoder.batches_at_once() as n:
            encoder.encode(images)
        assert n == 1 and set(batches) == {("MainThread", 4)}
    finally:
        torch.set_num_threads(before)


def test_only_the_pools_threads_keep_fewer_pytorch_threads(
        model: LoadedModel, batches: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that first uses PyTorch while a stream is encoded (a service's request during
    ``serve --watch``'s sync) or after it gets the process's threads, not the workers' one,
    which the workers keep for every batch they encode."""
    import torch

    from lookalike.models import encoders

    monkeypatch.setattr(encoders, "_cores", lambda: 2)
    encoder = ModelEncoder(model, precision="fp32")
    images = np.random.default_rng(0).integers(0, 255, (8, 40, 40, 3), dtype=np.uint8)
    seen: dict[str, int] = {}

    def first_use(key: str) -> None:
        t = threading.Thread(target=lambda: seen.setdefault(key, torch.get_num_threads()))
        t.start()
        t.join()

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with encoder.batches_at_once() as n:
            first_use("inside")
            encoder.encode(images)
            first_use("inside, after a stream")
            encoder.encode(images)
        first_use("after")
        assert n == 2 and torch.get_num_threads() == 2
        assert seen == {"inside": 2, "inside, after a stream": 2, "after": 2}
        assert len(batches) == 8 and {k for _, k in batches} == {1}, batches
        assert len({name for name, _ in batches}) == 2
    finally:
        torch.set_num_threads(before)


def test_only_the_thread_that_entered_batches_at_once_uses_its_threads(
        model: LoadedModel, batches: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads share one encoder (a stream being synced, a search or an add of arrays in
    another): the other encodes one batch at a time in its own thread, its own
    ``batches_at_once`` yields 1, and it never meets the pool shut down as the stream leaves."""
    import torch

    from lookalike.models import encoders

    monkeypatch.setattr(encoders, "_cores", lambda: 2)
    encoder = ModelEncoder(model, precision="fp32")
    images = np.random.default_rng(0).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8)
    reference = encoder.encode(images)
    inside, done, stop = threading.Event(), threading.Event(), threading.Event()
    streams = [0]

    def stream() -> None:  # enters and leaves, as sync does per call
        with encoder.batches_at_once():
            inside.set()
            done.wait()
            encoder.encode(images)
        while not stop.is_set():
            with encoder.batches_at_once():
                encoder.encode(images)
            streams[0] += 1

    errors: list[BaseException] = []
    other: dict[str, object] = {}

    def another() -> None:
        inside.wait()
        codes = encoder.encode(images)
        with encoder.batches_at_once() as n:
            other["at once"] = n
            encoder.encode(images)
        other["threads"] = {name for name, _ in batches}
        other["equal"] = np.array_equal(codes, reference)
        done.set()
        try:
            while streams[0] < 20:
                np.testing.assert_array_equal(encoder.encode(images), reference)
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)
        finally:
            stop.set()

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batches.clear()
        threads = [threading.Thread(target=stream, name="streamer"),
                   threading.Thread(target=another, name="another")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert other == {"at once": 1, "threads": {"another"}, "equal": True}
        assert not errors, errors
        assert streams[0] >= 20
        assert {name for name, _ in batches} >= {"another", "lookalike-encode_0", "lookalike-encode_1"}
    finally:
        stop.set()
        torch.set_num_threads(before)
