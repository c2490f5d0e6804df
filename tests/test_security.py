"""Who may change the service's collection (lookalike.app.security): tokens, their files, and the
rule for addresses beyond loopback. Over HTTP, with every route: tests/test_service.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookalike.app.security import Access, check_bind, is_loopback, load_token, parse_token
from lookalike.errors import LookalikeError

TOKEN = "test-token-0123456789abcdef"


def test_access_settings_are_checked(tmp_path: Path) -> None:
    for bad in ("short", "has space in it 0123456789", "ünïcode-token-0123456789", ""):
        with pytest.raises(LookalikeError, match="at least 16 characters"):
            Access(token=bad)
    with pytest.raises(LookalikeError, match="needs a token"):
        Access(token_reads=True)
    assert TOKEN not in repr(Access(token=TOKEN))
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    assert load_token(tmp_path / "token") == TOKEN
    for text, message in (("", "is empty"), ("\n \n", "is empty"), ("one two", "at least 16"),
                          (f"{TOKEN}\n{TOKEN}\n", "at least 16")):
        (tmp_path / "token").write_text(text)
        with pytest.raises(LookalikeError, match=message):
            load_token(tmp_path / "token")
    with pytest.raises(LookalikeError, match="does not exist"):
        load_token(tmp_path / "missing")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("localhost", True), ("LocalHost", True),
    ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False),
    ("", False), ("192.168.1.10", False), ("10.0.0.1", False), ("example.org", False),
    ("128.0.0.1", False), ("::2", False)])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_bind() -> None:
    for host in ("0.0.0.0", "::", "192.168.1.10", "example.org"):
        with pytest.raises(LookalikeError, match="--token-file.*--read-only"):
            check_bind(host, Access())
        check_bind(host, Access(token=TOKEN))
        check_bind(host, Access(read_only=True))
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, Access())


def test_parse_token_names_where_it_came_from() -> None:
    assert parse_token(f"\t{TOKEN} \n", "$X") == TOKEN
    assert parse_token(TOKEN + "==", "$X") == TOKEN + "=="  # base64 padding
    with pytest.raises(LookalikeError, match=r"^\$X is empty"):
        parse_token(" ", "$X")
    with pytest.raises(LookalikeError, match=r"^\$X: the token must be") as err:
        parse_token("secret!", "$X")
    assert "secret!" not in str(err.value)
