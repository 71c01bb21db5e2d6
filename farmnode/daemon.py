"""The node daemon: one :class:`Node` owns the virtual services, their data planes, the
health checker, the status listener and the load reporter, from start-up to clean shutdown.

**Start** (:meth:`Node.start`), in this order, so the first client never meets a server
nobody looked at: bind the status socket (a taken port fails before anything else
happens); build every :class:`VirtualService` and its data plane (chosen by name from
:data:`~farmnode.services.PLANES`); remove chains that a crashed run left in the nftables
table for services this configuration no longer has; probe every real server once (the shared
:class:`~dispatcher.backends.health.Prober`); start the data planes; serve status; start
the load reporter; last, with a ``[cluster]``, the :class:`ClusterRuntime`. The probe
loops run from the first probe on.

**Cluster.** With ``[cluster]`` the node runs a :class:`ClusterRuntime` (heartbeats,
election, resource groups, ``docs/cluster.md``) once everything else is up. Its groups are
built from ``[[groups]]``; a ``switch`` resource is a :class:`SwitchAgent` bound to this
node (the :class:`~farmnode.agents.switch.ServiceController`: :meth:`Node.start_service`,
:meth:`Node.stop_service`, :meth:`Node.service_running`). A service named by a ``switch``
resource is *deferred* (:func:`~farmnode.groups.deferred_services`): it is built and
health-checked at start-up like every service, but its data plane opens only when this
node acquires its group, and closes (after ``Timeouts.switch_drain``) when it releases it.

**Health.** Each real server is one probe target, keyed ``"{service}/{host:port}"``. Every
result moves the server's state in its service (rise/fall hysteresis is the prober's), and
an agent's standing report sets the server's agent weight (``NN%`` scales the configured
weight, ``drain`` is 0, ``ready`` and no percentage go back to the configured weight);
when anything changed the service's plane is refreshed (coalesced, in its own task).

**The loop** (:meth:`Node.run`, patroni-style): signal handlers only set :attr:`Node.flags`
and wake the loop; each :meth:`Node.cycle` acts on the flags and returns a short status
line, which is logged when it changes and shown as ``state`` in the status document.
Timers run on :func:`time.monotonic`.

**Reload** (:meth:`Node.reload`, SIGHUP): a service whose name, protocol, listen address
and data plane stay is updated in place (:meth:`VirtualService.reload` and a plane
refresh): its established connections go on. Other services are stopped (after a short
drain) or started; probe targets are resynced, new servers probed at once. A new status
address, ``[report]`` table, ``log_level`` or ``log_format`` takes effect too.
A configuration that does not load is logged at ERROR and the running one stays.

**Stop** (:meth:`Node.stop`): the reporter; every plane stops accepting, drains briefly and
goes (nftables rules removed); the prober; the status listener. A cluster runtime stops
first, with its clean leave (groups released in reverse order, a last ``leaving``
heartbeat), so a peer takes the groups over while this node's planes still close. Every
wait of the stop is bounded (a cancelled task that does not end is logged and left), and no
sleep uses ``asyncio.wait_for`` (:mod:`farmnode.waits`: on Python 3.11 it could swallow the
cancellation that ends a loop, and the node never exited).

``[cluster]`` and ``[[groups]]`` are **not reloaded**: a SIGHUP that changes them logs a
warning and the running cluster stays as started (restart the node to apply them); the
set of deferred services stays too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from dispatcher.backends.health import Health, Prober, Target
from dispatcher.errors import InvalidValue
from dispatcher.logsetup import configure_logging
from dispatcher.metrics import MetricsRoute, exposition
from dispatcher.sdnotify import Notifier, keep_watchdog
from dispatcher.tlsfiles import ReloadableTls
from farmnode.cluster.runtime import ClusterRuntime
from farmnode.config import NodeConfig, NodeSettings
from farmnode.dataplane.nftables import NftablesPlane
from farmnode.dataplane.ruleset import chains
from farmnode.dataplane.userspace import UserspacePlane
from farmnode.errors import ConfigError, FarmnodeError
from farmnode.groups import cluster_groups, deferred_services
from farmnode.metrics import NodeCollector
from farmnode.report import RTT_INTERVAL, Measure, Reporter
from farmnode.rtt import RttTable
from farmnode.services import (
    PLANES,
    PlaneFactory,
    Running,
    agent_weight,
    identity,
    open_connections,
    probe_targets,
    prune_chains,
    service_status,
    target_key,
)
from farmnode.spec import ServiceSpec
from farmnode.status import StatusApp, StatusListener
from farmnode.switch.service import VirtualService
from farmnode.vitals import node_liveness, node_readiness
from farmnode.waits import cancel_and_wait, wait_event

log = logging.getLogger("webfarm.farmnode")

#: Seconds a cancelled task of the node (reporter, refresher) may take to end at shutdown.
TASK_END_LIMIT = 2.0
#: Seconds before a plane refresh that failed is tried again.
REFRESH_RETRY = 1.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The daemon's timers, in seconds.

    ``cycle``: between two cycles of the loop (a signal wakes it at once).
    ``reload_drain``: how long a service that a reload removes or replaces lets its
    established connections finish. ``shutdown_drain``: the same at shutdown.
    ``switch_drain``: the same when a cluster group's ``switch`` resource stops (kept
    short: the release of the group, and so the takeover, waits for it).
    ``rtt_report``: between two load reports that carry the RTT table.
    """

    cycle: float = 1.0
    reload_drain: float = 2.0
    shutdown_drain: float = 2.0
    switch_drain: float = 0.5
    rtt_report: float = RTT_INTERVAL


