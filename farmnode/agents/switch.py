"""The ``switch`` agent: one virtual service of this node's layer-4 switch as a resource.

``start`` opens the service's data plane (its listener, or its nftables rules), ``stop``
closes it (after a short drain of established connections), ``monitor`` checks that it is
open. The agent does not own the service: the daemon does, and hands the agent a narrow
:class:`ServiceController` (``farmnode.daemon.Node`` is one). A service named by a
``switch`` resource is *deferred* by the daemon: not opened at start-up, only by the owner
of its group.

Built without a controller (as the configuration check builds every agent, to check its
parameters), the agent answers every action with ``ERR_CONFIGURED`` and touches nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

from farmnode.agents.base import Agent, OcfResult, Param
from farmnode.errors import FarmnodeError


class ServiceController(Protocol):
    """What the ``switch`` agent needs of the daemon, and nothing more.

    ``start_service`` and ``stop_service`` are idempotent and raise
    :class:`~farmnode.errors.FarmnodeError` when they cannot do it (``start_service`` also
    for a name the node has no service for; ``stop_service`` treats one as closed);
    ``service_running`` says whether the service's data plane is open (``False`` for an
    unknown name). None of them raises anything else.
    """

    async def start_service(self, name: str) -> None: ...

    async def stop_service(self, name: str) -> None: ...

    def service_running(self, name: str) -> bool: ...


class SwitchAgent(Agent):
    """A virtual service of the switch, opened and closed through a :class:`ServiceController`."""

    kind: ClassVar[str] = "switch"
    description: ClassVar[str] = (
        "A virtual service of the node's layer-4 switch. start opens its data plane, stop "
        "closes it after a short drain, monitor checks that it is open."
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("service", str, "the name of one of the node's [[services]]", required=True),
    )

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        name: str = "",
        controller: ServiceController | None = None,
    ) -> None:
        super().__init__(params, name=name)
        self.service: str = self.values["service"]
        self.controller = controller

    def _unbound(self) -> OcfResult:
        return self.fail(OcfResult.ERR_CONFIGURED, "no switch to control (agent not bound)")

    async def start(self) -> OcfResult:
        if self.controller is None:
            return self._unbound()
        try:
            await self.controller.start_service(self.service)
        except FarmnodeError as exc:
            return self.fail(OcfResult.ERR_GENERIC, f"service {self.service}: {exc}")
        return OcfResult.SUCCESS

    async def stop(self) -> OcfResult:
        if self.controller is None:
            return OcfResult.SUCCESS  # nothing bound, nothing open
        try:
            await self.controller.stop_service(self.service)
        except FarmnodeError as exc:
            return self.fail(OcfResult.ERR_GENERIC, f"service {self.service}: {exc}")
        return OcfResult.SUCCESS

    async def monitor(self) -> OcfResult:
        if self.controller is None:
            return OcfResult.NOT_RUNNING
        if self.controller.service_running(self.service):
            return OcfResult.SUCCESS
        return self.fail(OcfResult.NOT_RUNNING, f"service {self.service} is not open")


__all__ = ["ServiceController", "SwitchAgent"]
