"""One configuration path for a node: ``node.toml`` plus environment -> one frozen ``NodeConfig``.

Everything is validated while the object is built; a value that passes here is never
checked again later. A problem raises :class:`~farmnode.errors.ConfigError` naming the file
(or ``<environment>``), the key path (``services[0].real[1].weight``) and what was expected.
Services come out as :mod:`farmnode.spec` objects, which the switch, the data planes and the
daemon read as they are.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatcher.backends.sites import NAME_RE as SITE_NAME_RE
from dispatcher.backends.sites import check_base_url
from dispatcher.errors import InvalidValue
from dispatcher.files import printable, read_toml
from dispatcher.logsetup import LOG_FORMATS, LOG_LEVELS
from dispatcher.tlsfiles import TlsFiles, client_context, server_context, tls_files
from farmnode.cluster.settings import ClusterSettings, parse_cluster
from farmnode.dataplane.ruleset import scheduler_reason, unsupported_reason
from farmnode.errors import ConfigError
from farmnode.spec import (
    STATELESS_SCHEDULERS,
    CheckKind,
    CheckSpec,
    NatMode,
    PersistenceSpec,
    PlaneName,
    Protocol,
    ProxyVersion,
    RealSpec,
    ServiceSpec,
)
from farmnode.switch.schedulers import SCHEDULERS
from farmnode.validation import LEAST_INTERVAL
from farmnode.validation import Invalid as _Invalid
from farmnode.validation import choice as _choice
from farmnode.validation import flag as _flag
from farmnode.validation import int_in as _int_in
from farmnode.validation import mapping as _mapping
from farmnode.validation import name as _name
from farmnode.validation import not_int as _not_int
from farmnode.validation import only_keys as _only_keys
from farmnode.validation import require as _require
from farmnode.validation import seconds as _seconds

ENVIRONMENT = "<environment>"
#: Node and service names: lowercase letters, digits and '-', like a host name's label.
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")
PLANES: tuple[PlaneName, ...] = ("userspace", "nftables")
NAT_MODES: tuple[NatMode, ...] = ("stateful", "stateless")
CHECK_KINDS: tuple[CheckKind, ...] = ("http", "tcp", "agent", "none")
MAX_WEIGHT = 65_535
MAX_CAPACITY = 10**9
HOUR, DAY, WEEK = 3600.0, 86_400.0, 604_800.0

TOP_KEYS = frozenset({"node", "services", "report", "cluster", "groups"})
NODE_KEYS = frozenset(
    {
        "name",
        "status_listen",
        "log_level",
        "log_format",
        "status_tls_certificate",
        "status_tls_key",
        "status_tls_ca",
    }
)
REPORT_KEYS = frozenset({"url", "site", "token", "interval", "capacity"})
SERVICE_KEYS = frozenset(
    {
        "name",
        "protocol",
        "listen",
        "scheduler",
        "persistence",
        "fallback",
        "check",
        "dataplane",
        "quiescent",
        "expire_quiescent",
        "udp_idle",
        "connect_timeout",
        "nat",
        "send_proxy",
        "real",
    }
)
REAL_KEYS = frozenset({"address", "weight"})
CHECK_KEYS = frozenset(
    {"kind", "url", "expect", "interval", "timeout", "rise", "fall", "agent_port", "port"}
)
PERSISTENCE_KEYS = frozenset({"timeout", "netmask", "netmask6"})


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """``[node]``: who this node is and where it answers status requests."""

    name: str
    status_listen: str = "127.0.0.1:9100"
    log_level: str = "info"
    log_format: str = "text"
    status_tls_certificate: Path | None = None
    status_tls_key: Path | None = None
    #: The CA ``farmnode status`` trusts for this listener (the daemon does not use it).
    status_tls_ca: Path | None = None

    @property
    def status_tls(self) -> TlsFiles | None:
        """The status listener's TLS files (checked at load), or ``None``: plain HTTP."""
        return tls_files(
            self.status_tls_certificate,
            self.status_tls_key,
            "node.status_tls_certificate",
            "node.status_tls_key",
        )

    @property
    def status_address(self) -> tuple[str, int]:
        """``status_listen`` as (IP text, port) for binding; port 0 picks a free one."""
        return parse_address(self.status_listen, allow_port_zero=True)


