"""The request view the rewrite engine evaluates: small, immutable, built once per request.

Strings carry bytes as received: every header value and the raw path are decoded as
latin-1, so one character is one byte (as Apache sees them). A caller that passes
characters above U+00FF gets them treated as their UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import quote

_EMPTY: Mapping[str, str] = MappingProxyType({})
DEFAULT_PORTS = {"http": 80, "https": 443}


class RewriteRequest(NamedTuple):
    """What the rules may look at; immutable.

    A ``NamedTuple`` (immutable, no ``__dict__``): one is built per request on the hot path,
    and a frozen dataclass (``object.__setattr__`` per field) cost several times more;
    :meth:`from_scope` builds the tuple directly, cheaper still.

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
    headers: Mapping[str, str] = _EMPTY
    protocol: str = "HTTP/1.1"
    env: Mapping[str, str] = _EMPTY

    @classmethod
    def from_scope(
        cls, scope: Mapping[str, Any], *, env: Mapping[str, str] = _EMPTY
    ) -> RewriteRequest:
        """Build the view of an ASGI ``http`` scope.

        The server name and port come from the Host header (the port defaults to the
        scheme's, as Apache's ``UseCanonicalName Off`` does); without a Host header they
        come from ``scope["server"]``.
        """
        get = scope.get
        scheme = "https" if get("scheme") in ("https", "wss") else "http"
        default_port = 443 if scheme == "https" else 80
        raw_headers = get("headers")
        headers = _join_headers(raw_headers) if raw_headers else {}
        host = headers.get("host", "")
        if host:
            server_name, server_port = split_host(host, default_port)
        else:
            server_name, server_port = _listen_address(scope, default_port)
        client = get("client") or ("", 0)
        return _new(
            cls,
            (
                str(get("method", "GET")),
                scheme,
                host,
                server_name,
                server_port,
                _raw_path(scope),
                bytes(get("query_string", b"")).decode("latin-1"),
                str(client[0]),
                int(client[1]),
                MappingProxyType(headers),
                f"HTTP/{get('http_version', '1.1')}",
                env,
            ),
        )


_new = tuple.__new__
#: split_host's answers for the Host values seen last (a client sends the same one
#: again and again); cleared when it grows past _HOSTS_MAX entries.
_HOSTS: dict[tuple[str, int], tuple[str, int]] = {}
_HOSTS_MAX = 256


def split_host(host: str, default_port: int) -> tuple[str, int]:
    """Split a Host header into (lower-case name without brackets or trailing dot, port).

    A missing or unparsable port yields ``default_port``.
    """
    key = (host, default_port)
    known = _HOSTS.get(key)
    if known is None:
        known = _split_host(host, default_port)
        if len(_HOSTS) >= _HOSTS_MAX:
            _HOSTS.clear()
        _HOSTS[key] = known
    return known


def _split_host(host: str, default_port: int) -> tuple[str, int]:
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
    if raw.__class__ is list:  # the common case: no header repeated, one pass
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
        if len(headers) == len(raw):
            return headers
    headers = {}
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
        return text.split("?", 1)[0] if "?" in text else text
    return quote(str(scope.get("path", "/")), safe="/:@!$&'()*+,;=-._~")
