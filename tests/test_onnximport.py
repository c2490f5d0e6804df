"""Bring your own encoder (lookalike.models.onnximport, lookalike.models.onnxgraph): small networks
of ours exported to ONNX with a preprocessing of their own (BGR, other mean and std, a feature
map, channels-last, a fixed batch of 1, a crop, a squash) and imported give the codes of a
direct ONNX Runtime run of the same file on the same input, prepared here independently, and
of the PyTorch module itself; bad files are refused in one line; the CLI indexes, searches,
adds and describes with one, on real colour images."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.numpy import load_file
from torch import nn

import lookalike.api as la
from conftest import run_cli
from lookalike.config import InputSpec
from lookalike.data.datasets import Dataset, load_dataset
from lookalike.errors import ModelError
from lookalike.models.encoders import ModelEncoder
from lookalike.models.modelio import load_model
from lookalike.models.networks import fit_whitening
from lookalike.models.onnximport import OnnxInput, import_encoder
from lookalike.models.runtime import OnnxEncoder, open_encoder
from lookalike.search.collection import Collection

TOL = 1e-5


def _export(net: nn.Module, example: torch.Tensor, path: Path, dynamic: dict[int, str] | None = None,
            out_dynamic: dict[int, str] | None = None) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the TorchScript exporter's notes)
        torch.onnx.export(net.eval(), (example,), str(path), input_names=["pixels"],
                          output_names=["out"], opset_version=17, dynamo=False,
                          dynamic_axes={"pixels": dynamic or {}, "out": out_dynamic or {}})
    return path


class FeatureMap(nn.Module):
    """NCHW in, a ReLU feature map (n, 16, h, w) out."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                                  nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ChannelsLastVector(nn.Module):
    """NHWC in (as a TensorFlow model takes it), any size, a pooled vector (n, 10) out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.conv(x.permute(0, 3, 1, 2)))
        return self.fc(y.mean(dim=(2, 3)))


@dataclass(frozen=True)
class Case:
    """A network, its exported file, the input its user states, and the preprocessing
    written here again, by hand, from that statement."""

    net: nn.Module
    file: Path
    stated: OnnxInput
    size: tuple[int, int]  # what the pipeline hands the encoder (before the crop)
    crop: tuple[int, int] | None
    nhwc: bool
    gem: bool


def _prepare(case: Case, images: np.ndarray) -> np.ndarray:
    """uint8 (n, H, W, 3) RGB at ``case.size`` -> the float32 input the file takes."""
    x = images
    if case.crop is not None:
        top, left = (x.shape[1] - case.crop[0]) // 2, (x.shape[2] - case.crop[1]) // 2
        x = x[:, top:top + case.crop[0], left:left + case.crop[1]]
    x = x.astype(np.float32) / np.float32(255)
    if case.stated.channel_order == "bgr":
        x = x[..., ::-1]
    x = (x - np.float32(case.stated.mean)) / np.float32(case.stated.std)
    return np.ascontiguousarray(x if case.nhwc else x.transpose(0, 3, 1, 2), dtype=np.float32)


def _pool(out: np.ndarray, case: Case) -> np.ndarray:
    """The file's output -> L2-normalised pooled vectors."""
    if case.gem:
        out = (np.maximum(out, 1e-6) ** 3).mean(axis=(2, 3)) ** (1 / 3)
    out = out.reshape(len(out), -1).astype(np.float64)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _onnx_direct(case: Case, images: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(case.file), providers=["CPUExecutionProvider"])
    x = _prepare(case, images)
    outs = [sess.run(None, {"pixels": x[i:i + 1]})[0] for i in range(len(x))]  # batch 1 fits all
    return _pool(np.concatenate(outs), case)


