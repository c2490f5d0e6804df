"""Indexing a folder of photos against the bare model: does ``index`` run at the model's speed?

    python benchmarks/pipeline.py                     # 400 photos of 0.3 MP, 100 of 10 MP
    python benchmarks/pipeline.py --small 200 --large 50 --rounds 1 --no-write

In one run, on the same model (the default colour model: EfficientNet-Lite0 at 192 px, its
ImageNet weights and whitening, not adapted: adaptation does not change the encoding cost),
the same batch and precision as the index path (:class:`lookalike.models.encoders.ModelEncoder`):

* **model**: the bare forward pass, ``ModelEncoder.encode`` of model-sized ``uint8`` images
  already in memory, images/s;
* **index**: :meth:`Collection.create` of the folder as ``lookalike index`` runs it (the
  streaming pipeline: each file decoded once, in threads, while the model encodes; previews,
  codes, index and metadata written), images/s, and its ratio to the model measured just
  before it;
* **index, one batch at a time**: the same with
  :data:`lookalike.models.encoders.BATCHES_AT_ONCE` off (one batch on PyTorch's threads on
  every core, as before), its codes asserted equal to **index**'s, bit for bit;
* **model, batches at once**: the bare model run as the index runs it (a batch in each
  core's thread, PyTorch on one thread in each);
* **index, two reads** (``--old``): the path before the pipeline (previews read first, the
  files read again chunk by chunk at the model's size), for comparison;
* **peak RSS** of ``lookalike index`` of the large folder as its own process (VmHWM);
* **decoders**: ms a file to decode at the reduced scale the model needs, Pillow's ``draft``
  against ``simplejpeg`` (libjpeg-turbo with DCT scaling) when it is installed.

The folders are made by ``benchmarks/photodata.py`` from Debian's wallpapers
(``apt-get install mate-backgrounds``), cached under ``--work``. Writes the section
"pipeline" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import photodata  # noqa: E402
from _common import cli_peak, commit, machine, now, table, write_section  # noqa: E402

from lookalike.config import InputSpec  # noqa: E402
from lookalike.data.datasets import load_dataset  # noqa: E402
from lookalike.data.images import _cover, conform, decode_image  # noqa: E402
from lookalike.data.pipeline import FolderFiles  # noqa: E402
from lookalike.models import encoders  # noqa: E402
from lookalike.models.encoders import ModelEncoder  # noqa: E402
from lookalike.models.modelio import LoadedModel, load_model  # noqa: E402
from lookalike.search.collection import Collection  # noqa: E402

SIZE = 192


def folders(work: Path, small: int, large: int) -> dict[str, Path]:
    """The two photo folders (built once, then cached)."""
    out = {}
    for name, count, mp in (("0.3 MP", small, 0.3), ("10 MP", large, 10.0)):
        path = work / f"photos_{count}x{mp:g}mp"
        try:  # any folder built with these settings (sources installed since do not matter)
            meta = json.loads((path / photodata.META).read_text())
            built = meta["count"] == count and meta["settings"]["megapixels"] == mp
        except (OSError, ValueError, KeyError):
            built = False
        if not built:
            photodata.build(path, count, mp, workers=2)
        out[name] = path
    return out


def the_model(work: Path, folder: Path) -> LoadedModel:
    """The default colour model at 192 px, not adapted (built once, then cached)."""
    path = work / "model"
    if not (path / "config.json").is_file():
        from lookalike.api import train

        train(folder, path, arch="efficientnet-lite0", size=(SIZE, SIZE), adapt=False)
    return load_model(path)


def bare_model(encoder: ModelEncoder, n: int, at_once: bool = False) -> float:
    """Images/s of ``encoder.encode`` on ``n`` random model-sized images in memory (``at_once``:
    within :meth:`ModelEncoder.batches_at_once`, a batch in each core's thread)."""
    x = np.random.default_rng(0).integers(0, 256, (n, *encoder.spec.shape), dtype=np.uint8)
    with encoder.batches_at_once() if at_once else contextlib.nullcontext(1):
        encoder.encode(x[:2 * encoder.batch_size])  # warm-up
        t = time.perf_counter()
        encoder.encode(x)
        return n / (time.perf_counter() - t)


def index_rate(model: LoadedModel, folder: Path, out: Path, old: bool = False,
               at_once: bool = encoders.BATCHES_AT_ONCE > 1) -> tuple[float, np.ndarray]:
    """Images/s of indexing ``folder`` into a new collection, and its codes (``old``: previews
    first, then the files read again, as before the streaming pipeline; ``at_once``:
    :data:`lookalike.models.encoders.BATCHES_AT_ONCE`, else one batch at a time on every core)."""
    shutil.rmtree(out, ignore_errors=True)
    default = encoders.BATCHES_AT_ONCE
    encoders.BATCHES_AT_ONCE = default if at_once else 0
    try:
        t = time.perf_counter()
        data = (load_dataset(folder, "all", input_spec=model.config.input) if old
                else FolderFiles.of(folder))
        coll = Collection.create(out, model, data)
        seconds = time.perf_counter() - t
    finally:
        encoders.BATCHES_AT_ONCE = default
    n = len(coll)
    codes = np.array(coll.embeddings)
    coll.close()
    shutil.rmtree(out, ignore_errors=True)
    return n / seconds, codes


def cpu_costs(model: LoadedModel, folder: Path, out: Path, n: int, old: bool) -> dict[str, float]:
    """CPU ms an image (the process's CPU time, every thread's) of the bare model and of
    indexing ``folder``, PyTorch on one thread (two spin-wait for each other on busy cores,
    which inflates their CPU time): what their throughputs compare as when every core is
    busy, where overlapping decoding with encoding gains nothing."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = ModelEncoder(model)
        x = np.random.default_rng(0).integers(0, 256, (n, *encoder.spec.shape), dtype=np.uint8)
        encoder.encode(x[:encoder.batch_size])
        t = time.process_time()
        encoder.encode(x)
        bare = (time.process_time() - t) / n * 1000
        costs = {"model_ms": bare}
        for name in ("index", "old") if old else ("index",):
            shutil.rmtree(out, ignore_errors=True)
            t = time.process_time()
            coll = Collection.create(out, model, FolderFiles.of(folder) if name == "index" else
                                     load_dataset(folder, "all", input_spec=model.config.input))
            costs[f"{name}_ms"] = (time.process_time() - t) / len(coll) * 1000
            coll.close()
            shutil.rmtree(out, ignore_errors=True)
    finally:
        torch.set_num_threads(threads)
    return {**costs, "ratio": bare / costs["index_ms"]}


def peak_rss(model: LoadedModel, folder: Path, out: Path) -> dict[str, float]:
    """``lookalike index`` of ``folder`` as its own process: VmHWM (bytes) and seconds."""
    _, seconds, peak = cli_peak(["index", "--model", str(model.path), "--dataset", str(folder),
                                 "--out", str(out), "--overwrite"], "index")
    shutil.rmtree(out, ignore_errors=True)
    return {"peak_rss_bytes": peak, "seconds": seconds}


def decoders(folder: Path, limit: int) -> dict[str, Any]:
    """CPU ms a file (the median of 5 passes; CPU time, which other work on shared cores does
    not inflate as it does wall time) to decode ``limit`` JPEGs of ``folder`` at the scale a
    192-px model needs: Pillow's ``draft`` (lookalike's :func:`decode_image`) and simplejpeg's
    ``min_width``/``min_height`` (both libjpeg-turbo's DCT scaling), whether the pixels are
    equal, and the largest difference of the model's inputs they give (``conform``ed to 192 px)."""
    files = sorted(folder.rglob("*.jpg"))[:limit]
    blobs = [f.read_bytes() for f in files]  # from memory: the decoders, not the disk
    out: dict[str, Any] = {"files": len(files)}

    def pillow(data: bytes) -> np.ndarray:
        return decode_image(data, size=(SIZE, SIZE))

    runs = {"pillow draft": pillow}
    try:
        import simplejpeg

        def turbo(data: bytes) -> np.ndarray:
            h, w = simplejpeg.decode_jpeg_header(data)[:2]
            cw, ch = _cover(w, h, (SIZE, SIZE))
            return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=cw, min_height=ch)

        runs["simplejpeg"] = turbo
    except ImportError:
        pass
    for name, fn in runs.items():
        times = []
        for _ in range(5):
            t = time.process_time()
            for b in blobs:
                fn(b)
            times.append((time.process_time() - t) / len(blobs) * 1000)
        out[name] = statistics.median(times)
    out["read_file"] = read_cost(files)
    if "simplejpeg" in runs:
        pairs = [(runs["pillow draft"](b), runs["simplejpeg"](b)) for b in blobs]
        out["equal"] = all(np.array_equal(a, c) for a, c in pairs)
        spec = InputSpec(3, SIZE, SIZE)
        out["input_max_diff"] = max(int(np.abs(conform([a], spec).astype(int) - conform([c], spec)).max())
                                    for a, c in pairs)
    return out


