"""The HTTP service's safety: who may change (and read) the collection, and the headers that
keep a browser from running or framing anything it should not.

* :class:`Access` says who may do what; :func:`guards` turns it into FastAPI dependencies:
  401 with ``WWW-Authenticate: Bearer`` for a missing or wrong token (compared with
  :func:`hmac.compare_digest`), 403 for a change to a read-only service. A guard runs before
  a route reads the request's body, so a refused change changes nothing.
* :func:`check_bind` refuses to open changes without a token beyond loopback.
* :class:`HardeningHeaders` adds :data:`HEADERS` to every response; the page and ``/docs``
  set their own Content-Security-Policies (:data:`PAGE_CSP`, :data:`DOCS_CSP`), which allow
  no inline script.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import LookalikeError

# ---------------------------------------------------------------------------- access
#: RFC 6750's token characters; at least 16 of them, so that a token cannot be guessed.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{16,}=*")
_TOKEN_HINT = ("at least 16 characters of A-Z a-z 0-9 - . _ ~ + / (make one with: "
               "python -c 'import secrets; print(secrets.token_urlsafe(32))')")


@dataclass(frozen=True)
class Access:
    """Who may do what.

    ``token``: when set, every change (and, with ``token_reads``, every read of the
    collection too) needs ``Authorization: Bearer <token>``; ``read_only``: changes are
    refused with 403 whatever the token. ``/api/health``, the page, ``/docs`` and the
    schema stay open. The token is never shown (not in ``repr`` either).

    Raises:
        LookalikeError: a token that is not :data:`_TOKEN`, or ``token_reads`` without one.
    """

    token: str | None = field(default=None, repr=False)
    read_only: bool = False
    token_reads: bool = False

    def __post_init__(self) -> None:
        if self.token is not None and not _TOKEN.fullmatch(self.token):
            raise LookalikeError(f"the token must be {_TOKEN_HINT}")
        if self.token_reads and self.token is None:
            raise LookalikeError("token_reads needs a token")

    @property
    def writes(self) -> Literal["open", "token", "off"]:
        return "off" if self.read_only else "token" if self.token is not None else "open"

    @property
    def reads(self) -> Literal["open", "token"]:
        return "token" if self.token_reads else "open"


def parse_token(text: str, origin: str) -> str:
    """The token in ``text`` (surrounding whitespace dropped); ``origin`` names where it came
    from in the error. Raises :class:`LookalikeError` when it is empty or malformed."""
    token = text.strip()
    if not token:
        raise LookalikeError(f"{origin} is empty: put the token in it ({_TOKEN_HINT})")
    if not _TOKEN.fullmatch(token):
        raise LookalikeError(f"{origin}: the token must be {_TOKEN_HINT}")
    return token


def load_token(path: str | os.PathLike[str]) -> str:
    """The token kept in the file at ``path`` (one line). Raises :class:`LookalikeError`
    when the file is missing, unreadable, empty or holds no valid token."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LookalikeError(f"token file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LookalikeError(f"token file {p} cannot be read ({getattr(exc, 'strerror', None) or exc})"
                             ) from None
    return parse_token(text, f"token file {p}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine: ``localhost``, 127.0.0.0/8, ::1
    (or ::ffff:127.x.y.z). Any other name, and the wildcards ``0.0.0.0`` and ``::``, are not."""
    if host.lower() == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def check_bind(host: str, access: Access) -> None:
    """Refuse to serve open changes beyond this machine. Raises :class:`LookalikeError`."""
    if access.writes == "open" and not is_loopback(host):
        raise LookalikeError(
            f"refusing to serve {host} with changes open to anyone who can reach it: give a token "
            "(--token-file FILE or $LOOKALIKE_TOKEN) or serve searches only (--read-only)")


_BEARER = HTTPBearer(auto_error=False, scheme_name="token",
                     description="the token given to `lookalike serve` (--token-file or $LOOKALIKE_TOKEN)")


def guards(access: Access, write: bool) -> list[Any]:
    """The dependencies that guard a route: none when it is open to everyone."""
    if write and access.read_only:
        def read_only() -> None:
            raise HTTPException(403, "this service is read-only: changes are turned off")

        return [Depends(read_only)]
    if access.token is None or not (write or access.token_reads):
        return []
    expected = access.token.encode()
    what = "a change" if write else "this service"

    def token(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)]) -> None:
        if credentials is None:
            raise HTTPException(401, f"{what} needs the service's token: send the header "
                                     "'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})
        # Header values arrive as latin-1 text: encoding it back gives the bytes as sent.
        given = credentials.credentials.encode("latin-1", errors="replace")
        if not hmac.compare_digest(given, expected):
            raise HTTPException(401, "the token was refused",
                                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return [Depends(token)]


# ---------------------------------------------------------------------------- headers
_CSP_COMMON = "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
#: The page's policy: its own script and style only (no inline script), images also from
#: blob: (the query preview) and data: (the empty favicon).
PAGE_CSP = f"default-src 'self'; img-src 'self' blob: data:; {_CSP_COMMON}"
#: Swagger UI's: its stylesheet draws icons from data: URLs.
DOCS_CSP = f"default-src 'self'; img-src 'self' data:; {_CSP_COMMON}"
#: Every other response: nothing in it may run or load anything.
HEADERS = {"Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "X-Frame-Options": "DENY", "Cross-Origin-Resource-Policy": "same-origin"}


class HardeningHeaders:
    """ASGI middleware: adds :data:`HEADERS` to every HTTP response, except the ones a
    response sets itself (the page's and ``/docs``'s own Content-Security-Policy)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    if name not in headers:
                        headers.append(name, value)
            await send(message)

        await self.app(scope, receive, send_hardened)
