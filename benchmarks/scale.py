"""The measured figures of docs/scaling.md: Milvus Lite against FAISS on 1M real codes, and
Ray Data (a local instance) against in-process encoding of the same image files.

    python benchmarks/scale.py index            # ~9 min; the first run also makes the codes
    python benchmarks/scale.py encode           # ~3 min
    python benchmarks/scale.py index encode     # both, one after the other
    python benchmarks/scale.py index --n 200000 --work /tmp/scale   # smaller, elsewhere

``index``: 1,000,000 128-d codes made by the articles' conv-16-8-8 model (trained one
epoch on fashion-mnist's training images) from random views of those images (lookalike's
contrastive augmentations at half strength: affine, cut-out, noise), so every vector is a
real code of a real-looking image; the queries are the codes of the first 1,000 test
images, the ground truth their exact top-10 (FAISS Flat). Each index runs in its own
process, which reports its build time, bytes per vector (index file or Milvus Lite's
directory), the memory it added to the process, queries/s with one query per call (as the
service asks; up to 1,000 queries or 20 s) and with all queries in one call, and
recall@10 against the ground truth. Milvus Lite ingests once (insert, flush) and then builds
FLAT and IVF_FLAT in turn on the same rows; both backends' IVF use nlist 1024, nprobe 16.

``encode``: 10,000 fashion-mnist test images written as PNG files; read, decoded and encoded
by the in-process engine (``load_folder`` + ``ModelEncoder``) and by ``--engine ray``
(``lookalike.models.ray_engine.encode_folder`` on ``ray.init(num_cpus=<cores>)``, started
beforehand and timed apart), for conv-16-8-8 and for the contrastive encoder (untrained:
the cost of a forward pass does not depend on the weights).

Codes, files and models are cached in ``--work`` (default ``$TMPDIR/lookalike-scale``).
Writes the tables to docs/benchmarks.md (sections "scale-index" and "scale-encode") and
prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine, now, table, write_section  # noqa: E402

K = 10
NLIST, NPROBE = 1024, 16
SINGLE_QUERY_BUDGET_S = 20.0


# ---------------------------------------------------------------------------- helpers
def _rss_mb(field: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def _queries_per_second(search: Any, queries: np.ndarray) -> tuple[float, np.ndarray, int]:
    """One query per call until all are done or the budget is spent: (qps, ids, count).
    FAISS runs these on one OpenMP thread (in Milvus Lite too, which uses this process's
    FAISS): a single query is too small to share, and on a busy machine the threads'
    hand-offs cost ~20 ms a query."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    found = []
    start = time.perf_counter()
    try:
        for q in queries:
            found.append(search(q[None])[0])
            if time.perf_counter() - start > SINGLE_QUERY_BUDGET_S:
                break
    finally:
        faiss.omp_set_num_threads(threads)
    elapsed = time.perf_counter() - start
    return len(found) / elapsed, np.stack(found), len(found)


def _lookalike(*argv: str) -> None:
    from lookalike.app.cli import main

    code = main(["-q", *argv])
    if code:
        raise SystemExit(f"lookalike {' '.join(argv)} failed ({code})")


def _model(work: Path) -> Path:
    """conv-16-8-8 trained one epoch on fashion-mnist (128-d codes at 28x28), cached."""
    path = work / "conv-16-8-8"
    if not (path / "config.json").is_file():
        _lookalike("train", "--dataset", "fashion-mnist", "--arch", "conv-16-8-8", "--epochs", "1",
                   "--device", "cpu", "--seed", "0", "--out", str(path))
    return path


def _vectors(work: Path, n: int, n_queries: int) -> dict[str, Any]:
    """1M (``n``) codes of augmented training views, the queries' codes and the exact
    top-10, cached; returns their paths and how long the codes took to make."""
    meta_path = work / f"vectors-{n}.json"
    if meta_path.is_file():
        return dict(json.loads(meta_path.read_text()))
    import torch

    from lookalike.data.augment import augment
    from lookalike.data.datasets import load_dataset
    from lookalike.data.images import from_float, to_float
    from lookalike.models.encoders import ModelEncoder
    from lookalike.models.modelio import load_model

    encoder = ModelEncoder(load_model(_model(work)))
    train = load_dataset("fashion-mnist", "database").images
    test = load_dataset("fashion-mnist", "queries").images[:n_queries]
    out = np.lib.format.open_memmap(work / f"vectors-{n}.npy", "w+", np.float32, (n, encoder.dim))
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for at in range(0, n, 20_000):
        rows = (np.arange(at, min(at + 20_000, n))) % len(train)
        views = from_float(augment(torch.from_numpy(to_float(train[rows])), 0.5, generator=gen).numpy())
        out[at:at + len(rows)] = encoder.encode(views)
    seconds = time.perf_counter() - start
    out.flush()
    del out
    queries = encoder.encode(test)
    np.save(work / "queries.npy", queries)
    import faiss

    flat = faiss.IndexFlatL2(encoder.dim)
    flat.add(np.load(work / f"vectors-{n}.npy"))
    np.save(work / f"truth-{n}.npy", flat.search(queries, K)[1].astype(np.int64))
    meta = {"vectors": str(work / f"vectors-{n}.npy"), "queries": str(work / "queries.npy"),
            "truth": str(work / f"truth-{n}.npy"), "n": n, "dim": encoder.dim,
            "encode_seconds": round(seconds, 1)}
    meta_path.write_text(json.dumps(meta))
    return meta