def read_cost(files: list[Path]) -> float:
    """CPU ms a file of :func:`lookalike.data.pipeline.read_file` (what a decoder thread does
    with each: read, digest, header, decode at the reduced scale, resize to the model's input
    and to the preview), the median of 5 passes over ``files``."""
    from lookalike.data.pipeline import read_file

    spec = InputSpec(3, SIZE, SIZE)
    times = []
    for _ in range(5):
        t = time.process_time()
        for f in files:
            read_file(f, spec)
        times.append((time.process_time() - t) / len(files) * 1000)
    return statistics.median(times)


def pictures(folder: Path, limit: int) -> dict[str, Any]:
    """CPU ms a 96-px preview (of ``limit`` photos of ``folder``) and KB each, compressed as a
    collection stores them (:func:`lookalike.search.segments.encode_picture`: lossless WebP,
    method 0) and with the setting before (method 1, quality 50)."""
    import io

    from PIL import Image

    from lookalike.data.pipeline import decode_file
    from lookalike.search.segments import encode_picture

    previews = [decode_file(p, InputSpec(3, SIZE, SIZE))[1] for p in sorted(folder.rglob("*.jpg"))[:limit]]

    def before(image: np.ndarray) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "WEBP", lossless=True, quality=50, method=1)
        return buf.getvalue()

    out: dict[str, Any] = {"previews": len(previews)}
    for name, fn in (("method 0 (now)", encode_picture), ("method 1, quality 50 (before)", before)):
        t = time.process_time()
        sizes = [len(fn(p)) for p in previews]
        out[name] = {"ms": (time.process_time() - t) / len(previews) * 1000,
                     "kb": float(np.mean(sizes)) / 1024}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    where = folders(work, args.small, args.large)
    model = the_model(work, where["0.3 MP"])
    assert model.config.input == InputSpec(3, SIZE, SIZE), model.config.input
    encoder = ModelEncoder(model)
    res: dict[str, Any] = {"batch": encoder.batch_size, "precision": encoder.precision,
                           "folders": {k: str(v) for k, v in where.items()}, "rows": {},
                           "load": [os.getloadavg()[0]], "when": now(), "commit": commit(),
                           "machine": machine()}
    for name, folder in where.items():
        count = len(FolderFiles.of(folder))
        row: dict[str, Any] = {"count": count, "model": [], "model_at_once": [], "index": [],
                               "one_batch": [], "old": []}
        # one untimed round first: the first passes pay one-off costs (oneDNN kernels for each
        # batch shape, the files' first read from disk) that made the first timed round 5-20x
        # slower than the next ones
        images = min(count, args.model_images)
        bare_model(encoder, images)
        bare_model(encoder, images, at_once=True)
        index_rate(model, folder, work / "coll")
        for _ in range(args.rounds):  # alternated, so both see the same machine
            row["model"].append(bare_model(encoder, images))
            rate, codes = index_rate(model, folder, work / "coll")
            row["index"].append(rate)
            rate, before = index_rate(model, folder, work / "coll", at_once=False)
            row["one_batch"].append(rate)
            # the codes of batches at once are those of one batch at a time, bit for bit
            assert np.array_equal(codes, before), "batches at once changed the codes"
            row["model_at_once"].append(bare_model(encoder, images, at_once=True))
            if args.old:
                row["old"].append(index_rate(model, folder, work / "coll", old=True)[0])
        row["codes_equal"] = True
        row["ratio"] = statistics.median(i / m for i, m in zip(row["index"], row["model"], strict=True))
        row["one_batch_ratio"] = statistics.median(
            i / m for i, m in zip(row["one_batch"], row["model"], strict=True))
        row["at_once_ratio"] = statistics.median(
            i / m for i, m in zip(row["index"], row["model_at_once"], strict=True))
        if args.old:
            row["old_ratio"] = statistics.median(i / m for i, m in zip(row["old"], row["model"], strict=True))
        row["cpu"] = cpu_costs(model, folder, work / "coll", min(count, args.model_images), args.old)
        row["decoders"] = decoders(folder, args.decode_files)
        print(name, json.dumps(row), flush=True)
        res["rows"][name] = row
    res["pictures"] = pictures(where["0.3 MP"], args.decode_files)
    res["load"].append(os.getloadavg()[0])
    res["rss"] = peak_rss(model, where["10 MP"], work / "coll")
    print("rss", json.dumps(res["rss"]), flush=True)
    return res


