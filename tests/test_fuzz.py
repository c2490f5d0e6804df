"""The service against its own OpenAPI schema: schemathesis, run as a user would run it,
generates requests (valid and not, for every operation, then chains of them) and sends them
to a real ``lookalike serve`` on loopback, with the token, so that changes are fuzzed too.
No answer may be a 5xx, and each must match the schema: its status code, content type and
body."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from lookalike.app.cli import main
from lookalike.data.datasets import load_dataset
from lookalike.data.images import content_hash
from lookalike.search.collection import Collection
from servers import serving

TOKEN = "fuzz-test-token-0123456789abcdef"
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance")
#: per operation and phase; about 400 requests in all, ~20 s on two busy cores
MAX_EXAMPLES = 20
#: fixed, so that a run is reproducible (`st run ... --seed 0` replays it)
SEED = 0
OPERATIONS = {("POST", "/api/search"), ("GET", "/api/items/{item_id}"),
              ("GET", "/api/items/{item_id}/image"), ("GET", "/api/items/{item_id}/original"),
              ("POST", "/api/items"),
              ("DELETE", "/api/items/{item_id}"), ("GET", "/api/health"), ("GET", "/api/stats"),
              ("GET", "/api/duplicates"), ("POST", "/api/duplicates/move"),
              ("POST", "/api/duplicates/undo")}


@pytest.fixture(scope="module")
def small_collection(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 digits indexed with the shared model (re-ranking on): quick to change."""
    root = tmp_path_factory.mktemp("fuzz")
    digits = load_dataset("digits", "database")
    np.savez(root / "small.npz", x=digits.images[:48, :, :, 0], y=digits.labels[:48])
    assert main(["-q", "index", "--model", str(trained.model), "--dataset", str(root / "small.npz"),
                 "--out", str(root / "collection")]) == 0
    return root / "collection"


def fetch_json(url: str, method: str = "GET") -> tuple[int, dict]:
    request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.load(answer)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_the_api_keeps_to_its_schema(small_collection: Path, tmp_path: Path) -> None:
    path = shutil.copytree(small_collection, tmp_path / "collection")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    report, har = tmp_path / "report.json", tmp_path / "requests.har"
    # (a proxy set for the machine must not see loopback requests)
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    with serving(path, "--token-file", str(token_file)) as url:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", url + "openapi.json",
             "--checks", ",".join(CHECKS), "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
             "--workers", "1", "--request-timeout", "60", "--header", f"Authorization: Bearer {TOKEN}",
             "--report", "json,har", "--report-json-path", str(report), "--report-har-path", str(har)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        # the service still answers (its collection is checked below)
        status, stats = fetch_json(url + "api/stats")
        assert status == 200
    output = run.stdout[-8000:] + run.stderr[-2000:]
    assert report.exists(), output
    summary = json.loads(report.read_text())
    assert summary["failures"] == [] and summary["errors"] == [], output
    assert run.returncode == 0 and summary["complete"] and summary["stop_reason"] == "completed", output
    assert summary["operations"]["tested"] == len(OPERATIONS), output

    entries = json.loads(har.read_text())["log"]["entries"]
    answered = collections.Counter()
    for e in entries:
        method = e["request"]["method"]
        route = "/" + e["request"]["url"].split("/", 3)[3].split("?")[0]
        answered[method, route, e["response"]["status"]] += 1
    print(f"schemathesis sent {len(entries)} requests: {sorted(answered.items())}")  # (pytest -rP)
    assert 200 <= len(entries) <= 1500, len(entries)
    assert not [k for k in answered if k[2] >= 500], answered
    # the token went with the requests: changes went through (a valid image was added, an
    # item removed); the only 401s are the few requests schemathesis sends without it
    assert any(m == "POST" and r == "/api/items" and s == 201 for m, r, s in answered), answered
    assert any(m == "DELETE" and s == 200 for m, _, s in answered), answered
    unauthorised = sum(n for (_, _, s), n in answered.items() if s == 401)
    without_token = sum(1 for e in entries if not any(h["name"].lower() == "authorization"
                                                      for h in e["request"]["headers"]))
    assert unauthorised == without_token
    _assert_whole(path, entries, stats["count"])


def _assert_whole(path: Path, entries: list[dict], count: int) -> None:
    """The collection at ``path``, opened with every checksum checked, holds exactly the items
    the service's answers imply (the 48 indexed, plus those added, less those removed: ids are
    never reused), and its ids, codes, index, pictures and metadata rows line up."""
    added, removed = set(), set()
    for e in entries:
        method, status = e["request"]["method"], e["response"]["status"]
        if method == "POST" and e["request"]["url"].endswith("/api/items") and status == 201:
            added |= {it["id"] for it in json.loads(e["response"]["content"]["text"])["items"] if it["added"]}
        elif method == "DELETE" and status == 200:
            removed.add(json.loads(e["response"]["content"]["text"])["id"])
    assert added and removed
    c = Collection.open(path, verify=True)
    ids = c.ids.tolist()
    assert set(ids) == (set(range(48)) | added) - removed
    assert len(set(ids)) == len(ids) == len(c.backend) == len(c.embeddings) == c.manifest["count"] == count
    with contextlib.closing(sqlite3.connect(path / "metadata.sqlite")) as db:
        rows = {i: h for i, h in db.execute("SELECT id, hash FROM items")}
    assert rows == {i: content_hash(c.image(i)) for i in ids}  # each row's picture is stored
    _, near = c.search_ids(c.ids, 1, rerank=False)
    assert (near >= 0).all() and set(near.ravel().tolist()) <= set(ids)
