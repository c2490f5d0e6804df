"""Load test of the search service on loopback: concurrent clients, a fixed number of
requests, adds and deletes mixed into the searches.

    python benchmarks/service.py                          # 50 clients, 2,000 requests, both locks
    python benchmarks/service.py --clients 20 --requests 500 --locks rw
    python benchmarks/service.py --collection coll        # an existing collection (copied)

Without ``--collection`` it trains the recipe for one epoch on mnist-5k and indexes the
database split (4,000 images): the model's quality does not matter here, its cost does.
Each lock gets a fresh copy of the collection and its own ``lookalike.service.serve``
process on 127.0.0.1 (a free port). Requests: searches by an uploaded PNG (mnist-5k query
images) and by a stored id, half re-ranked and half exact, plus adds of new images and
deletes of items this run added. At the end every item this run added and did not delete
must be stored and found by an exact search with a near-copy of its image (one grey level
off), and every deleted one must be gone.

Writes the table to docs/benchmarks.md (section "service") and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import commit, machine, now, table, write_section  # noqa: E402

from lookalike.cli import main as lookalike  # noqa: E402
from lookalike.datasets import load_dataset  # noqa: E402

MIX = {"search-image": 0.70, "search-id": 0.15, "add": 0.10, "delete": 0.05}
DEADLINE_S = 600  # a run stops here whatever is left (bounded, reported as incomplete)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buf, "PNG")
    return buf.getvalue()


def build_collection(work: Path) -> Path:
    model, coll = work / "model", work / "collection"
    for argv in (["-q", "train", "--dataset", "mnist-5k", "--epochs", "1", "--device", "cpu",
                  "--out", str(model)],
                 ["-q", "index", "--model", str(model), "--dataset", "mnist-5k", "--out", str(coll)]):
        if lookalike(argv) != 0:
            raise SystemExit(f"lookalike {' '.join(argv)} failed")
    return coll


class Server:
    """``lookalike.service.serve`` in a subprocess on a free loopback port."""

    def __init__(self, collection: Path, lock: str, threads: int | None) -> None:
        code = ("import sys; from lookalike.service import serve; "
                "serve(sys.argv[1], '127.0.0.1', 0, lock=sys.argv[2], log_level='warning', "
                "on_ready=lambda url: print(url, flush=True))")
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(collection), lock],
                                     stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("http://127.0.0.1:"):
            self.stop()
            raise SystemExit(f"the server did not start (printed {line!r})")
        self.url = line.strip().rstrip("/")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()


@dataclass
class Run:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in MIX})
    errors: Counter[str] = field(default_factory=Counter)
    done: int = 0
    seconds: float = 0.0
    presence: Counter[int] = field(default_factory=Counter)  # +1 per add, -1 per delete
    deleted: set[int] = field(default_factory=set)
    complete: bool = True


async def load(url: str, clients: int, requests: int, queries: np.ndarray, new_images: np.ndarray,
               stored_ids: np.ndarray, seed: int) -> Run:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(list(MIX), size=requests, p=list(MIX.values()))
    run = Run()
    pool: list[int] = []  # added by this run, not yet deleted: the delete candidates
    next_new = 0
    plan = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    deadline = time.monotonic() + DEADLINE_S
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        for i in range(10):  # warm-up (first encodes, connections), not timed
            await http.post("/api/search", files={"file": ("w.png", png(queries[i]), "image/png")})

        async def client() -> None:
            nonlocal next_new
            for n in plan:
                if time.monotonic() > deadline:
                    run.complete = False
                    return
                kind = str(kinds[n])
                if kind == "delete" and not pool:
                    kind = "search-id"
                rerank = {} if n % 2 else {"rerank": "false"}
                start = time.perf_counter()
                try:
                    if kind == "search-image":
                        q = png(queries[n % len(queries)])
                        r = await http.post("/api/search", data={"k": "10", **rerank},
                                            files={"file": (f"q{n}.png", q, "image/png")})
                    elif kind == "search-id":
                        body = {"id": int(stored_ids[n % len(stored_ids)]), "k": 10}
                        if rerank:
                            body["rerank"] = False
                        r = await http.post("/api/search", json=body)
                    elif kind == "add":
                        image = new_images[next_new % len(new_images)]
                        next_new += 1
                        r = await http.post("/api/items", files={
                            "files": (f"new{n}.png", png(image), "image/png")})
                    else:
                        victim = pool.pop(int(rng.integers(len(pool))))
                        r = await http.delete(f"/api/items/{victim}")
                except httpx.HTTPError as exc:
                    run.errors[f"{kind}: {type(exc).__name__}"] += 1
                    continue
                run.latencies[kind].append(time.perf_counter() - start)
                run.done += 1
                if r.status_code >= 400:
                    run.errors[f"{kind}: HTTP {r.status_code}"] += 1
                elif kind == "add":
                    item = r.json()["items"][0]
                    if item["added"]:
                        run.presence[item["id"]] += 1
                        pool.append(item["id"])
                elif kind == "delete":
                    run.presence[victim] -= 1
                    run.deleted.add(victim)

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        run.seconds = time.perf_counter() - t0
    return run


def check(url: str, run: Run) -> tuple[int, int, int]:
    """(kept items found by search, kept items, deleted items still there)."""
    kept = [i for i, c in run.presence.items() if c > 0]
    gone = [i for i in run.deleted if run.presence[i] <= 0]
    found = 0
    with httpx.Client(base_url=url, timeout=60) as http:
        for item in kept:
            r = http.get(f"/api/items/{item}/image")
            if r.status_code != 200:
                continue
            near = np.array(Image.open(io.BytesIO(r.content)))
            near = near[:, :, None] if near.ndim == 2 else near
            near[0, 0, 0] = near[0, 0, 0] + 1 if near[0, 0, 0] < 255 else 254
            s = http.post("/api/search", data={"k": "3", "rerank": "false"},
                          files={"file": ("near.png", png(near), "image/png")})
            found += s.status_code == 200 and item in [x["id"] for x in s.json()["results"]]
        still = sum(http.get(f"/api/items/{item}").status_code != 404 for item in gone)
    return found, len(kept), still


def ms(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q) * 1000:.0f}" if values else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--locks", default="rw,exclusive", help="comma-separated: rw, exclusive")
    ap.add_argument("--collection", help="an existing collection (default: train and index mnist-5k)")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of the server (default 1: requests are the parallelism; "
                         "0 leaves torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs alone")
    args = ap.parse_args()
    if not 1 <= args.clients <= 500 or not 1 <= args.requests <= 100_000:
        raise SystemExit("--clients must be in 1..500 and --requests in 1..100000")

    queries = load_dataset("mnist-5k", "queries").images
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        work = Path(tmp)
        source = Path(args.collection) if args.collection else build_collection(work)
        rows, notes = [], []
        for lock in [s.strip() for s in args.locks.split(",") if s.strip()]:
            coll = work / f"serve-{lock}"
            shutil.copytree(source, coll)
            stored = np.load(coll / "ids.npy")
            server = Server(coll, lock, args.threads or None)
            try:
                # searches use the first 500 query images; adds bring in the other 500, new content
                run = asyncio.run(load(server.url, args.clients, args.requests, queries[:500],
                                       queries[500:], stored, args.seed))
                found, kept, still = check(server.url, run)
                stats = httpx.get(server.url + "/api/stats").json()
            finally:
                server.stop()
            every = [x for v in run.latencies.values() for x in v]
            errors = sum(run.errors.values())
            ok = found == kept and still == 0 and errors == 0 and run.complete
            rows.append([lock, str(args.clients), f"{run.done:,}", f"{run.done / run.seconds:.0f}",
                         ms(every, 50), ms(every, 95), ms(every, 99),
                         ms(run.latencies["search-image"], 50), ms(run.latencies["add"], 50),
                         ms(run.latencies["delete"], 50), str(errors),
                         f"{'yes' if ok else 'NO'} ({found}/{kept}, {still} deleted left)"])
            counts = {k: len(v) for k, v in run.latencies.items()}
            notes.append(f"{lock}: {counts}, errors {dict(run.errors) or 0}, final count "
                         f"{stats['count']:,}" + ("" if run.complete else ", STOPPED AT THE DEADLINE"))
            print(rows[-1], notes[-1], flush=True)

    header = ["lock", "clients", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms",
              "search p50", "add p50", "delete p50", "errors", "all added searchable"]
    model = stats["model"]["arch"]
    body = "\n".join([
        "## Service load test",
        "",
        f"`python benchmarks/service.py --clients {args.clients} --requests {args.requests}"
        f" --locks {args.locks}` — {now()}, commit {commit()}, {machine()}.",
        "",
        f"Collection: {'mnist-5k database (4,000 images), ' if not args.collection else ''}"
        f"{model} model, {stats['dimension']}-d codes, index {stats['index']['name']} "
        f"{stats['index'].get('factory', '')}, re-ranking {stats['rerank']}. One uvicorn process on "
        f"127.0.0.1 (OMP_NUM_THREADS={args.threads or 'default'}), the clients (httpx, asyncio) in "
        "another on the same machine. Mix: "
        + ", ".join(f"{int(v * 100)}% {k}" for k, v in MIX.items())
        + "; searches k = 10, half re-ranked, half exact. Latency is per request as the client sees it "
        "(queueing included). *All added searchable*: every item added and not deleted is stored and "
        "an exact search with a near-copy of its image returns it; every deleted one is gone.",
        "",
        table(header, rows),
        "",
        "Requests per kind and errors: " + "; ".join(notes) + ".",
        "",
        "`rw` lets searches run together and gives a change the collection alone; `exclusive` "
        "serialises every call. An add or a delete rewrites the collection's arrays and rebuilds the "
        "k-NN graph, so its latency grows with the collection and every search waits for it.",
    ])
    print(body)
    if not args.no_write:
        print(f"written to {write_section('service', body)}")


if __name__ == "__main__":
    main()
