"""A resource group: resources that move together, started in order, stopped in reverse.

The floating address usually comes first and the service behind it after, so a service
never runs without its address and the address is released last.

- :meth:`ResourceGroup.start` starts the resources in order. At the first failure it stops
  the resource that failed (a failed start may have done half its work; stop is idempotent,
  as Pacemaker does after a failed start) and then the ones it started, in reverse, and
  returns the failure: a group is all started or all stopped (as far as stop can make it
  so; stop failures are in the result too).
- :meth:`ResourceGroup.stop` stops them in reverse and goes on past failures, so one stuck
  resource never keeps the others (the address) held; every failure is reported.
- :meth:`ResourceGroup.monitor` monitors each in order and returns the first that is not
  ``SUCCESS`` (a failing monitor on the owner moves the group).

Every action goes through :func:`farmnode.agents.base.run_action` (timeouts, logging).
Nothing here raises for an operational failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from farmnode.agents.base import Action, Agent, OcfResult, Outcome, run_action


@dataclass(frozen=True, slots=True)
class GroupResult:
    """What an action on a whole group came to.

    ``result`` is ``SUCCESS`` when every resource did what was asked; otherwise it is the
    first failure's result, ``failed`` that failure, and ``outcomes`` every action that ran,
    in the order it ran (including the stops of a rolled-back start).
    """

    group: str
    action: Action
    result: OcfResult
    failed: Outcome | None
    outcomes: tuple[Outcome, ...]

    @property
    def ok(self) -> bool:
        return self.result is OcfResult.SUCCESS

    @property
    def reason(self) -> str:
        if self.failed is None:
            return ""
        return f"{self.failed.resource} {self.failed.action.value}: {self.failed.reason}"


class ResourceGroup:
    """Named, ordered resources; see the module docstring for the contract."""

    def __init__(self, name: str, agents: Sequence[Agent]) -> None:
        names = [agent.name for agent in agents]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"group {name}: resource names repeat: {', '.join(duplicates)}")
        self.name = name
        self.agents = tuple(agents)

    def __repr__(self) -> str:
        return f"ResourceGroup({self.name!r}, {[agent.name for agent in self.agents]})"

    async def start(self) -> GroupResult:
        outcomes: list[Outcome] = []
        for index, agent in enumerate(self.agents):
            outcome = await run_action(agent, Action.START)
            outcomes.append(outcome)
            if not outcome.ok:
                for started in reversed(self.agents[: index + 1]):
                    outcomes.append(await run_action(started, Action.STOP))
                return self._result(Action.START, outcome, outcomes)
        return self._result(Action.START, None, outcomes)

    async def stop(self) -> GroupResult:
        outcomes = [await run_action(agent, Action.STOP) for agent in reversed(self.agents)]
        failed = next((outcome for outcome in outcomes if not outcome.ok), None)
        return self._result(Action.STOP, failed, outcomes)

    async def monitor(self) -> GroupResult:
        outcomes: list[Outcome] = []
        for agent in self.agents:
            outcome = await run_action(agent, Action.MONITOR)
            outcomes.append(outcome)
            if not outcome.ok:
                return self._result(Action.MONITOR, outcome, outcomes)
        return self._result(Action.MONITOR, None, outcomes)

    def _result(
        self, action: Action, failed: Outcome | None, outcomes: list[Outcome]
    ) -> GroupResult:
        result = OcfResult.SUCCESS if failed is None else failed.result
        return GroupResult(self.name, action, result, failed, tuple(outcomes))
