"""``[[groups]]``: resource groups and their resources -> ``GroupSettings``.

:func:`parse_groups` validates each group (its name, failure policy and resources in start
order) and each resource (its agent, timeouts and parameters, checked by the agent itself
now rather than at the first failover); floating addresses are unique across groups.
``farmnode.cluster.settings`` calls it while it builds the ``ClusterSettings``; a problem
raises :class:`~farmnode.validation.Invalid` with the key path
(``groups[0].resources[1].agent``), which the cluster parser turns into a
:class:`~farmnode.errors.ConfigError` naming the source.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from farmnode.validation import LEAST_INTERVAL
from farmnode.validation import Invalid as _Invalid
from farmnode.validation import ifname as _ifname
from farmnode.validation import int_in as _int_in
from farmnode.validation import mapping as _mapping
from farmnode.validation import name as _name
from farmnode.validation import only_keys as _only_keys
from farmnode.validation import require as _require
from farmnode.validation import seconds as _seconds

AgentName = Literal["ipaddr", "switch", "ocf", "script", "nfsganesha", "postgresql"]
Scalar = str | int | float | bool
#: An agent parameter: a scalar, or (ocf's ``params``) a flat table of scalars.
ParamValue = Scalar | Mapping[str, Scalar]
AGENTS: tuple[AgentName, ...] = ("ipaddr", "switch", "ocf", "script", "nfsganesha", "postgresql")
HOUR = 3600.0

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
PARAM_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


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


def parse_groups(raw: Any, service_names: Collection[str] | None) -> tuple[GroupSettings, ...]:
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


__all__ = [
    "AGENTS",
    "GroupSettings",
    "ParamValue",
    "ResourceSettings",
    "parse_groups",
]
