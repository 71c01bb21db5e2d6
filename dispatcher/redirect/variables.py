"""The server variables ``%{NAME}`` reads, resolved to a getter once, at compile time.

The set is Apache's (``lookup_variable`` in mod_rewrite.c) minus what has no meaning
without a filesystem, a TLS layer or sub-requests. Names are case-insensitive, as in
Apache; an unknown name is a compile error here (Apache would expand it to ``""``).
"""

from __future__ import annotations

from collections.abc import Callable

from dispatcher.redirect.escape import escape_authority, octets
from dispatcher.redirect.request import DEFAULT_PORTS, RewriteRequest
from dispatcher.redirect.state import EvalState

Getter = Callable[[EvalState], str]


class UnknownVariable(ValueError):
    """``%{NAME}`` names nothing this engine knows; the message says what instead."""


def scheme(request: RewriteRequest) -> str:
    """``http`` or ``https``: the only schemes this engine ever writes into a URL."""
    return "https" if request.scheme.lower() == "https" else "http"


def server_name(request: RewriteRequest) -> str:
    """The server name as it goes into a URL (an IPv6 address in brackets)."""
    name = octets(request.server_name)
    return f"[{name}]" if ":" in name and not name.startswith("[") else name


def authority(request: RewriteRequest) -> str:
    """``name[:port]`` for URLs naming this server; the scheme's default port is left out.

    The name comes from the client's Host header: what could move the URL's authority
    elsewhere (``@``, ``/``, ``\\``, ``?``, ``#``, spaces, controls...) is %-escaped.
    """
    port = request.server_port
    name = escape_authority(server_name(request))
    if port == DEFAULT_PORTS[scheme(request)]:
        return name
    return f"{name}:{port}"


def the_request(request: RewriteRequest) -> str:
    """The request line as sent, as Apache's ``THE_REQUEST`` shows it."""
    query = f"?{request.query_string}" if request.query_string else ""
    return octets(f"{request.method} {request.path}{query} {request.protocol}")


def _host(st: EvalState) -> str:
    """``EvalState.header("host")``, inlined: the request's host, else a ``host`` header."""
    request = st.request
    value = request.host or request.headers.get("host", "")
    return value if value.isascii() else octets(value)


def _method(st: EvalState) -> str:
    method = st.request.method
    return method if method.isascii() else octets(method)


def _header(name: str) -> Getter:
    if name == "host":
        return _host
    known = _HEADERS.get(name)
    if known is not None:
        return known

    def get(st: EvalState) -> str:
        value = st.request.headers.get(name, "")
        return value if value.isascii() else octets(value)

    _HEADERS[name] = get
    _HEADER_OF[get] = name
    return get


#: One getter per header name (a rule set reads few), and the name each one reads.
_HEADERS: dict[str, Getter] = {}
_HEADER_OF: dict[Getter, str] = {}


def inline_form(getter: Getter) -> tuple[str, str | None] | None:
    """How the fast path may read a variable without calling its getter: ``("header",
    name)``, ``("host", None)`` or ``("method", None)``; None for any other variable."""
    if getter is _host:
        return "host", None
    if getter is _method:
        return "method", None
    name = _HEADER_OF.get(getter)
    return ("header", name) if name is not None else None


def _timestamp(st: EvalState) -> str:
    n = st.now
    return f"{n.year:04d}{n.month:02d}{n.day:02d}{n.hour:02d}{n.minute:02d}{n.second:02d}"