def section(res: dict[str, Any], argv: list[str]) -> str:
    rows = []
    for name, row in res["rows"].items():
        med = statistics.median
        cpu = row.get("cpu")
        rows.append([f"{row['count']} x {name}", f"{med(row['model']):.1f}", f"{med(row['index']):.1f}",
                     f"**{row['ratio']:.2f}x**",
                     f"{med(row['one_batch']):.1f} ({row['one_batch_ratio']:.2f}x)",
                     f"{med(row['old']):.1f} ({row['old_ratio']:.2f}x)" if row["old"] else "-",
                     f"{med(row['model_at_once']):.1f} ({row['at_once_ratio']:.2f}x)",
                     f"{cpu['model_ms']:.1f} / {cpu['index_ms']:.1f} = **{cpu['ratio']:.2f}x**"
                     if cpu else "-",
                     f"{cpu['old_ms']:.1f} ({cpu['model_ms'] / cpu['old_ms']:.2f}x)"
                     if cpu and "old_ms" in cpu else "-"])
    dec = []
    for name, row in res["rows"].items():
        d = row["decoders"]
        dec.append([name, str(d["files"]), f"{d['pillow draft']:.2f}",
                    f"{d['simplejpeg']:.2f}" if "simplejpeg" in d else "not installed",
                    str(d.get("equal", "-")), str(d.get("input_max_diff", "-"))])
    large = res["rows"]["10 MP"]["count"]
    verdict = []
    for name, row in res["rows"].items():
        d = row["decoders"]
        if "simplejpeg" in d:  # the share of an indexed image's CPU time simplejpeg would save
            per_image = row["cpu"]["index_ms"] if "cpu" in row else 1000 / statistics.median(row["index"])
            share = (d["pillow draft"] - d["simplejpeg"]) / per_image
            verdict.append(f"{name}: {d['pillow draft'] - d['simplejpeg']:+.2f} ms a file, "
                           f"{100 * share:+.1f}% of an indexed image's CPU time")
    return "\n".join([
        "## Indexing at the model's speed",
        "",
        f"`python benchmarks/pipeline.py {' '.join(argv)}`".replace(" `", "`") + f" — {res['when']}, "
        f"commit {res['commit']}, {res['machine']}. EfficientNet-Lite0 at {SIZE} px (ImageNet "
        f"weights, whitened, not adapted), batch {res['batch']}, {res['precision']}, channels-last, "
        "as the index path runs it. *model*: `ModelEncoder.encode` of model-sized images already in memory "
        "(one batch at a time, PyTorch on every core: the issue's reference); "
        "*index*: `Collection.create` of the folder (what `lookalike index` runs: each file "
        "read once, in two decoder threads, while the model encodes: its bytes digested and "
        "decoded from memory, its header and EXIF taken from the same open image; previews "
        "compressed, codes, index, metadata and the file catalogue written; the model encoding "
        "`ModelEncoder.batches_at_once`: a batch in each of 2 threads (`BATCHES_AT_ONCE`), PyTorch's "
        "threads shared out between them: one each on these 2 cores); *index, one batch at a time*: "
        "the same with "
        "`BATCHES_AT_ONCE = 0` (one batch on PyTorch's threads on every core, as before; its codes "
        "are asserted equal to *index*'s, bit for bit, every round); "
        "*two reads*: the path before the pipeline (previews read first, the "
        "files read again at the model's size; no catalogue); *model, batches at once*: the bare "
        "model run as *index* runs it, a batch in each core's thread (the fastest this model "
        "encodes here; the ratio is *index* against it); *CPU ms*: the process's CPU time an image with "
        "PyTorch on one thread, so their ratio is the throughput ratio when every core is busy "
        "(overlap then gains nothing; two PyTorch threads spin-wait on busy cores). Median of "
        f"{len(next(iter(res['rows'].values()))['index'])} alternated rounds after an untimed "
        "one; the ratio is "
        f"taken per round. Load average {res['load'][0]:.1f} at the start, {res['load'][1]:.1f} at "
        "the end (other work shared the cores). Folders made by `benchmarks/photodata.py` from "
        "Debian's wallpaper packages.",
        "",
        table(["folder", "model images/s", "index images/s", "index / model",
               "index, one batch at a time images/s", "two reads images/s",
               "model, batches at once images/s (index / it)",
               "CPU ms an image, model / index, 1 torch thread", "two reads CPU ms"], rows),
        "",
        "Each round (images/s), to judge the noise: " + "; ".join(
            f"{name}: model {', '.join(f'{v:.0f}' for v in row['model'])}, index "
            f"{', '.join(f'{v:.0f}' for v in row['index'])}, index / model "
            + ", ".join(f"{i / m:.2f}" for i, m in zip(row["index"], row["model"], strict=True))
            + f", one batch at a time {', '.join(f'{v:.0f}' for v in row['one_batch'])}"
            + f", model batches at once {', '.join(f'{v:.0f}' for v in row['model_at_once'])}"
            for name, row in res["rows"].items()) + ".",
        "",
        f"Peak RSS of `lookalike index` of the {large} photos of 10 MP as its own process "
        f"(VmHWM, PyTorch included): {res['rss']['peak_rss_bytes'] / 2**30:.2f} GiB "
        f"({res['rss']['seconds']:.0f} s with the start-up).",
        "",
        "Decoding at the reduced scale a 192-px model needs (CPU ms a file, from memory, one thread, "
        "median of 5 passes; simplejpeg 1.9.0 from PyPI installed for this column only, it "
        "is not a dependency; *largest input difference*: of the model's 192-px inputs the two "
        "decodes give, in levels of 255):",
        "",
        table(["folder", "files", "Pillow `draft`", "simplejpeg", "same pixels",
               "largest input difference"], dec),
        "",
        "Wall-clock ratios need a quiet machine: on these shared cores one pass of the bare model "
        "and one of `index` can see very different shares of the CPU (hence ratios over 1). The "
        "CPU column does not depend on that: it is the throughput ratio when every core is busy, "
        "where overlapping decoding with encoding gains nothing, when the model's passes use "
        "their cores as well as one thread does. " + faster(res) +
        "At 10 MP a file's decoding alone costs "
        f"{res['rows']['10 MP']['decoders']['pillow draft']:.0f} ms of CPU (its entropy decoding "
        "does not shrink with the DCT scale) against the model's "
        f"{res['rows']['10 MP']['cpu']['model_ms']:.0f} ms an image, so no decoder order makes "
        "10-MP photos index at the model's speed on busy cores. "
        + " ".join(
            f"At {name}, the index's {row['cpu']['index_ms']:.1f} CPU ms an image on these "
            f"{os.cpu_count()} cores, every one busy and none wasted, allow at most "
            f"{os.cpu_count() * 1000 / row['cpu']['index_ms']:.0f} images/s: "
            f"{os.cpu_count() * 1000 / row['cpu']['index_ms'] / max(row['model']):.2f}x "
            "the bare model's fastest round." for name, row in res["rows"].items())
        + " (So the issue's 0.6x at 10 MP is out of reach on 2 cores whatever the overlap: the "
        "decoding of a 10-MP JPEG alone costs more CPU than the model's encoding of it.)",
        "",
        target(res),
        "",
        "Batches at once replaced the rule that left a core to the decoders for files of 512 KB "
        "or more (`SPARE_CORES`, `SPARE_FROM_BYTES`): this section's previous run (2026-12-05 "
        "12:50 UTC, commit 924649a with that rule) measured it at 0.39x at 10 MP (0.30x with "
        "PyTorch on every core) and, for 0.3 MP, 0.60x against 0.74x on every core in the run "
        "that chose the rule (commit bca3bc7's message). Other levers measured: see \"Levers tried "
        "for indexing at the model's speed\" below.",
        "",
        "Compressing the 96-px previews a collection stores (CPU ms and KB a preview, "
        f"{res['pictures']['previews']} previews of the 0.3-MP photos): " + "; ".join(
            f"{k}: {v['ms']:.2f} ms, {v['kb']:.1f} KB" for k, v in res["pictures"].items()
            if isinstance(v, dict)) + ".",
        "",
        ("simplejpeg saves " + "; ".join(verdict) + ". lookalike keeps Pillow's `draft`: a "
         "second JPEG decoder (a dependency, a fallback to Pillow for the JPEGs it refuses, and "
         "pixels that differ from Pillow's on some files, so other codes than the collections "
         "already made) would have to save at "
         "least 5% of the index time, on both sizes, to be worth it." if verdict else
         "(`pip install simplejpeg` to compare it.)"),
    ])


