"""RewriteRequest.from_scope: the request view built from an ASGI http scope."""

from __future__ import annotations

from typing import Any

import pytest

from dispatcher.redirect import RewriteRequest
from dispatcher.redirect.request import split_host


def scope(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/caf\u00e9 menu",
        "raw_path": b"/caf%C3%A9%20menu",
        "query_string": b"a=1&b=%20",
        "server": ("10.0.0.5", 8000),
        "client": ("192.0.2.7", 51515),
        "headers": [
            (b"host", b"WWW.Example.com:8080"),
            (b"user-agent", b"test"),
            (b"X-Dup", b"one"),
            (b"x-dup", b"two"),
            (b"x-bytes", b"\xe9t\xe9"),
        ],
    }
    base.update(overrides)
    return base


def test_from_scope() -> None:
    req = RewriteRequest.from_scope(scope(), env={"SITE": "eu"})
    assert (req.method, req.scheme, req.protocol) == ("GET", "http", "HTTP/1.1")
    assert (req.host, req.server_name, req.server_port) == (
        "WWW.Example.com:8080",
        "www.example.com",
        8080,
    )
    assert (req.path, req.query_string) == ("/caf%C3%A9%20menu", "a=1&b=%20")
    assert (req.remote_addr, req.remote_port) == ("192.0.2.7", 51515)
    assert req.headers["x-dup"] == "one, two"
    assert req.headers["x-bytes"] == "\xe9t\xe9"
    assert dict(req.env) == {"SITE": "eu"}


def test_from_scope_defaults_the_port_to_the_schemes() -> None:
    req = RewriteRequest.from_scope(scope(scheme="https", headers=[(b"host", b"a.example")]))
    assert (req.scheme, req.server_name, req.server_port) == ("https", "a.example", 443)


def test_from_scope_without_host_uses_the_listen_address() -> None:
    req = RewriteRequest.from_scope(scope(headers=[], http_version="1.0"))
    assert (req.host, req.server_name, req.server_port, req.protocol) == (
        "",
        "10.0.0.5",
        8000,
        "HTTP/1.0",
    )
    bare = RewriteRequest.from_scope({"type": "http", "path": "/"})
    assert (bare.server_name, bare.server_port, bare.remote_addr, bare.path) == ("", 80, "", "/")


def test_from_scope_without_raw_path_quotes_the_path() -> None:
    req = RewriteRequest.from_scope(scope(raw_path=None))
    assert req.path == "/caf%C3%A9%20menu"


def test_from_scope_drops_a_query_left_in_raw_path() -> None:
    assert RewriteRequest.from_scope(scope(raw_path=b"/p?x=1")).path == "/p"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("example.com", ("example.com", 80)),
        ("example.com.:81", ("example.com", 81)),
        ("Example.COM:8443", ("example.com", 8443)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", 80)),
        ("::1", ("::1", 80)),
        ("host:notaport", ("host", 80)),
        ("host:99999", ("host", 80)),
        ("", ("", 80)),
    ],
)
def test_split_host(host: str, expected: tuple[str, int]) -> None:
    assert split_host(host, 80) == expected


def test_requests_are_frozen_and_slotted() -> None:
    req = RewriteRequest.from_scope(scope())
    with pytest.raises(AttributeError):
        req.path = "/other"  # type: ignore[misc]
    assert not hasattr(req, "__dict__")


@pytest.mark.parametrize(
    "headers",
    [
        [(b"host", b"a.example"), (b"user-agent", b"ua")],
        [(b"Host", b"A.example:81"), (b"X-Dup", b"one"), (b"x-dup", b"two")],
        [(b"host", b"a"), (b"HOST", b"b")],
        [(b"host", b""), (b"host", b"b")],
        [(b"x-only", b"\xe9")],
        ((b"host", b"t.example"), (b"a", b"1")),
    ],
)
def test_headers_are_decoded_lazily_as_joined(headers: Any) -> None:
    """The lazy headers view equals the eagerly joined dict; ``host`` agrees with it."""
    req = RewriteRequest.from_scope(scope(headers=headers))
    expected: dict[str, str] = {}
    for name, value in headers:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        expected[key] = f"{expected[key]}, {text}" if key in expected else text
    assert req.host == expected.get("host", "")
    assert dict(req.headers) == expected
    assert req.headers == expected
    assert len(req.headers) == len(expected)
    assert ("host" in req.headers) == ("host" in expected)
    assert req.headers.get("missing", "") == ""
    assert req == req._replace(headers=dict(expected))


def test_headers_view_keeps_its_own_copy() -> None:
    raw = [(b"host", b"a.example"), (b"x", b"1")]
    req = RewriteRequest.from_scope(scope(headers=raw))
    raw.append((b"x", b"2"))
    assert req.headers["x"] == "1"
