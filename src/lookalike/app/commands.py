"""What each ``lookalike`` command does, given its parsed arguments (the parser is
:mod:`lookalike.app.cli`). A user error raises :class:`~lookalike.errors.LookalikeError`,
which the command line prints as one line."""

from __future__ import annotations

import argparse
import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BACKBONE_ARCHS, InputSpec
from ..data.datasets import BUILTIN_DATASETS, Dataset, load_dataset
from ..errors import LookalikeError

log = logging.getLogger("lookalike")


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


def cmd_train(args: argparse.Namespace) -> int:
    from ..api import train
    from .onnxcommand import check_not_onnx, cmd_import

    if args.encoder_onnx:
        return cmd_import(args)
    check_not_onnx(args)
    if args.backbone and args.arch != "auto":
        raise LookalikeError("give --arch or --backbone, not both")
    model = train(
        args.dataset, args.out, arch=args.backbone or args.arch, size=args.size,
        channels=args.channels, latent_dim=args.latent_dim, width=args.width, adapt=args.adapt,
        pooling=args.pooling, test_views=args.test_views, mid_blocks=args.mid_blocks,
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
    from ..api import index
    from ..data.skipreport import REPORT_NAME, write_report

    if args.folder is not None:
        if args.dataset != "mnist-5k":
            raise LookalikeError("give the data as FOLDER or --dataset, not both")
        args.dataset = args.folder
    if args.engine != "ray" and args.ray_address:
        raise LookalikeError("--ray-address is for --engine ray")
    options = _backend_options(args)
    encode = None
    if args.engine == "ray":
        from ..models.ray_engine import RayConfig, load_and_encode

        def encode(model: Any, data: str, split: str) -> tuple[Dataset, np.ndarray]:
            return load_and_encode(data, split, model, data_dir=args.data_dir,
                                   config=RayConfig(address=args.ray_address), download=args.download,
                                   progress=args.progress, verbose=args.verbose)

    coll = index(args.model, args.dataset, args.out, split=args.split, overwrite=args.overwrite,
                 progress=args.progress, data_dir=args.data_dir, download=args.download,
                 encode=encode, backend=args.backend, factory=args.factory,
                 search_params=args.search_params, chunk=args.checkpoint_every,
                 backend_options=options).collection
    coll.close()
    skipped = [(str(path), str(why)) for path, why in coll.manifest.get("skipped") or ()]
    if skipped:  # (each one was logged with its reason as it was met)
        log.warning("skipped %d unreadable file(s) or folder(s)", len(skipped))
    report = write_report(args.report or Path(args.out) / REPORT_NAME, skipped, "index")
    print(f"collection written to {args.out}: {len(coll)} images, {coll.dim}-d codes"
          + (f"; skipped {len(skipped)} file(s) (see {report})" if skipped else "")
          + (f", index in Milvus at {options['uri']}" if options else ""))
    return 0


_ITEM = re.compile(r"(?P<name>[A-Za-z0-9_-]+):(?:(?P<split>database|queries|all):)?(?P<index>\d+)")


def _resolve_queries(coll: Any, specs: Sequence[str], data_dir: str | None, crop: Any = None
                     ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, dict[int, int]]:
    """(descriptions, images uint8 (m,H,W,C), labels (m,), exclude ids (m,), and for the
    queries that are stored items (``id:N``) their row -> id: their code is the stored one).
    With ``crop`` (a :class:`~lookalike.search.queries.Crop`), each query is that region of
    its picture: a file's or a stored item's original file at full size
    (:func:`~lookalike.search.files.original`; its stored picture when it has none)."""
    from ..data.images import conform, load_image
    from ..search.queries import stored_region

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
            label = coll.labels([item_id])[0]
            if crop is None:
                image = conform([coll.image(item_id)], coll.input_spec)[0]  # shown; its code is stored
                own = stored[row] = item_id
            else:
                image, own = conform([stored_region(coll, item_id, crop)], coll.input_spec)[0], item_id
        elif Path(spec).exists():
            size = (coll.encoder.spec.height, coll.encoder.spec.width)
            whole = load_image(spec, size=None if crop else size)
            image = conform([crop.apply(whole) if crop else whole], coll.encoder.spec)[0]
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
            image = ds.images[index]
            image = conform([crop.apply(image) if crop else image], coll.encoder.spec)[0]
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


def _query_codes(coll: Any, images: np.ndarray, stored: dict[int, int]) -> np.ndarray:
    """The code of each query picture: a stored item's stored code, the others encoded."""
    codes = np.empty((len(images), coll.dim), np.float32)
    for row, item_id in stored.items():
        codes[row] = coll.vector(item_id)
    new = [row for row in range(len(images)) if row not in stored]
    if new:  # (the model, and PyTorch, load only for queries that are not stored items)
        codes[new] = coll.encoder.encode(images[new])
    return codes


def cmd_search(args: argparse.Namespace) -> int:
    from ..data.images import conform
    from ..search import queries
    from ..search.collection import Collection
    from .queryargs import filter_of

    where = filter_of(args)
    together = args.together or bool(args.unlike)
    if args.in_cluster and (where or together):
        raise LookalikeError("--in-cluster searches one query at a time without filters: "
                             "leave out --in-cluster, or the filters and --together/--not")
    coll = Collection.open(args.collection, model_dir=args.model)
    descs, images, q_labels, exclude, stored = _resolve_queries(coll, args.queries, args.data_dir,
                                                                args.crop)
    start = time.perf_counter()
    codes = _query_codes(coll, images, stored)
    excluded = [[int(e)] for e in exclude]
    if together:
        unlike, unlike_own = None, np.empty(0, np.int64)
        if args.unlike:
            _, neg, _, unlike_own, neg_stored = _resolve_queries(coll, args.unlike, args.data_dir)
            unlike = _query_codes(coll, neg, neg_stored)
        codes = queries.combine(codes, unlike)[None]
        excluded = [[int(e) for e in (*exclude, *unlike_own)]]
        descs = [" + ".join(descs) + "".join(f" - {u}" for u in args.unlike or ())]
        q_labels = q_labels[:1] if len(set(q_labels.tolist())) == 1 else np.array([-1])
        images = images[:1]
    if args.in_cluster:
        from ..search.clustering import search_in_cluster
        from ..search.clusterstore import load_clustering

        clustering = load_clustering(coll.path)
        dist, ids = search_in_cluster(codes, np.asarray(coll.embeddings), coll.ids, clustering,
                                      args.k, exclude)
    else:
        dist, ids = queries.search(coll, codes, args.k, where=where, exclude=excluded,
                                   rerank=False if args.exact else None)
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

    from ..data.images import content_hash, image_files
    from ..data.pipeline import stream
    from ..data.skipreport import REPORT_NAME, write_report
    from ..models.atonce import batches_at_once
    from ..search.collection import Collection
    from ..search.files import db, record, unchanged

    coll = Collection.open(args.collection)
    report = Path(args.report) if args.report else coll.path / REPORT_NAME
    skipped: list[tuple[str, str]] = []
    files = image_files(args.paths, skipped)
    present = coll.sources(str(f) for f in files)
    # --update reads only the files whose stat differs from the catalogue's record
    fresh = unchanged(db(coll), [f for f in files if str(f) in present]) if args.update else set()
    todo = [f for f in files if str(f) not in present or (args.update and str(f) not in fresh)]
    before = len(coll)
    added = dupes = updated = loaded = 0
    # Each batch is one commit: a crash loses at most the batch in progress, and running
    # the same command again skips the files already added (by source path). The next batch
    # decodes (each file once, in threads) while this one is encoded (batches at once, as
    # index does) and committed.
    try:
        with tqdm(total=len(files), initial=len(files) - len(todo), desc="adding", unit="img",
                  disable=not args.progress) as bar, batches_at_once(coll.encoder):
            for batch in stream(todo, coll.encoder.spec, batch=args.batch, ahead=1):
                for path, reason in batch.skipped:
                    log.warning("skipped %s: %s", path, reason)
                skipped += batch.skipped
                loaded += len(batch.paths)
                sources = [str(f) for f in batch.paths]
                new = [j for j, src in enumerate(sources) if src not in present]
                old = [j for j, src in enumerate(sources) if src in present
                       and content_hash(coll.stored_form(batch.inputs[j:j + 1])[0]) != present[src][1]]
                if new:
                    count = len(coll)
                    ids = coll.add(batch.inputs[new], [sources[j] for j in new])
                    record(coll, [sources[j] for j in new], ids, [batch.facts[j] for j in new])
                    added += len(coll) - count
                    dupes += len(new) - (len(coll) - count)
                if old:
                    updated += coll.update([present[sources[j]][0] for j in old], batch.inputs[old])
                    record(coll, [sources[j] for j in old], [present[sources[j]][0] for j in old],
                           [batch.facts[j] for j in old])
                bar.update(batch.stop - batch.start)
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
    from ..search.duplicates import find_groups
    from ..search.dupreview import decide
    from ..search.keeper import KeepRule
    from . import dupreport
    from .dupcommands import check_args, finish_moves, review_command, undo_command

    check_args(args)
    coll = Collection.open(args.collection)
    if args.undo:
        return undo_command(args, coll)
    finish_moves(args, coll)
    groups = find_groups(coll, similar=args.similar, progress=args.progress, since=args.since,
                         threshold=args.threshold, k=args.k)
    decisions = decide(coll, groups, args.keep or KeepRule())
    if not (args.json or args.csv):
        return review_command(args, coll, decisions)
    sources = {it.id: it.source for it in coll.items([i for g in groups for i in g.ids]) if it}
    # (one decision per group, in order; a decision lists a file per path, so an item may
    # stand in it twice: key by the group's own ids)
    keepers = {g.ids: (d.keeper, d.reason)
               for g, d in zip(groups, decisions, strict=True) if d.keeper is not None}
    if args.csv:
        text = dupreport.as_csv(groups, sources, keepers)
        if args.csv == "-":
            print(text, end="")
        else:
            Path(args.csv).write_text(text, encoding="utf-8")
            if not args.json:  # (the review on the terminal, the table in the file)
                return review_command(args, coll, decisions)
    if args.json:
        _emit_json(dupreport.as_json(
            groups, sources, items=len(coll), keepers=keepers,
            settings={"threshold": args.threshold, "k": args.k, "similar": args.similar,
                      "since": args.since}))
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
    removed = coll.remove(sorted(ids))  # (their catalogue rows too)
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


#: Folders ``info`` lists (by count; ``--json`` gives every one).
FOLDERS_SHOWN = 20


def cmd_info(args: argparse.Namespace) -> int:
    from ..data.skipreport import REPORT_NAME, read_report
    from ..search.collection import Collection
    from ..search.summary import summary

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
            "generation": m.get("generation", 0), "skipped": skipped, **summary(coll)}
    from .onnxcommand import imported_file

    if (imported := imported_file(coll.path / "model")) is not None:  # (its file's SHA-256)
        info["encoder"] = imported
    if args.json:
        _emit_json(info)
        return 0
    folders = info.pop("folders")
    if info["dates"]:
        info["dates"] = " to ".join(info["dates"])
    if not info["files"]:  # (no catalogued file: a dataset's items, or not synced yet)
        del info["files"], info["dates"]
    for key, value in info.items():
        print(f"{key:>10}: {value}")
    shown = list(folders.items())[:FOLDERS_SHOWN]
    for folder, count in shown:
        print(f"{count:>10}  {folder}")
    if len(folders) > len(shown):
        print(f"{'':>10}  ... and {len(folders) - len(shown)} more folders (--json lists all)")
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

    watch = None
    if args.watch:
        from .syncing import check_watchable
        from .watch import WatchConfig

        folders = check_watchable(args.collection)
        watch = WatchConfig(rescan_s=args.rescan, poll=args.poll)
        changes += f"; following {', '.join(folders)}"
    level = "debug" if args.verbose else "warning" if args.quiet else "info"
    serve(args.collection, args.host, args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
          access=access, on_ready=ready, log_level=level, workers=args.workers,
          move_to=args.move_to,
          **({"watch": watch} if watch is not None else {}))
    return 0