def faster(res: dict[str, Any]) -> str:
    """The folders where the bare model on every core beat what its one-thread CPU time allows
    on these cores (then the wall-clock bounds are the tighter ones)."""
    cores = os.cpu_count() or 1
    beat = [f"at {name}, {max(row['model']):.0f} images/s in its fastest round against the "
            f"{cores * 1000 / row['cpu']['model_ms']:.0f} that {cores} cores at its one-thread "
            f"{row['cpu']['model_ms']:.1f} CPU ms an image allow"
            for name, row in res["rows"].items() if max(row["model"]) > cores * 1000 / row["cpu"]["model_ms"]]
    if not beat:
        return "With idle cores the wall-clock ratio lies above it. "
    return ("Here the bare model on every core did better: " + "; ".join(beat)
            + "; so there the bound below, against that round, is the tighter one. ")


def target(res: dict[str, Any]) -> str:
    """The issue's target at 0.3 MP (index >= 0.85x the model), reached or not, and why."""
    row = res["rows"]["0.3 MP"]
    cpu, dec, pic = row["cpu"], row["decoders"], res["pictures"]["method 0 (now)"]["ms"]
    extra = cpu["index_ms"] - cpu["model_ms"]
    allowed = cpu["model_ms"] / 0.85 - cpu["model_ms"]
    rounds = ", ".join(f"{i / m:.2f}" for i, m in zip(row["index"], row["model"], strict=True))
    rest = extra - dec["read_file"] - pic
    share = statistics.median(row["index"]) * cpu["index_ms"] / 1000 / (os.cpu_count() or 1)
    why = ("less than reading a file costs, so overlap alone cannot reach it on busy cores, only "
           "cheaper decoding (which changes the pixels, so the codes, of the collections already "
           "made)" if allowed < dec["read_file"] else "more than reading a file costs")
    return (f"**Target (issue 21): `index` of 0.3-MP JPEGs at >= 0.85x the bare model: "
            f"{'reached' if row['ratio'] >= 0.85 else 'not reached'}, {row['ratio']:.2f}x** "
            f"(per round {rounds}). What the index spends beyond the model, {extra:.1f} CPU ms an "
            f"image: reading each file in a decoder thread {dec['read_file']:.1f} ms (`read_file`"
            + (f", measured {res['read_file_when']} by `--rewrite`" if "read_file_when" in res else "")
            + ": "
            f"of which decoding at the reduced scale {dec['pillow draft']:.1f} ms; the rest the "
            "resizes to the model's input and to the preview, the header and the digest), "
            f"compressing its preview {pic:.2f} ms, the rest (Python, codes, index, metadata and "
            f"catalogue written) {rest:.1f} ms. On busy cores 0.85x allows {allowed:.1f} ms beyond "
            f"the model's {cpu['model_ms']:.1f}: {why}. The index runs at {share:.0%} of what its "
            f"CPU time allows on these {os.cpu_count()} cores (median round).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", type=int, default=400, help="photos of 0.3 MP (default 400)")
    ap.add_argument("--large", type=int, default=100, help="photos of 10 MP (default 100)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model-images", type=int, default=400, help="images for the bare model pass")
    ap.add_argument("--decode-files", type=int, default=50)
    ap.add_argument("--old", action="store_true", help="also time the path before the pipeline")
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/pipeline"))
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--rewrite", action="store_true",
                    help="only write the section again from the last run's --work/pipeline.json "
                         "(measuring only what it lacks)")
    args = ap.parse_args()
    if args.rewrite:
        res = json.loads((args.work / "pipeline.json").read_text())
        if "pictures" not in res:
            res["pictures"] = pictures(Path(res["folders"]["0.3 MP"]), args.decode_files)
        for name, row in res["rows"].items():
            if "read_file" not in row["decoders"]:
                files = sorted(Path(res["folders"][name]).rglob("*.jpg"))[:args.decode_files]
                row["decoders"]["read_file"] = read_cost(files)
                res["read_file_when"] = now()
        (args.work / "pipeline.json").write_text(json.dumps(res, indent=2))
    else:
        res = run(args)
        res["argv"] = sys.argv[1:]
        (args.work / "pipeline.json").write_text(json.dumps(res, indent=2))
    body = section(res, res.get("argv", sys.argv[1:]))
    print(body)
    if not args.no_write:
        write_section("pipeline", body)


if __name__ == "__main__":
    main()
