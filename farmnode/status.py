"""The node's status: a JSON endpoint for machines and a text table for people.

:class:`StatusApp` is a plain ASGI app: ``GET /status`` answers the JSON document the
daemon builds (:meth:`farmnode.daemon.Node.status`); ``GET /livez`` and ``GET /readyz``
answer 200 or 503 (:mod:`farmnode.vitals`); any other path is a 404, any other method a
405, both as JSON errors. :class:`StatusListener` serves it with
uvicorn on a pre-bound socket (port 0 picks a free one). :func:`render_text` turns the
document into the table ``farmnode status`` prints; :func:`find_status` finds where to ask
(reading only ``node.status_listen``, so a configuration a reload refused still works).

The document::

    {"node": "n1", "uptime": 12.3, "state": "running: ...", "config": "node.toml",
     "reloads": 0, "report": {...} | null, "cluster": {...} | null,
     "services": [VirtualService.status() + "address" (where the plane listens), ...]}

``cluster`` is :meth:`farmnode.cluster.runtime.ClusterRuntime.status` (members with their liveness
and last heard per transport, quorum and its warnings, each group's owner and what its
resources last saw: a ``postgresql`` resource's role, timeline, positions and lag,
:mod:`farmnode.pg.view`), or ``null`` without a ``[cluster]``. A service's ``deferred`` is
true when a cluster group's ``switch`` resource opens it (only on the group's owner).

Each real server of a service carries ``check``: the health checker's view of it
(``health``, ``detail`` of the last probe, ``age`` in seconds), or ``null`` for
``kind = "none"``.
"""

from __future__ import annotations

import logging
import re
import socket
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dispatcher.asgi import Receive, Scope, Send
from dispatcher.throttle import throttle_warnings
from dispatcher.tlsfiles import ReloadableTls, start_uvicorn
from dispatcher.vitals import LIVEZ, READYZ, Condition, Verdict, send_json, send_verdict
from farmnode.config import NodeSettings
from farmnode.errors import ConfigError, ListenError
from farmnode.validation import parse_address

STATUS_PATH = "/status"
#: The longest request head the status listener reads (beyond it: 400, closed).
MAX_HEAD = 16 * 1024
#: Status connections open at once (beyond it: 503).
MAX_CONNECTIONS = 64
#: Seconds uvicorn waits for open status requests at shutdown.
SHUTDOWN_GRACE = 1
#: Seconds a client has to finish its TLS handshake on a status listener with TLS.
HANDSHAKE_TIMEOUT = 5.0


class StatusApp:
    """``GET /status`` -> ``document()`` as JSON, ``/livez`` and ``/readyz`` -> ``live()`` and
    ``ready()`` (200 or 503); everything else a JSON 404 or 405.

    Each callable is called once per request, in the event loop; it must not block. Without
    ``live`` or ``ready`` the node is taken as live or ready whenever the listener answers.
    """

    def __init__(
        self,
        document: Callable[[], Mapping[str, Any]],
        live: Callable[[], Verdict] | None = None,
        ready: Callable[[], Verdict] | None = None,
    ) -> None:
        self.document = document
        self.verdicts = {LIVEZ: live or _answering, READYZ: ready or _answering}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        head = method == "HEAD"
        verdict = self.verdicts.get(path)
        if path != STATUS_PATH and verdict is None:
            message = f"no such path {path!r}; try GET /status, /metrics, /livez or /readyz"
            await _send_json(send, 404, _error("not_found", message), head)
        elif method not in ("GET", "HEAD"):
            body = _error("method_not_allowed", f"{method} {path}: only GET is allowed")
            await _send_json(send, 405, body, False, extra=[(b"allow", b"GET, HEAD")])
        elif verdict is not None:
            await send_verdict(send, verdict(), head=head)
        else:
            await _send_json(send, 200, dict(self.document()), head)


def _answering() -> Verdict:
    return Verdict((Condition("listener", True, "answering"),))


def _error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