_TABLE: dict[str, Getter] = {
    "HTTP_HOST": _header("host"),
    "HTTP_USER_AGENT": _header("user-agent"),
    "HTTP_REFERER": _header("referer"),
    "HTTP_COOKIE": _header("cookie"),
    "HTTP_ACCEPT": _header("accept"),
    "HTTP_FORWARDED": _header("forwarded"),
    "HTTP_PROXY_CONNECTION": _header("proxy-connection"),
    "REQUEST_URI": lambda st: st.request_uri,
    "REQUEST_FILENAME": lambda st: st.uri,
    "SCRIPT_FILENAME": lambda st: st.uri,
    "REQUEST_METHOD": _method,
    "REQUEST_SCHEME": lambda st: scheme(st.request),
    "QUERY_STRING": lambda st: st.args or "",
    "REMOTE_ADDR": lambda st: octets(st.request.remote_addr),
    "REMOTE_HOST": lambda st: octets(st.request.remote_addr),
    "CONN_REMOTE_ADDR": lambda st: octets(st.request.remote_addr),
    "REMOTE_PORT": lambda st: str(st.request.remote_port),
    "HTTPS": lambda st: "on" if scheme(st.request) == "https" else "off",
    "SERVER_NAME": lambda st: server_name(st.request),
    "SERVER_PORT": lambda st: str(st.request.server_port),
    "SERVER_PROTOCOL": lambda st: octets(st.request.protocol),
    "THE_REQUEST": lambda st: the_request(st.request),
    "IS_SUBREQ": lambda st: "false",
    "IPV6": lambda st: _ipv6(st.request.remote_addr),
    "TIME": _timestamp,
    "TIME_YEAR": lambda st: f"{st.now.year:04d}",
    "TIME_MON": lambda st: f"{st.now.month:02d}",
    "TIME_DAY": lambda st: f"{st.now.day:02d}",
    "TIME_HOUR": lambda st: f"{st.now.hour:02d}",
    "TIME_MIN": lambda st: f"{st.now.minute:02d}",
    "TIME_SEC": lambda st: f"{st.now.second:02d}",
    "TIME_WDAY": lambda st: str(st.now.isoweekday() % 7),
}

_NOT_HERE = {
    "SSL": "%{SSL:...} needs the TLS layer, which the dispatcher does not see",
    "LA-U": "%{LA-U:...} look-ahead sub-requests are not supported",
    "LA-F": "%{LA-F:...} look-ahead sub-requests are not supported",
}
_NO_FILESYSTEM = frozenset(
    {
        "DOCUMENT_ROOT",
        "CONTEXT_DOCUMENT_ROOT",
        "CONTEXT_PREFIX",
        "PATH_INFO",
        "SCRIPT_USER",
        "SCRIPT_GROUP",
        "SERVER_ADDR",
        "SERVER_ADMIN",
        "SERVER_SOFTWARE",
        "AUTH_TYPE",
        "REMOTE_USER",
        "REMOTE_IDENT",
        "API_VERSION",
    }
)


def variable(name: str) -> Getter:
    """The getter for ``%{name}``; raise :class:`UnknownVariable` saying why not."""
    prefix, colon, rest = name.partition(":")
    if colon:
        return _prefixed(prefix.upper(), rest, name)
    getter = _TABLE.get(name.upper())
    if getter is not None:
        return getter
    upper = name.upper()
    if upper in _NO_FILESYSTEM:
        raise UnknownVariable(f"%{{{name}}} has no meaning in the dispatcher (no filesystem)")
    hint = " (use %{HTTP:Header-Name} for request headers)" if upper.startswith("HTTP_") else ""
    raise UnknownVariable(f"unknown variable %{{{name}}}{hint}")


def _prefixed(prefix: str, rest: str, name: str) -> Getter:
    if prefix in _NOT_HERE:
        raise UnknownVariable(_NOT_HERE[prefix])
    if prefix not in ("ENV", "HTTP"):
        raise UnknownVariable(f"unknown variable %{{{name}}}")
    if not rest:
        raise UnknownVariable(f"%{{{name}}} needs a name after the colon")
    if prefix == "HTTP":
        return _header(rest.lower())
    key = rest.lower()
    return lambda st: st.env[key][1] if key in st.env else ""


def _ipv6(address: str) -> str:
    is_v6 = ":" in address and not address.lower().startswith("::ffff:")
    return "on" if is_v6 else "off"
