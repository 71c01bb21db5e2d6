"""The cluster runtime: heartbeat, membership, election and resource groups, run together.

One :class:`ClusterRuntime` per node. The daemon builds it from the node's ``[cluster]``
and ``[[groups]]`` (:class:`~farmnode.cluster.settings.ClusterSettings`), calls
:meth:`ClusterRuntime.start` and, on a clean shutdown, :meth:`ClusterRuntime.stop`.

**Start**: stop every resource of every group (a ``kill -9`` of the previous run may have
left an address up), start the transports, then run the loop as a task. Each run of the
node has a fresh incarnation, membership and planner.

**The loop** (one :meth:`ClusterRuntime.cycle` every ``interval``): read the membership
view, let the :class:`~farmnode.cluster.election.Planner` decide, send the heartbeat it
says to advertise (claims go out *before* any resource starts), start the plan's steps and
the monitors that are due. Received datagrams are handled as they arrive (the receiver's
filter, then :meth:`Membership.heard`, both on the injected clock). Actions on one group
run one at a time, in order, in tasks of their own, so a slow start never delays a
heartbeat; their results go back to the planner (``stopped``, ``start_failed``,
``monitor_ok``, ``monitor_failed``). Every cycle returns a status line (logged when it
changes); every group transition is logged with its reason and handed to ``notify`` and to
the configured notify command (run without a shell, bounded by :data:`NOTIFY_TIMEOUT`,
never awaited by the loop).

**Stop** (the clean leave): the planner leaves, the loop keeps sending heartbeats while
the owned groups stop (in reverse order of the configuration), a last ``leaving``
heartbeat with no groups goes out, then the transports close. A peer takes the groups over
within about one interval. :meth:`ClusterRuntime.abandon` is what ``kill -9`` leaves
behind: the loop and the transports end, nothing is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, Final, Literal

from farmnode.agents import IpAddr, ResourceGroup, build_agent
from farmnode.agents.base import OcfResult
from farmnode.agents.context import (
    MAX_ATTRIBUTES,
    AttributeRefused,
    Observation,
    check_attribute,
)
from farmnode.cluster.election import Plan, Planner, Step
from farmnode.cluster.membership import Heartbeat as Advert
from farmnode.cluster.membership import Liveness, Membership, View
from farmnode.cluster.protocol import Heartbeat, HeartbeatError, Receiver, new_incarnation
from farmnode.cluster.protocol import encode as encode_heartbeat
from farmnode.cluster.settings import ClusterSettings
from farmnode.cluster.status import ranked_claimants, status_document
from farmnode.cluster.transports import Transport, build_transports
from farmnode.errors import ConfigError, FarmnodeError
from farmnode.process import run_process
from farmnode.waits import cancel_and_wait, wait_event

log = logging.getLogger("farmnode.cluster")

#: Called with (event, group, reason) on every group transition; must not block.
Notify = Callable[[str, str, str], None]
#: What this node is doing with a group.
LocalState = Literal["stopped", "starting", "running", "stopping", "stop_failed"]
#: Seconds the notify command may run before it is killed.
NOTIFY_TIMEOUT: Final = 10.0
#: Seconds between retries of a release whose stop failed (the claim is kept meanwhile).
STOP_RETRY: Final = 1.0
#: Seconds past a peer's deadline (deadtime, fresh window) at which the loop wakes to act on it.
LAPSE_MARGIN: Final = 0.002
#: Seconds the loop task may take to end once cancelled (a cycle never blocks: immediate).
LOOP_END_LIMIT: Final = 1.0
#: Monitor period of a group the settings do not describe.
DEFAULT_MONITOR_INTERVAL: Final = 10.0


def build_groups(settings: ClusterSettings) -> dict[str, ResourceGroup]:
    """The resource groups ``[[groups]]`` describes, their agents built with ``build_agent``.

    Raises :class:`~farmnode.agents.AgentParamError` for an agent not in the registry (the
    ``switch`` agent needs the daemon: it passes its own groups).
    """
    return {
        g.name: ResourceGroup(
            g.name, [build_agent(r.agent_table(), name=r.name) for r in g.resources]
        )
        for g in settings.groups
    }


class _GroupRun:
    """The runtime's side of one group: its local state, its action lock, its monitor timer."""

    __slots__ = ("group", "lock", "monitor_at", "monitor_every", "retry_at", "state")

    def __init__(self, group: ResourceGroup, monitor_every: float) -> None:
        self.group = group
        self.lock = asyncio.Lock()
        self.monitor_every = monitor_every
        self.monitor_at = 0.0
        self.retry_at = 0.0
        self.state: LocalState = "stopped"