def _torch_direct(case: Case, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = case.net(torch.from_numpy(_prepare(case, images))).numpy()
    return _pool(out, case)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    fmap = FeatureMap()
    vector = ChannelsLastVector()
    return {
        # static 40x48, dynamic batch; BGR, its own mean and std; a feature map to GeM-pool
        "bgr-feature-map": Case(
            fmap, _export(fmap, torch.zeros(2, 3, 40, 48), root / "fmap.onnx", {0: "n"}, {0: "n"}),
            OnnxInput(mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3), channel_order="bgr"),
            (40, 48), None, False, True),
        # dynamic size, a fixed batch of 1, channels-last; a pooled vector; 32 px taken from
        # the central 0.8 of the image
        "nhwc-vector-crop": Case(
            vector, _export(vector, torch.zeros(1, 32, 32, 3), root / "vector.onnx", {1: "h", 2: "w"}),
            OnnxInput(mean=(0.5, 0.5, 0.5), std=(0.5, 0.4, 0.3), size=(32, 32), crop_fraction=0.8),
            (40, 40), (32, 32), True, False),
    }


def _pictures(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Real-looking colour pictures: shapes of random colours on a gradient."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h, w = size
        base = np.linspace(rng.integers(0, 255, 3), rng.integers(0, 255, 3), w).astype(np.uint8)
        im = Image.fromarray(np.repeat(base[None], h, axis=0))
        draw = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
            box = (x0, y0, int(rng.integers(x0 + 3, w)), int(rng.integers(y0 + 3, h)))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        out.append(np.asarray(im))
    return np.stack(out)


@pytest.mark.parametrize("name", ["bgr-feature-map", "nhwc-vector-crop"])
def test_imported_codes_equal_a_direct_onnx_runtime_run_and_the_torch_module(
        name: str, cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases[name]
    model = import_encoder(case.file, tmp_path / "m", case.stated)
    assert model.config.input == InputSpec(3, *case.size)
    images = _pictures(7, case.size)
    reference = _onnx_direct(case, images)
    loaded = load_model(tmp_path / "m")
    by_torch_path = ModelEncoder(loaded, precision="fp32").encode(images)
    onnx = open_encoder(tmp_path / "m", loaded.fingerprint)
    assert isinstance(onnx, OnnxEncoder)
    by_runtime = onnx.encode(images)
    assert by_runtime.shape == (7, 16 if case.gem else 10)
    np.testing.assert_allclose(by_runtime, reference, atol=TOL)
    np.testing.assert_allclose(by_torch_path, reference, atol=TOL)
    np.testing.assert_allclose(by_runtime, _torch_direct(case, images), atol=TOL)
    # the stated preprocessing matters: RGB order (or no crop) gives other codes
    assert np.abs(reference - _pool(np.asarray(case.net(torch.from_numpy(_prepare(
        Case(case.net, case.file, OnnxInput(mean=case.stated.mean, std=case.stated.std,
                                            channel_order="rgb" if case.stated.channel_order == "bgr"
                                            else "bgr"),
             case.size, case.crop, case.nhwc, case.gem), images))).detach()), case)).max() > 1e-3


def test_whitening_is_fitted_on_the_images_given(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["bgr-feature-map"]
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, picture in enumerate(_pictures(30, (60, 80), seed=1)):
        Image.fromarray(picture).save(folder / f"{i:02d}.png")
    data = load_dataset(str(folder), "all", input_spec=InputSpec(3, 40, 48))
    model = import_encoder(case.file, tmp_path / "m", case.stated, data=data, latent_dim=8)
    assert model.module.code_dim == 8 and model.history["n_whitening"] == 30
    pixels = data.pixels(0, len(data), InputSpec(3, 40, 48))
    features = _onnx_direct(case, pixels)
    mean, matrix = fit_whitening(features, 8)
    z = (features - mean) @ matrix
    reference = z / np.linalg.norm(z, axis=1, keepdims=True)
    codes = ModelEncoder(load_model(tmp_path / "m"), precision="fp32").encode(pixels)
    np.testing.assert_allclose(codes, reference, atol=TOL)


def test_squash_resizes_without_cropping(cases: dict[str, Case], tmp_path: Path) -> None:
    case = cases["nhwc-vector-crop"]
    stated = OnnxInput(mean=case.stated.mean, std=case.stated.std, size=(32, 32), resize="squash")
    import_encoder(case.file, tmp_path / "m", stated)
    wide = _pictures(3, (30, 90), seed=2)  # 3:1 pictures, squashed to 1:1
    squashed = np.stack([np.asarray(Image.fromarray(p).resize((32, 32), Image.Resampling.BILINEAR))
                         for p in wide])
    square = Case(case.net, case.file, stated, (32, 32), None, True, False)
    loaded = load_model(tmp_path / "m")
    assert loaded.config.input.resize == "squash"
    codes = ModelEncoder(loaded, precision="fp32").encode(wide)
    np.testing.assert_allclose(codes, _onnx_direct(square, squashed), atol=TOL)
    cropped = np.stack([p[:, 30:60] for p in wide])  # what crop would have given: the middle
    assert np.abs(codes - _onnx_direct(square, np.stack(
        [np.asarray(Image.fromarray(p).resize((32, 32), Image.Resampling.BILINEAR)) for p in cropped]))
    ).max() > 1e-3


class Rank3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=2)


class Noisy(nn.Module):
    """log of a negative number: NaN for every image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(-1.0 - x.abs()).mean(dim=(2, 3))


class Tokens(nn.Module):
    """(n, tokens, d), as a vision transformer's last hidden state."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


def _bad(kind: str, d: Path) -> Path:
    makers: dict[str, Callable[[], Path]] = {
        "not-onnx": lambda: _write(d / "photo.onnx", _png_bytes()),
        "garbage": lambda: _write(d / "x.onnx", np.random.default_rng(0).bytes(3000)),
        "invalid-graph": lambda: _invalid(d / "invalid.onnx"),
        "rank-3-input": lambda: _export(Rank3(), torch.zeros(1, 3, 32), d / "r3.onnx"),
        "dynamic-size": lambda: _export(FeatureMap(), torch.zeros(1, 3, 32, 32), d / "dyn.onnx",
                                        {0: "n", 2: "h", 3: "w"}),
        "fixed-batch": lambda: _export(FeatureMap(), torch.zeros(2, 3, 32, 32), d / "b2.onnx"),
        "dynamic-channels": lambda: _export(Tokens(), torch.zeros(1, 3, 32, 32), d / "c.onnx",
                                            {0: "n", 1: "c"}),
        "nan": lambda: _export(Noisy(), torch.zeros(1, 3, 32, 32), d / "nan.onnx", {0: "n"}),
        "tokens": lambda: _export(Tokens(), torch.zeros(1, 3, 32, 32), d / "tok.onnx", {0: "n"}),
    }
    return makers[kind]()


def _invalid(path: Path) -> Path:
    """An ONNX protobuf whose one node reads a tensor nothing makes."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["out"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(_pictures(1, (20, 20))[0]).save(buf, format="PNG")
    return buf.getvalue()


BAD = {
    "not-onnx": "is not an ONNX model",
    "garbage": "is not a",
    "invalid-graph": "is not a valid ONNX model",
    "rank-3-input": "has rank 3, shape (1, 3, 32); expected rank 4",
    "dynamic-size": "input height and width are dynamic; give its size",
    "fixed-batch": "has a fixed batch of 2",
    "dynamic-channels": "no axis of 3 colour channels",
    "nan": "gives NaN or infinite outputs",
    "tokens": "has shape (2, 1024, 3); expected a vector (n, d) or a feature map",
}


@pytest.mark.parametrize("kind", list(BAD))
def test_a_file_it_cannot_use_is_refused_in_one_line(kind: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    file = _bad(kind, tmp_path)
    with pytest.raises(ModelError, match=re.escape(BAD[kind])):
        import_encoder(file, tmp_path / "m", OnnxInput(mean=(0.5,) * 3, std=(0.5,) * 3))
    code, out, err = run_cli(capsys, ["train", "--encoder-onnx", file, "--mean", "0.5,0.5,0.5",
                                      "--std", "0.5,0.5,0.5", "--out", tmp_path / "m"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("lookalike: error: ") and BAD[kind] in err
    assert not (tmp_path / "m").exists()


def test_a_stated_size_that_the_file_does_not_take_is_refused(cases: dict[str, Case],
                                                              tmp_path: Path) -> None:
    stated = OnnxInput(mean=(0.5,) * 3, std=(0.5,) * 3, size=(48, 40))
    with pytest.raises(ModelError, match="takes a height of 40, not the 48 stated"):
        import_encoder(cases["bgr-feature-map"].file, tmp_path / "m", stated)


def test_a_changed_file_is_refused_and_a_lost_encoder_written_again(cases: dict[str, Case],
                                                                    tmp_path: Path) -> None:
    case = cases["bgr-feature-map"]
    images = _pictures(12, case.size)
    whiten_on = Dataset("pictures", "all", images, None, tuple(f"p{i}" for i in range(len(images))))
    import_encoder(case.file, tmp_path / "m", case.stated, data=whiten_on)
    reference = ModelEncoder(load_model(tmp_path / "m")).encode(images)
    (tmp_path / "m" / "encoder.onnx").unlink()
    again = load_model(tmp_path / "m")
    assert (tmp_path / "m" / "encoder.onnx").is_file()
    np.testing.assert_array_equal(ModelEncoder(again).encode(images), reference)
    shutil.copyfile(cases["nhwc-vector-crop"].file, tmp_path / "m" / "imported.onnx")
    with pytest.raises(ModelError, match="not the file imported"):
        load_model(tmp_path / "m")


def test_cli_imports_indexes_searches_adds_and_describes(
        cases: dict[str, Case], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = cases["bgr-feature-map"]
    photos = tmp_path / "photos"
    photos.mkdir()
    pictures = _pictures(24, (72, 96), seed=3)
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(photos / f"p{i:02d}.{'jpg' if i % 2 else 'png'}", quality=95)
    code, out, err = run_cli(capsys, [
        "train", "--encoder-onnx", case.file, "--mean", "0.3,0.4,0.5", "--std", "0.2,0.25,0.3",
        "--channel-order", "bgr", "--dataset", photos, "--out", tmp_path / "m"])
    assert code == 0, err
    assert "whitened on 24 images" in out and "code 16-d" in out
    code, out, err = run_cli(capsys, ["index", "--model", tmp_path / "m", "--dataset", photos,
                                      "--out", tmp_path / "c"])
    assert code == 0, err
    coll = Collection.open(tmp_path / "c")
    assert len(coll) == 24 and coll.reranks
    # each stored code is the direct ONNX Runtime run on the picture as the model takes it
    model = load_model(tmp_path / "m")
    spec = model.config.input
    data = load_dataset(str(photos), "all", input_spec=spec)
    features = _onnx_direct(case, data.pixels(0, len(data), spec))
    tensors = load_file(tmp_path / "m" / "model.safetensors")
    z = (features - tensors["whiten_mean"]) @ tensors["whiten"]
    expected = z / np.linalg.norm(z, axis=1, keepdims=True)
    for row, source in enumerate(data.sources):
        item = coll.find(source=source)
        assert item is not None
        np.testing.assert_allclose(coll.vector(item), expected[row], atol=TOL)
    coll.close()
    # a search by a copy of a picture (twice the size, re-encoded) finds it first
    copy = tmp_path / "copy.jpg"
    Image.fromarray(pictures[5]).resize((192, 144)).save(copy, quality=90)
    code, out, err = run_cli(capsys, ["search", tmp_path / "c", copy, "-k", "3", "--json"])
    assert code == 0, err
    assert Path(json.loads(out)["queries"][0]["results"][0]["source"]).name == "p05.jpg"
    # add a new picture, then find it
    new, copy = tmp_path / "new.png", tmp_path / "new-copy.jpg"
    picture = _pictures(1, (72, 96), seed=9)[0]
    Image.fromarray(picture).save(new)
    Image.fromarray(picture).resize((192, 144)).save(copy, quality=90)
    code, out, err = run_cli(capsys, ["add", tmp_path / "c", new])
    assert code == 0, err
    index = la.open(tmp_path / "c")  # (the API)
    assert len(index) == 25
    assert Path(index.search(str(copy), k=1)[0][0].source).name == "new.png"
    index.close()
    # the service: an upload is encoded by the imported encoder too
    from fastapi.testclient import TestClient

    from lookalike.app.service import create_app

    with TestClient(create_app(tmp_path / "c")) as client:
        r = client.post("/api/search", files={"file": ("q.jpg", copy.read_bytes(), "image/jpeg")},
                        data={"k": "3"})
        assert r.status_code == 200 and Path(r.json()["results"][0]["source"]).name == "new.png"
    # info shows the imported file's SHA-256
    code, out, err = run_cli(capsys, ["info", tmp_path / "c", "--json"])
    assert code == 0, err
    encoder = json.loads(out)["encoder"]
    assert encoder["sha256"] == hashlib.sha256(case.file.read_bytes()).hexdigest()
    assert encoder["source"] == case.file.name
    # what an imported encoder cannot do, said in one line
    code, out, err = run_cli(capsys, ["denoise", tmp_path / "m", "--dataset", photos,
                                      "--out", tmp_path / "d.png"])
    assert code == 2 and err.count("\n") == 1 and "no decoder" in err


@pytest.mark.parametrize("argv, message", [
    (["--mean", "0.5,0.5,0.5"], "--mean is for --encoder-onnx"),
    (["--encoder-onnx", "F", "--epochs", "3"], "--epochs does not apply to --encoder-onnx"),
    (["--encoder-onnx", "F", "--mid-blocks", "14"], "--mid-blocks does not apply to --encoder-onnx"),
    (["--encoder-onnx", "F", "--mean", "0.5,0.5,0.5"], "needs --mean and --std"),
    (["--encoder-onnx", "F", "--mean", "120,117,104", "--std", "0.5,0.5,0.5"], "divide 0..255 values"),
])
def test_cli_options_of_the_import(argv: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str], cases: dict[str, Case]) -> None:
    argv = [str(cases["bgr-feature-map"].file) if a == "F" else a for a in argv]
    # (a folder that is not there: training, were it to start, would stop at once)
    code, out, err = run_cli(capsys, ["train", *argv, "--dataset", tmp_path / "none", "--out",
                                      tmp_path / "m"])
    assert code == 2 and err.count("\n") == 1 and message in err


def test_our_efficientnet_lite0_exported_without_its_scaling_gives_the_backbone_model_codes(
        tmp_path: Path) -> None:
    """A real network: lookalike's own EfficientNet-Lite0 (ImageNet weights), exported without
    its input scaling, which is then stated instead; imported, unwhitened, it gives the
    L2-normalised GeM-pooled features of lookalike's backbone model, in PyTorch."""
    from lookalike.config import ModelConfig
    from lookalike.models.backbones import MEAN, STD, pretrained
    from lookalike.models.networks import BackboneModel

    net = pretrained("efficientnet-lite0")
    model = BackboneModel(ModelConfig(arch="efficientnet-lite0", input=InputSpec(3, 64, 64)))
    model.backbone.load_state_dict(net.state_dict())
    model.eval()
    net.mean.zero_()  # the exported graph takes normalised pixels
    net.std.fill_(1.0)

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.features(x)

    file = _export(Features(), torch.zeros(1, 3, 64, 64), tmp_path / "lite0.onnx", {0: "n"}, {0: "n"})
    imported = import_encoder(file, tmp_path / "m", OnnxInput(mean=MEAN, std=STD,
                                                             output="feature-map"))
    assert imported.module.code_dim == 1280
    images = _pictures(5, (64, 64), seed=4)
    codes = ModelEncoder(load_model(tmp_path / "m"), precision="fp32").encode(images)
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        reference = torch.nn.functional.normalize(model.features(x), dim=1).numpy()
    np.testing.assert_allclose(codes, reference, atol=TOL)


def test_the_python_example_in_docs_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "encoders.md").read_text()
    example = text.split("From Python:\n\n```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    _export(FeatureMap(), torch.zeros(1, 3, 224, 224), tmp_path / "tower.onnx", {0: "n", 2: "h", 3: "w"})
    (tmp_path / "photos").mkdir()
    for i, picture in enumerate(_pictures(6, (120, 160), seed=5)):
        Image.fromarray(picture).save(tmp_path / "photos" / f"{i}.png")
    scope: dict[str, object] = {}
    exec(compile(example, "docs/encoders.md", "exec"), scope)  # noqa: S102 - our own docs
    index = scope["index"]
    assert isinstance(index, la.Index) and len(index) == 6
    assert scope["model"].history["n_whitening"] == 6  # type: ignore[attr-defined]
    index.close()


def _handmade(path: Path, kind: str) -> Path:
    """Two encoders written node by node: a float16 one (weights, average pool, NCHW), and a
    channels-last one whose output is a channels-last feature map."""
    import onnx
    from onnx import TensorProto, helper

    if kind == "float16":
        x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT16, ["n", 3, 8, 8])
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT16, ["n", 3])
        nodes = [helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),  # (float16 weights)
                 helper.make_node("GlobalAveragePool", ["scaled"], ["pooled"]),
                 helper.make_node("Flatten", ["pooled"], ["out"], axis=1)]
        weights = [onnx.numpy_helper.from_array(np.array([1.0, 2.0, 0.5], np.float16).reshape(1, 3, 1, 1),
                                                "scale")]
    else:
        x = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 8, 8, 3])
        y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8, 8, 3])
        nodes = [helper.make_node("Relu", ["pixels"], ["out"])]
        weights = []
    graph = helper.make_graph(nodes, kind, [x], [y], initializer=weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("kind", ["float16", "nhwc-feature-map"])
def test_float16_and_channels_last_maps_give_the_direct_run(kind: str, tmp_path: Path) -> None:
    file = _handmade(tmp_path / f"{kind}.onnx", kind)
    stated = OnnxInput(mean=(0.4, 0.5, 0.6), std=(0.3, 0.2, 0.1))
    import_encoder(file, tmp_path / "m", stated)
    images = _pictures(4, (8, 8), seed=6)
    case = Case(nn.Identity(), file, stated, (8, 8), None, kind != "float16", False)
    x = _prepare(case, images)
    sess = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"pixels": x.astype(np.float16) if kind == "float16" else x})[0]
    codes = ModelEncoder(load_model(tmp_path / "m"), precision="fp32").encode(images)
    if kind == "float16":
        # ONNX Runtime's CPU pools float16 in float32 and, in the composed graph, drops casts
        # around it: values the direct run rounds to float16 stay float32 there. So: equal
        # within float16's precision (its epsilon is 1e-3), not to 1e-5
        np.testing.assert_allclose(codes, _pool(out.astype(np.float32), case), atol=2e-3)
    else:  # a channels-last map: GeM over its two spatial axes
        gem = Case(nn.Identity(), file, stated, (8, 8), None, True, True)
        np.testing.assert_allclose(codes, _pool(out.transpose(0, 3, 1, 2), gem), atol=TOL)


