"""Resource agents: everything that moves on failover, behind one OCF-like contract.

``AGENTS`` maps the ``agent`` key of a ``[[groups.resources]]`` table to its class. The
``switch`` agent (:class:`SwitchAgent`, a virtual service of the layer-4 switch) needs the
daemon's services: the daemon builds it, bound to itself, where it builds its groups
(``farmnode.groups.cluster_groups``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from farmnode.agents.base import (
    Action,
    Agent,
    AgentError,
    AgentParamError,
    OcfResult,
    Outcome,
    Param,
    run_action,
)
from farmnode.agents.group import GroupResult, ResourceGroup
from farmnode.agents.ipaddr import IpAddr
from farmnode.agents.nfs import NfsGanesha
from farmnode.agents.ocf import OcfAgent
from farmnode.agents.postgresql import PostgresAgent
from farmnode.agents.script import ScriptAgent
from farmnode.agents.switch import ServiceController, SwitchAgent

AGENTS: dict[str, type[Agent]] = {
    "ipaddr": IpAddr,
    "nfsganesha": NfsGanesha,
    "ocf": OcfAgent,
    "postgresql": PostgresAgent,
    "script": ScriptAgent,
    "switch": SwitchAgent,  # built unbound here (validation); the daemon binds it to itself
}


def build_agent(table: Mapping[str, Any], *, name: str = "") -> Agent:
    """The agent a resource table names (``agent = "ipaddr"``), built from its other keys.

    Raises :class:`AgentParamError` for an unknown agent or a bad parameter.
    """
    kind = table.get("agent")
    params = {key: value for key, value in table.items() if key not in ("agent", "name")}
    resource = name or str(table.get("name") or kind)
    if not isinstance(kind, str) or kind not in AGENTS:
        raise AgentParamError(resource, str(kind), "agent", f"one of {', '.join(sorted(AGENTS))}")
    return AGENTS[kind](params, name=resource)


__all__ = [
    "AGENTS",
    "Action",
    "Agent",
    "AgentError",
    "AgentParamError",
    "GroupResult",
    "IpAddr",
    "NfsGanesha",
    "OcfAgent",
    "OcfResult",
    "Outcome",
    "Param",
    "PostgresAgent",
    "ResourceGroup",
    "ScriptAgent",
    "ServiceController",
    "SwitchAgent",
    "build_agent",
    "run_action",
]
