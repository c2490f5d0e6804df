"""Tests for lookalike.data.download against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lookalike.data.download import (
    MNIST_FILES,
    MNIST_MIRRORS,
    default_cache_dir,
    download_mnist,
    fetch,
)
from lookalike.data.idx import load_idx_split, write_idx
from lookalike.errors import DataError


@dataclass
class Server:
    """A running local server: its base URL (ending in '/') and the paths it was asked for."""

    url: str
    root: Path
    requests: list[str] = field(default_factory=list)


class _QuietHandler(SimpleHTTPRequestHandler):
    """Serves files from a folder, records each request path, logs nothing."""

    def __init__(self, *args: Any, log: list[str], lock: threading.Lock, **kwargs: Any) -> None:
        self._log = log
        self._lock = lock
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        with self._lock:
            self._log.append(self.path)
        if self.path.startswith("/short/"):  # promise more bytes than we send
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"only a few bytes")
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    log: list[str] = []
    handler = functools.partial(_QuietHandler, directory=str(root), log=log, lock=threading.Lock())
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        port = httpd.server_address[1]
        yield Server(url=f"http://127.0.0.1:{port}/", root=root, requests=log)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def _closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _fake_mnist(directory: Path) -> dict[str, str]:
    """Write tiny MNIST-named .gz IDX files into ``directory``; return {name: md5}."""
    rng = np.random.default_rng(7)
    for split, n in (("train", 12), ("t10k", 5)):
        write_idx(
            directory / f"{split}-images-idx3-ubyte.gz",
            rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        )
        write_idx(
            directory / f"{split}-labels-idx1-ubyte.gz",
            rng.integers(0, 10, size=n).astype(np.uint8),
        )
    files = {name: _md5(directory / name) for name in MNIST_FILES}
    assert len(files) == 4
    return files


def _listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


#: ``torchvision.datasets.MNIST.resources`` as published in pytorch/vision,
#: torchvision/datasets/mnist.py (commit 01977a187961243eaf66ead246fd92a5c6c7ccfc), copied from
#: there and not from lookalike. No real MNIST file is at hand offline to hash, so this
#: independent copy is what catches a mistyped digit in ``MNIST_FILES`` (a format check
#: cannot: a typo leaves 32 hex digits).
TORCHVISION_MNIST_RESOURCES = [
    ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
]


def test_constants() -> None:
    assert MNIST_FILES == dict(TORCHVISION_MNIST_RESOURCES)
    assert MNIST_MIRRORS[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert all(m.endswith("/mnist/") or m.endswith("/exdb/mnist/") for m in MNIST_MIRRORS)


def test_the_default_checksums_are_the_ones_enforced(server: Server, tmp_path: Path) -> None:
    """``download_mnist`` without ``files`` checks every file against ``MNIST_FILES``: files
    that are not the real MNIST are refused, the message naming the expected MD5."""
    _fake_mnist(server.root)
    with pytest.raises(DataError) as info:
        download_mnist(tmp_path / "cache", mirrors=[server.url])
    name, md5 = TORCHVISION_MNIST_RESOURCES[0]
    assert f"does not match expected {md5}" in str(info.value) and name in str(info.value)
    assert _listing(tmp_path / "cache" / "mnist") == []


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("LOOKALIKE_CACHE")
    assert default_cache_dir() == tmp_path / "xdg" / "lookalike"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "lookalike"


def test_download_mnist_and_cache_hit(server: Server, tmp_path: Path) -> None:
    files = _fake_mnist(server.root)
    cache = tmp_path / "cache"
    out = download_mnist(cache, mirrors=[server.url], files=files)
    assert out == cache / "mnist"
    assert _listing(out) == sorted(files)
    for name, md5 in files.items():
        assert _md5(out / name) == md5
    assert sorted(server.requests) == sorted(f"/{name}" for name in files)

    images, labels = load_idx_split(out, "train")
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (12,) and labels.dtype == np.int64
    images, labels = load_idx_split(out, "t10k")
    assert images.shape == (5, 28, 28) and labels.shape == (5,)

    # second call: everything verified locally, no request at all
    assert download_mnist(cache, mirrors=[server.url], files=files) == out
    assert len(server.requests) == 4


def test_corrupt_cached_file_is_fetched_again(server: Server, tmp_path: Path) -> None:
    files = _fake_mnist(server.root)
    cache = tmp_path / "cache"
    download_mnist(cache, mirrors=[server.url], files=files)
    (cache / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    download_mnist(cache, mirrors=[server.url], files=files)
    assert server.requests[4:] == ["/t10k-labels-idx1-ubyte.gz"]
    assert _md5(cache / "mnist" / "t10k-labels-idx1-ubyte.gz") == files["t10k-labels-idx1-ubyte.gz"]


def test_wrong_checksum_leaves_nothing(server: Server, tmp_path: Path) -> None:
    files = _fake_mnist(server.root)
    name = "train-labels-idx1-ubyte.gz"
    real = files[name]
    bad = dict(files, **{name: "0" * 32})
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=rf"{name}.*{server.url}.*md5 {real} does not match"):
        download_mnist(cache, mirrors=[server.url], files=bad)
    mnist = cache / "mnist"
    assert name not in _listing(mnist)
    assert all(not n.startswith(".") for n in _listing(mnist))  # no temp files

    dest = tmp_path / "direct" / name
    with pytest.raises(
        DataError, match=rf"{name}: checksum mismatch .* md5 {real} does not match expected 0{{32}}"
    ):
        fetch(server.url + name, dest, md5="0" * 32)
    assert _listing(dest.parent) == []


def test_sha256_and_no_checksum(server: Server, tmp_path: Path) -> None:
    payload = b"hello, lookalike\n" * 1000
    (server.root / "blob.bin").write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "d" / "blob.bin"
    assert fetch(server.url + "blob.bin", dest, sha256=digest.upper()) == dest
    assert dest.read_bytes() == payload
    with pytest.raises(DataError, match="sha256"):
        fetch(server.url + "blob.bin", tmp_path / "e" / "blob.bin", sha256="f" * 64)
    fetch(server.url + "blob.bin", tmp_path / "f" / "blob.bin")
    assert (tmp_path / "f" / "blob.bin").read_bytes() == payload
    with pytest.raises(DataError, match="bad md5 checksum 'xyz'"):
        fetch(server.url + "blob.bin", tmp_path / "g" / "blob.bin", md5="xyz")


def test_first_mirror_unreachable_falls_back(server: Server, tmp_path: Path) -> None:
    files = _fake_mnist(server.root)
    dead = _closed_port_url()
    out = download_mnist(tmp_path / "cache", mirrors=[dead, server.url.rstrip("/")], files=files)
    assert _listing(out) == sorted(files)
    assert len(server.requests) == 4


def test_all_mirrors_fail(server: Server, tmp_path: Path) -> None:
    files = _fake_mnist(server.root)
    dead = _closed_port_url()
    missing = server.url + "nothing-here/"
    with pytest.raises(DataError) as info:
        download_mnist(tmp_path / "cache", mirrors=[dead, missing], files=files)
    message = str(info.value)
    assert "\n" not in message
    assert "any mirror" in message and dead in message and missing in message
    assert "HTTP 404" in message
    assert _listing(tmp_path / "cache" / "mnist") == []
    with pytest.raises(DataError, match="no mirrors"):
        download_mnist(tmp_path / "cache", mirrors=[], files=files)


def test_http_error_names_url(server: Server, tmp_path: Path) -> None:
    url = server.url + "absent.gz"
    with pytest.raises(DataError, match=rf"download of {url} failed: HTTP 404"):
        fetch(url, tmp_path / "absent.gz")
    assert _listing(tmp_path) == ["served"]


def test_short_body_is_an_error(server: Server, tmp_path: Path) -> None:
    url = server.url + "short/x"
    with pytest.raises(DataError, match=rf"download of {url} failed"):
        fetch(url, tmp_path / "out" / "x")
    assert _listing(tmp_path / "out") == []


def test_timeout(tmp_path: Path) -> None:
    # A socket that listens but never answers: the connection is made, no response comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.gz"
        with pytest.raises(DataError, match=rf"download of {url} failed: .*timed out"):
            fetch(url, tmp_path / "x.gz", timeout=0.3)
    assert _listing(tmp_path) == []
