"""Colour collections: same-icon retrieval across Debian's icon themes, and indexing a
folder of large photos.

    python benchmarks/quality.py --datasets icons        # the icon table (this module's run_icons)
    python benchmarks/colour.py --photos DIR              # index DIR: time, images/s, peak RSS

Icons (benchmarks/icondata.py builds them, 64x64): the database is five themes' drawings,
the queries five other themes'; a database item is relevant to a query when it is the same
icon *name* (mAP, P@1, P@10 over the whole ranking), and of the same *category* (the themes'
context folders: apps, places, devices...) for "category P@10". Labels only score.
Every model fits (or trains) on the database images only. Rows: raw pixels; each
EfficientNet-Lite off the shelf (global average pooling, cosine); lookalike's backbone model
(GeM pooling, whitening fitted on the database), with and without its re-ranking; the same
adapted to the database (contrastive fine-tuning on colour views, time-budgeted); each of
these two with and without its mid-level block's code (one model, one encode pass: the code
without the block is the first ``latent_dim`` columns, renormalised), and the block's encode
cost (:func:`encode_ratio`); lookalike's self-trained recipe. Writes the section "colour" of
docs/benchmarks.md (``--only-backbone``: raw pixels and the backbone rows, printed only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import icondata  # noqa: E402
from _common import cli_peak, commit, machine, now, table, write_section  # noqa: E402

from lookalike.config import (  # noqa: E402
    MID_BLOCK,
    InputSpec,
    ModelConfig,
    adaptation_budget,
    adapts_by_default,
    choose_arch,
    default_mid_blocks,
    default_retrieval_config,
    default_train_config,
    input_for,
)
from lookalike.data.datasets import Dataset, load_dataset  # noqa: E402
from lookalike.errors import ModelError  # noqa: E402
from lookalike.models.adaptation import train_backbone  # noqa: E402
from lookalike.models.backbones import BACKBONES, pretrained  # noqa: E402
from lookalike.models.encoders import ModelEncoder, PixelEncoder, encode_dataset  # noqa: E402
from lookalike.models.modelio import load_model, save_model  # noqa: E402
from lookalike.models.training import train_autoencoder  # noqa: E402
from lookalike.search.metrics import ranking_metrics  # noqa: E402
from lookalike.search.rerank import Diffusion  # noqa: E402

KEYS = ("mAP", "P@1", "P@10", "cat P@10")


def _labels(meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Icon-name ids of the database and query items, in folder order."""
    names: dict[str, int] = {}
    db = np.array([names.setdefault(it["name"], len(names)) for it in meta["database"]])
    q = np.array([names.setdefault(it["name"], len(names)) for it in meta["queries"]])
    return db, q


def score(q: np.ndarray, db: np.ndarray, labels: dict[str, np.ndarray],
          diffusion: Diffusion | None = None) -> dict[str, float]:
    """Same-name mAP/P@1/P@10 and category P@10 of one ranking (exact cosine, or diffusion)."""
    qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    dn = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    orders = []
    for start in range(0, len(q), 256):
        part = slice(start, min(start + 256, len(q)))
        s = diffusion.scores(q[part]) if diffusion is not None else qn[part] @ dn.T
        orders.append(np.argsort(-s, axis=1, kind="stable").astype(np.int32))
    order = np.concatenate(orders)
    blocks = [(slice(0, len(q)), order)]
    name = ranking_metrics(blocks, labels["q_name"], labels["db_name"], ks=(1, 10))
    cat = ranking_metrics(blocks, labels["q_cat"], labels["db_cat"], ks=(10,))
    return {"mAP": float(name["mAP"]), "P@1": float(name["P@1"]), "P@10": float(name["P@10"]),
            "cat P@10": float(cat["P@10"])}


def gap_features(name: str, data: Dataset, size: int) -> np.ndarray:
    """Off the shelf: the backbone's last feature map, global-average-pooled."""
    import torch

    net = pretrained(name).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    spec = InputSpec(3, size, size)
    out = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for start in range(0, len(data), 128):
            x = torch.from_numpy(data.pixels(start, min(start + 128, len(data)), spec))
            out.append(net.features(x.permute(0, 3, 1, 2).float().div_(255)).float().mean((2, 3)).numpy())
    return np.concatenate(out)