# ---------------------------------------------------------------------------- index workers
def _faiss_worker(kind: str, meta: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    import faiss

    from lookalike.search.backends import FaissBackend

    x = np.load(meta["vectors"])
    queries, truth = np.load(meta["queries"]), np.load(meta["truth"])
    ids = np.arange(len(x), dtype=np.int64)
    factory = "Flat" if kind == "flat" else f"IVF{NLIST},Flat"
    base = _rss_mb()
    start = time.perf_counter()
    backend = FaissBackend(meta["dim"], factory)
    backend.add(ids, x)  # IVF: trains k-means on a sample, then adds
    build = time.perf_counter() - start
    if kind == "ivf":
        faiss.extract_index_ivf(backend.index).nprobe = NPROBE
    resident = _rss_mb() - base
    name = backend.save(work, f"bench-{kind}.faiss")
    size = (work / name).stat().st_size
    (work / name).unlink()
    qps, found, answered = _queries_per_second(lambda q: backend.search(q, K)[1], queries)
    start = time.perf_counter()
    _, all_found = backend.search(queries, K)
    batch_qps = len(queries) / (time.perf_counter() - start)
    return [{"backend": "FAISS", "index": "Flat" if kind == "flat" else f"IVF{NLIST},Flat nprobe {NPROBE}",
             "ingest_s": None, "build_s": build, "bytes_per_vector": size / len(x),
             "resident_mb": resident, "peak_mb": _rss_mb("VmHWM") - base,
             "qps_single": qps, "answered": answered, "qps_batch": batch_qps,
             "recall": _recall(all_found, truth), "recall_single": _recall(found, truth[:answered])}]


def _milvus_worker(meta: dict[str, Any], work: Path) -> list[dict[str, Any]]:
    from lookalike.search.milvus_backend import MilvusBackend

    x = np.load(meta["vectors"])
    queries, truth = np.load(meta["queries"]), np.load(meta["truth"])
    ids = np.arange(len(x), dtype=np.int64)
    db = work / "lite.db"
    shutil.rmtree(db, ignore_errors=True)
    backend = MilvusBackend(meta["dim"], "Flat", uri=str(db), collection="bench")
    client, name = backend._client, backend.collection
    base = _rss_mb()  # Milvus Lite's server is running, the collection empty
    start = time.perf_counter()
    backend.add(ids, x)
    insert = time.perf_counter() - start
    start = time.perf_counter()
    client.flush(name)
    _drain_lite(db, name)
    flush = time.perf_counter() - start
    rows = []
    for kind in ("flat", "ivf"):
        client.release_collection(name)
        start = time.perf_counter()
        if kind == "ivf":
            client.drop_index(name, "vector")
            params = client.prepare_index_params()
            params.add_index(field_name="vector", index_type="IVF_FLAT", metric_type="L2",
                             params={"params": json.dumps({"nlist": NLIST})})
            client.create_index(name, params, sync=False)
            backend.index_type, backend.search_params = "IVF_FLAT", {"nprobe": NPROBE}
        client.load_collection(name)
        _drain_lite(db, name)
        build = time.perf_counter() - start
        resident = _rss_mb() - base
        qps, found, answered = _queries_per_second(lambda q: backend.search(q, K)[1], queries)
        batch_qps, recall = float("nan"), _recall(found, truth[:answered])
        if kind == "ivf":
            start = time.perf_counter()
            _, all_found = backend.search(queries, K)
            batch_qps = len(queries) / (time.perf_counter() - start)
            recall = _recall(all_found, truth)
        rows.append({"backend": "Milvus Lite",
                     "index": "FLAT" if kind == "flat" else f"IVF_FLAT nlist {NLIST}, nprobe {NPROBE}",
                     "ingest_s": insert + flush, "insert_s": insert, "flush_s": flush,
                     "build_s": build, "bytes_per_vector": _du(db) / len(x),
                     "resident_mb": resident, "peak_mb": _rss_mb("VmHWM") - base,
                     "qps_single": qps, "answered": answered, "qps_batch": batch_qps,
                     "recall": recall, "recall_single": _recall(found, truth[:answered])})
    backend.close()
    shutil.rmtree(db, ignore_errors=True)
    return rows


def _drain_lite(db: Path, name: str) -> None:
    """Wait for Milvus Lite's background compaction after a flush (it runs in this
    process): loading the collection while it rewrites segment files fails in milvus-lite
    3.2 ("file seems not fully written"). Part of the ingest time."""
    from milvus_lite.server_manager import server_manager_instance

    _, lite, _ = server_manager_instance._servers[os.path.abspath(db)]
    lite.get_collection(name)._wait_for_bg()


def _child(args: list[str], timeout: float = 900) -> Any:
    proc = subprocess.run([sys.executable, __file__, "_worker", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode:
        raise SystemExit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    return f"{v:,.{digits}f}"


def run_index(work: Path, n: int, n_queries: int) -> str:
    started = time.perf_counter()
    meta = _vectors(work, n, n_queries)
    rows: list[dict[str, Any]] = []
    for args in (["faiss", "flat"], ["faiss", "ivf"], ["milvus"]):
        rows += _child([*args, json.dumps(meta), str(work)])
        print(f"  {args[0]} {args[-1]} done ({time.perf_counter() - started:.0f} s)", flush=True)
    body = table(
        ["backend", "index", "ingest s", "index build s", "bytes / vector", "resident MB",
         "peak MB", "queries/s, 1 per call", f"queries/s, {n_queries:,} per call", "recall@10"],
        [[r["backend"], r["index"], _fmt(r["ingest_s"], 1), _fmt(r["build_s"], 1),
          _fmt(r["bytes_per_vector"]), _fmt(r["resident_mb"]), _fmt(r["peak_mb"]),
          f"{_fmt(r['qps_single'], 1)} ({r['answered']} q)", _fmt(r["qps_batch"], 0),
          f"{r['recall']:.3f}"] for r in rows])
    milvus = [r for r in rows if r["backend"] == "Milvus Lite"][0]
    about = " ".join([
        f"{n:,} vectors of {meta['dim']} float32 (512 B of payload each): conv-16-8-8 codes (one",
        "epoch on fashion-mnist's training images) of random augmented views of those images",
        f"(making them took {meta['encode_seconds']:.0f} s in process,",
        f"{n / meta['encode_seconds']:,.0f} images/s); queries: the codes of {n_queries:,} test",
        f"images; ground truth: their exact top-{K}. Each backend in its own process, through",
        "lookalike's backend classes (the milvus backend asks for the hits' vectors and computes",
        "squared distances itself).",
        f"*ingest*: Milvus Lite's insert ({milvus['insert_s']:.0f} s, rows of 10,000) and flush",
        f"with the background compaction it starts ({milvus['flush_s']:.0f} s), once for both of",
        "its index types. *index build*: FAISS `add` (IVF: k-means training included); Milvus",
        "Lite `create_index` and `load_collection` until its background index build is done.",
        "*bytes / vector*: the FAISS index file, or Milvus Lite's data directory after the",
        "build (write-ahead log and segment files). *resident MB*: what the index added to the",
        "process's memory",
        "after the build (beyond the vectors loaded to insert, and Milvus Lite's idle server);",
        "*peak*: the high-water mark, searches included.",
        f"*queries/s, 1 per call*: sequential single queries with k = {K} (as the service asks),",
        f"up to 1,000 or {SINGLE_QUERY_BUDGET_S:.0f} s, FAISS on one thread (in both backends:",
        f"Milvus Lite runs its IVF on this FAISS); *{n_queries:,} per call*: all queries in one",
        "call, on all cores. Milvus Lite's FLAT search compares each query with every row in a NumPy",
        "broadcast of (queries x rows x dim) floats, so it runs one query at a time and only",
        "the single-query figure is given; its IVF search, too, costs a fixed few hundred ms a",
        "call at this size, so it shows in the one-query-per-call figure and is shared among",
        "the queries of one call.",
    ])
    text = "\n".join([
        f"## Scale: Milvus Lite vs FAISS on {n:,} codes",
        "",
        f"`python benchmarks/scale.py index` — {now()}, commit {commit()}, {machine()}; pymilvus "
        f"{_version('pymilvus')}, milvus-lite {_version('milvus_lite')}, faiss {_version('faiss')}. "
        f"Whole run {time.perf_counter() - started:.0f} s; other processes shared the 2 cores, so "
        "times are upper bounds.",
        "",
        about,
        "",
        body,
        "",
    ])
    write_section("scale-index", text)
    return text


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version({"milvus_lite": "milvus-lite", "faiss": "faiss-cpu"}.get(module, module))
    except Exception:
        return "?"


# ---------------------------------------------------------------------------- encoding
def _encode_worker(model_dir: str, folder: str) -> dict[str, Any]:
    import logging

    from lookalike.data.datasets import load_folder
    from lookalike.data.pipeline import FolderFiles
    from lookalike.models.encoders import ModelEncoder
    from lookalike.models.modelio import load_model
    from lookalike.models.ray_engine import RayConfig, encode_folder, ray_session

    model = load_model(model_dir)
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    ds = load_folder(Path(folder), spec=model.config.input)
    codes = ModelEncoder(model).encode(ds.images)
    in_process = time.perf_counter() - start
    cores = os.cpu_count() or 1
    start = time.perf_counter()
    with ray_session(RayConfig(num_cpus=cores)):
        init = time.perf_counter() - start
        start = time.perf_counter()
        ds_ray, codes_ray = encode_folder(FolderFiles.of(folder), model, RayConfig())
        ray_s = time.perf_counter() - start
    same = (ds_ray.sources == ds.sources and bool(np.allclose(codes_ray, codes, rtol=1e-5, atol=1e-6)))
    return {"arch": model.config.arch, "n": len(ds), "in_process_s": in_process, "ray_s": ray_s,
            "ray_init_s": init, "same": same, "bitwise": bool(np.array_equal(codes_ray, codes)),
            "cores": cores}


def run_encode(work: Path, n_files: int) -> str:
    from PIL import Image

    from lookalike.config import InputSpec, ModelConfig
    from lookalike.data.datasets import load_dataset
    from lookalike.models.modelio import save_model
    from lookalike.models.networks import build_model

    folder = work / f"pngs-{n_files}"
    if not folder.is_dir():
        tmp = Path(tempfile.mkdtemp(dir=work))
        images = load_dataset("fashion-mnist", "queries").images[:n_files]
        for i, image in enumerate(images):
            sub = tmp / f"{i // 1000:02d}"
            sub.mkdir(exist_ok=True)
            Image.fromarray(image[:, :, 0]).save(sub / f"{i:05d}.png")
        tmp.rename(folder)
    contrastive = work / "contrastive-untrained"
    if not (contrastive / "config.json").is_file():
        import torch

        torch.manual_seed(0)
        save_model(contrastive, build_model(ModelConfig(arch="contrastive", input=InputSpec(1, 28, 28))))
    rows = [_child(["encode", str(m), str(folder)]) for m in (_model(work), contrastive)]
    body = table(["encoder", "images", "in-process s", "in-process images/s", "Ray s",
                  "Ray images/s", "Ray start s", "same codes"],
                 [[r["arch"], f"{r['n']:,}", _fmt(r["in_process_s"], 1),
                   _fmt(r["n"] / r["in_process_s"]), _fmt(r["ray_s"], 1), _fmt(r["n"] / r["ray_s"]),
                   _fmt(r["ray_init_s"], 1),
                   "bitwise" if r["bitwise"] else ("to 1e-5" if r["same"] else "NO")] for r in rows])
    text = f"""## Scale: Ray Data (local) vs in-process encoding

`python benchmarks/scale.py encode` — {now()}, commit {commit()}, {machine()}; ray {_version("ray")}. \
Other processes shared the cores, so times are upper bounds.

{n_files:,} fashion-mnist test images as PNG files (28x28 grey, in {n_files // 1000 or 1} \
folders), read, decoded and encoded: in process (`load_folder` + `ModelEncoder`, torch on \
all cores), and with `--engine ray` on a local Ray started with `num_cpus` = {rows[0]["cores"]} \
(decoding tasks, then an autoscaling pool of encoder actors, one CPU each, at most \
cores - 1). *Ray s* excludes starting Ray (*Ray start s*, paid once per `lookalike index`). \
*same codes*: Ray's codes against the in-process ones.

{body}
"""
    write_section("scale-encode", text)
    return text


# ---------------------------------------------------------------------------- main
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "faiss":
            out: Any = _faiss_worker(rest[0], json.loads(rest[1]), Path(rest[2]))
        elif kind == "milvus":
            out = _milvus_worker(json.loads(rest[0]), Path(rest[1]))
        else:
            out = _encode_worker(rest[0], rest[1])
        print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="+", choices=("index", "encode"))
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors in the index part")
    parser.add_argument("--queries", type=int, default=1_000)
    parser.add_argument("--files", type=int, default=10_000, help="image files in the encode part")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lookalike-scale")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for part in args.parts:
        text = run_index(args.work, args.n, args.queries) if part == "index" else run_encode(
            args.work, args.files)
        print(text)


if __name__ == "__main__":
    main()
