"""The request view the rewrite engine evaluates: small, immutable, built once per request.

Strings carry bytes as received: every header value and the raw path are decoded as
latin-1, so one character is one byte (as Apache sees them). A caller that passes
characters above U+00FF gets them treated as their UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

_EMPTY: Mapping[str, str] = MappingProxyType({})
DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(slots=True)
class RewriteRequest:
    """What the rules may look at; read-only by contract.

    Not ``frozen``: a frozen dataclass sets each field through ``object.__setattr__``,
    which made building one per request five times slower than the plain slotted class,
    on the hot path. Nothing in webfarm writes to a request after building it.

    ``host`` is the Host header as sent (may carry ``:port``, ``""`` if absent);
    ``server_name`` the name the server answers as (Host without port, lower-case, or the
    listen address); ``path`` the raw, still %-encoded path without the query string;
    ``query_string`` the raw query without ``?``; ``headers`` has lower-case names, repeated
    headers joined with ``", "``; ``env`` is what ``%{ENV:x}`` sees besides ``E`` flags.
    """

    method: str
    scheme: str
    host: str
    server_name: str
    server_port: int
    path: str
    query_string: str
    remote_addr: str
    remote_port: int = 0
    headers: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    protocol: str = "HTTP/1.1"
    env: Mapping[str, str] = field(default_factory=lambda: _EMPTY)

    @classmethod
    def from_scope(
        cls, scope: Mapping[str, Any], *, env: Mapping[str, str] = _EMPTY
    ) -> RewriteRequest:
        """Build the view of an ASGI ``http`` scope.

        The server name and port come from the Host header (the port defaults to the
        scheme's, as Apache's ``UseCanonicalName Off`` does); without a Host header they
        come from ``scope["server"]``.
        """
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        headers = _join_headers(scope.get("headers") or ())
        host = headers.get("host", "")
        server_name, server_port = split_host(host, DEFAULT_PORTS[scheme])
        if not host:
            server_name, server_port = _listen_address(scope, DEFAULT_PORTS[scheme])
        client = scope.get("client") or ("", 0)
        return cls(  # positional: measurably cheaper than keywords, once per request
            str(scope.get("method", "GET")),
            scheme,
            host,
            server_name,
            server_port,
            _raw_path(scope),
            bytes(scope.get("query_string", b"")).decode("latin-1"),
            str(client[0]),
            int(client[1]),
            MappingProxyType(headers),
            f"HTTP/{scope.get('http_version', '1.1')}",
            env,
        )


def split_host(host: str, default_port: int) -> tuple[str, int]:
    """Split a Host header into (lower-case name without brackets or trailing dot, port).

    A missing or unparsable port yields ``default_port``.
    """
    name, port = host, ""
    if host.startswith("["):
        end = host.find("]")
        name = host[1:end] if end > 0 else host[1:]
        rest = host[end + 1 :] if end > 0 else ""
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, port = host.split(":")
    number = int(port) if port.isascii() and port.isdigit() and len(port) <= 5 else default_port
    name = name.lower().removesuffix(".")  # as Apache's fix_hostname: one trailing dot goes
    return name, number if 0 < number < 65536 else default_port


def _join_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key = name.decode("latin-1").lower()
        if key in headers:
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}"
        else:
            headers[key] = value.decode("latin-1")
    return headers


def _listen_address(scope: Mapping[str, Any], default_port: int) -> tuple[str, int]:
    server = scope.get("server")
    if not server:
        return "", default_port
    port = server[1] if len(server) > 1 and server[1] else default_port
    return str(server[0]).lower(), int(port)


def _raw_path(scope: Mapping[str, Any]) -> str:
    raw = scope.get("raw_path")
    if raw:
        text = bytes(raw).decode("latin-1")
        return text.split("?", 1)[0]
    return quote(str(scope.get("path", "/")), safe="/:@!$&'()*+,;=-._~")
