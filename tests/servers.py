"""Helpers for tests that run servers as users do, in a subprocess on loopback:
``lookalike serve`` on a free port (tests/test_browser.py, tests/test_fuzz.py), and a Milvus
standalone server (tests/test_milvus_backend.py, through conftest's ``milvus_server``)."""

from __future__ import annotations

import contextlib
import lzma
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 120


def serving_processes(path: Path) -> int:
    """How many processes run ``lookalike serve PATH`` (Linux: read from ``/proc``; 0 where
    there is none)."""
    count = 0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        count += b"serve" in argv and str(path).encode() in argv
    return count


@contextlib.contextmanager
def serving(path: Path, *options: str) -> Iterator[str]:
    """``lookalike serve PATH OPTIONS`` on a free loopback port; yields the page's URL."""
    env = {k: v for k, v in os.environ.items() if k != "LOOKALIKE_TOKEN"}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "lookalike.app.cli", "-q", "serve", str(path),
                             "--host", "127.0.0.1", "--port", "0", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        seen = []
        while True:
            line = lines.get(timeout=START_TIMEOUT_S)
            assert line is not None, f"lookalike serve exited: {''.join(seen)}"
            seen.append(line)
            if line.startswith("serving "):
                url = line.split(" at ", 1)[1].split()[0]
                break
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
        reader.join(timeout=15)
        assert proc.stdout is not None
        proc.stdout.close()


# ---------------------------------------------------------------------------- Milvus standalone
MILVUS_START_TIMEOUT_S = 120
MILVUS_STOP_TIMEOUT_S = 3
#: The milvus.yaml sections whose ``ip`` each component advertises to the others (and to
#: clients) through etcd; left empty, Milvus picks the machine's first non-loopback address.
MILVUS_COMPONENTS = ("rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord",
                     "dataNode")
#: Where Milvus 2.3 writes its pid file (the first writable one) and ``server_id_<pid>``
#: (always the second), whatever its configuration says.
MILVUS_RUNTIME_DIRS = (Path("/run/milvus"), Path("/tmp/milvus"))
#: milvus.yaml settings that differ from the package's template, given as environment
#: variables (Milvus reads ``SECTION_KEY`` for ``section.key``, ahead of its config file).
MILVUS_SETTINGS: dict[str, object] = {
    # each component advertises loopback to the others and to clients, rather than the
    # machine's first non-loopback address
    **{f"{component}.ip": "127.0.0.1" for component in MILVUS_COMPONENTS},
    # a read at Strong consistency waits for the next time tick: every 50 ms, not 200
    "proxy.timeTickInterval": 50,
    # a load waits for the query coordinator's checks of channels and segments: every
    # 100 ms, not 1 s
    "queryCoord.checkChannelInterval": 100,
    "queryCoord.checkSegmentInterval": 100,
    # a stop waits for the query node to hand its loaded collections over to another one
    # (there is none): 1 s, not 30
    "common.gracefulStopTimeout": 1,
    "queryNode.gracefulStopTimeout": 1,
}


class MilvusStartError(RuntimeError):
    """The Milvus server could not be started (the message ends with its log's last lines)."""


@dataclass(frozen=True)
class MilvusStandalone:
    uri: str  # http://127.0.0.1:PORT, the proxy's gRPC port
    pid: int
    root: Path  # configs/ and logs/ (and bin/ and data/ while it runs)


def free_loopback_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 now (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _unpack_milvus(package_dir: Path, bin_dir: Path) -> Path:
    """The ``milvus`` package ships its server and libraries xz-compressed; unpack them
    (~250 MB) into ``bin_dir``; returns the server executable."""
    bin_dir.mkdir(parents=True)
    for packed in sorted((package_dir / "data" / "bin").glob("*.lzma")):
        target = bin_dir / packed.stem
        with lzma.open(packed) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 2**20)
        target.chmod(0o755)
    return bin_dir / "milvus"


def _write_milvus_config(root: Path, ports: dict[str, int], etcd_ports: tuple[int, int]) -> Path:
    """``root/configs/milvus.yaml`` from the package's template (every port given, data and
    logs under ``root``), and the embedded etcd's own config (its ports would be the fixed
    2379 and 2380), whose path is returned."""
    import milvus

    config = milvus.MilvusServerConfig(data_dir=str(root), **ports)
    try:
        config.resolve()  # (binds each port a moment to check it is free)
    except RuntimeError as exc:
        raise MilvusStartError(f"milvus config: {exc}") from None
    client, peer = (f"http://127.0.0.1:{port}" for port in etcd_ports)
    etcd = root / "configs" / "embed-etcd.yaml"
    etcd.write_text(f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
                    f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
                    f"initial-cluster: default={peer}\n")
    return etcd