def unit(x: np.ndarray) -> np.ndarray:
    """The rows of ``x`` L2-normalised, float32, contiguous."""
    return np.ascontiguousarray(x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12),
                                dtype=np.float32)


def encode_ratio(model: Any, db: Dataset, n: int = 500, rounds: int = 2) -> dict[str, Any]:
    """Encode time of ``model`` (with its mid blocks) over the same time of its copy without
    them (the same weights), on ``n`` database images, ``rounds`` alternating rounds each
    (after an untimed one): median seconds of each and their ratio."""
    import torch

    from lookalike.models.networks import BackboneModel

    plain = BackboneModel(dataclasses.replace(model.config, mid_blocks=()))
    plain.load_state_dict({k: v for k, v in model.module.state_dict().items()
                           if not k.startswith("mid_")})
    base = dataclasses.replace(model, module=plain.eval(), config=plain.config, path=None)
    part = db.subset(np.arange(min(n, len(db))), db.split)
    times: dict[str, list[float]] = {"with": [], "without": []}
    encoders = {"with": ModelEncoder(model), "without": ModelEncoder(base)}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for key, enc in encoders.items():
                t = time.perf_counter()
                encode_dataset(enc, part)
                if r:
                    times[key].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    return {"images": len(part), "with_s": med["with"], "without_s": med["without"],
            "ratio": med["with"] / med["without"]}


