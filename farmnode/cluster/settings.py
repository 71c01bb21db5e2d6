"""``[cluster]`` and ``[[groups]]``: heartbeat, election and resource groups -> ``ClusterSettings``.

:func:`parse_cluster` validates the two sections of a node's TOML document into one frozen
:class:`ClusterSettings`; ``farmnode.config`` calls it while it builds the ``NodeConfig``.
This module reads ``[cluster]`` itself (identity, timing, key, transports and peers); the
``[[groups]]`` come from :mod:`farmnode.cluster.group_settings`.
Every problem raises :class:`~farmnode.errors.ConfigError` naming the source, the key path
(``cluster.deadtime``, ``groups[0].resources[1].agent``) and what was expected; nothing is
checked again later. The key never appears in ``repr`` nor in an error message.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from dispatcher.files import printable
from farmnode.cluster.group_settings import GroupSettings, parse_groups
from farmnode.errors import ConfigError
from farmnode.validation import LEAST_INTERVAL, parse_address
from farmnode.validation import Invalid as _Invalid
from farmnode.validation import choice as _choice
from farmnode.validation import flag as _flag
from farmnode.validation import ifname as _ifname
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
ROLES: tuple[Role, ...] = ("member", "witness")
TRANSPORT_KINDS: tuple[TransportKind, ...] = ("udp", "multicast", "serial")
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
    groups = parse_groups(doc_groups, service_names)
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
    "KEY_ENV",
    "ClusterSettings",
    "PeerSettings",
    "TransportSettings",
    "parse_cluster",
]