def _answers(uri: str, health_url: str) -> bool:
    """Whether every component reports healthy and the proxy answers a request."""
    try:
        with urllib.request.urlopen(health_url, timeout=2) as resp:
            if resp.read().strip() != b"OK":
                return False
    except OSError:
        return False
    import pymilvus

    try:
        client = pymilvus.MilvusClient(uri=uri, timeout=5)
    except pymilvus.MilvusException:
        return False
    try:
        client.list_collections()
        return True
    except pymilvus.MilvusException:
        return False
    finally:
        client.close()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until_answers(proc: subprocess.Popen[bytes], uri: str, health_url: str, log: Path) -> None:
    """Poll until the server answers; MilvusStartError if it exits or MILVUS_START_TIMEOUT_S
    pass first."""
    deadline = time.monotonic() + MILVUS_START_TIMEOUT_S
    while not _answers(uri, health_url):
        if proc.poll() is not None:
            raise MilvusStartError(f"milvus exited with code {proc.returncode}; the end of "
                                   f"{log}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise MilvusStartError(f"milvus did not answer at {uri} within "
                                   f"{MILVUS_START_TIMEOUT_S} s; the end of {log}:\n{_tail(log)}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL after MILVUS_STOP_TIMEOUT_S: its data
    is scratch, and Milvus 2.3.5's shutdown either takes ~1 s (then aborts while closing its
    etcd client: exit code -6) or stalls, its nodes retrying the coordinators it stopped."""
    for sig, wait in ((signal.SIGTERM, MILVUS_STOP_TIMEOUT_S), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _remove_runtime_files(pid: int, alias: str, created: list[Path]) -> None:
    """Remove what the server left in MILVUS_RUNTIME_DIRS, and those of them it ``created``
    if they are empty (a root-owned /tmp/milvus would stop other users' servers)."""
    for runtime in MILVUS_RUNTIME_DIRS:
        for name in (f"server_id_{pid}", f"standalone-{alias}.pid"):
            (runtime / name).unlink(missing_ok=True)
    for runtime in created:
        with contextlib.suppress(OSError):  # not empty: another server's
            runtime.rmdir()


@contextlib.contextmanager
def _no_core_dumps() -> Iterator[None]:
    """Children started inside inherit a core-size limit of 0 (the abort at shutdown
    would otherwise dump ~250 MB where core dumps are on)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    resource.setrlimit(resource.RLIMIT_CORE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, (soft, hard))


@contextlib.contextmanager
def milvus_standalone(root: Path) -> Iterator[MilvusStandalone]:
    """A Milvus standalone server (PyPI's ``milvus`` 2.3.5: its embedded etcd, local storage
    and RocksMQ, nothing downloaded) with everything under ``root``: unpacked binary, config,
    data and logs. Its ports are free loopback ports; clients reach it at
    ``http://127.0.0.1:PORT``. Milvus 2.3 has no listen-address setting: its components'
    gRPC and metrics servers listen on every interface (only the embedded etcd and the
    addresses the components advertise are loopback-only). Stopped on exit, its binary and
    data removed (its configs and logs stay); where ``setpriv`` exists, it also dies with
    this process if that is killed.

    Raises:
        MilvusStartError: it exited, or did not answer within MILVUS_START_TIMEOUT_S.
    """
    import milvus

    keys = [key for key in milvus.MilvusServerConfig().configurable_items if key.endswith("_port")]
    *numbers, etcd_client, etcd_peer, metrics = free_loopback_ports(len(keys) + 3)
    ports = dict(zip(keys, numbers, strict=True)) | {"etcd_port": etcd_client}
    uri = f"http://127.0.0.1:{ports['proxy_port']}"
    alias = f"lookalike-{ports['proxy_port']}"  # names its pid file: servers may run side by side
    log = root / "logs" / "milvus-standalone.log"
    with contextlib.ExitStack() as cleanup:
        for scratch in ("bin", "data"):  # ~250 MB and ~150 MB
            cleanup.callback(shutil.rmtree, root / scratch, ignore_errors=True)
        executable = _unpack_milvus(Path(milvus.__file__).parent, root / "bin")
        settings = {**MILVUS_SETTINGS,
                    "etcd.config.path": _write_milvus_config(root, ports, (etcd_client, etcd_peer))}
        env = {**os.environ, "DEPLOY_MODE": "STANDALONE", "METRICS_PORT": str(metrics),
               "LD_LIBRARY_PATH": str(executable.parent),
               **{key.replace(".", "_").upper(): str(value) for key, value in settings.items()}}
        guard = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []
        created = [runtime for runtime in MILVUS_RUNTIME_DIRS if not runtime.exists()]
        with open(log, "wb") as out, _no_core_dumps():
            proc = subprocess.Popen([*guard, str(executable), "run", "standalone", "-alias", alias],
                                    cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        cleanup.callback(_remove_runtime_files, proc.pid, alias, created)
        cleanup.callback(_stop, proc)
        _wait_until_answers(proc, uri, f"http://127.0.0.1:{metrics}/healthz", log)
        yield MilvusStandalone(uri, proc.pid, root)