class Flags:
    """What the signal handlers ask for; the loop acts on it in its next cycle."""

    __slots__ = ("reload", "stop")

    def __init__(self) -> None:
        self.reload = False
        self.stop = False


class Node:
    """Runs one node: see the module's docstring for the order of things.

    ``loader`` reads the configuration again for a SIGHUP reload (``None``: reload requests
    are refused with a status line saying so). ``planes`` maps data-plane names to
    factories (tests give nftables a network namespace). ``prober_client`` and
    ``report_client`` are for tests; by default each makes its own httpx client that ignores
    proxy settings from the environment.
    """

    def __init__(
        self,
        config: NodeConfig,
        *,
        loader: Callable[[], NodeConfig] | None = None,
        planes: Mapping[str, PlaneFactory] = PLANES,
        timeouts: Timeouts = Timeouts(),
        prober_client: httpx.AsyncClient | None = None,
        report_client: httpx.AsyncClient | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.config = config
        self.notifier = notifier or Notifier({})
        self.loader = loader
        self.planes = planes
        self.timeouts = timeouts
        self.flags = Flags()
        self.state = "new"
        self.reloads = 0
        self.last_reload: str | None = None
        self.services: dict[str, Running] = {}
        self.deferred = deferred_services(config.cluster)
        self.cluster: ClusterRuntime | None = None
        self.prober: Prober | None = None
        self.listener: StatusListener | None = None
        self.reporter: Reporter | None = None
        self.rtt = RttTable()  # every userspace service's client RTTs, for the reports
        self._prober_client = prober_client
        self._report_client = report_client
        self._started_at: float | None = None
        self._reporter_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        self._refresh_wake: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None

    # -- start and stop ------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything (see the module's docstring); on failure stop what started and
        raise (:class:`FarmnodeError` for what a node can get wrong)."""
        self.state = "starting"
        self._started_at = time.monotonic()
        self._wake = asyncio.Event()
        self._refresh_wake = asyncio.Event()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.state = self.summary()
        log.info("node %s: %s", self.config.node.name, self.state)

    async def _start(self) -> None:
        config = self.config
        self.listener = self._status_listener(config.node)
        for spec in config.services:
            self.services[spec.name] = self._build(spec)
        await self._prune_stale_chains()
        self.prober = Prober(self._on_health, self._prober_client)
        await self.prober.sync(self._targets())
        for name, running in self.services.items():
            if name not in self.deferred:
                await self._start_plane(running)
        self._refresh_task = asyncio.create_task(self._refresher(), name="plane refresher")
        await self.listener.start()
        log.info("node %s: status on %s", config.node.name, self.listener.url)
        self._start_reporter()
        await self._start_cluster()

    async def _start_cluster(self) -> None:
        settings = self.config.cluster
        if settings is None:
            return
        runtime = ClusterRuntime(settings, self.config.node.name, cluster_groups(settings, self))
        await runtime.start()
        self.cluster = runtime
        log.info(
            "node %s: cluster %s started (deferred services: %s)",
            self.config.node.name,
            settings.name,
            ", ".join(sorted(self.deferred)) or "none",
        )

    async def _stop_cluster(self) -> None:
        runtime, self.cluster = self.cluster, None
        if runtime is not None:
            await runtime.stop()

    async def stop(self) -> None:
        """Stop everything that started; calling it again is harmless."""
        if self.state == "stopped":
            return
        self.state = "stopping"
        await self._stop_cluster()  # the clean leave, while the planes are still open
        await self._stop_reporter()
        await asyncio.gather(
            *(self._stop_plane(r, self.timeouts.shutdown_drain) for r in self.services.values())
        )
        task, self._refresh_task = self._refresh_task, None
        if task is not None:
            await cancel_and_wait(task, "the plane refresher", TASK_END_LIMIT, log)
        if self.prober is not None:
            await self.prober.close()
            self.prober = None
        if self.listener is not None:
            await self.listener.stop()
        self.state = "stopped"
        log.info("node %s: stopped", self.config.node.name)

    # -- the loop -------------------------------------------------------------------------

    def request_reload(self) -> None:
        """For a SIGHUP handler: reload in the next cycle (which starts at once)."""
        self.flags.reload = True
        if self._wake is not None:
            self._wake.set()

    def request_stop(self) -> None:
        """For a SIGINT/SIGTERM handler: stop after the current cycle."""
        self.flags.stop = True
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Start, run cycles until :meth:`request_stop`, stop; tell the service manager
        (ready once started, stopping) and feed its watchdog while the node is live."""
        watchdog = None
        try:
            await self.start()
            where = self.listener.url if self.listener is not None else "nowhere"
            self.notifier.ready(f"{self.state}; status on {where}")
            live = lambda: node_liveness(self).ok  # noqa: E731
            watchdog = asyncio.create_task(keep_watchdog(self.notifier, live), name="watchdog")
            while not self.flags.stop:
                self._show(await self.cycle())
                await self._sleep(self.timeouts.cycle)
        finally:
            self.notifier.stopping("stopping")
            if watchdog is not None:
                await cancel_and_wait(watchdog, "the watchdog", TASK_END_LIMIT, log)
            await self.stop()

    async def cycle(self) -> str:
        """One turn of the loop: act on the flags, return the node's state in a line."""
        if self.flags.stop:
            return "stopping"
        if self.flags.reload:
            self.flags.reload = False
            self.notifier.reloading("reloading the configuration")
            line = await self.reload_from_source()
            self.notifier.ready(line)
            return line
        return self.summary()

    def summary(self) -> str:
        """``running: N service(s), U/R real server(s) available[; S on fallback]``."""
        reals = [s for r in self.services.values() for s in r.service.servers.values()]
        up = sum(1 for s in reals if s.available)
        line = f"running: {len(self.services)} service(s), {up}/{len(reals)} real server(s) up"
        fallback = [name for name, r in self.services.items() if r.on_fallback]
        if fallback:
            line += f"; on fallback: {', '.join(fallback)}"
        closed = [name for name, r in self.services.items() if not r.started]
        down = [name for name in closed if name not in self.deferred]
        if down:
            line += f"; not running: {', '.join(down)}"
        standby = [name for name in closed if name in self.deferred]
        if standby:
            line += f"; standby (cluster): {', '.join(standby)}"
        return line

    def _show(self, status: str) -> None:
        if status not in (self.state, self.last_reload):  # a reload logs its own line
            log.info("node %s: %s", self.config.node.name, status)
        self.state = status

    async def _sleep(self, seconds: float) -> None:
        wake = self._wake
        assert wake is not None
        await wait_event(wake, seconds)  # never wait_for: see farmnode.waits
        wake.clear()

    # -- reload -----------------------------------------------------------------------------

    async def reload_from_source(self) -> str:
        """Read the configuration again (SIGHUP) and apply it; a bad one changes nothing."""
        if self.loader is None:
            line = "reload refused: this node was not started from a file"
            return self._reloaded(line, logging.WARNING)
        try:
            config = await asyncio.to_thread(self.loader)
        except ConfigError as exc:
            line = f"reload failed, the running configuration stays: {exc}"
            return self._reloaded(line, logging.ERROR)
        return await self.reload(config)

    async def reload(self, config: NodeConfig) -> str:
        """Apply ``config``: keep what stays, restart what changed, stop what went.

        Returns a status line; a service that cannot start is logged and named in it (the
        others run on), and the node keeps trying it at the next reload.
        """
        wanted = {spec.name: spec for spec in config.services}
        kept = [n for n, r in self.services.items() if n in wanted and self._keeps(r, wanted[n])]
        gone = [n for n in self.services if n not in kept]
        owned = {n for n in gone if n in self.deferred and self.services[n].started}
        for name in kept:  # in force for the next connection
            self._update(self.services[name], wanted[name])
        await asyncio.gather(  # before anything new binds what they leave
            *(self._stop_plane(self.services.pop(n), self.timeouts.reload_drain) for n in gone)
        )
        fresh = [spec.name for spec in config.services if spec.name not in self.services]
        failed = [name for name in fresh if not self._build_logged(wanted[name])]
        self.config = config
        assert self.prober is not None
        await self.prober.sync(self._targets())
        for running in self.services.values():  # kept targets keep their verdict
            self._apply_known_health(running)
        for name in fresh:
            if name in self.deferred and name not in owned:
                continue  # opened by its group's owner only
            if name in self.services and not await self._start_logged(self.services[name]):
                failed.append(name)
        for name in kept:
            self._mark_dirty(name)
        await self._reload_node_settings(config)
        if self.cluster is not None and config.cluster != self.cluster.settings:
            log.warning(
                "[cluster] or [[groups]] changed: not reloaded; the running cluster stays "
                "until the node restarts"
            )
        self.reloads += 1
        line = (
            f"reloaded {config.source}: {len(kept)} kept, {len(fresh) - len(failed)} started, "
            f"{len(gone)} stopped"
        )
        if failed:
            line += f"; failed to start: {', '.join(sorted(set(failed)))}"
        return self._reloaded(line, logging.ERROR if failed else logging.INFO)

    def _keeps(self, running: Running, spec: ServiceSpec) -> bool:
        """Whether a reload updates ``running`` in place: the same identity, and running
        (or deferred: a closed standby service stays closed and is updated too)."""
        return (running.started or running.spec.name in self.deferred) and (
            running.identity == identity(spec)
        )

    def _reloaded(self, line: str, level: int) -> str:
        """Log how a reload went (a failed one at ERROR) and keep it for the status."""
        log.log(level, "node %s: %s", self.config.node.name, line)
        self.last_reload = line
        return line

    def _update(self, running: Running, spec: ServiceSpec) -> None:
        running.service.reload(spec)
        running.spec = spec
        running.plane.spec = spec

    async def _reload_node_settings(self, config: NodeConfig) -> None:
        node = config.node
        configure_logging(node.log_level, node.log_format)
        listener = self.listener
        if listener is not None and listener.address == node.status_listen:
            self._reload_status_tls(listener, node)
        elif listener is not None:
            try:
                new = self._status_listener(node)
                await new.start()
            except (FarmnodeError, InvalidValue) as exc:
                log.error("status listener stays on %s: %s", listener.address, exc)  # noqa: TRY400 - the message is the whole story
            else:
                await listener.stop()
                self.listener = new
                log.info("node %s: status now on %s", config.node.name, new.url)
        current = self.reporter.settings if self.reporter is not None else None
        if current != config.report:
            await self._stop_reporter()
            self._start_reporter()

    def _status_listener(self, node: NodeSettings) -> StatusListener:
        files = node.status_tls
        tls = None if files is None else ReloadableTls(files)
        return StatusListener(self._status_app(), node.status_listen, tls)

    @staticmethod
    def _reload_status_tls(listener: StatusListener, node: NodeSettings) -> None:
        """Renewed (or moved) TLS files into the running context; TLS on or off: a restart."""
        files = node.status_tls
        if listener.tls is not None and files is not None:
            listener.tls.reload(files)
        elif (listener.tls is None) != (files is None):
            log.warning(
                "node %s: turning the status listener's TLS on or off needs a restart "
                "(it stays %s)",
                node.name,
                "plain HTTP" if listener.tls is None else "HTTPS",
            )

    # -- services and planes -------------------------------------------------------------

    def _build(self, spec: ServiceSpec) -> Running:
        factory = self.planes.get(spec.dataplane)
        if factory is None:
            raise FarmnodeError(f"service {spec.name}: no data plane called {spec.dataplane!r}")
        service = VirtualService(spec, rtt=self.rtt)
        return Running(spec, service, factory(spec, service))

    def _build_logged(self, spec: ServiceSpec) -> bool:
        try:
            self.services[spec.name] = self._build(spec)
        except FarmnodeError as exc:
            log.error("service %s cannot be built: %s", spec.name, exc)  # noqa: TRY400 - the message is the whole story
            return False
        return True

    async def _start_plane(self, running: Running) -> None:
        await running.plane.start()
        running.started = True
        self._note_fallback(running)

    async def _start_logged(self, running: Running) -> bool:
        try:
            await self._start_plane(running)
        except FarmnodeError as exc:
            log.error("service %s cannot start: %s", running.spec.name, exc)  # noqa: TRY400 - the message is the whole story
            return False
        return True

    async def _stop_plane(self, running: Running, drain: float) -> None:
        if not running.started:
            return
        running.started = False
        try:
            await running.plane.stop(drain)
        except FarmnodeError as exc:
            log.error("service %s did not stop cleanly: %s", running.spec.name, exc)  # noqa: TRY400 - the message is the whole story

    # -- the switch agent's controller (farmnode.agents.switch.ServiceController) -----------

    async def start_service(self, name: str) -> None:
        """Open service ``name``'s data plane (idempotent); raises :class:`FarmnodeError`."""
        running = self.services.get(name)
        if running is None:
            raise FarmnodeError(f"no service called {name!r} on node {self.config.node.name}")
        if not running.started:
            await self._start_plane(running)
            log.info("service %s: opened (its cluster group is owned here)", name)

    async def stop_service(self, name: str) -> None:
        """Close service ``name``'s data plane after ``Timeouts.switch_drain`` (idempotent;
        an unknown service is closed already). Raises :class:`FarmnodeError`."""
        running = self.services.get(name)
        if running is None or not running.started:
            return
        running.started = False
        await running.plane.stop(self.timeouts.switch_drain)
        log.info("service %s: closed (its cluster group is released)", name)

    def service_running(self, name: str) -> bool:
        """Whether service ``name``'s data plane is open."""
        running = self.services.get(name)
        return running is not None and running.started

    def _targets(self) -> list[Target]:
        return [t for r in self.services.values() for t in probe_targets(r.spec)]

    # -- health --------------------------------------------------------------------------

    def _on_health(self, key: str, health: Health, changed: bool) -> None:
        """The prober's listener: move the server's state, refresh the plane on a change."""
        name, _, real = key.partition("/")
        running = self.services.get(name)
        if running is not None and self._apply(running, real, health):
            self._mark_dirty(name)

    def _apply(self, running: Running, real: str, health: Health) -> bool:
        service = running.service
        server = service.servers.get(real)
        if server is None or health.state == "unknown":
            return False
        changed = False
        if running.spec.check.kind == "agent":
            changed |= service.set_agent_weight(real, agent_weight(health, server.weight))
        changed |= service.set_health(real, health.state == "up")
        if changed:
            self._note_fallback(running)
        return changed

    def _apply_known_health(self, running: Running) -> None:
        prober = self.prober
        assert prober is not None
        changed = False
        for key in list(running.service.servers):
            health = prober.health(target_key(running.spec.name, key))
            changed |= self._apply(running, key, health)
        if changed:
            self._mark_dirty(running.spec.name)

    def _note_fallback(self, running: Running) -> None:
        """Log when a service goes on its fallback server or comes back from it."""
        fallback = running.service.fallback
        using = fallback is not None and running.service.eligible() == [fallback]
        if using == running.on_fallback:
            return
        running.on_fallback = using
        if using and fallback is not None:
            log.warning(
                "service %s: no real server available; the fallback %s takes new connections",
                running.spec.name,
                fallback.key,
            )
        elif running.started:
            log.info("service %s: real servers are back; the fallback leaves", running.spec.name)

    def _mark_dirty(self, name: str) -> None:
        self._dirty.add(name)
        if self._refresh_wake is not None:
            self._refresh_wake.set()

    async def _refresher(self) -> None:
        """Refresh the planes of services whose health or weights changed, coalesced."""
        wake = self._refresh_wake
        assert wake is not None
        loop = asyncio.get_running_loop()
        while True:
            await wake.wait()
            wake.clear()
            dirty, self._dirty = self._dirty, set()
            for name in sorted(dirty):
                running = self.services.get(name)
                if running is None or not running.started:
                    continue
                try:
                    await running.plane.refresh()
                except FarmnodeError as exc:
                    log.error("service %s: refresh failed, retrying: %s", name, exc)  # noqa: TRY400 - the message is the whole story
                    loop.call_later(REFRESH_RETRY, self._mark_dirty, name)

    # -- nftables leftovers --------------------------------------------------------------

    async def _prune_stale_chains(self) -> None:
        """Delete chains of services this node no longer has from its nftables table(s).

        Only chains a crashed run can have left: a clean stop removes its own. Chains of
        configured services stay (their start flushes and refills them, keeping NAT).
        """
        planes = [r.plane for r in self.services.values() if isinstance(r.plane, NftablesPlane)]
        wanted = {name for p in planes for name in chains(p.spec)}
        done: set[tuple[str, str | None]] = set()
        for plane in planes:
            where = (plane.options.table, plane.nft.netns)
            if where not in done:
                done.add(where)
                await asyncio.to_thread(prune_chains, plane, wanted)

    # -- what the node reports -------------------------------------------------------------

    async def measure(self) -> Measure:
        """Open connections over all services, and whether any real server is available."""
        connections = 0
        for running in list(self.services.values()):
            connections += await open_connections(running)
        available = any(
            server.available
            for running in self.services.values()
            for server in running.service.servers.values()
        )
        return Measure(connections, available)

    def _start_reporter(self) -> None:
        settings = self.config.report
        if settings is None:
            return
        self.reporter = Reporter(
            settings,
            self.measure,
            client=self._report_client,
            rtt=self.rtt,
            rtt_interval=self.timeouts.rtt_report,
        )
        self._reporter_task = asyncio.create_task(self.reporter.run(), name="load reporter")
        log.info("node %s: reporting load to %s", self.config.node.name, settings.load_url)

    async def _stop_reporter(self) -> None:
        task, self._reporter_task = self._reporter_task, None
        if task is not None:
            await cancel_and_wait(task, "the load reporter", TASK_END_LIMIT, log)
        reporter, self.reporter = self.reporter, None
        if reporter is not None:
            await reporter.close()

    def _status_app(self) -> MetricsRoute:
        app = StatusApp(self.status, lambda: node_liveness(self), lambda: node_readiness(self))
        return MetricsRoute(app, exposition(NodeCollector(self.status)))

    def status(self) -> dict[str, Any]:
        """The status document (see :mod:`farmnode.status`)."""
        started = self._started_at
        return {
            "node": self.config.node.name,
            "uptime": round(time.monotonic() - started, 3) if started is not None else 0.0,
            "state": self.state,
            "config": self.config.source,
            "reloads": self.reloads,
            "last_reload": self.last_reload,
            "report": self.reporter.status() if self.reporter is not None else None,
            "cluster": self.cluster.status() if self.cluster is not None else None,
            "services": [
                service_status(r, self.deferred, self.prober) for r in self.services.values()
            ],
        }

    @property
    def status_port(self) -> int:
        """The status listener's bound port (useful with port 0)."""
        assert self.listener is not None
        return self.listener.port

    def address(self, name: str) -> tuple[str, int]:
        """Where service ``name``'s userspace plane listens (useful with port 0)."""
        plane = self.services[name].plane
        assert isinstance(plane, UserspacePlane)
        assert plane.address is not None
        return plane.address


__all__ = ["Flags", "Node", "Timeouts"]
