"""``lookalike train --encoder-onnx FILE``: its options (added to the ``train`` parser) and
what it does (:func:`lookalike.models.onnximport.import_encoder`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RESIZE_RULES
from ..errors import LookalikeError
from ..fsutil import read_json

if TYPE_CHECKING:
    from ..config import InputSpec
    from ..data.datasets import Dataset

log = logging.getLogger("lookalike")


class _Unset(str):
    """The default of ``--dataset``, told apart from the same name given."""

    __slots__ = ()


def _triple(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.485,0.456,0.406, got {text!r}")
    return values  # type: ignore[return-value]


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0.25, 1], got {text!r}") from None
    if not 0.25 <= value <= 1:  # (also refuses nan)
        raise argparse.ArgumentTypeError(f"expected a number in [0.25, 1], got {text!r}")
    return value


def add_onnx_args(p: argparse.ArgumentParser) -> None:
    """The options of an imported encoder, in their own group of ``train``'s help."""
    default = p.get_default("dataset")
    p.set_defaults(dataset=_Unset(default))
    g = p.add_argument_group(
        "bring your own encoder (an ONNX file; see docs/encoders.md)",
        "--encoder-onnx wraps a local ONNX image encoder into the model directory --out, "
        "stating its input and output; the codes' whitening is fitted on --dataset (the "
        "images you will index) when given. --size gives its input size when the file leaves "
        "it dynamic, --latent-dim the whitened code size (default: all its outputs).")
    g.add_argument("--encoder-onnx", metavar="FILE.onnx", help="the ONNX image encoder to import")
    g.add_argument("--mean", type=_triple, metavar="M1,M2,M3",
                   help="required: its per-channel mean on pixels scaled to [0, 1], in its channel "
                        "order (ImageNet models: 0.485,0.456,0.406)")
    g.add_argument("--std", type=_triple, metavar="S1,S2,S3",
                   help="required: its per-channel standard deviation on [0, 1] pixels, in its "
                        "channel order (ImageNet models: 0.229,0.224,0.225)")
    g.add_argument("--channel-order", choices=("rgb", "bgr"), default="rgb",
                   help="the colour order it takes (default rgb)")
    g.add_argument("--resize", choices=RESIZE_RULES, default="crop",
                   help="how an image of another shape reaches its size: crop (default: shorter "
                        "side scaled to the size, the longer centre-cropped) or squash (each side "
                        "scaled, aspect ratio changed)")
    g.add_argument("--crop-fraction", type=_fraction, default=1.0, metavar="F",
                   help="resize to size/F, then take the central size (0.875: 256 then 224, the "
                        "usual ImageNet evaluation; default 1: no extra crop)")
    g.add_argument("--encoder-output", choices=("auto", "vector", "feature-map"), default="auto",
                   help="what its output is: a pooled vector (n, d), or a feature map (n, C, h, w) "
                        "to GeM-pool (auto, the default: by the output's rank)")
    g.add_argument("--output-name", metavar="NAME", help="which of its outputs (default: the first)")


#: ``train`` options that have no meaning for an imported encoder, with their defaults
_NOT_FOR_ONNX = {"arch": "auto", "backbone": None, "adapt": None, "objective": None, "epochs": None,
                 "time_budget": None, "channels": None, "width": None, "lr": None, "loss": None,
                 "budget": None, "temperature": None, "augment": None, "jitter": None,
                 "recon_weight": None, "noise_factor": None, "pooling": None, "test_views": None,
                 "mid_blocks": None}
_ONNX_ONLY = {"mean": None, "std": None, "channel_order": "rgb", "resize": "crop", "crop_fraction": 1.0,
              "encoder_output": "auto", "output_name": None}


def cmd_import(args: argparse.Namespace) -> int:
    """``train --encoder-onnx``: import, fit the whitening on ``--dataset`` when given."""
    from ..api import _data
    from ..models.onnximport import OnnxInput, import_encoder

    given = [k for k, v in _NOT_FOR_ONNX.items() if getattr(args, k) != v]
    if given:
        raise LookalikeError(f"--{given[0].replace('_', '-')} does not apply to --encoder-onnx (an "
                             "imported encoder is not trained or adapted)")
    if args.mean is None or args.std is None:
        raise LookalikeError("--encoder-onnx needs --mean and --std: the normalisation the encoder "
                             "was trained with (e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225)")
    stated = OnnxInput(mean=args.mean, std=args.std, size=args.size, channel_order=args.channel_order,
                       resize=args.resize, crop_fraction=args.crop_fraction, output=args.encoder_output,
                       output_name=args.output_name)
    data = None
    if not isinstance(args.dataset, _Unset):  # read at the encoder's size, once the file is checked
        def data(spec: InputSpec) -> Dataset:
            ds = _data(args.dataset, args.split, spec, progress=args.progress, data_dir=args.data_dir,
                       download=args.download)
            if ds.skipped:
                log.warning("skipped %d unreadable file(s) or folder(s)", len(ds.skipped))
            return ds
    model = import_encoder(args.encoder_onnx, args.out, stated, data=data, latent_dim=args.latent_dim,
                           seed=args.seed or 0, rerank=args.rerank, progress=args.progress)
    whitened = (f"whitened on {model.history['n_whitening']} images" if data is not None
                else "not whitened: give --dataset FOLDER, the images you will index, to fit it")
    spec = model.config.input
    print(f"model written to {args.out} (ONNX encoder {spec.height}x{spec.width}, "
          f"code {model.module.code_dim}-d, {whitened}; fingerprint {model.fingerprint[:12]})")
    return 0


def check_not_onnx(args: argparse.Namespace) -> None:
    """Refuse the import's options without ``--encoder-onnx``."""
    given = [k for k, v in _ONNX_ONLY.items() if getattr(args, k, v) != v]
    if given:
        raise LookalikeError(f"--{given[0].replace('_', '-')} is for --encoder-onnx")


def imported_file(model_dir: Path) -> dict[str, Any] | None:
    """``{"file", "source", "sha256"}`` of the ONNX file a model directory imported, read from
    its ``config.json`` only (``info`` imports neither PyTorch nor ONNX); ``None`` for a model
    of lookalike's own."""
    try:
        meta = read_json(model_dir / "config.json")
    except (OSError, ValueError):
        return None
    details = meta.get("onnx") if isinstance(meta, dict) else None
    if not isinstance(details, dict):
        return None
    return {k: details.get(k) for k in ("file", "source", "sha256")}