def run_icons(work: Path, root: Path, reuse: bool, adapt_budget: float | None,
              recipe_budget: int, only_backbone: bool = False) -> list[dict[str, Any]]:
    """Every row of the icon table, printed as it is measured (``only_backbone``: raw pixels
    and lookalike's backbone rows only, without the off-the-shelf and recipe rows)."""
    meta = icondata.build(root)
    db = load_dataset(root / "database", "all")
    q = load_dataset(root / "queries", "all")
    db_name, q_name = _labels(meta)
    assert db.labels is not None and q.labels is not None
    labels = {"db_name": db_name, "q_name": q_name, "db_cat": db.labels, "q_cat": q.labels}
    rows: list[dict[str, Any]] = []

    def add(name: str, xq: np.ndarray, xd: np.ndarray, diffusion: Diffusion | None = None,
            train_s: float = 0.0, encode_s: float = 0.0, default: bool = False) -> None:
        t = time.perf_counter()
        m = score(xq, xd, labels, diffusion)
        row = {"name": name, **m, "train_s": train_s, "encode_s": encode_s,
               "rank_s": time.perf_counter() - t, "default": default}
        rows.append(row)
        print(f"icons {name[:64]:64s} " + " ".join(f"{k} {row[k]:.3f}" for k in KEYS)
              + f"  train {train_s:.0f}s encode {encode_s:.0f}s rank {row['rank_s']:.0f}s", flush=True)

    pix = PixelEncoder(db.spec)
    add("raw pixels (64x64 RGB), cosine", pix.encode(q.images), pix.encode(db.images))
    for name, spec in ({} if only_backbone else BACKBONES).items():
        cache = work / f"gap_{name}.npz"
        t = time.perf_counter()
        if reuse and cache.is_file():  # features of the same weights and images: reusable
            with np.load(cache) as saved:
                xd, xq, enc_s = saved["db"], saved["q"], float(saved["seconds"])
        else:
            try:
                xd, xq = gap_features(name, db, spec.resolution), gap_features(name, q, spec.resolution)
            except ModelError as exc:
                print(f"icons {name}: skipped ({exc})", flush=True)
                continue
            enc_s = time.perf_counter() - t
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, db=xd, q=xq, seconds=enc_s)
        add(f"{name} off the shelf ({spec.resolution} px, average pool, cosine)", xq, xd,
            encode_s=enc_s)

    arch = choose_arch(db.spec)
    assert arch in BACKBONES, arch  # colour data: `lookalike train` picks a backbone
    budget = adapt_budget or adaptation_budget(len(db))
    default_adapts = adapts_by_default(len(db))
    mid = (MID_BLOCK[arch],)  # one model gives both codes: without and with the mid block's
    for adapt in (False, True):
        train = default_train_config(arch, **({"objective": "contrastive", "time_budget": budget}
                                              if adapt else {}))
        path = work / ("backbone_adapted" if adapt else "backbone")
        model = load_model(path) if reuse and (path / "config.json").is_file() else None
        config = ModelConfig(arch=arch, input=input_for(arch, db.spec), mid_blocks=mid)
        if model is None or model.train != train or model.config != config:
            result = train_backbone(db, config, train)
            model = save_model(path, result.model, result.train, result.history,
                               default_retrieval_config(arch))
        train_s = float(model.history.get("seconds", 0.0))
        t = time.perf_counter()
        enc = ModelEncoder(model)
        xd, xq = encode_dataset(enc, db), encode_dataset(enc, q)
        enc_s = time.perf_counter() - t
        head = model.module.head_dim  # the code without the block: its first columns
        size = f"{config.input.height} px"
        label = (f"{arch} adapted ({budget:.0f} s), GeM, whitened on the database, {size}" if adapt
                 else f"{arch} pretrained, GeM, whitened on the database, {size}")
        retrieval = default_retrieval_config(arch)
        for with_mid in (False, True):
            cd, cq = (xd, xq) if with_mid else (unit(xd[:, :head]), unit(xq[:, :head]))
            name = (f"{label} + block {mid[0]}'s GeM whitened, concatenated ({xd.shape[1]}-d)"
                    if with_mid else label)
            default = adapt == default_adapts and with_mid == bool(default_mid_blocks(arch))
            add(f"{name}, exact", cq, cd, train_s=train_s, encode_s=enc_s)
            add(f"{'**' if default else ''}{name} + its re-ranking"
                f"{' (the default)**' if default else ''}", cq, cd,
                Diffusion(cd, retrieval.diffusion), train_s=train_s,
                encode_s=enc_s, default=default)
            if adapt and not with_mid:  # (today's default until 2026-12-05)
                full = dataclasses.replace(retrieval.diffusion, keep=0, blend=0.0)
                add(f"{label} + full diffusion (the recipe's, no kept first result)", cq, cd,
                    Diffusion(cd, full), train_s=train_s, encode_s=enc_s)
        if adapt:
            ratio = encode_ratio(model, db)
            print(f"icons encode cost with block {mid[0]} / without: {ratio['ratio']:.3f} "
                  f"({ratio})", flush=True)
            rows[-1]["encode_ratio"] = ratio

    if only_backbone:
        return rows
    train = default_train_config("contrastive", budget=recipe_budget)
    path = work / f"recipe_{recipe_budget}"
    model = load_model(path) if reuse and (path / "config.json").is_file() else None
    if model is None or model.train is None or dataclasses.replace(model.train, epochs=None) != train:
        config = ModelConfig(arch="contrastive", input=input_for("contrastive", db.spec))
        result = train_autoencoder(db.pixels(0, len(db), config.input), config, train)
        model = save_model(path, result.model, result.train, result.history,
                           default_retrieval_config("contrastive"))
    enc = ModelEncoder(model)
    t = time.perf_counter()
    xd, xq = encode_dataset(enc, db), encode_dataset(enc, q)
    enc_s = time.perf_counter() - t
    train_s = float(model.history.get("seconds", 0.0))
    label = f"self-trained recipe (contrastive, 64x64, {recipe_budget:,} images seen)"
    add(f"{label}, exact", xq, xd, train_s=train_s, encode_s=enc_s)
    add(f"{label} + diffusion", xq, xd, Diffusion(xd, default_retrieval_config("contrastive").diffusion),
        train_s=train_s, encode_s=enc_s)
    return rows


