"""Fetch MNIST into a local cache when online, verifying every file's checksum.

Downloads are atomic: data is streamed to a temporary file next to the destination,
checked, fsynced and renamed into place, so an interrupted or corrupt download never
leaves a partial file under the final name. Nothing here is needed offline: a cache
that already holds verified files is used without touching the network.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DataError
from ..fsutil import fsync_dir

__all__ = ["MNIST_FILES", "MNIST_MIRRORS", "default_cache_dir", "download_mnist", "fetch"]

logger = logging.getLogger(__name__)

#: The four MNIST files and their MD5 checksums, as in torchvision's
#: ``torchvision.datasets.MNIST.resources``.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

#: The mirrors of ``torchvision.datasets.MNIST.mirrors``, tried in this order. torchvision
#: lists LeCun's site first; it has answered 403 Forbidden since 2024, so the PyTorch S3
#: mirror comes first here.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

_CHUNK = 1 << 20
_USER_AGENT = "lookalike"
_HEX = re.compile(r"[0-9a-f]+")


def default_cache_dir() -> Path:
    """Return the cache folder: ``$LOOKALIKE_CACHE``, else ``$XDG_CACHE_HOME/lookalike``,
    else ``~/.cache/lookalike``. Empty variables count as unset; the folder is not created.
    """
    env = os.environ.get("LOOKALIKE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "lookalike"
    return Path.home() / ".cache" / "lookalike"


def _expected_digests(md5: str | None, sha256: str | None) -> dict[str, str]:
    """Validate and normalise the expected digests; return {algorithm: lowercase hex}."""
    expected: dict[str, str] = {}
    for name, value, length in (("md5", md5, 32), ("sha256", sha256, 64)):
        if value is None:
            continue
        norm = value.strip().lower()
        if len(norm) != length or not _HEX.fullmatch(norm):
            raise DataError(f"bad {name} checksum {value!r}: expected {length} hex digits")
        expected[name] = norm
    return expected


def _digests_of(path: Path, algorithms: Sequence[str]) -> dict[str, str]:
    hashers = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {a: h.hexdigest() for a, h in hashers.items()}


def _mismatch(expected: Mapping[str, str], actual: Mapping[str, str]) -> str | None:
    """Describe the first digest that differs, or None when all match."""
    for algorithm, want in expected.items():
        if actual[algorithm] != want:
            return f"{algorithm} {actual[algorithm]} does not match expected {want}"
    return None


def fetch(
    url: str,
    dest: Path,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying the given checksum(s).

    If ``dest`` already exists and matches every given checksum (or none is given),
    nothing is downloaded. An existing file with a wrong checksum is replaced. The data
    is streamed to a temporary file in ``dest``'s folder, verified, fsynced and then
    renamed onto ``dest``; on any failure the temporary file is removed.

    Args:
        url: what to download (http, https, or anything else urllib opens).
        dest: the final file; its folder is created if needed.
        md5: expected MD5 as 32 hex digits, or None.
        sha256: expected SHA-256 as 64 hex digits, or None.
        timeout: seconds to wait for the connection and for each read.

    Returns:
        ``dest``.

    Raises:
        DataError: a malformed checksum argument; a network failure (URL error, HTTP
            error status, timeout, connection dropped, fewer bytes than Content-Length);
            or a checksum mismatch (the message names the file and both digests).
    """
    dest = Path(dest)
    expected = _expected_digests(md5, sha256)
    if dest.is_file():
        try:
            problem = _mismatch(expected, _digests_of(dest, list(expected)))
        except OSError as exc:
            problem = f"unreadable ({exc.strerror or exc})"
        if problem is None:
            logger.debug("%s: already present and verified", dest)
            return dest
        logger.warning("%s: existing file is bad (%s); downloading it again", dest, problem)

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"{dest}: cannot create a file there: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        hashers = {a: hashlib.new(a) for a in expected}
        received = 0
        logger.info("downloading %s -> %s", url, dest)
        with os.fdopen(fd, "wb") as out:
            try:
                request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    length_header = response.headers.get("Content-Length")
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        for h in hashers.values():
                            h.update(chunk)
                        received += len(chunk)
            except urllib.error.HTTPError as exc:
                exc.close()
                raise DataError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
            except urllib.error.URLError as exc:
                raise DataError(f"download of {url} failed: {exc.reason}") from None
            except (http.client.HTTPException, OSError) as exc:  # timeouts, resets, disk full
                reason = str(exc) or type(exc).__name__
                raise DataError(f"download of {url} failed: {reason}") from None
            if length_header is not None and length_header.isdigit():
                if received != int(length_header):
                    raise DataError(
                        f"download of {url} failed: got {received} of {length_header} bytes"
                    )
            problem = _mismatch(expected, {a: h.hexdigest() for a, h in hashers.items()})
            if problem is not None:
                raise DataError(f"{dest}: checksum mismatch for data from {url}: {problem}")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)
    logger.info("saved %s (%d bytes)", dest, received)
    return dest


def _mirror_url(mirror: str, name: str) -> str:
    return mirror + name if mirror.endswith("/") else f"{mirror}/{name}"


def download_mnist(
    cache_dir: Path | None = None,
    mirrors: Sequence[str] = MNIST_MIRRORS,
    files: Mapping[str, str] = MNIST_FILES,
) -> Path:
    """Make sure the MNIST files are present and verified in ``cache_dir/mnist``.

    Files already there with the right MD5 are kept without any network access; the
    others are fetched from ``mirrors`` in order, moving to the next mirror when one fails
    (unreachable, HTTP error, or wrong checksum).

    Args:
        cache_dir: the cache root; None means :func:`default_cache_dir`.
        mirrors: base URLs, each followed by the file name to form a download URL.
        files: file name -> expected MD5 (32 hex digits).

    Returns:
        The folder ``cache_dir/mnist`` holding the files, ready for
        :func:`lookalike.data.idx.load_idx_split`.

    Raises:
        DataError: no mirrors, a file name that is not a plain name, or a file that no
            mirror could deliver intact (the message lists each mirror tried and why).
    """
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "mnist"
    mirrors = list(mirrors)
    if not mirrors:
        raise DataError("no mirrors given to download MNIST from")
    for name, md5 in files.items():
        if name in ("", ".", "..") or "/" in name or "\\" in name:
            raise DataError(f"bad MNIST file name {name!r}: expected a plain file name")
        _expected_digests(md5, None)  # a malformed checksum is not a mirror's fault
        failures: list[str] = []
        for mirror in mirrors:
            try:
                fetch(_mirror_url(mirror, name), root / name, md5=md5)
                break
            except DataError as exc:
                logger.warning("%s (trying the next mirror)", exc)
                failures.append(f"{mirror} ({exc})")
        else:
            raise DataError(
                f"could not download {name} into {root} from any mirror; tried "
                + "; ".join(failures)
            )
    return root