@dataclass(frozen=True, slots=True)
class ReportSettings:
    """``[report]``: where and how often the node reports its site's load to the dispatcher.

    ``url`` is the dispatcher's admin API base (no trailing ``/``); ``capacity`` is the number
    of active connections that counts as 100 % utilisation. The token never appears in
    ``repr``; it is ``""`` when set nowhere and not needed (``check-config``, ``status``).
    """

    url: str
    site: str
    token: str = field(repr=False)
    capacity: int
    interval: float = 5.0

    @property
    def load_url(self) -> str:
        """Where the load report is sent: ``PUT {url}/api/v1/sites/{site}/load``."""
        return f"{self.url}/api/v1/sites/{self.site}/load"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The whole validated node configuration; ``source`` names the file it came from."""

    node: NodeSettings
    services: tuple[ServiceSpec, ...]
    report: ReportSettings | None = None
    source: str = "<config>"
    cluster: ClusterSettings | None = None  # [cluster] and [[groups]]: docs/cluster.md

    @property
    def real_server_count(self) -> int:
        return sum(len(service.real) for service in self.services)

    def service(self, name: str) -> ServiceSpec:
        """The service called ``name``; ``KeyError`` when there is none."""
        for service in self.services:
            if service.name == name:
                return service
        raise KeyError(name)


# --- building -----------------------------------------------------------------------------


def load_config(
    path: str | Path, environ: Mapping[str, str] | None = None, *, need_token: bool = True
) -> NodeConfig:
    """Read ``path`` and the ``FARMNODE_*`` environment into a validated :class:`NodeConfig`.

    ``need_token=False`` (``check-config``, ``status``): a report token set nowhere is not an
    error; ``report.token`` is then ``""``.
    """
    file = Path(path)
    doc = read_toml(file, ConfigError)
    return parse_config(
        doc, str(file), environ=environ, need_token=need_token, base_dir=file.parent
    )


def parse_config(
    doc: Mapping[str, Any],
    source: str = "<config>",
    *,
    environ: Mapping[str, str] | None = None,
    need_token: bool = True,
    base_dir: Path | None = None,
) -> NodeConfig:
    """Validate a parsed TOML document plus environment overrides into a :class:`NodeConfig`.

    ``environ`` defaults to :data:`os.environ`; relative file paths are taken from
    ``base_dir`` (the configuration file's directory; default: the working directory).
    Raises :class:`ConfigError` and nothing else for any document.
    """
    env = os.environ if environ is None else environ
    try:
        return _build(doc, env, source, need_token, base_dir or Path())
    except _Invalid as exc:
        raise ConfigError(
            exc.source or source, printable(exc.path), printable(exc.expected)
        ) from None


def _build(
    doc: Mapping[str, Any],
    env: Mapping[str, str],
    source: str,
    need_token: bool = True,
    base_dir: Path | None = None,
) -> NodeConfig:
    _only_keys(_mapping(doc, "", "a TOML document"), "", TOP_KEYS)
    if "node" not in doc:
        raise _Invalid("node", "a [node] table with at least name = ...")
    node = _node(_mapping(doc["node"], "node", "a table ([node])"), env, base_dir or Path())
    services = _services(doc.get("services", []))
    report = None
    if "report" in doc:
        report = _report(_mapping(doc["report"], "report", "a table ([report])"), env, need_token)
    cluster = parse_cluster(
        doc.get("cluster"),
        doc.get("groups", []),
        source,
        env,
        node_name=node.name,
        service_names=frozenset(s.name for s in services),
    )
    return NodeConfig(node, services, report, source, cluster)


def _node(raw: Mapping[str, Any], env: Mapping[str, str], base_dir: Path) -> NodeSettings:
    p = "node"
    _only_keys(raw, p, NODE_KEYS)
    _require(raw, p, "name")
    d = NodeSettings(name="-")
    status_listen = _text(raw, p, "status_listen", d.status_listen, '"host:port"')
    _address(status_listen, f"{p}.status_listen", allow_port_zero=True)
    if "FARMNODE_STATUS_LISTEN" in env:
        status_listen = env["FARMNODE_STATUS_LISTEN"].strip()
        _address(status_listen, "FARMNODE_STATUS_LISTEN", True, source=ENVIRONMENT)
    log_format = _choice(raw, p, "log_format", d.log_format, LOG_FORMATS)
    if "FARMNODE_LOG_FORMAT" in env:
        log_format = env["FARMNODE_LOG_FORMAT"].strip()
        if log_format not in LOG_FORMATS:
            expected = f"one of {', '.join(LOG_FORMATS)}, got {log_format!r:.200}"
            raise _Invalid("FARMNODE_LOG_FORMAT", expected, ENVIRONMENT)
    node = NodeSettings(
        name=_name(raw["name"], f"{p}.name"),
        status_listen=status_listen,
        log_level=_choice(raw, p, "log_level", d.log_level, LOG_LEVELS),
        log_format=log_format,
        status_tls_certificate=_pem_path(raw, p, "status_tls_certificate", base_dir),
        status_tls_key=_pem_path(raw, p, "status_tls_key", base_dir),
        status_tls_ca=_pem_path(raw, p, "status_tls_ca", base_dir),
    )
    try:
        files = node.status_tls  # both or neither
        if files is not None:
            server_context(files)  # the files parse, the key matches
        if node.status_tls_ca is not None:  # for `farmnode status`: checked all the same
            client_context(node.status_tls_ca, f"{p}.status_tls_ca")
    except InvalidValue as exc:
        raise _Invalid(exc.field, exc.message) from None
    return node


def _pem_path(raw: Mapping[str, Any], p: str, key: str, base_dir: Path) -> Path | None:
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or "\0" in value:
        raise _Invalid(f"{p}.{key}", f"the path of a PEM file, got {value!r:.200}")
    return base_dir / value


def _report(raw: Mapping[str, Any], env: Mapping[str, str], need_token: bool) -> ReportSettings:
    p = "report"
    _only_keys(raw, p, REPORT_KEYS)
    _require(raw, p, "url", "site", "capacity")
    try:
        url = check_base_url(raw["url"], f"{p}.url")
    except InvalidValue as exc:
        raise _Invalid(exc.field, f"the dispatcher's admin API: {exc.message}") from None
    site = raw["site"]
    if not isinstance(site, str) or not SITE_NAME_RE.fullmatch(site):
        expected = "the site's name at the dispatcher (1-63 letters, digits, '.', '_' or '-')"
        raise _Invalid(f"{p}.site", f"{expected}, got {site!r}")
    capacity = raw["capacity"]
    if _not_int(capacity) or not 1 <= capacity <= MAX_CAPACITY:
        expected = f"a whole number of active connections from 1 to {MAX_CAPACITY}"
        raise _Invalid(f"{p}.capacity", f"{expected} (100% utilisation), got {capacity!r}")
    return ReportSettings(
        url=url,
        site=site,
        token=_report_token(raw, env, need_token),
        capacity=capacity,
        interval=_seconds(raw, p, "interval", 5.0, HOUR, least=0.1),
    )


def _report_token(raw: Mapping[str, Any], env: Mapping[str, str], need_token: bool) -> str:
    """``FARMNODE_REPORT_TOKEN`` wins over ``report.token``; one of them is required
    (``""`` when neither is set and not ``need_token``)."""
    expected = "a bearer token: visible ASCII characters, no spaces"
    if "FARMNODE_REPORT_TOKEN" in env:
        token = env["FARMNODE_REPORT_TOKEN"].strip()
        if not _visible_ascii(token):
            raise _Invalid("FARMNODE_REPORT_TOKEN", f"{expected} (set, but not one)", ENVIRONMENT)
        return token
    if "token" not in raw:
        if not need_token:
            return ""
        raise _Invalid("report.token", f"{expected} (or set FARMNODE_REPORT_TOKEN)")
    token = raw["token"]
    if not isinstance(token, str) or not _visible_ascii(token):  # never echo a secret
        raise _Invalid("report.token", f"{expected} (the value given is not one)")
    return token


# --- services ---------------------------------------------------------------------------


def _services(raw: Any) -> tuple[ServiceSpec, ...]:
    if not isinstance(raw, list):
        raise _Invalid("services", "an array of tables ([[services]])")
    services = tuple(_service(table, f"services[{i}]") for i, table in enumerate(raw))
    for i, service in enumerate(services):
        for j, other in enumerate(services[:i]):
            _distinct_services(service, other, f"services[{i}]", f"services[{j}]")
    return services


def _distinct_services(service: ServiceSpec, other: ServiceSpec, p: str, q: str) -> None:
    if service.name == other.name:
        raise _Invalid(f"{p}.name", f"a unique service name ({service.name!r} is {q}'s)")
    if service.protocol == other.protocol and _overlap(
        (service.host, service.port), (other.host, other.port)
    ):
        raise _Invalid(
            f"{p}.listen",
            f"an address no other {service.protocol} service listens on "
            f"({q} {other.name!r} listens on {other.listen})",
        )
    stateless = [s for s in (service, other) if s.nat == "stateless"]
    kernel = service.dataplane == other.dataplane == "nftables"
    if stateless and kernel and service.protocol == other.protocol:
        shared = sorted(_servers(service) & _servers(other))
        if shared:
            raise _Invalid(
                f"{p}.real",
                f"real servers no other {service.protocol} service uses: the replies of a "
                f"stateless service ({stateless[0].name!r}) are told apart by server address "
                f"and port alone, and {', '.join(shared)} also serves {q} {other.name!r}",
            )


def _servers(spec: ServiceSpec) -> set[str]:
    return {r.key for r in (*spec.real, *([spec.fallback] if spec.fallback else []))}


def _service(raw: Any, p: str) -> ServiceSpec:
    table = _mapping(raw, p, "a table ([[services]])")
    _only_keys(table, p, SERVICE_KEYS)
    _require(table, p, "name", "protocol", "listen", "real")
    listen = _address(table["listen"], f"{p}.listen")
    d = ServiceSpec(name="-", protocol="tcp", host="-", port=1)
    spec = ServiceSpec(
        name=_name(table["name"], f"{p}.name"),
        protocol=_protocol(table, p),
        host=listen[0],
        port=listen[1],
        scheduler=_choice(table, p, "scheduler", d.scheduler, tuple(SCHEDULERS)),
        real=_reals(table["real"], f"{p}.real", listen),
        persistence=_persistence(table, p),
        fallback=_fallback(table, p, listen),
        check=_check(table.get("check", {}), f"{p}.check"),
        dataplane=_plane(table, p),
        quiescent=_flag(table, p, "quiescent", d.quiescent),
        expire_quiescent=_flag(table, p, "expire_quiescent", d.expire_quiescent),
        udp_idle=_seconds(table, p, "udp_idle", d.udp_idle, DAY, least=0.1),
        connect_timeout=_seconds(table, p, "connect_timeout", d.connect_timeout, HOUR),
        nat=_choice(table, p, "nat", d.nat, NAT_MODES),
        send_proxy=_send_proxy(table.get("send_proxy", False), f"{p}.send_proxy"),
    )
    if spec.protocol == "udp":
        _udp_check(table, p)
    if spec.nat == "stateless" and spec.dataplane != "nftables":
        raise _Invalid(
            f"{p}.nat",
            '"stateful" (the default) for this service: stateless NAT is a mode of '
            'dataplane = "nftables"; the userspace plane is a proxy',
        )
    if spec.send_proxy is not None and (spec.dataplane != "userspace" or spec.protocol != "tcp"):
        raise _Invalid(
            f"{p}.send_proxy",
            "false for this service: a PROXY header is written by the userspace plane on TCP "
            'connections only (dataplane = "userspace", protocol = "tcp"); the nftables plane '
            "forwards packets without touching their payload",
        )
    if spec.dataplane == "nftables":
        _kernel_can_run(spec, p)
    return spec


def _send_proxy(value: Any, path: str) -> ProxyVersion | None:
    """``send_proxy``: ``false``, ``true`` (version 2, as HAProxy's ``send-proxy-v2``),
    ``"v1"`` or ``"v2"``."""
    versions: dict[Any, ProxyVersion | None] = {False: None, True: 2, "v1": 1, "v2": 2}
    if not isinstance(value, bool | str) or value not in versions:
        raise _Invalid(path, f'true, false, "v1" or "v2", got {value!r}')
    return versions[value]


def _udp_check(table: Mapping[str, Any], p: str) -> None:
    """A UDP service names its check kind: the default (a TCP connect to the service port)
    can never succeed against a UDP-only server, so it is not taken silently."""
    check = table.get("check")
    if isinstance(check, Mapping) and "kind" in check:
        return
    raise _Invalid(
        f"{p}.check.kind",
        'a check that works for a UDP service: kind = "agent" (a TCP agent port on each real '
        'server says its state), kind = "none" (every real server counts as up, as keepalived '
        'does for a real server without a checker), or kind = "tcp"/"http" with port = the '
        "real servers' TCP health port; the default TCP connect to the service port never "
        "succeeds against a UDP-only server",
    )


def _kernel_can_run(spec: ServiceSpec, p: str) -> None:
    """The nftables plane's own verdict; a scheduler problem is blamed on ``scheduler``."""
    reason = scheduler_reason(spec.scheduler)
    if reason is not None:
        raise _Invalid(f"{p}.scheduler", f'{reason} (or dataplane = "userspace")')
    if spec.nat == "stateless" and spec.scheduler not in STATELESS_SCHEDULERS:
        raise _Invalid(
            f"{p}.scheduler",
            f'one of {", ".join(STATELESS_SCHEDULERS)} with nat = "stateless" (every '
            f"packet is scheduled again: the choice must depend on the client address "
            f'alone), got {spec.scheduler!r} (or nat = "stateful")',
        )
    reason = unsupported_reason(spec)
    if reason is not None:
        raise _Invalid(f"{p}.dataplane", f'"userspace" for this service: {reason}')


def _protocol(table: Mapping[str, Any], p: str) -> Protocol:
    value = table["protocol"]
    for protocol in PROTOCOLS:
        if value == protocol:
            return protocol
    raise _Invalid(f"{p}.protocol", f"one of {', '.join(PROTOCOLS)}, got {value!r}")


def _plane(table: Mapping[str, Any], p: str) -> PlaneName:
    value = table.get("dataplane", "userspace")
    for plane in PLANES:
        if value == plane:
            return plane
    raise _Invalid(f"{p}.dataplane", f"one of {', '.join(PLANES)}, got {value!r}")


def _reals(raw: Any, p: str, listen: tuple[str, int]) -> tuple[RealSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise _Invalid(p, "at least one real server ([[services.real]] with an address)")
    reals: list[RealSpec] = []
    for j, item in enumerate(raw):
        q = f"{p}[{j}]"
        table = _mapping(item, q, "a table ([[services.real]])")
        _only_keys(table, q, REAL_KEYS)
        _require(table, q, "address")
        host, port = _server_address(table["address"], f"{q}.address", listen)
        real = RealSpec(host, port, _weight(table.get("weight", 1), f"{q}.weight"))
        for k, earlier in enumerate(reals):
            if earlier.key == real.key:
                raise _Invalid(f"{q}.address", f"an address not already used by {p}[{k}]")
        reals.append(real)
    return tuple(reals)


def _fallback(table: Mapping[str, Any], p: str, listen: tuple[str, int]) -> RealSpec | None:
    if "fallback" not in table:
        return None
    host, port = _server_address(table["fallback"], f"{p}.fallback", listen)
    return RealSpec(host, port)


def _server_address(value: Any, path: str, listen: tuple[str, int]) -> tuple[str, int]:
    """A real or fallback server: a concrete address that is not the service itself."""
    host, port = _address(value, path)
    if ipaddress.ip_address(host).is_unspecified:
        raise _Invalid(path, f"a server's own address, not the wildcard {host}, got {value!r}")
    if _overlap((host, port), listen, loopback=True):
        raise _Invalid(path, f"a server other than the service itself (a loop), got {value!r}")
    return host, port


def _weight(value: Any, path: str) -> int:
    if _not_int(value) or not 0 <= value <= MAX_WEIGHT:
        raise _Invalid(path, f"a whole number from 0 to {MAX_WEIGHT}, got {value!r}")
    return int(value)


def _persistence(table: Mapping[str, Any], p: str) -> PersistenceSpec | None:
    if "persistence" not in table:
        return None
    q = f"{p}.persistence"
    raw = _mapping(table["persistence"], q, "a table such as { timeout = 300, netmask = 24 }")
    _only_keys(raw, q, PERSISTENCE_KEYS)
    d = PersistenceSpec()
    return PersistenceSpec(
        timeout=_seconds(raw, q, "timeout", d.timeout, WEEK, least=1.0),
        netmask=_int_in(raw, q, "netmask", d.netmask, 0, 32),
        netmask6=_int_in(raw, q, "netmask6", d.netmask6, 0, 128),
    )


def _check(raw: Any, p: str) -> CheckSpec:
    table = _mapping(raw, p, 'a table such as { kind = "tcp", interval = 2.0 }')
    _only_keys(table, p, CHECK_KEYS)
    d = CheckSpec()
    value = table.get("kind", d.kind)
    kind = next((k for k in CHECK_KINDS if k == value), None)
    if kind is None:
        raise _Invalid(f"{p}.kind", f"one of {', '.join(CHECK_KINDS)}, got {value!r}")
    _only_for_kind(table, p, kind)
    interval = _seconds(table, p, "interval", d.interval, HOUR, least=LEAST_INTERVAL)
    timeout = _seconds(table, p, "timeout", d.timeout, HOUR)
    if timeout > interval:
        raise _Invalid(f"{p}.timeout", f"seconds <= interval ({interval:g}), got {timeout:g}")
    agent_port = None
    if kind == "agent":
        _require(table, p, "agent_port")
        agent_port = _int_in(table, p, "agent_port", 0, 1, 65535)
    return CheckSpec(
        kind=kind,
        url=_check_url(table.get("url", d.url), f"{p}.url"),
        expect=_text(table, p, "expect", d.expect, "a string the page must contain"),
        interval=interval,
        timeout=timeout,
        rise=_int_in(table, p, "rise", d.rise, 1, 100),
        fall=_int_in(table, p, "fall", d.fall, 1, 100),
        agent_port=agent_port,
        port=_int_in(table, p, "port", 0, 1, 65535) if "port" in table else None,
    )


def _only_for_kind(table: Mapping[str, Any], p: str, kind: str) -> None:
    for key, owner in (("url", "http"), ("expect", "http"), ("agent_port", "agent")):
        if key in table and kind != owner:
            raise _Invalid(f"{p}.{key}", f'no {key} unless kind = "{owner}" (kind is "{kind}")')
    if "port" in table and kind not in ("http", "tcp"):
        raise _Invalid(f"{p}.port", f'no port unless kind is "http" or "tcp" (kind is "{kind}")')


def _check_url(value: Any, path: str) -> str:
    if (
        not isinstance(value, str)
        or not value.startswith("/")
        or not _visible_ascii(value)
        or "#" in value
    ):
        expected = "a path starting with / (visible ASCII, no spaces or #), such as /health"
        raise _Invalid(path, f"{expected}, got {value!r}")
    return value


# --- addresses ----------------------------------------------------------------------------


def parse_address(text: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``"host:port"`` or ``"[v6]:port"`` into a normalised IP text and a port.

    The host must be an IP address (IPv6 in brackets); the port 1-65535, or 0 when
    ``allow_port_zero`` (a listener that picks a free port). Raises ``ValueError`` saying
    what is wrong.
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError("[v6]:port")
        port_text = rest[1:]
        if ":" not in host:
            raise ValueError("brackets only around an IPv6 address")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not host:
            raise ValueError("host:port")
        if ":" in host:
            raise ValueError("an IPv6 address goes in brackets, such as [::1]:80")
    if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise ValueError("a port number")
    port = int(port_text)
    if not (0 if allow_port_zero else 1) <= port <= 65535:
        raise ValueError("a port from 1 to 65535" if not allow_port_zero else "a port 0-65535")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError("an IP address, not a host name") from None
    return str(address), port


def _address(
    value: Any, path: str, allow_port_zero: bool = False, *, source: str | None = None
) -> tuple[str, int]:
    expected = '"host:port" with an IP address ("[v6]:port" for IPv6)'
    if not isinstance(value, str):
        raise _Invalid(path, f"{expected}, got {value!r}", source)
    try:
        return parse_address(value, allow_port_zero=allow_port_zero)
    except ValueError as exc:
        raise _Invalid(path, f"{expected}: {exc}, got {value!r}", source) from None


def _overlap(a: tuple[str, int], b: tuple[str, int], *, loopback: bool = False) -> bool:
    """Whether two addresses (same protocol) are the same socket.

    The same host and port; or the same port where one is the wildcard of the other's
    family (a listener on ``0.0.0.0:80`` owns ``127.0.0.1:80`` too). With ``loopback``, a
    loopback server also matches a wildcard listener on its port (a sure loop).
    """
    if a[1] != b[1]:
        return False
    if a[0] == b[0]:
        return True
    x, y = ipaddress.ip_address(a[0]), ipaddress.ip_address(b[0])
    if x.version != y.version:
        return False
    if not loopback:
        return x.is_unspecified or y.is_unspecified
    return (y.is_unspecified and x.is_loopback) or (x.is_unspecified and y.is_loopback)


# --- small typed readers ----------------------------------------------------------------


def _text(raw: Mapping[str, Any], path: str, key: str, default: str, expected: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str):
        raise _Invalid(f"{path}.{key}", f"{expected}, got {value!r}")
    return value


def _visible_ascii(text: str) -> bool:
    return bool(text) and all(0x21 <= ord(c) <= 0x7E for c in text)


__all__ = [
    "ENVIRONMENT",
    "NodeConfig",
    "NodeSettings",
    "ReportSettings",
    "load_config",
    "parse_address",
    "parse_config",
]
