"""The resource groups a node's ``[[groups]]`` make, and the services they defer.

A ``switch`` resource is a :class:`~farmnode.agents.SwitchAgent` bound to the node (its
:class:`~farmnode.agents.switch.ServiceController`); a service one names is *deferred*: its
data plane opens only on the group's owner (``docs/cluster.md``).
"""

from __future__ import annotations

from farmnode.agents import Agent, ResourceGroup, SwitchAgent, build_agent
from farmnode.agents.switch import ServiceController
from farmnode.cluster.group_settings import ResourceSettings
from farmnode.cluster.settings import ClusterSettings


def deferred_services(settings: ClusterSettings | None) -> frozenset[str]:
    """The services named by a ``switch`` resource: opened only by their group's owner."""
    if settings is None:
        return frozenset()
    return frozenset(
        str(resource.params["service"])
        for group in settings.groups
        for resource in group.resources
        if resource.agent == "switch"
    )


def cluster_groups(
    settings: ClusterSettings, controller: ServiceController
) -> dict[str, ResourceGroup]:
    """The resource groups of ``[[groups]]``, ``switch`` resources bound to ``controller``.

    Raises :class:`~farmnode.agents.AgentParamError` for a bad agent parameter.
    """
    return {
        group.name: ResourceGroup(group.name, [_agent(r, controller) for r in group.resources])
        for group in settings.groups
    }


def _agent(resource: ResourceSettings, controller: ServiceController) -> Agent:
    table = resource.agent_table()
    if resource.agent == "switch":
        del table["agent"]
        return SwitchAgent(table, name=resource.name, controller=controller)
    return build_agent(table, name=resource.name)
