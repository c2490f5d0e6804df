"""Load test of the search service on loopback: concurrent clients, a fixed number of
requests, adds and deletes mixed into the searches.

    python benchmarks/service.py                          # 50 clients, 2,000 requests a run
    python benchmarks/service.py --clients 20 --requests 500 --writes 0.15
    python benchmarks/service.py --collection coll --name "..."  # an existing collection (copied)
    python benchmarks/service.py --workers 1,2                # 1 server process, then 2

Without ``--collection`` it trains the recipe for one epoch on mnist-5k and indexes the
database split (4,000 images): the model's quality does not matter here, its cost does. A
run per number of server processes (``--workers``, default 1 then 2) and share of writes
(default: none, then 15%), each on a fresh copy of the collection served by its own
``lookalike.app.service.serve`` on 127.0.0.1 (a free port). Requests: searches by an
uploaded PNG (mnist-5k query images) and by a stored id, half re-ranked and half exact,
plus adds of new images and deletes of items the run added. At the end every item the run
added and did not delete must be stored and found by an exact search with a near-copy of
its image (one grey level off), and every deleted one must be gone. Every request goes to
loopback; the number of requests is fixed and a run stops after 10 minutes whatever is
left.

Writes the table to docs/benchmarks.md (section "service") and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
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

from lookalike.app.cli import main as lookalike  # noqa: E402
from lookalike.data.datasets import load_dataset  # noqa: E402
from lookalike.search.collection import Collection  # noqa: E402

KINDS = ("search-image", "search-id", "add", "delete")


def mix(writes: float) -> dict[str, float]:
    """Shares of each request kind: ``writes`` split 2:1 between adds and deletes, the rest
    of the requests searches, 5 by image for 1 by id."""
    searches = 1.0 - writes
    return {"search-image": searches * 5 / 6, "search-id": searches / 6,
            "add": writes * 2 / 3, "delete": writes / 3}
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
    """``lookalike.app.service.serve`` in a subprocess on a free loopback port."""

    def __init__(self, collection: Path, threads: int | None, workers: int = 1) -> None:
        code = ("import sys; from lookalike.app.service import serve; "
                "serve(sys.argv[1], '127.0.0.1', 0, log_level='warning', workers=int(sys.argv[2]), "
                "on_ready=lambda url: print(url, flush=True))")
        env = dict(os.environ)
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        self.proc = subprocess.Popen([sys.executable, "-c", code, str(collection), str(workers)],
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
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: Counter[str] = field(default_factory=Counter)
    done: int = 0
    seconds: float = 0.0
    presence: Counter[int] = field(default_factory=Counter)  # +1 per add, -1 per delete
    deleted: set[int] = field(default_factory=set)
    complete: bool = True


class Connection:
    """A minimal HTTP/1.1 keep-alive client connection. (httpx's async pool spends about a
    millisecond of CPU a request at 50 connections, on the same two cores as the server: the
    load generator must cost far less than what it measures.)"""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = ""
                      ) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Length: {len(body)}\r\n"
                + (f"Content-Type: {content_type}\r\n" if content_type else "") + "\r\n")
        try:
            self.writer.write(head.encode() + body)
            await self.writer.drain()
            lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            await self.close()
            raise
        if headers.get("connection") == "close":
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def multipart(fields: dict[str, str], files: list[tuple[str, str, bytes]]) -> tuple[bytes, str]:
    boundary = "lookalike-benchmark-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    for field_name, filename, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; '
                     f'filename="{filename}"\r\nContent-Type: image/png\r\n\r\n'.encode()
                     + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


async def load(url: str, clients: int, requests: int, writes: float, queries: np.ndarray,
               new_images: np.ndarray, stored_ids: np.ndarray, seed: int) -> Run:
    rng = np.random.default_rng(seed)
    shares = mix(writes)
    kinds = rng.choice(list(shares), size=requests, p=list(shares.values()))
    query_pngs = [png(q) for q in queries]  # encoded once: the clients only send
    new_pngs = [png(im) for im in new_images]
    host, port = url.removeprefix("http://").split(":")
    run = Run()
    pool: list[int] = []  # added by this run, not yet deleted: the delete candidates
    next_new = 0
    plan = iter(range(requests))
    deadline = time.monotonic() + DEADLINE_S
    connections = [Connection(host, int(port)) for _ in range(clients)]
    for i in range(10):  # warm-up (first encodes), not timed
        body, ctype = multipart({}, [("file", "w.png", query_pngs[i])])
        await connections[0].request("POST", "/api/search", body, ctype)

    async def client(http: Connection) -> None:
        nonlocal next_new
        for n in plan:
            if time.monotonic() > deadline:
                run.complete = False
                return
            kind = str(kinds[n])
            if kind == "delete" and not pool:
                kind = "search-id"
            exact = n % 2 == 0
            start = time.perf_counter()
            try:
                if kind == "search-image":
                    fields = {"k": "10", **({"rerank": "false"} if exact else {})}
                    status, data = await http.request("POST", "/api/search", *multipart(
                        fields, [("file", f"q{n}.png", query_pngs[n % len(query_pngs)])]))
                elif kind == "search-id":
                    body = {"id": int(stored_ids[n % len(stored_ids)]), "k": 10,
                            **({"rerank": False} if exact else {})}
                    status, data = await http.request("POST", "/api/search", json.dumps(body).encode(),
                                                      "application/json")
                elif kind == "add":
                    image = new_pngs[next_new % len(new_pngs)]
                    next_new += 1
                    status, data = await http.request("POST", "/api/items", *multipart(
                        {}, [("files", f"new{n}.png", image)]))
                else:
                    victim = pool.pop(int(rng.integers(len(pool))))
                    status, data = await http.request("DELETE", f"/api/items/{victim}")
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                run.errors[f"{kind}: {type(exc).__name__}"] += 1
                continue
            run.latencies[kind].append(time.perf_counter() - start)
            run.done += 1
            if status >= 400:
                run.errors[f"{kind}: HTTP {status}"] += 1
            elif kind == "add":
                item = json.loads(data)["items"][0]
                if item["added"]:
                    run.presence[item["id"]] += 1
                    pool.append(item["id"])
            elif kind == "delete":
                run.presence[victim] -= 1
                run.deleted.add(victim)
        await http.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
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


def fraction_list(text: str) -> list[float]:
    values = [float(v) for v in text.split(",") if v.strip()]
    if not values or not all(0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected fractions in [0, 1), got {text!r}")
    return values


def count_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or not all(1 <= v <= 16 for v in values):
        raise argparse.ArgumentTypeError(f"expected counts in 1..16, got {text!r}")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=2000, help="per run (one run per mix)")
    ap.add_argument("--writes", type=fraction_list, default=[0.0, 0.15],
                    help="share(s) of adds + deletes (2:1), comma-separated; a run for each "
                         "(default 0,0.15: searches only, then with changes)")
    ap.add_argument("--collection", help="an existing collection (default: train and index mnist-5k)")
    ap.add_argument("--name", default="the collection given",
                    help="how the table names --collection's contents")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of the server (default 1: requests are the parallelism; "
                         "0 leaves torch's default)")
    ap.add_argument("--workers", type=count_list, default=[1, 2],
                    help="server processes (lookalike serve --workers), comma-separated; "
                         "runs for each (default 1,2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print the table, leave docs alone")
    args = ap.parse_args()
    if not 1 <= args.clients <= 500 or not 1 <= args.requests <= 100_000:
        raise SystemExit("--clients must be in 1..500 and --requests in 1..100000")

    queries = load_dataset("mnist-5k", "queries").images
    rows, notes = [], []
    with tempfile.TemporaryDirectory(prefix="lookalike-bench-") as tmp:
        work = Path(tmp)
        source = Path(args.collection) if args.collection else build_collection(work)
        for workers, writes in [(w, f) for w in args.workers for f in args.writes]:
            coll = work / f"serve-{workers}-{writes}"
            shutil.copytree(source, coll)
            stored = Collection.open(coll).ids
            server = Server(coll, args.threads or None, workers)
            try:
                # searches use the first 500 query images; adds the other 500 (new content)
                run = asyncio.run(load(server.url, args.clients, args.requests, writes,
                                       queries[:500], queries[500:], stored, args.seed))
                found, kept, still = check(server.url, run)
                stats = httpx.get(server.url + "/api/stats").json()
            finally:
                server.stop()
            shutil.rmtree(coll)
            every = [x for v in run.latencies.values() for x in v]
            errors = sum(run.errors.values())
            ok = found == kept and still == 0 and errors == 0 and run.complete
            searchable = (f"{'yes' if ok else 'NO'} ({found}/{kept} found, {still} deleted left)"
                          if writes else "(no changes)")
            searches = run.latencies["search-image"] + run.latencies["search-id"]
            rows.append([str(workers), f"{writes:.0%}", f"{run.done:,}", f"{run.done / run.seconds:.0f}",
                         ms(every, 50), ms(every, 95), ms(every, 99),
                         ms(searches, 50), ms(searches, 99), ms(run.latencies["add"], 50),
                         ms(run.latencies["delete"], 50), str(errors), searchable])
            counts = ", ".join(f"{len(v)} {k}" for k, v in run.latencies.items() if v)
            notes.append(f"{workers} x {writes:.0%} writes: {counts}; final count {stats['count']:,}"
                         + (f"; errors {dict(run.errors)}" if run.errors else "")
                         + ("" if run.complete else "; STOPPED AT THE DEADLINE"))
            print(" | ".join(rows[-1]), "--", notes[-1], flush=True)

    header = ["processes", "writes", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms",
              "search p50", "search p99", "add p50", "delete p50", "errors", "all added searchable"]
    writes_arg = ",".join(f"{w:g}" for w in args.writes)
    workers_arg = ",".join(map(str, args.workers))
    body = "\n".join([
        "## Service load test",
        "",
        f"`python benchmarks/service.py --clients {args.clients} --requests {args.requests} "
        f"--writes {writes_arg} --workers {workers_arg}"
        + (" --collection COLL" if args.collection else "")
        + f"` — {now()}, commit {commit()}, {machine()}.",
        "",
        f"Collection: {'mnist-5k database (4,000 images)' if not args.collection else args.name}, "
        f"{stats['model']['arch']} model, {stats['dimension']}-d codes, index {stats['index']['name']} "
        f"{stats['index'].get('factory', '')}, re-ranking {stats['rerank']}. `lookalike.app.service` "
        f"on 127.0.0.1 (uvicorn; *processes*: `lookalike serve --workers`, each with "
        f"OMP_NUM_THREADS={args.threads or 'default'}); "
        f"{args.clients} concurrent keep-alive clients (plain HTTP/1.1 over asyncio) in another process "
        "on the same machine, "
        f"{args.requests:,} requests a run. Requests: searches (k = 10, half re-ranked, half exact), "
        "5 by an uploaded PNG for 1 by a stored id, and the *writes* share of changes: adds of one "
        "new image and deletes of an item the run added, 2:1. Latency is per request as the client "
        "sees it, queueing included. *All added searchable*: every item added and not deleted is "
        "stored and an exact search with a near-copy of its image (one grey level off) returns it, "
        "and every deleted one is gone.",
        "",
        table(header, rows),
        "",
        "Requests by kind: " + "; ".join(notes) + ".",
        "",
        "Searches read the snapshot of the last commit and never wait for a change: a commit "
        "(one at a time; changes that queue up during one share the next, group commit) writes a "
        "segment or a deletion record and the manifest, then hands the searches the new snapshot "
        "in one assignment. A re-ranked search runs diffusion over its index's nearest items "
        "(the collection's `candidates`, 250 by default), so neither a search nor a commit costs "
        "more as the collection grows (the lifecycle table). One process's searches mostly hold "
        "its GIL; with a process per core they run in parallel, each process reading the "
        "others' commits before its next answer (changes still take the collection's writer "
        "lock one commit at a time). The client runs on the same two cores. With "
        f"{args.clients} closed-loop clients the mean latency is {args.clients} / throughput "
        f"(Little's law): a p99 under 150 ms would need over {args.clients / 0.150:.0f} "
        "requests/s. Repeated runs on this shared machine spread by about ±15% in requests/s.",
    ])
    print(body)
    if not args.no_write:
        print(f"written to {write_section('service', body)}")


if __name__ == "__main__":
    main()
