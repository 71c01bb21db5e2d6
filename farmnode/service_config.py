"""``[[services]]``: each table of a node's TOML document -> one validated ``ServiceSpec``.

:func:`parse_services` checks every service on its own (protocol, listen address, real
servers, persistence, health check, data plane, NAT mode, PROXY header) and against the
others (names, listen addresses, and real servers that stateless NAT cannot share).
``farmnode.config`` calls it while it builds the ``NodeConfig``; a problem raises
:class:`~farmnode.validation.Invalid` with the key path (``services[0].real[1].weight``),
which the config parser turns into a :class:`~farmnode.errors.ConfigError` naming the file.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from farmnode.dataplane.ruleset import scheduler_reason, unsupported_reason
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
from farmnode.validation import address as _address
from farmnode.validation import choice as _choice
from farmnode.validation import flag as _flag
from farmnode.validation import int_in as _int_in
from farmnode.validation import mapping as _mapping
from farmnode.validation import name as _name
from farmnode.validation import not_int as _not_int
from farmnode.validation import only_keys as _only_keys
from farmnode.validation import require as _require
from farmnode.validation import seconds as _seconds
from farmnode.validation import text as _text
from farmnode.validation import visible_ascii as _visible_ascii

#: Node and service names: lowercase letters, digits and '-', like a host name's label.
PROTOCOLS: tuple[Protocol, ...] = ("tcp", "udp")
PLANES: tuple[PlaneName, ...] = ("userspace", "nftables")
NAT_MODES: tuple[NatMode, ...] = ("stateful", "stateless")
CHECK_KINDS: tuple[CheckKind, ...] = ("http", "tcp", "agent", "none")
MAX_WEIGHT = 65_535
HOUR, DAY, WEEK = 3600.0, 86_400.0, 604_800.0

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


def parse_services(raw: Any) -> tuple[ServiceSpec, ...]:
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


__all__ = [
    "CHECK_KEYS",
    "PERSISTENCE_KEYS",
    "REAL_KEYS",
    "SERVICE_KEYS",
    "parse_services",
]