async def _send_json(
    send: Send,
    status: int,
    body: Mapping[str, Any],
    head: bool,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    await send_json(send, status, body, head=head, extra=extra)


# --- the listener ---------------------------------------------------------------------------


def bind(address: str) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (port 0 picks a free one).

    Raises :class:`ListenError` naming the address when it cannot listen.
    """
    try:
        host, port = parse_address(address, allow_port_zero=True)
    except ValueError as exc:
        raise ListenError(f"status listener {address!r}", f"expected {exc}") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ListenError(f"status listener on {address}", reason) from None
    sock.setblocking(False)
    return sock


class StatusListener:
    """One uvicorn server for :class:`StatusApp` on a pre-bound socket, no signal handling.

    Binds in the constructor (so a taken port fails before anything else starts);
    :meth:`start` serves, :meth:`stop` stops accepting, lets open requests finish (about a
    second at most) and closes the socket. :meth:`stop` twice is harmless. With ``tls`` it
    speaks only HTTPS (a handshake bounded by :data:`HANDSHAKE_TIMEOUT`), and
    ``tls.reload()`` takes a renewed certificate into the running context.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        address: str,
        tls: ReloadableTls | None = None,
    ) -> None:
        import uvicorn  # here, not above: `farmnode status` reads this module, serves nothing

        self.address = address
        self.tls = tls
        self.socket = bind(address)
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_config=None,  # its lines go through dispatcher.logsetup like every other
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=2,
            timeout_graceful_shutdown=SHUTDOWN_GRACE,
            # h11 bounds a request head (httptools does not): the status port shares the
            # daemon's event loop with the heartbeat, which a stranger must not stall
            http="h11",
            h11_max_incomplete_event_size=MAX_HEAD,
            limit_concurrency=MAX_CONNECTIONS,
        )
        config.load()
        throttle_warnings(logging.getLogger("uvicorn.error"))  # bad requests: a line per 10 s
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)
        self._closed = False

    @property
    def port(self) -> int:
        """The bound port (the one picked for port 0)."""
        return int(self.socket.getsockname()[1])

    @property
    def url(self) -> str:
        """``http(s)://host:port/status`` as bound (a wildcard address is asked on loopback)."""
        scheme = "http" if self.tls is None else "https"
        return status_url(self.socket.getsockname()[0], self.port, scheme)

    async def start(self) -> None:
        await start_uvicorn(self._server, self.socket, self.tls, HANDSHAKE_TIMEOUT)

    async def stop(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._server.started:
            await self._server.shutdown(sockets=[self.socket])
        self.socket.close()


def status_url(host: str, port: int, scheme: str = "http") -> str:
    """Where to ask a node listening on ``host:port``; ``0.0.0.0``/``::`` become loopback."""
    if host == "0.0.0.0":  # noqa: S104 - mapping a wildcard to loopback, not binding
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{STATUS_PATH}"


# --- where the running node answers (``farmnode status``) -----------------------------------

#: Where a node answers when its ``[node]`` table says nothing (``NodeSettings``' default).
DEFAULT_STATUS_LISTEN = NodeSettings(name="-").status_listen
STATUS_ENV = "FARMNODE_STATUS_LISTEN"
#: The CA ``farmnode status`` trusts for a TLS status listener (over ``node.status_tls_ca``).
STATUS_CA_ENV = "FARMNODE_STATUS_TLS_CA"
#: A configuration file larger than this is not read by ``farmnode status``.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
_HEADER = re.compile(r"^\s*\[\[?\s*([^\]#]*?)\s*\]")
_STRING_KEY = re.compile(
    r'^\s*(status_listen|name|status_tls_certificate|status_tls_ca)\s*=\s*"([^"\\]*)"\s*(?:#.*)?$'
)
_SCHEMES = {"http://": False, "https://": True}


@dataclass(frozen=True, slots=True)
class StatusTarget:
    """Where ``farmnode status`` asks: the address, its origin, the node's name if known,
    whether it speaks TLS, and the CA to trust for it (``None``: the system's trust store)
    with where that came from: ``ca_source`` (a file, ``<environment>``, ``<command line>``)
    and ``ca_field`` (its key there)."""

    host: str
    port: int
    origin: str
    node: str | None = None
    tls: bool = False
    ca: Path | None = None
    ca_source: str = ""
    ca_field: str = ""

    @property
    def url(self) -> str:
        return status_url(self.host, self.port, "https" if self.tls else "http")


def find_status(
    path: str | Path, environ: Mapping[str, str], address: str | None = None
) -> StatusTarget:
    """Where the node configured by ``path`` answers, reading as little as possible.

    ``address`` (``--address``: ``HOST:PORT``, or ``https://HOST:PORT`` for a TLS listener)
    wins and the file is not read; then ``FARMNODE_STATUS_LISTEN`` (as for ``serve``; whether
    the listener speaks TLS is still read from the file when it can be); then
    ``node.status_listen`` of the file (default :data:`DEFAULT_STATUS_LISTEN`). The listener
    speaks TLS when the file's ``[node]`` sets ``status_tls_certificate``; the CA to trust is
    ``FARMNODE_STATUS_TLS_CA``, else ``node.status_tls_ca`` (relative to the file). Nothing
    else of the file is validated, so the file a reload refused still names its node; a file
    that is not even TOML is scanned line by line for its ``[node]`` table's one-line
    strings. Raises :class:`ConfigError` naming what could not be found.
    """
    if address is not None:
        tls, text = _scheme(address)
        host, port = _address(text, "--address", "<command line>")
        return _with_ca(StatusTarget(host, port, "--address", tls=tls), environ)
    if STATUS_ENV in environ:
        value = environ[STATUS_ENV].strip()
        host, port = _address(value, STATUS_ENV, "<environment>")
        try:
            found = _file_node(Path(path))
        except ConfigError:
            found = {}  # the address is known: a file that cannot be read means no TLS
        target = StatusTarget(host, port, STATUS_ENV, tls=_tls_on(found))
        return _with_ca(_file_ca(target, found, Path(path)), environ)
    source = str(path)
    found = _file_node(Path(path))
    listen = found.get("status_listen", DEFAULT_STATUS_LISTEN)
    named = found.get("name")
    name = named if isinstance(named, str) else None
    host, port = _address(listen, "node.status_listen", source)
    target = StatusTarget(host, port, source, name, tls=_tls_on(found))
    return _with_ca(_file_ca(target, found, Path(path)), environ)


def _scheme(address: str) -> tuple[bool, str]:
    for scheme, tls in _SCHEMES.items():
        if address.lower().startswith(scheme):
            return tls, address[len(scheme) :].rstrip("/")
    return False, address


def _tls_on(node: Mapping[str, object]) -> bool:
    value = node.get("status_tls_certificate")
    return isinstance(value, str) and bool(value.strip())


def _file_ca(target: StatusTarget, node: Mapping[str, object], path: Path) -> StatusTarget:
    value = node.get("status_tls_ca")
    if value is None:
        return target
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        expected = f"the path of a PEM file of CA certificates, got {value!r:.200}"
        raise ConfigError(str(path), "node.status_tls_ca", expected)
    return replace(
        target, ca=path.parent / value, ca_source=str(path), ca_field="node.status_tls_ca"
    )


def _with_ca(target: StatusTarget, environ: Mapping[str, str]) -> StatusTarget:
    value = environ.get(STATUS_CA_ENV, "").strip()
    if not value:
        return target
    return replace(target, ca=Path(value), ca_source="<environment>", ca_field=STATUS_CA_ENV)


def _file_node(file: Path) -> dict[str, object]:
    """The ``[node]`` table of ``file`` (parsed, or scanned when it is not TOML)."""
    source = str(file)
    text = _config_text(file)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _scan_node_table(text)
        if found is None:
            expected = f"a [node] table (the file is not valid TOML: {exc}); or give --address"
            raise ConfigError(source, "node", expected) from None
        return dict(found)
    node = doc.get("node")
    if not isinstance(node, dict):
        raise ConfigError(source, "node", "a [node] table; or give --address")
    return node


def _address(value: object, what: str, source: str) -> tuple[str, int]:
    expected = '"host:port" with an IP address ("[v6]:port" for IPv6)'
    if not isinstance(value, str):
        raise ConfigError(source, what, f"{expected}, got {value!r}")
    try:
        return parse_address(value, allow_port_zero=True)
    except ValueError as exc:
        raise ConfigError(source, what, f"{expected}: {exc}, got {value!r}") from None


def _config_text(file: Path) -> str:
    try:
        if not file.is_file():  # a FIFO or a device would block or never end
            reason = "no such file" if not file.exists() else "not a regular file"
            raise ConfigError(str(file), "", f"a readable TOML file ({reason})")
        if file.stat().st_size > MAX_CONFIG_BYTES:
            expected = f"a TOML file of at most {MAX_CONFIG_BYTES // (1024 * 1024)} MiB"
            raise ConfigError(str(file), "", expected)
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(file), "", f"a readable TOML file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(file), "", f"UTF-8 text ({exc.reason})") from None


def _scan_node_table(text: str) -> dict[str, str] | None:
    """The ``[node]`` table's one-line strings that :func:`find_status` reads
    (``status_listen``, ``name``, ``status_tls_certificate``, ``status_tls_ca``), or
    ``None`` without a ``[node]`` table. Only plain basic strings are read
    (``status_listen = "127.0.0.1:9100"``)."""
    table: str | None = None
    seen = False
    found: dict[str, str] = {}
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header is not None:
            table = header.group(1)
            seen = seen or table == "node"
            continue
        match = _STRING_KEY.match(line) if table == "node" else None
        if match is not None:
            found.setdefault(match.group(1), match.group(2))
    return found if seen else None


# --- the text table -------------------------------------------------------------------------

_COLUMNS = ("REAL SERVER", "STATE", "WEIGHT", "ACTIVE", "TOTAL", "IN", "OUT", "CHECK")


def render_text(doc: Mapping[str, Any]) -> str:
    """The status document as ``farmnode status`` prints it: a header (and how the last
    reload went, if there was one), then one block per service with one row per real
    server (and the fallback, marked ``in use`` or ``standby``)."""
    lines = [_header(doc)]
    if doc.get("last_reload"):
        lines.append(f"last reload: {doc['last_reload']}")
    report = doc.get("report")
    if isinstance(report, Mapping):
        lines.append(
            f"load report to {report.get('url')} as site {report.get('site')}: "
            f"{report.get('last') or 'not sent yet'}"
        )
    cluster = doc.get("cluster")
    if isinstance(cluster, Mapping):
        lines.append("")
        lines.extend(cluster_lines(cluster))
    services = doc.get("services") or []
    if not services:
        lines.append("no services")
    for service in services:
        lines.append("")
        lines.extend(_service_lines(service))
    return "\n".join(lines) + "\n"


def _header(doc: Mapping[str, Any]) -> str:
    uptime = float(doc.get("uptime", 0.0))
    return (
        f"node {doc.get('node')}: up {_duration(uptime)}, {doc.get('state', '')} "
        f"(config {doc.get('config')}, {doc.get('reloads', 0)} reload(s))"
    )


def cluster_lines(cluster: Mapping[str, Any]) -> list[str]:
    """The cluster section of ``farmnode status``: a title, the quorum and its warnings,
    one row per member (liveness, seconds since last heard on each transport) and one row
    per group (its owner, and what this node is doing with it)."""
    quorum = cluster.get("quorum") or {}
    quorate = "yes" if quorum.get("quorate") else "NO"
    lines = [
        f"cluster {cluster.get('cluster')}: {cluster.get('node')} ({cluster.get('role')}, "
        f"priority {cluster.get('priority')}, {cluster.get('state')}); quorum {quorate} "
        f"({quorum.get('seen')}/{quorum.get('voters')} voters seen)",
    ]
    lines += [f"  WARNING {warning}" for warning in quorum.get("warnings") or []]
    rows = [["MEMBER", "LIVENESS", "STATE", "PRIORITY", "LAST HEARD", "GROUPS"]]
    for name, member in sorted((cluster.get("members") or {}).items()):
        rows.append(_member_row(str(name), member))
    if len(rows) > 1:
        lines += _table(rows)
    groups = [["GROUP", "OWNER", "HERE"]]
    for name, group in (cluster.get("groups") or {}).items():
        groups.append([str(name), str(group.get("owner") or "none"), str(group.get("local"))])
    if len(groups) > 1:
        lines += _table(groups)
    for name, group in (cluster.get("groups") or {}).items():
        for resource, seen in (group.get("resources") or {}).items():
            if isinstance(seen, Mapping) and seen.get("agent") == "postgresql":
                lines.append(f"  {name}/{resource}: {_postgres_text(seen)}")
    return lines


def _postgres_text(seen: Mapping[str, Any]) -> str:
    """A ``postgresql`` resource's last snapshot in a line (:mod:`farmnode.pg.view`)."""
    parts = [str(seen.get("role")), "running" if seen.get("running") else "not running"]
    if seen.get("timeline"):
        parts.append(f"timeline {seen['timeline']}")
    if seen.get("role") == "demoted":
        parts.append(str(seen.get("state")))
    if seen.get("primary"):
        standbys = [
            f"{s.get('name')} ({s.get('sync_state')}, "
            f"lag {_lag(s.get('lag_bytes'), s.get('lag_seconds'))})"
            for s in seen.get("standbys") or []
        ]
        parts.append("standbys " + ", ".join(standbys) if standbys else "no standby")
    elif seen.get("replica"):
        parts.append("streaming" if seen.get("streaming") else "not streaming")
        if seen.get("sync_standby"):
            parts.append("synchronous")
        lag = seen.get("lag") or {}
        parts.append(f"lag {_lag(lag.get('bytes'), lag.get('seconds'))}")
    if seen.get("problem"):
        parts.append(f"problem: {seen['problem']}")
    return ", ".join(parts)


def _lag(size: object, seconds: object) -> str:
    shown = "?" if not isinstance(size, int) else _bytes(size)
    secs = "?" if not isinstance(seconds, int | float) else f"{float(seconds):.1f}"
    return f"{shown}B/{secs}s"


def _member_row(name: str, member: Mapping[str, Any]) -> list[str]:
    heard = member.get("last_heard") or {}
    shown = ", ".join(f"{t} {float(ago):.2f}s ago" for t, ago in sorted(heard.items()))
    priority = member.get("priority")
    return [
        name,
        str(member.get("liveness")),
        str(member.get("state") or "-"),
        "-" if priority is None else str(priority),
        shown or "never",
        ", ".join(member.get("groups") or []) or "-",
    ]


def _service_lines(service: Mapping[str, Any]) -> list[str]:
    persistence = service.get("persistence")
    sticky = ""
    if isinstance(persistence, Mapping):
        sticky = (
            f", persistence {persistence.get('timeout'):g}s /{persistence.get('netmask')}"
            f" ({service.get('templates', 0)} template(s))"
        )
    title = (
        f"service {service.get('name')}: {service.get('protocol')} "
        f"{service.get('address') or service.get('listen')}, scheduler "
        f"{service.get('scheduler')}, {service.get('dataplane')} plane{sticky}"
    )
    if service.get("deferred"):
        title += ", cluster: " + (
            "open (group owned here)" if service.get("running") else "closed (standby)"
        )
    rows = [list(_COLUMNS)]
    rows += [_real_row(real) for real in service.get("real", [])]
    fallback = service.get("fallback")
    if isinstance(fallback, Mapping):
        rows.append(_fallback_row(fallback))
    return [title, *_table(rows)]


def _real_row(real: Mapping[str, Any]) -> list[str]:
    weight, effective = real.get("weight"), real.get("effective_weight")
    shown = str(effective) if effective == weight else f"{effective} (of {weight})"
    check = real.get("check")
    detail = "-"
    if isinstance(check, Mapping):
        detail = f"{check.get('health')}: {check.get('detail') or 'not probed yet'}"
    return [
        str(real.get("address")),
        str(real.get("state")),
        shown,
        str(real.get("active", 0)),
        str(real.get("total", 0)),
        _bytes(int(real.get("bytes_in", 0))),
        _bytes(int(real.get("bytes_out", 0))),
        detail,
    ]


def _fallback_row(fallback: Mapping[str, Any]) -> list[str]:
    state = "in use" if fallback.get("in_use") else "standby"
    return [
        f"{fallback.get('address')} (fallback)",
        state,
        "-",
        str(fallback.get("active", 0)),
        str(fallback.get("total", 0)),
        "-",
        "-",
        "-",
    ]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def _bytes(count: int) -> str:
    """Bytes for people: ``812``, ``1.2K``, ``3.4M``, ``5.6G`` (powers of 1024)."""
    value = float(count)
    for unit in ("", "K", "M", "G", "T"):
        if value < 1024 or unit == "T":
            return f"{count}" if not unit else f"{value:.1f}{unit}"
        value /= 1024
    return str(count)  # pragma: no cover - the loop always returns


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours}h{minutes}m"
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s"


__all__ = [
    "DEFAULT_STATUS_LISTEN",
    "STATUS_CA_ENV",
    "STATUS_PATH",
    "StatusApp",
    "StatusListener",
    "StatusTarget",
    "bind",
    "cluster_lines",
    "find_status",
    "render_text",
    "status_url",
]
