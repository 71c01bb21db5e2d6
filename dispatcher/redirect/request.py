"""The request view the rewrite engine evaluates: small, immutable, built once per request.

Strings carry bytes as received: every header value and the raw path are decoded as
latin-1, so one character is one byte (as Apache sees them). A caller that passes
characters above U+00FF gets them treated as their UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
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
        https = get("scheme") in ("https", "wss")
        found: str | None = None
        raw_headers = get("headers")
        if raw_headers:
            raw = raw_headers if raw_headers.__class__ is tuple else tuple(raw_headers)
            for name, value in raw:  # the Host header, repeats joined as headers["host"] would
                if len(name) == 4 and (name == b"host" or name.lower() == b"host"):
                    text = value.decode("latin-1")
                    found = text if found is None else f"{found}, {text}"
            headers: Mapping[str, str] = ScopeHeaders(raw)
        else:
            headers = _EMPTY
        host = found or ""
        if host:
            known = (_HOSTS_HTTPS if https else _HOSTS_HTTP).get(host)
            server_name, server_port = known or split_host(host, 443 if https else 80)
        else:
            server_name, server_port = _listen_address(scope, 443 if https else 80)
        raw_path = get("raw_path")
        if raw_path:
            path = raw_path.decode("latin-1") if raw_path.__class__ is bytes else _latin1(raw_path)
            if "?" in path:
                path = path.split("?", 1)[0]
        else:
            path = _quoted_path(scope)
        query = get("query_string", b"")
        client = get("client") or ("", 0)
        version = get("http_version", "1.1")
        return _new(
            cls,
            (
                str(get("method", "GET")),
                "https" if https else "http",
                host,
                server_name,
                server_port,
                path,
                query.decode("latin-1") if query.__class__ is bytes else _latin1(query),
                str(client[0]),
                int(client[1]),
                headers,
                _PROTOCOLS.get(version) or f"HTTP/{version}",
                env,
            ),
        )


class ScopeHeaders(Mapping[str, str]):
    """An ASGI scope's headers as :attr:`RewriteRequest.headers` shows them, decoded lazily.

    Read-only; holds its own copy of the (name, value) pairs. Names are lower-cased and
    repeated headers joined with ``", "``. Most requests that no rule answers read one or
    two headers, or none: the first :data:`_SCANS` look-ups scan the raw pairs for the one
    name asked, and only a request that reads more decodes them all into a dict, so
    :meth:`from_scope` and a rule reading ``%{HTTP_USER_AGENT}`` stay cheap.
    """

    __slots__ = ("_joined", "_raw", "_scans")

    def __init__(self, raw: tuple[tuple[bytes, bytes], ...]) -> None:
        self._raw = raw
        self._joined: dict[str, str] | None = None
        self._scans = 0

    def _map(self) -> dict[str, str]:
        joined = self._joined
        if joined is None:
            joined = self._joined = _join_headers(self._raw)
        return joined

    def __getitem__(self, name: str) -> str:
        value = self.get(name, _MISSING)
        if value is _MISSING:
            raise KeyError(name)
        return value  # type: ignore[no-any-return]

    def get(self, name: str, default: Any = None) -> Any:
        joined = self._joined
        if joined is not None:
            return joined.get(name, default)
        if self._scans >= _SCANS or not name.isascii():
            return self._map().get(name, default)
        self._scans += 1
        return _scan(self._raw, name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._map()

    def __iter__(self) -> Iterator[str]:
        return iter(self._map())

    def __len__(self) -> int:
        return len(self._map())

    def __repr__(self) -> str:
        return f"ScopeHeaders({self._map()!r})"


_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0", "2": "HTTP/2"}
#: How many single-name look-ups scan the raw headers before they are all decoded.
_SCANS = 2
_MISSING = object()


def _scan(raw: Iterable[tuple[bytes, bytes]], name: str, default: Any) -> Any:
    """``_join_headers(raw).get(name, default)`` for an ASCII ``name``, decoding nothing else.

    (Only A-Z lower-case into ASCII among the latin-1 characters, so ``bytes.lower`` finds
    exactly the names ``str.lower`` does.)
    """
    if name.lower() != name:
        return default  # the joined names are all lower-case
    key = name.encode("ascii")
    size = len(key)
    found: str | None = None
    for header, value in raw:
        if header == key or (len(header) == size and header.lower() == key):
            text = value.decode("latin-1")
            found = text if found is None else f"{found}, {text}"
    return default if found is None else found


_new = tuple.__new__
#: split_host's answers for the Host values seen last (a client sends the same one again
#: and again), for http's default port and https's; each cleared past _HOSTS_MAX entries.
_HOSTS_HTTP: dict[str, tuple[str, int]] = {}
_HOSTS_HTTPS: dict[str, tuple[str, int]] = {}
_HOSTS_BY_PORT = {80: _HOSTS_HTTP, 443: _HOSTS_HTTPS}
_HOSTS_MAX = 256


def split_host(host: str, default_port: int) -> tuple[str, int]:
    """Split a Host header into (lower-case name without brackets or trailing dot, port).

    A missing or unparsable port yields ``default_port``.
    """
    cache = _HOSTS_BY_PORT.get(default_port)
    if cache is None:
        return _split_host(host, default_port)
    known = cache.get(host)
    if known is None:
        known = _split_host(host, default_port)
        if len(cache) >= _HOSTS_MAX:
            cache.clear()
        cache[host] = known
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
    if raw.__class__ in (list, tuple):  # the common case: no header repeated, one pass
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


def _latin1(raw: Any) -> str:
    if raw.__class__ is bytes:
        return raw.decode("latin-1")
    return bytes(raw).decode("latin-1")


def _listen_address(scope: Mapping[str, Any], default_port: int) -> tuple[str, int]:
    server = scope.get("server")
    if not server:
        return "", default_port
    port = server[1] if len(server) > 1 and server[1] else default_port
    return str(server[0]).lower(), int(port)


def _quoted_path(scope: Mapping[str, Any]) -> str:
    """The path as sent, for a scope without ``raw_path``: ``path`` %-encoded again."""
    return quote(str(scope.get("path", "/")), safe="/:@!$&'()*+,;=-._~")