class DarkIsNaN(nn.Module):
    """NaN for an image with no pixel at full brightness (the import's test images have some)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x.amax(dim=(1, 2, 3)) - 0.999)[:, None].repeat(1, 2)


def test_nan_codes_for_an_image_stop_the_encoding_in_one_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    file = _export(DarkIsNaN(), torch.zeros(1, 3, 16, 16), tmp_path / "dark.onnx", {0: "n"}, {0: "n"})
    import_encoder(file, tmp_path / "m", OnnxInput(mean=(0.0,) * 3, std=(1.0,) * 3))
    dark = np.full((2, 16, 16, 3), 100, dtype=np.uint8)
    model = load_model(tmp_path / "m")
    onnx = open_encoder(tmp_path / "m", model.fingerprint)
    assert onnx is not None
    with pytest.raises(ModelError, match="gave NaN codes for 2 image"):
        onnx.encode(dark)
    with pytest.raises(ModelError, match="gave NaN codes for 2 image"):
        ModelEncoder(model).encode(dark)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(dark[0]).save(photos / "dark.png")
    code, out, err = run_cli(capsys, ["index", "--model", tmp_path / "m", "--dataset", photos,
                                      "--out", tmp_path / "c"])
    assert code == 2 and err.count("\n") == 1 and "gave NaN codes" in err