def icons_section(rows: list[dict[str, Any]], wall: float, meta: dict[str, Any]) -> str:
    counts = meta["counts"]
    body = [
        "## Colour: same icon across icon themes",
        "",
        f"`python benchmarks/quality.py --datasets icons` — last run {now()}, commit {commit()}, "
        f"{machine()}, wall time {wall / 60:.1f} min. Built by `benchmarks/icondata.py` from "
        "Debian's icon-theme packages (rendered to 64x64 RGB): the database is the themes "
        f"{', '.join(meta['database_themes'])} ({counts['database']:,} icons), the "
        f"queries {', '.join(meta['query_themes'])} ({counts['queries']:,} icons; "
        f"{counts['mean_relevant']:.1f} same-name items a query). "
        "Relevant: the same icon name drawn by another theme (mAP, P@1, P@10 over the whole "
        "ranking); `cat P@10`: the same category (apps, places, devices, mimetypes, actions, "
        "status, categories, emblems, emotes). Labels only score; models fit on the database "
        "images only. `train s` is the time to make the model (loading weights, adapting, "
        "fitting the whitening), `encode s` to encode both splits, `rank s` to rank the whole "
        "database for every query.",
        "",
        table(["features", *KEYS, "train s", "encode s", "rank s"],
              [[r["name"], *(f"{r[k]:.3f}" for k in KEYS),
                f"{r['train_s']:.0f}" if r["train_s"] else "–",
                f"{r['encode_s']:.0f}" if r["encode_s"] else "–", f"{r['rank_s']:.0f}"]
               for r in rows]),
    ]
    default = next(r for r in rows if r["default"])
    pixels = rows[0]
    shelf = [r for r in rows if "off the shelf" in r["name"]]
    if shelf:
        best = max(shelf, key=lambda r: r["mAP"])
        body += ["", f"Targets: the default's same-icon mAP is {default['mAP'] / best['mAP']:.2f}x the "
                 f"best off-the-shelf row's ({best['name'].split(' ')[0]}) and "
                 f"{default['mAP'] / pixels['mAP']:.1f}x raw pixels'; its category P@10 "
                 f"{default['cat P@10']:.3f} against that row's {best['cat P@10']:.3f}."]
    return "\n".join(body)


def index_photos(folder: Path, work: Path, size: int | None) -> dict[str, Any]:
    """`lookalike train` then `lookalike index` on ``folder``, each in its own process: wall
    time, images/s and peak RSS (VmHWM) of each."""
    out: dict[str, Any] = {"folder": str(folder)}
    model, coll = work / "photo_model", work / "photo_collection"
    size_args = ["--size", str(size)] if size else []
    for step, argv in (("train", ["train", "--dataset", str(folder), "--out", str(model), *size_args]),
                       ("index", ["index", "--model", str(model), "--dataset", str(folder),
                                  "--out", str(coll), "--overwrite"])):
        proc, seconds, peak = cli_peak(argv, step)
        out[step] = {"seconds": round(seconds, 1), "peak_rss_bytes": peak, "stdout": proc.stdout.strip()}
    n = json.loads((coll / "manifest.json").read_text())["count"]
    out["count"] = n
    out["index"]["images_per_s"] = round(n / out["index"]["seconds"], 1)
    return out


def photos_section(results: list[tuple[dict[str, Any], dict[str, Any] | None]]) -> str:
    """The photos section: a row per step of each folder."""
    rows, folders = [], []
    for res, meta in results:
        mp = f"{meta['settings']['megapixels']:g} MP" if meta else "photos"
        folders.append(f"{res['count']:,} JPEG photos of {meta['settings']['megapixels']:g} "
                       "megapixels or more" if meta else f"{res['count']:,} photos ({res['folder']})")
        rows += [[f"{res['count']:,} x {mp}", step, f"{res[step]['seconds']:.0f}",
                  f"{res['count'] / res[step]['seconds']:.1f}",
                  f"{res[step]['peak_rss_bytes'] / 2**30:.2f}"] for step in ("train", "index")]
    return "\n".join([
        "## Colour: a folder of photos",
        "",
        f"`python benchmarks/colour.py --photos DIR [DIR ...]` — last run {now()}, commit "
        f"{commit()}, {machine()}: {'; '.join(folders)}, made by `benchmarks/photodata.py` "
        "from Debian's wallpaper packages; `lookalike train` (the default it picks) then "
        "`lookalike index`, each as its own process; peak RSS is the process's VmHWM.",
        "",
        table(["folder", "step", "seconds", "images/s", "peak RSS GiB"], rows),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, nargs="+", required=True,
                    help="folders of photos to train on and index, one after the other")
    ap.add_argument("--work", type=Path, default=Path("benchmarks/out/colour"))
    ap.add_argument("--size", type=int, help="backbone input size (default: lookalike's)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results = []
    for folder in args.photos:
        res = index_photos(folder, args.work, args.size)
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        (args.work / f"photos_{folder.name}.json").write_text(json.dumps(res, indent=2))
        print(json.dumps({k: res[k] for k in ("train", "index", "count")}), flush=True)
        results.append((res, meta))
    body = photos_section(results)
    print(body)
    if not args.no_write:
        write_section("photos", body)


if __name__ == "__main__":
    main()
