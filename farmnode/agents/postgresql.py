"""The ``postgresql`` agent: one node's PostgreSQL in the roles primary and standby.

The *primary role* is a resource group (this agent, then the floating address) that the
heartbeat's election gives to one node. ``start`` takes the role: it promotes this node's
standby, under Patroni's rules for strict synchronous replication. ``stop`` gives it up:
it leaves a running standby (``standby.signal``, ``primary_conninfo`` to
``primary_host:primary_port``, the address that follows the primary) — demoting a primary
first (a fast stop, so it accepts no more writes) and rejoining it to the new primary with
``pg_rewind`` in the background. ``monitor`` (on the owner) is ``SUCCESS`` while PostgreSQL
runs writable. A node that does not own the role always has ``standby.signal``.

Facts cross nodes as node attributes (``pg.role``, ``pg.lsn``, ``pg.sync``: read in
:mod:`farmnode.pg.peers`). A background task publishes this node's every second, keeps a
standby running, turns ``synchronous_standby_names`` on once a standby streams, and rejoins
a demoted node (:mod:`farmnode.pg.lifecycle`). ``start`` promotes only under the promotion
rules (:mod:`farmnode.pg.promotion`; :meth:`PostgresAgent.force_next_promotion` and
``farmnode promote --force`` skip the synchronous/lag rules), then ``pg_ctl promote``, a
wait until writable, and a ``CHECKPOINT`` so that the old primary can rewind against the
new timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from farmnode.agents.base import Action, Agent, OcfResult, Param
from farmnode.agents.context import AttributeRefused
from farmnode.agents.pgparams import PARAMS, conf_settings
from farmnode.errors import ConfigError, FarmnodeError
from farmnode.pg.formats import (
    make_conninfo,
    parse_lsn,
    parse_sync_names,
    render_conf,
    render_sync_names,
)
from farmnode.pg.health import HealthServer, HealthState, parse_listen
from farmnode.pg.instance import REWIND_MARKER, Instance, InstanceError, Snapshot, tcp_reachable
from farmnode.pg.lifecycle import crashed_primary, halt, run_rewind
from farmnode.pg.peers import (
    LSN,
    ROLE,
    SYNC,
    LastPrimaryRecord,
    live_primary,
    named_sync,
    observed_primary,
    primary_position,
    standby_nodes,
)
from farmnode.pg.promotion import (
    LastPrimary,
    blocking_reason,
    fence_argv,
    lag_reason,
    run_fence,
    take_force_marker,
)
from farmnode.pg.system import CheckFailed, check_system, default_bin_dir
from farmnode.pg.view import Seen, describe, health_of
from farmnode.process import last_line

log = logging.getLogger("farmnode.agents.postgresql")

Mode = Literal["idle", "follow", "lead", "rejoin", "failed"]
TICK: Final = 1.0
#: Seconds a crashed standby waits before it is started again.
RESTART_BACKOFF: Final = 3.0
#: Seconds between warnings while writes wait for a synchronous standby.
SYNC_WARN_EVERY: Final = 60.0


# --- the agent --------------------------------------------------------------------------------


class PostgresAgent(Agent):
    """One node's PostgreSQL as primary (owner of the group) or standby (see the module)."""

    kind: ClassVar[str] = "postgresql"
    description: ClassVar[str] = (
        "PostgreSQL primary/standby: promote on start, demote to a standby on stop, strict "
        "synchronous replication, fencing, rejoin with pg_rewind, HTTP health endpoints."
    )
    params: ClassVar[tuple[Param, ...]] = PARAMS

    def __init__(self, params: Mapping[str, Any], *, name: str = "") -> None:
        super().__init__(params, name=name)
        v = self.values
        self.data_dir: str = v["data_dir"]
        self.user: str = v["user"]
        self.port: int = v["port"]
        self.primary_host: str = v["primary_host"]
        self.primary_port: int = v["primary_port"] or v["port"]
        self.synchronous: bool = v["synchronous"]
        self.limit: int = v["maximum_lag_on_failover"]
        self.fence: list[str] | None = None if v["fence"] is None else fence_argv(v["fence"])
        self.mode: Mode = "idle"
        self.state = "unknown"
        self.problem = ""  # the last lasting problem, for the health endpoints and status
        self._instance: Instance | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._health: HealthServer | None = None
        self._force = False
        self._record = LastPrimaryRecord(self.data_dir, self.name)
        self._sync_names: list[str] = []
        self._last_sync: tuple[str, ...] = ()
        self._lsn: int | None = None
        self._restart_at = 0.0
        self._waiting_since: float | None = None
        self._warned_at = 0.0
        self._seen: Seen | None = None  # the last snapshot, for status() and metrics

    # --- configuration ---------------------------------------------------------------------

    @property
    def app_name(self) -> str:
        return str(self.values["application_name"] or self.context.node)

    def bin_dir(self) -> str:
        """The configured ``bin_dir``, or ``/usr/lib/postgresql/<PG_VERSION>/bin``."""
        try:
            return default_bin_dir(self.data_dir, self.values["bin_dir"])
        except CheckFailed as exc:
            raise self.param_error(exc.param, exc.expected) from None

    @property
    def instance(self) -> Instance:
        if self._instance is None:
            self._instance = Instance(
                self.data_dir, self.bin_dir(), self.user, self.port, self.values["socket_dir"]
            )
        return self._instance

    def check(self) -> None:
        """Check the system for this resource (for ``farmnode check-config``): the data
        directory exists, belongs to ``user``, has ``PG_VERSION`` and ``postgresql.conf``;
        ``bin_dir`` holds PostgreSQL of that major version; ``socket_dir`` exists. Raises
        :class:`ConfigError` naming the parameter."""
        try:
            check_system(
                self.data_dir, self.user, self.values["bin_dir"], self.values["socket_dir"]
            )
        except CheckFailed as exc:
            raise self.param_error(exc.param, exc.expected) from None

    def settings(self, sync_names: Sequence[str] = ()) -> dict[str, str | int | bool]:
        """What ``farmnode.conf`` sets: everything the roles need."""
        return conf_settings(self.values, self.app_name, sync_names)

    def _write_conf(self, sync_names: Sequence[str] = ()) -> bool:
        header = (
            f"Written by farmnode (resource {self.name}, node {self.context.node}) on every "
            "role change;\nedits are lost. Included at the end of postgresql.conf."
        )
        return self.instance.write_agent_conf(render_conf(self.settings(sync_names), header))

    def _take_force_marker(self) -> bool:
        """Whether ``farmnode promote --force`` asked for this node's next promotion
        (:func:`~farmnode.pg.promotion.take_force_marker`)."""
        return take_force_marker(self.data_dir, self.context.node, self.name)

    def force_next_promotion(self) -> None:
        """Let the next ``start`` skip the synchronous/lag rules (``farmnode promote
        --force``). An alive primary elsewhere and a failing fence still refuse."""
        self._force = True

    # --- actions -----------------------------------------------------------------------------

    async def start(self) -> OcfResult:
        await self._prepare()
        if self.state == "rewinding":  # holds the lock for as long as pg_rewind runs
            return self._refuse(f"not promoting {self.context.node}: it is being rewound")
        async with self._lock:
            try:
                return await self._start_locked()
            except (InstanceError, ConfigError) as exc:
                self.problem = str(exc)
                return self.fail(OcfResult.ERR_GENERIC, str(exc))
            finally:
                if self.mode == "idle":  # refused before anything ran: a standby, or demoted
                    await self._settle_idle()

    async def stop(self) -> OcfResult:
        await self._prepare()
        if self.state == "rewinding":
            return OcfResult.SUCCESS  # down while pg_rewind runs: not writable
        if not Path(self.data_dir).is_dir():
            log.warning("resource %s: no data directory %s here", self.name, self.data_dir)
            return OcfResult.SUCCESS  # nothing can run from it
        async with self._lock:
            try:
                return await self._stop_locked()
            except (InstanceError, ConfigError) as exc:
                self.problem = str(exc)
                return self.fail(OcfResult.ERR_GENERIC, str(exc))

    async def monitor(self) -> OcfResult:
        await self._prepare()
        async with self._lock:
            try:
                return await self._monitor_locked()
            except (InstanceError, ConfigError) as exc:
                return self.fail(OcfResult.ERR_GENERIC, str(exc))

    async def _monitor_locked(self) -> OcfResult:
        snap = await self._snapshot()
        if snap.writable:
            if self.mode != "lead":
                self._lead(snap)
            await self._lead_update(snap)
            return OcfResult.SUCCESS
        if snap.standby:
            return self.fail(OcfResult.NOT_RUNNING, "running as a standby")
        if snap.running:
            return self.fail(OcfResult.ERR_GENERIC, f"PostgreSQL does not answer: {snap.error}")
        if self.mode == "lead":
            return self.fail(OcfResult.ERR_GENERIC, "PostgreSQL is not running (was primary)")
        return self.fail(OcfResult.NOT_RUNNING, "PostgreSQL is not running")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._health is not None:
            await self._health.close()
            self._health = None

    # --- start: take the primary role ------------------------------------------------------

    async def _start_locked(self) -> OcfResult:
        me = self.context.node
        snap = await self._snapshot()
        if snap.writable:
            self._lead(snap)
            return OcfResult.SUCCESS
        forced, self._force = self._force, False
        forced = self._take_force_marker() or forced
        last = self._last_primary()
        needs_rewind = self.instance.exists(REWIND_MARKER) or (
            not snap.running and await crashed_primary(self.instance)
        )
        why = blocking_reason(me, last, needs_rewind, forced)
        if why is not None:
            return self._refuse(why)
        if needs_rewind:  # nobody else was primary since (or forced): its WAL is the newest
            self.instance.remove_file(REWIND_MARKER)
            self.mode = "follow"
        snap = await self._running_standby(snap)
        if snap.writable:  # it was a primary starting up (crash recovery): it is one now
            self._lead(snap)
            return OcfResult.SUCCESS
        if not forced:
            why = lag_reason(me, last, snap.lsn, self.limit, self.app_name)
            if why is not None:
                return self._refuse(why)
        if last is not None and last.role == "primary" and not last.alive and self.fence:
            why = await self._run_fence(last.node, self.fence)
            if why is not None:
                return self._refuse(why)
        return await self._promote(forced)

    async def _settle_idle(self) -> None:
        try:
            crashed = self.instance.exists(REWIND_MARKER) or await crashed_primary(self.instance)
        except (InstanceError, ConfigError):
            crashed = True  # unknown: do not let the background start it
        if crashed:
            self._mark_demoted()
        else:
            self._follow()

    def _refuse(self, why: str) -> OcfResult:
        log.warning("resource %s: %s", self.name, why)
        self.problem = why
        return self.fail(OcfResult.ERR_GENERIC, why)

    async def _running_standby(self, snap: Snapshot) -> Snapshot:
        """This node as a running, answering standby (started if need be)."""
        if not snap.running:
            self._write_conf()
            self.instance.write_file("standby.signal", b"")
            await self.instance.start(self.timeouts[Action.START])
        deadline = time.monotonic() + self.timeouts[Action.START]
        while not snap.reachable and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            snap = await self._snapshot()
        if not snap.reachable:
            raise InstanceError(self.data_dir, f"PostgreSQL does not answer: {snap.error}")
        return snap

    async def _run_fence(self, node: str, fence: list[str]) -> str | None:
        timeout = self.timeouts[Action.START]
        return await run_fence(self.context.node, node, fence, timeout, self.name)

    async def _promote(self, forced: bool) -> OcfResult:
        self.state = "promoting"
        self._write_conf()
        timeout = self.timeouts[Action.START]
        await self.instance.promote(timeout)
        snap = await self.instance.wait_writable(timeout)
        if not snap.writable:
            return self.fail(OcfResult.ERR_GENERIC, f"promoted, but not writable: {snap.error}")
        await self.instance.execute("CHECKPOINT")
        self._sync_names, self._last_sync = [], ()
        self._lead(snap)
        self.problem = ""
        log.warning(
            "resource %s: promoted %s to primary%s", self.name, self.context.node,
            " (forced)" if forced else "",
        )  # fmt: skip
        return OcfResult.SUCCESS

    def _lead(self, snap: Snapshot) -> None:
        self.mode, self.state = "lead", "primary"
        self._lsn = snap.lsn if snap.lsn is not None else self._lsn
        self._publish(ROLE, "primary")
        self._publish(LSN, None if self._lsn is None else str(self._lsn))
        self._publish(SYNC, ",".join(self._last_sync))

    # --- stop: leave a standby --------------------------------------------------------------

    async def _stop_locked(self) -> OcfResult:
        if self.mode == "failed":
            return OcfResult.SUCCESS  # a failed rewind stays down until farmnode restarts
        snap = await self._snapshot()
        if snap.writable:
            return await self._demote(snap)
        if snap.running and not snap.reachable:
            if self.instance.exists("standby.signal") and not self.instance.exists(REWIND_MARKER):
                self._follow()
                return OcfResult.SUCCESS  # a standby starting up, or busy: it is not writable
            await self._halt()  # a primary that does not answer (hung, starting): fence it
            if self.instance.running():
                return self.fail(OcfResult.ERR_GENERIC, "could not stop PostgreSQL")
            self._mark_demoted()
            return OcfResult.SUCCESS
        if snap.standby:
            if self._write_conf():
                await self.instance.execute("SELECT pg_reload_conf()")
            self._follow()
            return OcfResult.SUCCESS
        if self.instance.exists(REWIND_MARKER) or await crashed_primary(self.instance):
            self._mark_demoted()
            return OcfResult.SUCCESS
        self._write_conf()
        self.instance.write_file("standby.signal", b"")
        self._follow()
        try:
            await self.instance.start(self.timeouts[Action.STOP] * 0.8)
        except InstanceError as exc:  # not writable all the same; the background retries
            self.problem = str(exc)
            log.warning("resource %s: standby did not start: %s", self.name, exc)
        return OcfResult.SUCCESS

    async def _demote(self, snap: Snapshot) -> OcfResult:
        """Stop a primary so it accepts no more writes, then leave it to rejoin."""
        self.state = "demoting"
        sync_now = tuple(r.name for r in snap.replicas if r.sync_state == "sync")
        if sync_now:
            self._last_sync = sync_now
        self._lsn = snap.lsn
        await self._halt()
        if self.instance.running():
            return self.fail(OcfResult.ERR_GENERIC, "could not stop PostgreSQL (still running)")
        with contextlib.suppress(InstanceError, ValueError):
            control = await self.instance.controldata()
            final = parse_lsn(control.get("Latest checkpoint location", ""))
            self._lsn = max(final, self._lsn or 0)
        self._mark_demoted()
        log.warning("resource %s: demoted (stopped; rejoins as a standby)", self.name)
        return OcfResult.SUCCESS

    async def _halt(self) -> None:
        """Stop the server whatever it takes (:func:`~farmnode.pg.lifecycle.halt`)."""
        self._keep(await halt(self.instance, self.timeouts[Action.STOP], self.name))

    def _mark_demoted(self) -> None:
        self._write_conf()
        self.instance.write_file(REWIND_MARKER, b"rewind before running again\n")
        self.instance.write_file("standby.signal", b"")
        self.mode, self.state = "rejoin", "demoted"
        self._publish(ROLE, "demoted")
        self._publish(LSN, None if self._lsn is None else str(self._lsn))
        self._publish(SYNC, ",".join(self._last_sync))

    def _follow(self) -> None:
        self.mode, self.state = "follow", "standby"
        self._publish(ROLE, "standby")

    # --- the background: publish, keep the standby up, strict sync, rejoin -----------------

    async def _prepare(self) -> None:
        """First action: the health endpoints and the background task."""
        if self._task is None:
            self._task = asyncio.create_task(self._background(), name=f"pg-{self.name}")
        listen = self.values["health_listen"]
        if listen and self._health is None:
            host, port = parse_listen(listen)
            server = HealthServer(self.health_state, host, port)
            try:
                await server.start()
            except FarmnodeError as exc:
                log.error("resource %s: health endpoints: %s", self.name, exc)  # noqa: TRY400
                return
            self._health = server

    @property
    def health_address(self) -> tuple[str, int] | None:
        """Where the health endpoints listen (``None``: not started)."""
        return None if self._health is None else self._health.address

    async def _background(self) -> None:
        while True:
            try:
                if self.mode == "follow":
                    await self._follow_tick()
                elif self.mode == "lead":
                    await self._lead_tick()
                elif self.mode == "rejoin":
                    await self._rejoin_tick()
                if self.mode not in ("follow", "lead"):
                    await self._snapshot()  # demoted or failed: stopped, as a rule (cheap)
            except (InstanceError, ConfigError) as exc:
                self.problem = str(exc)
                log.warning("resource %s: %s", self.name, exc)
            except Exception:  # the loop must outlive one bad tick
                log.exception("resource %s: background task", self.name)
            await asyncio.sleep(TICK)

    async def _follow_tick(self) -> None:
        async with self._lock:
            if self.mode != "follow":
                return
            snap = await self._snapshot()
            if snap.writable:
                log.error("resource %s: writable without the primary role: demoting", self.name)
                await self._demote(snap)
                return
            if snap.standby:
                self._lsn = snap.lsn if snap.lsn is not None else self._lsn
                self.state = "standby"
            elif not snap.running and time.monotonic() >= self._restart_at:
                self._restart_at = time.monotonic() + RESTART_BACKOFF
                log.warning("resource %s: standby not running: starting it", self.name)
                self._write_conf()
                self.instance.write_file("standby.signal", b"")
                await self.instance.start(self.timeouts[Action.STOP])
            self._publish(ROLE, "standby")
            self._publish(LSN, None if self._lsn is None else str(self._lsn))

    async def _lead_tick(self) -> None:
        async with self._lock:
            if self.mode != "lead":
                return
            snap = await self._snapshot()
            if snap.writable:
                await self._lead_update(snap)

    async def _lead_update(self, snap: Snapshot) -> None:
        """Strict synchronous replication and the primary's attributes."""
        if self.synchronous:
            members = standby_nodes(self.context)
            names = [r.name for r in snap.replicas if r.state == "streaming" and r.name in members]
            wanted = self._sync_names + [n for n in names if n not in self._sync_names]
            if wanted != self._sync_names:
                self._sync_names = wanted
                self._write_conf(wanted)
                await self.instance.execute("SELECT pg_reload_conf()")
                log.info("resource %s: synchronous_standby_names = %s", self.name,
                         render_sync_names(wanted))  # fmt: skip
        sync_now = tuple(r.name for r in snap.replicas if r.sync_state == "sync")
        if sync_now:
            self._last_sync, self._waiting_since = sync_now, None
        elif not parse_sync_names(snap.sync_names):
            self._last_sync = ()  # asynchronous now: no standby is sure to hold every commit
        else:
            self._warn_waiting()
        self._lsn = snap.lsn if snap.lsn is not None else self._lsn
        self._publish(ROLE, "primary")
        self._publish(LSN, None if self._lsn is None else str(self._lsn))
        self._publish(SYNC, ",".join(self._last_sync))

    def _warn_waiting(self) -> None:
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if now - self._waiting_since >= 10 and now - self._warned_at >= SYNC_WARN_EVERY:
            self._warned_at = now
            self.problem = (
                f"no synchronous standby for {now - self._waiting_since:.0f} s "
                f"({', '.join(self._sync_names)} not streaming): commits wait"
            )
            log.warning("resource %s: %s", self.name, self.problem)

    async def _rejoin_tick(self) -> None:
        source = live_primary(self.context)
        if source is None:
            self.state = "demoted"
            return
        if not await tcp_reachable(self.primary_host, self.primary_port):
            self.state = f"demoted: {self.primary_host}:{self.primary_port} unreachable"
            return
        async with self._lock:
            if self.mode == "rejoin":
                await self._rewind(source)

    async def _rewind(self, source: str) -> None:
        """pg_rewind from the new primary, own configuration back, start as a standby."""
        self.state = "rewinding"
        if self.instance.running():
            await self._halt()
        await self.instance.wait_reaped()
        self.instance.remove_file("standby.signal")  # single-user recovery refuses it
        code, output = -1, "interrupted"
        v = self.values
        conninfo = make_conninfo(
            host=self.primary_host, port=self.primary_port, user=v["replication_user"],
            dbname="postgres", connect_timeout=5,
        )  # fmt: skip
        try:
            code, output = await run_rewind(
                self.instance, self.data_dir, conninfo, v["replication_password"]
            )
        finally:
            self._write_conf()
            if code != 0:
                self.instance.write_file(REWIND_MARKER, b"rewind before running again\n")
            self.instance.write_file("standby.signal", b"")
        if code != 0:
            self.mode, self.state = "failed", "rewind failed"
            self.problem = f"pg_rewind from {source} failed (exit {code}): {last_line(output)}"
            log.error("resource %s: %s; staying down", self.name, self.problem)
            return
        self.instance.remove_file(REWIND_MARKER)
        log.warning("resource %s: rewound from %s: %s", self.name, source, last_line(output))
        self.problem = ""
        self._follow()
        try:
            await self.instance.start(self.timeouts[Action.STOP])
        except InstanceError as exc:
            self.problem = str(exc)
            log.warning("resource %s: standby did not start after rewind: %s", self.name, exc)

    # --- attributes of the cluster ----------------------------------------------------------

    def _publish(self, key: str, value: str | None) -> None:
        try:
            self.context.publish(key, value)
        except AttributeRefused as exc:
            log.warning("resource %s: %s", self.name, exc)

    def _last_primary(self) -> LastPrimary | None:
        """The other node last seen as primary (an alive one first, then the freshest), kept
        in the data directory; when none was heard in this run, the one kept there."""
        last = observed_primary(self.context)
        if last is None:
            return self._record.read(self.context)
        self._record.remember(last, self.instance)
        return last

    # --- health and status -------------------------------------------------------------------

    async def _snapshot(self) -> Snapshot:
        """The server's state now, kept (with when) for :meth:`status`."""
        snap = await self.instance.snapshot()
        self._keep(snap)
        return snap

    def _keep(self, snap: Snapshot) -> None:
        self._seen = Seen(snap, time.monotonic())

    def status(self) -> dict[str, Any]:
        """Role, timeline, positions and lag from the last snapshot (:mod:`farmnode.pg.view`;
        at most about a second old while the background task runs)."""
        return describe(
            self._seen, time.monotonic(), mode=self.mode, state=self.state,
            problem=self.problem, primary_lsn=primary_position(self.context),
            named_sync=named_sync(self.context, self.app_name),
        )  # fmt: skip

    async def health_state(self) -> HealthState:
        """This node's state for the HTTP endpoints."""
        snap = await self._snapshot()
        return health_of(
            snap, node=self.context.node, mode=self.mode, state=self.state,
            problem=self.problem, primary_lsn=primary_position(self.context),
            last_sync=self._last_sync,
        )  # fmt: skip