class ClusterRuntime:
    """Heartbeat, membership, election and resource groups of one node (module docstring).

    ``groups`` default to those ``settings`` describe (:func:`build_groups`), ``transports``
    to :func:`~farmnode.cluster.transports.build_transports`; ``clock`` (monotonic seconds)
    drives membership, receiver and planner; ``notify`` is called on every group transition.
    Nothing touches the network or a resource before :meth:`start`.
    """

    def __init__(
        self,
        settings: ClusterSettings,
        node_name: str,
        groups: Mapping[str, ResourceGroup] | None = None,
        *,
        transports: Iterable[Transport] | None = None,
        clock: Callable[[], float] = time.monotonic,
        notify: Notify | None = None,
    ) -> None:
        self.settings = settings
        self.node_name = node_name
        self.clock = clock
        self.notify = notify
        built = build_groups(settings) if groups is None else dict(groups)
        wanted = [g.name for g in settings.groups]
        if sorted(built) != sorted(wanted):
            expected = f"exactly the groups of [[groups]] ({', '.join(wanted) or 'none'})"
            raise ConfigError("cluster runtime", "groups", f"{expected}, got {sorted(built)}")
        self.groups = {
            name: _GroupRun(built[name], _monitor_every(settings, name)) for name in wanted
        }
        self.transports = build_transports(settings) if transports is None else list(transports)
        self.sent = 0
        self.send_errors = 0
        self.last_status = "not started"
        self.cycled_at: float | None = None
        """When the loop last finished a cycle (monotonic): its liveness (farmnode.vitals)."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._attributes: dict[str, str] = {}
        self._fresh_run()
        for run in self.groups.values():
            for agent in run.group.agents:
                agent.bind(self)

    def _fresh_run(self) -> None:
        """A new incarnation: receiver, membership and planner start from nothing."""
        s = self.settings
        self.incarnation = new_incarnation()
        self.sequence = 0
        self.receiver = Receiver(
            s.key, s.name, self.node_name, forget_after=s.deadtime, clock=self.clock
        )
        self.membership = Membership(
            self.node_name,
            [t.name for t in self.transports],
            s.interval,
            s.deadtime,
            s.warntime,
            s.initdead,
            self.clock,
            peers=[p.name for p in s.peers],
        )
        self.planner = Planner.from_settings(self.node_name, s, self.incarnation)
        self._plan: Plan | None = None
        self._liveness: dict[str, Liveness] = {}
        self._adverts: dict[str, Heartbeat] = {}  # each peer's last accepted heartbeat

    # --- start and stop ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop_task is not None

    async def start(self) -> None:
        """Stop every resource, start the transports, run the loop. Raises
        :class:`~farmnode.cluster.protocol.TransportError` when a transport cannot start
        (the ones already started are stopped again)."""
        if self._loop_task is not None:
            raise FarmnodeError(f"cluster runtime of {self.node_name}: already started")
        for name in reversed(list(self.groups)):
            result = await self.groups[name].group.stop()
            if not result.ok:
                log.error("group %s: clean-up stop at start-up failed: %s", name, result.reason)
            self.groups[name].state = "stopped"
        self._fresh_run()
        started: list[Transport] = []
        try:
            for transport in self.transports:
                await transport.start(self._on_datagram)
                started.append(transport)
        except BaseException:
            for transport in reversed(started):
                await transport.stop()
            raise
        for warning in self.settings.warnings:
            log.warning("cluster %s: %s", self.settings.name, warning)
        self._loop_task = asyncio.create_task(self._run(), name=f"cluster-{self.node_name}")

    async def stop(self) -> None:
        """The clean leave (see the module docstring). Idempotent."""
        if self._loop_task is None:
            return
        self.planner.leave()
        self._wake.set()
        limit = self._leave_limit()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while self.planner.claims or self._busy():
                    await asyncio.sleep(min(self.settings.interval, 0.05))
        if self.planner.claims:
            log.error("leaving: groups still claimed after %.1f s: %s", limit, self._claims())
        await self._end_loop()
        if not self.planner.claims:
            plan = self.planner.plan(self.membership.view())
            self._send(plan.heartbeat)
        await self._close()
        self.last_status = "stopped"

    async def abandon(self) -> None:
        """End the loop and the transports without releasing anything (what ``kill -9``
        leaves behind: resources stay as they are; peers notice after ``deadtime``)."""
        await self._end_loop()
        await self._close(cancel=True)
        self.last_status = "abandoned"

    async def _end_loop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            await cancel_and_wait(task, "the cluster loop", LOOP_END_LIMIT, log)

    async def _close(self, *, cancel: bool = False) -> None:
        if cancel:
            for task in list(self._tasks):
                task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=NOTIFY_TIMEOUT)
        for transport in reversed(self.transports):
            await transport.stop()
        for run in self.groups.values():
            for agent in run.group.agents:
                await agent.close()

    def _leave_limit(self) -> float:
        """Seconds a clean leave may wait for the groups: every action's timeout, and some."""
        agents = [agent for run in self.groups.values() for agent in run.group.agents]
        total = sum(sum(agent.timeouts.values()) for agent in agents)
        return total + 5 * self.settings.interval + 1.0

    def _busy(self) -> bool:
        return any(run.lock.locked() for run in self.groups.values())

    def _claims(self) -> str:
        return ", ".join(sorted(self.planner.claims)) or "none"

    # --- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """Cycles on a fixed grid of ``interval`` (so heartbeats do not drift late by the
        timer's overshoot, cycle after cycle), plus extra cycles when news arrives or a
        peer's deadline passes; an extra cycle does not move the grid."""
        interval = self.settings.interval
        beat = time.monotonic()
        while True:
            try:
                self._show(await self.cycle())
            except Exception:
                log.exception("cluster cycle failed")  # one bad cycle never ends the loop
            self._wake.clear()
            now = self.cycled_at = time.monotonic()
            if beat <= now:
                # the next grid point; a stall longer than an interval skips, not bunches
                beat += interval * (1 + int((now - beat) / interval))
            left = beat - now
            lapse = self.membership.next_change()
            if lapse is not None:
                # a peer's deadline falls inside this interval: wake just after it
                left = min(left, lapse + LAPSE_MARGIN)
            await wait_event(self._wake, left)  # never wait_for: see farmnode.waits

    def _show(self, status: str) -> None:
        if status != self.last_status:
            log.info("cluster: %s", status)
        self.last_status = status

    async def cycle(self) -> str:
        """One turn: plan, advertise, act, monitor; returns the status line."""
        view = self.membership.view()
        self._log_liveness(view)
        plan = self.planner.plan(view)
        self._plan = plan
        self._send(plan.heartbeat)
        self._execute(plan.steps)
        self._schedule_monitors(view.now)
        self._retry_stops(view.now)
        return plan.status

    def _send(self, advert: Advert) -> None:
        self.sequence += 1
        hb = self._wire(advert, self._attributes)
        try:
            payload = encode_heartbeat(hb, self.settings.key)
        except HeartbeatError as exc:
            self.send_errors += 1
            log.error("cannot encode heartbeat: %s", exc)  # noqa: TRY400 - no traceback: a known refusal
            return
        for transport in self.transports:
            transport.send(payload)
        self.sent += 1

    def _wire(self, advert: Advert, attributes: Mapping[str, str]) -> Heartbeat:
        return Heartbeat(
            cluster=self.settings.name,
            node=self.node_name,
            incarnation=self.incarnation,
            sequence=self.sequence,
            sent=time.monotonic_ns(),
            state=advert.state,
            priority=advert.priority,
            groups=tuple(sorted(advert.groups)),
            quorum=advert.quorum,
            role=advert.role,
            failed=tuple(sorted(advert.failed)),
            sees=tuple(sorted(advert.sees)),
            attributes=tuple(sorted(attributes.items())),
            # version 1 while there is nothing to carry: nodes of the first release read it
            version=2 if attributes else 1,
        )

    # --- node attributes: the ClusterContext of this node's agents ---------------------------

    @property
    def node(self) -> str:
        """This node's name (:class:`~farmnode.agents.context.ClusterContext`)."""
        return self.node_name

    def publish(self, key: str, value: str | None) -> None:
        """Advertise ``key`` = ``value`` in every heartbeat from the next one; ``None``
        withdraws it. Raises :class:`~farmnode.agents.context.AttributeRefused` for a key or
        value the heartbeat cannot carry (checked by encoding one)."""
        if value is None:
            self._attributes.pop(key, None)
            return
        check_attribute(key, value)
        wanted = {**self._attributes, key: value}
        if len(wanted) > MAX_ATTRIBUTES:
            raise AttributeRefused(f"attribute {key!r}: at most {MAX_ATTRIBUTES} keys per node")
        advert = self._plan.heartbeat if self._plan is not None else self._idle_advert()
        try:
            encode_heartbeat(self._wire(advert, wanted), self.settings.key)
        except HeartbeatError as exc:
            raise AttributeRefused(f"attribute {key!r}: {exc.detail}") from None
        self._attributes = wanted

    def observed(self, key: str) -> dict[str, Observation]:
        """Each node's last advertised ``key`` (this node's too), kept after a peer dies."""
        seen: dict[str, Observation] = {}
        if key in self._attributes:
            seen[self.node_name] = Observation(self.node_name, self._attributes[key], 0.0, True)
        peers = self.membership.members()
        for name, hb in self._adverts.items():
            value = dict(hb.attributes).get(key)
            peer = peers.get(name)
            if value is None or peer is None:
                continue
            age = peer.silent_for
            seen[name] = Observation(name, value, age if age is not None else 0.0, peer.alive)
        return seen

    def alive(self, node: str) -> bool:
        """Whether ``node`` is alive now (this node always is)."""
        return self.membership.alive(node)

    def _idle_advert(self) -> Advert:
        return Advert(
            incarnation=self.incarnation,
            priority=self.settings.priority,
            role=self.settings.role,
            state="active",
            groups=frozenset(self.groups),
            failed=frozenset(),
            sees=frozenset(p.name for p in self.settings.peers),
            quorum=True,
        )

    def _on_datagram(self, data: bytes, transport: str) -> None:
        outcome, hb = self.receiver.receive(data, transport)
        if hb is not None:
            self.membership.heard(hb.node, transport, hb)
            if outcome == "accepted":
                self._accepted(hb)
        elif outcome not in ("replay", "self"):
            log.debug("heartbeat dropped on %s: %s", transport, outcome)

    def _accepted(self, hb: Heartbeat) -> None:
        known = self._adverts.get(hb.node)
        self._adverts[hb.node] = hb
        if known is not None and known.state != hb.state:
            log.info("peer %s: %s -> %s", hb.node, known.state, hb.state)
        if _news(known, hb):
            self._wake.set()  # claims or state changed: decide now, not an interval later

    def _log_liveness(self, view: View) -> None:
        for name, peer in view.peers.items():
            before = self._liveness.get(name)
            if before == peer.liveness:
                continue
            self._liveness[name] = peer.liveness
            silent = peer.silent_for
            since = "never heard" if silent is None else f"silent for {silent:.2f} s"
            level = logging.WARNING if peer.liveness in ("late", "dead") else logging.INFO
            log.log(
                level, "peer %s: %s -> %s (%s)", name, before or "unknown", peer.liveness, since
            )

    # --- steps ------------------------------------------------------------------------------

    def _execute(self, steps: tuple[Step, ...]) -> None:
        for step in steps:
            log.info("group %s: %s: %s", step.group, step.action, step.reason)
            self._notify(step.action, step.group, step.reason)
        if self._leaving():  # a clean leave stops the groups one by one, in reverse order
            releases = [s for s in steps if s.action == "release"]
            if releases:
                self._spawn(self._release_all(releases[::-1]))
            steps = tuple(s for s in steps if s.action != "release")
        for step in steps:
            self._spawn(self._step(step))

    def _leaving(self) -> bool:
        return self._plan is not None and self._plan.heartbeat.state == "leaving"

    async def _release_all(self, steps: list[Step]) -> None:
        for step in steps:
            await self._step(step)

    async def _step(self, step: Step) -> None:
        run = self.groups[step.group]
        async with run.lock:
            if step.action == "acquire":
                await self._acquire(run)
            elif step.action == "release":
                await self._release(run)
            else:
                await self._announce(run)

    async def _acquire(self, run: _GroupRun) -> None:
        run.state = "starting"
        result = await run.group.start()
        if result.ok:
            run.state = "running"
            run.monitor_at = self.clock() + run.monitor_every
            log.info("group %s: started", run.group.name)
            return
        run.state = "stopped"
        log.error("group %s: start failed: %s", run.group.name, result.reason)
        self.planner.start_failed(run.group.name, self.clock())
        self._wake.set()

    async def _release(self, run: _GroupRun) -> None:
        run.state = "stopping"
        result = await run.group.stop()
        if result.ok:
            run.state = "stopped"
            self.planner.stopped(run.group.name)
            log.info("group %s: stopped", run.group.name)
            self._wake.set()
            return
        run.state = "stop_failed"
        run.retry_at = self.clock() + STOP_RETRY
        log.error(
            "group %s: stop failed (%s); still claimed, retrying in %g s",
            run.group.name,
            result.reason,
            STOP_RETRY,
        )

    async def _announce(self, run: _GroupRun) -> None:
        if run.state != "running":
            return
        for agent in run.group.agents:
            if isinstance(agent, IpAddr):
                result = await agent.announce()
                if result is not OcfResult.SUCCESS:
                    log.warning("resource %s announce: %s", agent.name, agent.reason)

    def _retry_stops(self, now: float) -> None:
        for run in self.groups.values():
            if run.state == "stop_failed" and now >= run.retry_at and not run.lock.locked():
                run.retry_at = now + STOP_RETRY
                self._spawn(self._step(Step("release", run.group.name, "retrying a failed stop")))

    # --- monitors ----------------------------------------------------------------------------

    def _schedule_monitors(self, now: float) -> None:
        for run in self.groups.values():
            if run.state == "running" and now >= run.monitor_at and not run.lock.locked():
                run.monitor_at = now + run.monitor_every
                self._spawn(self._monitor(run))

    async def _monitor(self, run: _GroupRun) -> None:
        async with run.lock:
            if run.state != "running":
                return
            result = await run.group.monitor()  # the lock keeps the state as it is
            if result.ok:
                self.planner.monitor_ok(run.group.name)
                return
            log.warning("group %s: monitor failed: %s", run.group.name, result.reason)
            self.planner.monitor_failed(run.group.name, self.clock())
            self._wake.set()

    # --- notify ------------------------------------------------------------------------------

    def _notify(self, event: str, group: str, reason: str) -> None:
        if self.notify is not None:
            try:
                self.notify(event, group, reason)
            except Exception:
                log.exception("notify callback failed for %s %s", event, group)
        if self.settings.notify:
            self._spawn(self._notify_command(event, group, reason))

    async def _notify_command(self, event: str, group: str, reason: str) -> None:
        argv = [*self.settings.notify, event, group, reason]
        env = {
            # run_process adds these to farmnode's safe child environment: no key, no token
            "FARM_CLUSTER_EVENT": event,
            "FARM_CLUSTER_GROUP": group,
            "FARM_CLUSTER_REASON": reason,
            "FARM_CLUSTER_NODE": self.node_name,
            "FARM_CLUSTER_NAME": self.settings.name,
        }
        try:
            async with asyncio.timeout(NOTIFY_TIMEOUT):
                code, output = await run_process(argv, env)
        except TimeoutError:
            log.warning("notify %s: killed after %g s", argv[0], NOTIFY_TIMEOUT)
            return
        except OSError as exc:
            log.warning("notify %s: cannot run: %s", argv[0], exc)
            return
        if code != 0:
            log.warning("notify %s exited %d: %s", argv[0], code, output.strip()[-200:])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- status ------------------------------------------------------------------------------

    @property
    def plan(self) -> Plan | None:
        """The plan of the last cycle (``None`` before the first)."""
        return self._plan

    def status(self) -> dict[str, Any]:
        """Members, quorum, groups and counters, as ``farmnode status`` shows them
        (:func:`~farmnode.cluster.status.status_document`)."""
        return status_document(self)

    def owner(self, group: str) -> str | None:
        """Who owns ``group`` as seen here: this node while it runs it, else the peer that
        claims it (the best-ranked one if several do), else ``None``."""
        run = self.groups.get(group)
        if run is not None and run.state == "running":
            return self.node_name
        claims = ranked_claimants(group, self.membership.view())
        return claims[0] if claims else None


def _news(known: Heartbeat | None, hb: Heartbeat) -> bool:
    """Whether ``hb`` changes what the election knows of its sender (claims, state, the
    peers it sees: a witness that stops seeing a dead owner unblocks the takeover)."""
    if known is None or known.incarnation != hb.incarnation:
        return True
    return (
        set(known.groups) != set(hb.groups)
        or known.state != hb.state
        or set(known.failed) != set(hb.failed)
        or known.priority != hb.priority
        or set(known.sees) != set(hb.sees)
    )


def _monitor_every(settings: ClusterSettings, name: str) -> float:
    try:
        resources = settings.group(name).resources
    except KeyError:
        return DEFAULT_MONITOR_INTERVAL
    return min((r.monitor_interval for r in resources), default=DEFAULT_MONITOR_INTERVAL)


__all__ = [
    "NOTIFY_TIMEOUT",
    "ClusterRuntime",
    "LocalState",
    "Notify",
    "build_groups",
]
