"""Encoding without PyTorch (lookalike.models.runtime): the ONNX encoder a model directory carries
gives PyTorch's float32 codes; a collection uses it, so a one-image `add` never imports
PyTorch; a missing, damaged or foreign file falls back to PyTorch, which writes it again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import Trained
from lookalike.data.datasets import load_dataset
from lookalike.models.encoders import ModelEncoder, encode_dataset
from lookalike.models.modelio import load_model
from lookalike.models.runtime import ONNX, OnnxEncoder, open_encoder
from lookalike.search.collection import Collection


@pytest.mark.parametrize("which", ["recipe", "preset"])
def test_onnx_codes_equal_pytorch_float32(which: str, trained: Trained, exact_collection: Path) -> None:
    path = trained.model if which == "recipe" else exact_collection / "model"
    model = load_model(path)
    onnx = open_encoder(path, model.fingerprint)
    assert isinstance(onnx, OnnxEncoder) and onnx.spec == model.config.input
    data = load_dataset("digits", "queries")
    reference = encode_dataset(ModelEncoder(model, precision="fp32"), data)
    codes = encode_dataset(onnx, data)
    assert codes.shape == reference.shape == (len(data), model.module.code_dim)
    np.testing.assert_allclose(codes, reference, atol=1e-5)
    assert open_encoder(path, "0" * 64) is None  # another model's fingerprint


def _add_in_a_process(coll: Path, picture: Path, env: dict[str, str] | None = None) -> dict:
    code = ("import json, sys; from lookalike.app.cli import main\n"
            "rc = main(['-q', 'add', sys.argv[1], sys.argv[2]])\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code, str(coll), str(picture)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_adding_one_image_does_not_import_pytorch(tmp_path: Path, trained: Trained) -> None:
    coll = tmp_path / "c"
    shutil.copytree(trained.collection, coll)
    image = load_dataset("digits", "queries").images[3]
    Image.fromarray(image[:, :, 0]).save(tmp_path / "new.png")
    assert _add_in_a_process(coll, tmp_path / "new.png") == {"rc": 0, "torch": False}
    c = Collection.open(coll)
    added = c.find(source=str(tmp_path / "new.png"))
    assert added is not None
    reference = ModelEncoder(load_model(coll / "model"), precision="fp32").encode(image[None])
    np.testing.assert_allclose(c.vector(added), reference[0], atol=1e-5)
    # with LOOKALIKE_ENCODER=torch, PyTorch encodes
    Image.fromarray(255 - image[:, :, 0]).save(tmp_path / "other.png")
    assert _add_in_a_process(coll, tmp_path / "other.png", {"LOOKALIKE_ENCODER": "torch"}) == {
        "rc": 0, "torch": True}


def test_syncing_a_folder_does_not_import_pytorch(tmp_path: Path, trained: Trained) -> None:
    """A stream of files (``sync``; ``add``: above) is encoded by ONNX Runtime alone: what it
    is encoded within (:mod:`lookalike.models.atonce`) does not import PyTorch either."""
    coll, folder = tmp_path / "c", tmp_path / "photos"
    shutil.copytree(trained.collection, coll)
    folder.mkdir()
    images = load_dataset("digits", "queries").images[3:5]
    for i, image in enumerate(images):
        Image.fromarray(image[:, :, 0]).save(folder / f"new{i}.png")
    code = ("import json, sys; from lookalike.app.cli import main\n"
            "rc = main(['-q', 'sync', sys.argv[1], sys.argv[2]])\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code, str(coll), str(folder)], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rc": 0, "torch": False}
    c = Collection.open(coll)
    added = c.find(source=str(folder / "new1.png"))
    assert added is not None
    reference = ModelEncoder(load_model(coll / "model"), precision="fp32").encode(images[1:])
    np.testing.assert_allclose(c.vector(added), reference[0], atol=1e-5)


def test_the_python_api_adds_and_searches_without_pytorch(tmp_path: Path, trained: Trained) -> None:
    """The front door (``lookalike.api``) opens an ONNX collection, adds a file to it and
    searches it without importing PyTorch; ``la.load_model`` still gives the model loader."""
    coll = tmp_path / "c"
    shutil.copytree(trained.collection, coll)
    image = 255 - load_dataset("digits", "queries").images[5]  # unlike any stored item
    Image.fromarray(image[:, :, 0]).save(tmp_path / "new.png")
    code = ("import json, sys; import lookalike as la\n"
            "c = la.open(sys.argv[1])\n"
            "n = len(c.collection)\n"
            "ids = [int(i) for i in c.add([sys.argv[2]])]\n"
            "hits = c.search(sys.argv[2], k=3)[0]\n"
            "before = 'torch' in sys.modules\n"
            "loader = la.load_model.__module__\n"
            "print(json.dumps({'ids': ids, 'grew': len(c.collection) - n, 'hits': [h.id for h in hits],\n"
            "                  'torch': before, 'loader': loader, 'then': 'torch' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code, str(coll), str(tmp_path / "new.png")], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # one item added; the search by the same file (its own item left out) gives 3 others
    assert len(got["ids"]) == 1 and got["grew"] == 1
    assert len(got["hits"]) == 3 and got["ids"][0] not in got["hits"]
    assert got["torch"] is False
    assert got["loader"] == "lookalike.models.modelio" and got["then"] is True


def test_a_reranked_search_by_image_imports_neither_pytorch_nor_scikit_learn(
        trained: Trained) -> None:
    """What a search needs loads in a fraction of a second: PyTorch (2 s) and scikit-learn
    (1.5 s, the whitening's fit, done when a commit refits it) are not among it."""
    code = ("import json, sys; import numpy as np\n"
            "from lookalike.search.collection import Collection\n"
            "c = Collection.open(sys.argv[1])\n"
            "d, i = c.search_images(255 - np.asarray(c.images[:3]), 5, rerank=True)\n"
            "print(json.dumps({'found': int((i >= 0).sum()), 'reranks': c.reranks,\n"
            "                  'torch': 'torch' in sys.modules, 'sklearn': 'sklearn' in sys.modules}))")
    out = subprocess.run([sys.executable, "-c", code, str(trained.collection)], check=True,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "found": 15, "reranks": True, "torch": False, "sklearn": False}


@pytest.mark.parametrize("damage", ["missing", "truncated", "foreign"])
def test_an_unusable_onnx_file_falls_back_to_pytorch_and_is_written_again(
        tmp_path: Path, trained: Trained, damage: str) -> None:
    coll = tmp_path / "c"
    shutil.copytree(trained.collection, coll)
    onnx = coll / "model" / ONNX
    if damage == "missing":
        onnx.unlink()
    elif damage == "truncated":
        onnx.write_bytes(onnx.read_bytes()[:1000])
    else:  # made from other weights
        shutil.copy(trained.other_model / ONNX, onnx)
    images = load_dataset("digits", "queries").images[:4]
    c = Collection.open(coll)
    assert isinstance(c.encoder, ModelEncoder)  # fell back
    before = c.search_images(images, 5)
    again = Collection.open(coll)  # the file was written again: ONNX Runtime this time
    assert isinstance(again.encoder, OnnxEncoder)
    after = again.search_images(images, 5)  # (PyTorch may have encoded in bfloat16)
    assert (before[1][:, 0] == after[1][:, 0]).all()
    assert np.mean([len(np.intersect1d(a, b)) for a, b in zip(before[1], after[1], strict=True)]) >= 4
