"""``[cluster]`` and ``[[groups]]``: heartbeat, election and resource groups -> ``ClusterSettings``.

:func:`parse_cluster` validates the two sections of a node's TOML document into one frozen
:class:`ClusterSettings`; ``farmnode.config`` calls it while it builds the ``NodeConfig``.
Every problem raises :class:`~farmnode.errors.ConfigError` naming the source, the key path
(``cluster.deadtime``, ``groups[0].resources[1].agent``) and what was expected; nothing is
checked again later. The key never appears in ``repr`` nor in an error message.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from dispatcher.files import printable
from farmnode.errors import ConfigError
from farmnode.validation import LEAST_INTERVAL, parse_address
from farmnode.validation import Invalid as _Invalid
from farmnode.validation import choice as _choice
from farmnode.validation import flag as _flag
from farmnode.validation import int_in as _int_in
from farmnode.validation import mapping as _mapping
from farmnode.validation import name as _name
from farmnode.validation import only_keys as _only_keys
from farmnode.validation import require as _require
from farmnode.validation import seconds as _seconds

ENVIRONMENT = "<environment>"
KEY_ENV = "FARM_CLUSTER_KEY"
MIN_KEY_BYTES = 16
MIN_KEY_DISTINCT = 4
Role = Literal["member", "witness"]
TransportKind = Literal["udp", "multicast", "serial"]
AgentName = Literal["ipaddr", "switch", "ocf", "script", "nfsganesha", "postgresql"]
Scalar = str | int | float | bool
#: An agent parameter: a scalar, or (ocf's ``params``) a flat table of scalars.
ParamValue = Scalar | Mapping[str, Scalar]
ROLES: tuple[Role, ...] = ("member", "witness")
TRANSPORT_KINDS: tuple[TransportKind, ...] = ("udp", "multicast", "serial")
AGENTS: tuple[AgentName, ...] = ("ipaddr", "switch", "ocf", "script", "nfsganesha", "postgresql")
BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400)
DEFAULT_PORT = 6940
MAX_PRIORITY = 255
#: deadtime / interval at least this; and at least QUORUM_DEADTIME_FACTOR with 3+ voters.
DEADTIME_FACTOR = 3
QUORUM_DEADTIME_FACTOR = 5
HOUR = 3600.0

CLUSTER_KEYS = frozenset(
    {
        "name",
        "priority",
        "role",
        "interval",
        "deadtime",
        "warntime",
        "initdead",
        "auto_failback",
        "preempt_delay",
        "key",
        "notify",
        "transports",
        "peers",
    }
)
TRANSPORT_KEYS: Mapping[str, frozenset[str]] = {
    "udp": frozenset({"kind", "bind"}),
    "multicast": frozenset({"kind", "group", "port", "interface", "ttl"}),
    "serial": frozenset({"kind", "device", "baudrate"}),
}
PEER_KEYS = frozenset({"name", "addresses"})
GROUP_KEYS = frozenset({"name", "resources", "failures_before_move", "failure_timeout"})
#: Keys every resource may have; every other key is an agent parameter, kept verbatim.
RESOURCE_KEYS = frozenset(
    {"agent", "name", "start_timeout", "stop_timeout", "monitor_timeout", "monitor_interval"}
)
#: Parameters the built-in agents cannot do without.
REQUIRED_PARAMS: Mapping[str, tuple[str, ...]] = {
    "ipaddr": ("address", "interface"),
    "switch": ("service",),
    "ocf": (),  # type ("provider/type") or path: the agent checks that exactly one is given
    "script": ("path",),
    "nfsganesha": ("export", "state_dir"),
    "postgresql": ("data_dir", "primary_host"),
}
IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")
PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """One heartbeat transport. Only the fields of its ``kind`` are set.

    ``udp``: ``bind`` (host, port), unicast to every peer's ``addresses``.
    ``multicast``: ``group``, ``port``, ``interface``, ``ttl``.
    ``serial``: ``device`` (a tty) at ``baudrate``.
    """

    kind: TransportKind
    bind: tuple[str, int] | None = None
    group: str | None = None
    port: int = DEFAULT_PORT
    interface: str | None = None
    ttl: int = 1
    device: str | None = None
    baudrate: int = 19200

    @property
    def label(self) -> str:
        """A short unique name for status and logs: ``udp:10.0.0.1:6940``, ``serial:/dev/ttyS1``."""
        if self.kind == "udp" and self.bind is not None:
            host, port = self.bind
            return f"udp:[{host}]:{port}" if ":" in host else f"udp:{host}:{port}"
        if self.kind == "multicast":
            return f"multicast:{self.group}:{self.port}%{self.interface}"
        return f"serial:{self.device}"


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """Another voter of the cluster (a member or a witness: its role comes in its heartbeats)."""

    name: str
    addresses: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class ResourceSettings:
    """One resource of a group, managed through its agent.

    ``params`` holds every key of the table but ``agent``, ``name``, the timeouts and
    ``monitor_interval``, verbatim (scalars; ocf's ``params`` is a flat table of them).
    Timeouts and the monitor interval are seconds.
    """

    agent: AgentName
    name: str
    params: Mapping[str, ParamValue] = field(default_factory=lambda: MappingProxyType({}))
    start_timeout: float = 20.0
    stop_timeout: float = 20.0
    monitor_timeout: float = 10.0
    monitor_interval: float = 10.0

    def agent_table(self) -> dict[str, Any]:
        """The table ``farmnode.agents.build_agent`` takes: agent, parameters, timeouts."""
        params = {k: dict(v) if isinstance(v, Mapping) else v for k, v in self.params.items()}
        return {
            "agent": self.agent,
            **params,
            "start_timeout": self.start_timeout,
            "stop_timeout": self.stop_timeout,
            "monitor_timeout": self.monitor_timeout,
        }


@dataclass(frozen=True, slots=True)
class GroupSettings:
    """A resource group: started in order, stopped in reverse, owned by one node at a time.

    ``failures_before_move`` consecutive monitor failures on the owner move the group; the
    node where it failed does not take it again for ``failure_timeout`` seconds.
    """

    name: str
    resources: tuple[ResourceSettings, ...]
    failures_before_move: int = 1
    failure_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """The validated ``[cluster]`` section and the ``[[groups]]`` this node may own."""

    name: str
    key: bytes = field(repr=False)
    transports: tuple[TransportSettings, ...]
    peers: tuple[PeerSettings, ...] = ()
    groups: tuple[GroupSettings, ...] = ()
    priority: int = 100
    role: Role = "member"
    interval: float = 0.2
    deadtime: float = 1.0
    warntime: float = 0.5
    initdead: float = 2.0
    auto_failback: bool = False
    preempt_delay: float = 0.0
    notify: tuple[str, ...] = ()

    @property
    def voters(self) -> int:
        """Every configured node votes: this node and each peer (members and witnesses)."""
        return 1 + len(self.peers)

    @property
    def warnings(self) -> tuple[str, ...]:
        """What an operator must be told loudly (status and start-up log); empty when none."""
        found: list[str] = []
        if self.voters == 2:
            found.append(
                "two-node cluster without a witness: relies on redundant transports "
                "(a cut between the nodes on every transport makes both own every group)"
            )
            if len(self.transports) < 2:
                found.append("only one heartbeat transport: one broken link causes split brain")
        return tuple(found)

    def group(self, name: str) -> GroupSettings:
        """The group called ``name``; ``KeyError`` when there is none."""
        for group in self.groups:
            if group.name == name:
                return group
        raise KeyError(name)


def parse_cluster(
    doc_cluster: Mapping[str, Any] | None,
    doc_groups: Any,
    source: str,
    environ: Mapping[str, str],
    *,
    node_name: str | None = None,
    service_names: Collection[str] | None = None,
) -> ClusterSettings | None:
    """Validate ``[cluster]`` (``doc_cluster``) and ``[[groups]]`` (``doc_groups``).

    Returns ``None`` when there is neither. ``environ[FARM_CLUSTER_KEY]`` wins over
    ``cluster.key``. With ``node_name`` a peer may not bear the node's own name; with
    ``service_names`` a ``switch`` resource must name one of them. Raises
    :class:`ConfigError` and nothing else for any input.
    """
    if doc_cluster is None and doc_groups in (None, []):
        return None
    if doc_cluster is None:
        raise ConfigError(source, "cluster", "a [cluster] table: [[groups]] need a cluster")
    try:
        return _cluster(doc_cluster, doc_groups, environ, node_name, service_names)
    except _Invalid as exc:
        raise ConfigError(
            exc.source or source, printable(exc.path), printable(exc.expected)
        ) from None


def _cluster(
    doc: Any,
    doc_groups: Any,
    env: Mapping[str, str],
    node_name: str | None,
    service_names: Collection[str] | None,
) -> ClusterSettings:
    p = "cluster"
    raw = _mapping(doc, p, "a table ([cluster])")
    _only_keys(raw, p, CLUSTER_KEYS)
    _require(raw, p, "name", "transports")
    interval, deadtime, warntime, initdead = _timing(raw)
    auto_failback = _flag(raw, p, "auto_failback", False)
    if "preempt_delay" in raw and not auto_failback:
        raise _Invalid(f"{p}.preempt_delay", "no preempt_delay unless auto_failback = true")
    role = _choice(raw, p, "role", "member", ROLES)
    transports = _transports(raw["transports"])
    peers = _peers(raw.get("peers", []), transports, node_name)
    if 1 + len(peers) >= 3 and deadtime < QUORUM_DEADTIME_FACTOR * interval - 1e-9:
        raise _Invalid(
            f"{p}.deadtime",
            f"seconds >= {QUORUM_DEADTIME_FACTOR} x interval "
            f"({QUORUM_DEADTIME_FACTOR * interval:g}) in a cluster of three or more voters, "
            f"got {deadtime:g}",
        )
    groups = _groups(doc_groups, service_names)
    if role == "witness" and groups:
        raise _Invalid("groups", 'no [[groups]] on a witness (role = "witness" owns nothing)')
    return ClusterSettings(
        name=_name(raw["name"], f"{p}.name"),
        key=_key(raw, env),
        transports=transports,
        peers=peers,
        groups=groups,
        priority=_int_in(raw, p, "priority", 100, 0, MAX_PRIORITY),
        role=role,
        interval=interval,
        deadtime=deadtime,
        warntime=warntime,
        initdead=initdead,
        auto_failback=auto_failback,
        preempt_delay=_seconds(raw, p, "preempt_delay", 0.0, HOUR, zero=True),
        notify=_notify(raw.get("notify"), f"{p}.notify"),
    )


def _timing(raw: Mapping[str, Any]) -> tuple[float, float, float, float]:
    """interval, deadtime, warntime, initdead; defaults follow the values given."""
    p = "cluster"
    interval = _seconds(raw, p, "interval", 0.2, 60.0, least=LEAST_INTERVAL)
    deadtime = _seconds(raw, p, "deadtime", max(1.0, 5 * interval), HOUR)
    if deadtime < DEADTIME_FACTOR * interval - 1e-9:
        least = DEADTIME_FACTOR * interval
        raise _Invalid(
            f"{p}.deadtime",
            f"seconds >= {DEADTIME_FACTOR} x interval ({least:g}), got {deadtime:g}",
        )
    warntime = _seconds(raw, p, "warntime", deadtime / 2, HOUR)
    if not interval <= warntime < deadtime:
        raise _Invalid(
            f"{p}.warntime",
            f"seconds >= interval ({interval:g}) and < deadtime ({deadtime:g}), got {warntime:g}",
        )
    initdead = _seconds(raw, p, "initdead", 2 * deadtime, HOUR)
    if initdead < deadtime:
        raise _Invalid(f"{p}.initdead", f"seconds >= deadtime ({deadtime:g}), got {initdead:g}")
    return interval, deadtime, warntime, initdead


def _key(raw: Mapping[str, Any], env: Mapping[str, str]) -> bytes:
    """``FARM_CLUSTER_KEY`` wins over ``cluster.key``; never echoed in an error."""
    expected = (
        f"a shared secret of at least {MIN_KEY_BYTES} bytes (UTF-8) besides white space, "
        f"with at least {MIN_KEY_DISTINCT} different characters"
    )
    if KEY_ENV in env:
        key = env[KEY_ENV].encode("utf-8", "surrogateescape")
        if _weak(key):
            raise _Invalid(KEY_ENV, f"{expected} (set, but not one)", ENVIRONMENT)
        return key
    if "key" not in raw:
        raise _Invalid("cluster.key", f"{expected} (or set {KEY_ENV})")
    value = raw["key"]
    if not isinstance(value, str) or _weak(value.encode("utf-8", "surrogatepass")):
        raise _Invalid("cluster.key", f"{expected} (the value given is not one)")
    return value.encode("utf-8", "surrogatepass")


def _weak(key: bytes) -> bool:
    """Too short, blank (16 spaces), or one character repeated: not a secret."""
    core = key.strip()
    return len(core) < MIN_KEY_BYTES or len(set(core)) < MIN_KEY_DISTINCT


def _notify(value: Any, path: str) -> tuple[str, ...]:
    expected = 'an absolute path or an argv array such as ["/usr/local/bin/notify", "--mail"]'
    if value is None:
        return ()
    argv = [value] if isinstance(value, str) else value
    if (
        not isinstance(argv, list)
        or not argv
        or not all(isinstance(a, str) and a and "\0" not in a for a in argv)
        or not argv[0].startswith("/")
    ):
        raise _Invalid(path, f"{expected}, got {value!r}")
    return tuple(argv)


# --- transports and peers -----------------------------------------------------------------


def _transports(raw: Any) -> tuple[TransportSettings, ...]:
    p = "cluster.transports"
    if not isinstance(raw, list) or not raw:
        raise _Invalid(p, "at least one transport ([[cluster.transports]] with a kind)")
    transports: list[TransportSettings] = []
    for i, item in enumerate(raw):
        transport = _transport(item, f"{p}[{i}]")
        for j, earlier in enumerate(transports):
            if earlier.label == transport.label:
                raise _Invalid(f"{p}[{i}]", f"a transport not already listed ({p}[{j}])")
        transports.append(transport)
    return tuple(transports)


def _transport(raw: Any, p: str) -> TransportSettings:
    table = _mapping(raw, p, "a table ([[cluster.transports]])")
    _require(table, p, "kind")
    kind = next((k for k in TRANSPORT_KINDS if k == table["kind"]), None)
    if kind is None:
        raise _Invalid(f"{p}.kind", f"one of {', '.join(TRANSPORT_KINDS)}, got {table['kind']!r}")
    _only_keys(table, p, TRANSPORT_KEYS[kind])
    if kind == "udp":
        _require(table, p, "bind")
        return TransportSettings(kind, bind=_address(table["bind"], f"{p}.bind"))
    if kind == "multicast":
        _require(table, p, "group", "interface")
        return TransportSettings(
            kind,
            group=_multicast_group(table["group"], f"{p}.group"),
            port=_int_in(table, p, "port", DEFAULT_PORT, 1, 65535),
            interface=_ifname(table["interface"], f"{p}.interface"),
            ttl=_int_in(table, p, "ttl", 1, 1, 255),
        )
    _require(table, p, "device")
    device = table["device"]
    if not isinstance(device, str) or not device.startswith("/dev/") or "\0" in device:
        raise _Invalid(f"{p}.device", f"a tty device path such as /dev/ttyS1, got {device!r}")
    baudrate = table.get("baudrate", 19200)
    if isinstance(baudrate, bool) or baudrate not in BAUDRATES:
        choices = ", ".join(str(b) for b in BAUDRATES)
        raise _Invalid(f"{p}.baudrate", f"one of {choices}, got {baudrate!r}")
    return TransportSettings(kind, device=device, baudrate=int(baudrate))


def _multicast_group(value: Any, path: str) -> str:
    try:
        group = ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        group = None
    if group is None or not group.is_multicast:
        raise _Invalid(path, f"a multicast IP address such as 239.0.0.69, got {value!r}")
    return str(group)


def _peers(
    raw: Any, transports: Sequence[TransportSettings], node_name: str | None
) -> tuple[PeerSettings, ...]:
    p = "cluster.peers"
    if not isinstance(raw, list):
        raise _Invalid(p, "an array of tables ([[cluster.peers]])")
    has_udp = any(t.kind == "udp" for t in transports)
    peers: list[PeerSettings] = []
    for i, item in enumerate(raw):
        q = f"{p}[{i}]"
        table = _mapping(item, q, "a table ([[cluster.peers]])")
        _only_keys(table, q, PEER_KEYS)
        _require(table, q, "name")
        name = _name(table["name"], f"{q}.name")
        if name == node_name:
            raise _Invalid(f"{q}.name", f"another node's name, not this node's own ({name!r})")
        if any(peer.name == name for peer in peers):
            raise _Invalid(f"{q}.name", f"a unique peer name ({name!r} is listed twice)")
        peers.append(PeerSettings(name, _peer_addresses(table, q, has_udp)))
    return tuple(peers)


def _peer_addresses(table: Mapping[str, Any], q: str, has_udp: bool) -> tuple[tuple[str, int], ...]:
    raw = table.get("addresses", [])
    if not has_udp:
        if raw:
            raise _Invalid(f"{q}.addresses", "no addresses without a udp transport")
        return ()
    if not isinstance(raw, list) or not raw:
        expected = 'at least one "host:port" where the peer listens on the udp transports'
        raise _Invalid(f"{q}.addresses", expected)
    addresses = tuple(_address(a, f"{q}.addresses[{k}]") for k, a in enumerate(raw))
    if len(set(addresses)) != len(addresses):
        raise _Invalid(f"{q}.addresses", "distinct addresses (one is listed twice)")
    return addresses


# --- groups and resources -------------------------------------------------------------------


def _groups(raw: Any, service_names: Collection[str] | None) -> tuple[GroupSettings, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _Invalid("groups", "an array of tables ([[groups]])")
    groups: list[GroupSettings] = []
    addresses: dict[str, str] = {}
    for i, item in enumerate(raw):
        p = f"groups[{i}]"
        group = _group(item, p, service_names)
        if any(g.name == group.name for g in groups):
            raise _Invalid(f"{p}.name", f"a unique group name ({group.name!r} is listed twice)")
        for j, resource in enumerate(group.resources):
            if resource.agent == "ipaddr":
                _unique_address(resource, f"{p}.resources[{j}].address", addresses)
        groups.append(group)
    return tuple(groups)


def _unique_address(resource: ResourceSettings, path: str, seen: dict[str, str]) -> None:
    address = str(resource.params["address"])
    if address in seen:
        raise _Invalid(path, f"a floating address no other resource holds ({seen[address]} does)")
    seen[address] = path.rsplit(".", 1)[0]


def _group(raw: Any, p: str, service_names: Collection[str] | None) -> GroupSettings:
    table = _mapping(raw, p, "a table ([[groups]])")
    _only_keys(table, p, GROUP_KEYS)
    _require(table, p, "name", "resources")
    resources = table["resources"]
    if not isinstance(resources, list) or not resources:
        raise _Invalid(f"{p}.resources", "at least one resource ([[groups.resources]])")
    parsed: list[ResourceSettings] = []
    for j, item in enumerate(resources):
        resource = _resource(item, f"{p}.resources[{j}]", j, service_names)
        if any(r.name == resource.name for r in parsed):
            raise _Invalid(
                f"{p}.resources[{j}].name", f"a unique name in the group ({resource.name!r})"
            )
        parsed.append(resource)
    return GroupSettings(
        name=_name(table["name"], f"{p}.name"),
        resources=tuple(parsed),
        failures_before_move=_int_in(table, p, "failures_before_move", 1, 1, 100),
        failure_timeout=_seconds(table, p, "failure_timeout", 60.0, 7 * 86_400.0, least=1.0),
    )


def _resource(
    raw: Any, p: str, index: int, service_names: Collection[str] | None
) -> ResourceSettings:
    table = _mapping(raw, p, "a table ([[groups.resources]])")
    _require(table, p, "agent")
    agent = next((a for a in AGENTS if a == table["agent"]), None)
    if agent is None:
        raise _Invalid(f"{p}.agent", f"one of {', '.join(AGENTS)}, got {table['agent']!r}")
    params = _params({k: v for k, v in table.items() if k not in RESOURCE_KEYS}, p)
    for key in REQUIRED_PARAMS[agent]:
        if key not in params:
            raise _Invalid(f"{p}.{key}", f"a value (the {agent} agent needs {key})")
    _check_builtin(agent, params, p, service_names)
    monitor_interval = _seconds(table, p, "monitor_interval", 10.0, HOUR, least=LEAST_INTERVAL)
    monitor_timeout = _seconds(table, p, "monitor_timeout", min(10.0, monitor_interval), HOUR)
    if monitor_timeout > monitor_interval:
        raise _Invalid(
            f"{p}.monitor_timeout",
            f"seconds <= monitor_interval ({monitor_interval:g}), got {monitor_timeout:g}",
        )
    resource = ResourceSettings(
        agent=agent,
        name=_name(table.get("name", f"{agent}{index}"), f"{p}.name"),
        params=MappingProxyType(params),
        start_timeout=_seconds(table, p, "start_timeout", 20.0, HOUR, least=0.1),
        stop_timeout=_seconds(table, p, "stop_timeout", 20.0, HOUR, least=0.1),
        monitor_timeout=monitor_timeout,
        monitor_interval=monitor_interval,
    )
    _agent_accepts(resource, p)
    return resource


def _agent_accepts(resource: ResourceSettings, p: str) -> None:
    """The agent's own parameter check, now rather than at the first failover.

    Local import: the agents package is heavier than a config parser needs at import time.
    The ``switch`` agent lives with the daemon; its one parameter is checked here.
    """
    from farmnode.agents import AGENTS as REGISTRY
    from farmnode.agents import AgentParamError, build_agent

    if resource.agent not in REGISTRY:
        return
    try:
        build_agent(resource.agent_table(), name=resource.name)
    except AgentParamError as exc:
        raise _Invalid(f"{p}.{exc.param}", exc.expected) from None


def _params(table: Mapping[str, Any], p: str) -> dict[str, ParamValue]:
    """Agent parameters: scalars, kept verbatim; a ``params`` key may hold a flat table."""
    params: dict[str, ParamValue] = {}
    for key, value in table.items():
        path = f"{p}.{key}"
        if not PARAM_NAME_RE.fullmatch(key):
            raise _Invalid(path, f"a parameter name: letters, digits and '_' (got {key!r})")
        if key == "params" and isinstance(value, Mapping):
            params[key] = MappingProxyType({k: _scalar(v, f"{path}.{k}") for k, v in value.items()})
        else:
            params[key] = _scalar(value, path)
    return params


def _scalar(value: Any, path: str) -> Scalar:
    """A parameter value: finite numbers; strings without NUL (a parameter becomes a path,
    an argument or an environment variable, none of which can hold one)."""
    if (
        not isinstance(value, str | int | float)
        or (isinstance(value, float) and not math.isfinite(value))
        or (isinstance(value, str) and "\0" in value)
    ):
        raise _Invalid(path, f"a string without NUL, a number or true/false, got {value!r}")
    return value


def _check_builtin(
    agent: str, params: Mapping[str, ParamValue], p: str, service_names: Collection[str] | None
) -> None:
    if agent == "ipaddr":
        _cidr(params["address"], f"{p}.address")
        _ifname(params["interface"], f"{p}.interface")
    elif agent == "switch":
        service = params["service"]
        _name(service, f"{p}.service")
        if service_names is not None and service not in service_names:
            known = ", ".join(sorted(service_names)) or "none"
            raise _Invalid(f"{p}.service", f"a service of [[services]] ({known}), got {service!r}")
    elif agent == "script":
        path = params["path"]
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise _Invalid(f"{p}.path", f"an absolute path to an LSB-style script, got {path!r}")


def _cidr(value: Any, path: str) -> None:
    expected = "a floating address with its prefix length, such as 10.213.0.50/24 or fd00::50/64"
    if not isinstance(value, str) or "/" not in value:
        raise _Invalid(path, f"{expected}, got {value!r}")
    try:
        interface = ipaddress.ip_interface(value)
    except ValueError:
        raise _Invalid(path, f"{expected}, got {value!r}") from None
    ip, network = interface.ip, interface.network
    edge = ip.version == 4 and network.prefixlen < 31 and ip in (network[0], network[-1])
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback or edge:
        raise _Invalid(path, f"{expected} (a unicast host address), got {value!r}")


def _ifname(value: Any, path: str) -> str:
    if not isinstance(value, str) or not IFNAME_RE.fullmatch(value) or value in (".", ".."):
        raise _Invalid(
            path, f"a network interface name such as eth0 (1-15 characters), got {value!r}"
        )
    return value


# --- small typed readers ------------------------------------------------------------------


def _address(value: Any, path: str) -> tuple[str, int]:
    expected = '"host:port" with an IP address ("[v6]:port" for IPv6)'
    if not isinstance(value, str):
        raise _Invalid(path, f"{expected}, got {value!r}")
    try:
        return parse_address(value)
    except ValueError as exc:
        raise _Invalid(path, f"{expected}: {exc}, got {value!r}") from None


__all__ = [
    "AGENTS",
    "KEY_ENV",
    "ClusterSettings",
    "GroupSettings",
    "PeerSettings",
    "ResourceSettings",
    "TransportSettings",
    "parse_cluster",
]
