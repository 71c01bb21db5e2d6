"""The ``postgresql`` agent: one node's PostgreSQL in the roles primary and standby.

The *primary role* is a resource group (this agent, then the floating address) that the
heartbeat's election gives to one node. ``start`` takes the role: it promotes this node's
standby, under Patroni's rules for strict synchronous replication. ``stop`` gives it up:
it leaves a running standby (``standby.signal``, ``primary_conninfo`` to
``primary_host:primary_port``, the address that follows the primary) — demoting a primary
first (a fast stop, so it accepts no more writes) and rejoining it to the new primary with
``pg_rewind`` in the background. ``monitor`` (on the owner) is ``SUCCESS`` while PostgreSQL
runs writable. A node that does not own the role always has ``standby.signal``.

Facts cross nodes as node attributes (:mod:`farmnode.agents.context`): ``pg.role``
(``primary``, ``standby`` or ``demoted``: a former primary not yet rejoined), ``pg.lsn``
(the primary's flush position, a standby's receive/replay position, a demoted node's last
position; an integer) and ``pg.sync`` (the standbys the primary last saw synchronous).
A background task publishes them every second, keeps a standby running, turns
``synchronous_standby_names`` on once a standby streams, and rejoins a demoted node.

Promotion rules (``start``), after Patroni's ``synchronous_mode_strict`` and
``maximum_lag_on_failover``; the last known primary is the other node whose last advertised
role is ``primary`` or ``demoted``:

1. this node is a writable primary already: success;
2. the last known primary is alive and still advertises ``primary``: refused;
3. this node is a former primary not yet rewound while another node has been primary:
   refused (unless forced);
4. this node is in the last known primary's ``pg.sync``: allowed; otherwise allowed only when
   that primary's last ``pg.lsn`` minus this node's position is at most
   ``maximum_lag_on_failover`` (unless forced: :meth:`PostgresAgent.force_next_promotion`);
5. no primary ever observed (a fresh cluster): allowed;
6. the last known primary died as a primary (not demoted) and ``fence`` is set: the fence
   command runs first (``FARM_FENCE_NODE`` = that node); its failure refuses promotion.

Then ``pg_ctl promote``, a wait until writable, and a ``CHECKPOINT`` so that the old
primary can rewind against the new timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from farmnode.agents.base import Action, Agent, OcfResult, Param
from farmnode.agents.context import AttributeRefused
from farmnode.errors import ConfigError, FarmnodeError
from farmnode.pg.health import HealthServer, HealthState, format_size, parse_listen
from farmnode.pg.instance import (
    FORCE_MARKER,
    LAST_PRIMARY,
    REWIND_MARKER,
    CheckFailed,
    Instance,
    InstanceError,
    Snapshot,
    check_system,
    default_bin_dir,
    make_conninfo,
    parse_lsn,
    parse_sync_names,
    render_conf,
    render_sync_names,
    tcp_reachable,
)
from farmnode.pg.view import Seen, describe, role_of
from farmnode.process import last_line, run_process

log = logging.getLogger("farmnode.agents.postgresql")

Mode = Literal["idle", "follow", "lead", "rejoin", "failed"]
TICK: Final = 1.0
MiB: Final = 1024 * 1024
#: Seconds a crashed standby waits before it is started again.
RESTART_BACKOFF: Final = 3.0
#: pg_rewind may take this long (it copies changed blocks and WAL from the source).
REWIND_TIMEOUT: Final = 600.0
#: Seconds between warnings while writes wait for a synchronous standby.
SYNC_WARN_EVERY: Final = 60.0
ROLE, LSN, SYNC = "pg.role", "pg.lsn", "pg.sync"
#: Seconds a forced promotion stays requested; an older request is dropped, not obeyed.
FORCE_VALID: Final = 900.0
_APP_NAME = re.compile(r"[A-Za-z0-9_.-]{1,63}")
_PG_SIZE = re.compile(r"\d+\s*(kB|MB|GB|TB)?")
_HOST = re.compile(r"[A-Za-z0-9_.:-]{1,253}")


def _absolute(value: str) -> str | None:
    return None if os.path.isabs(value) else "an absolute path"


def _port(value: int) -> str | None:
    return None if 1 <= value <= 65535 else "a port 1-65535"


def _app_name(value: str) -> str | None:
    return None if _APP_NAME.fullmatch(value) else "1-63 letters, digits, '_', '.' or '-'"


def _host(value: str) -> str | None:
    return None if _HOST.fullmatch(value) else "a host name or address"


def _wal_size(value: str) -> str | None:
    return None if _PG_SIZE.fullmatch(value) else "a size such as 256MB or 1GB"


def _bytes(value: int) -> str | None:
    return None if value >= 0 else "a number of bytes >= 0"


def _listen(value: str) -> str | None:
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def _fence(value: object) -> str | None:
    expected = "a command: an argv list or a string, the program an absolute path"
    if isinstance(value, str):
        try:
            argv = shlex.split(value)
        except ValueError:
            return expected
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        argv = list(value)
    else:
        return expected
    return None if argv and os.path.isabs(argv[0]) else expected


def fence_argv(value: str | Sequence[str]) -> list[str]:
    """The fence command as an argv (a string is split like a shell would, without one)."""
    return shlex.split(value) if isinstance(value, str) else list(value)


# --- the promotion rules (pure) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LastPrimary:
    """The other node whose last advertised role was ``primary`` or ``demoted``.

    ``remembered``: not heard in this run of farmnode but read back from the data directory
    (:data:`LAST_PRIMARY`): who it was and its synchronous standbys then; its position since
    is unknown (``lsn`` is ``None``), so only a standby it named synchronous may be promoted
    without ``--force``.
    """

    node: str
    role: str
    alive: bool
    lsn: int | None
    sync: tuple[str, ...]
    remembered: bool = False


def _override(me: str) -> str:
    return f"`farmnode promote --force {me}` to override"


def blocking_reason(
    me: str, last: LastPrimary | None, needs_rewind: bool, forced: bool
) -> str | None:
    """Why ``me`` may not be promoted whatever its position (rules 2 and 3), or ``None``."""
    if last is None:
        return None
    if last.alive and last.role == "primary":
        return f"not promoting {me}: {last.node} is alive and still primary"
    if needs_rewind and not forced:
        return (
            f"not promoting {me}: it was a primary and has not rejoined (pg_rewind) since "
            f"{last.node} became primary; {_override(me)}"
        )
    return None


def lag_reason(
    me: str, last: LastPrimary | None, position: int | None, limit: int, sync_name: str = ""
) -> str | None:
    """Why ``me`` (``sync_name`` on the primary, default ``me``) at ``position`` may not be
    promoted (rule 4), or ``None``."""
    if last is None or (sync_name or me) in last.sync:
        return None
    head = f"not promoting {me}: not synchronous at {last.node}'s last report and"
    if last.remembered:
        return (
            f"{head} its position is unknown: {last.node} was last seen as primary before "
            f"farmnode restarted here; {_override(me)}"
        )
    if last.lsn is None or position is None:
        return f"{head} its position is unknown (limit {format_size(limit)}); {_override(me)}"
    lag = last.lsn - position
    if lag <= limit:
        return None
    return f"{head} {format_size(lag)} behind it (limit {format_size(limit)}); {_override(me)}"


# --- the agent --------------------------------------------------------------------------------


class PostgresAgent(Agent):
    """One node's PostgreSQL as primary (owner of the group) or standby (see the module)."""

    kind: ClassVar[str] = "postgresql"
    description: ClassVar[str] = (
        "PostgreSQL primary/standby: promote on start, demote to a standby on stop, strict "
        "synchronous replication, fencing, rejoin with pg_rewind, HTTP health endpoints."
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("data_dir", str, "the data directory", required=True, check=_absolute),
        Param("primary_host", str, "the primary's address (floating IP)", True, check=_host),
        Param("primary_port", int, "the primary's port (default: port)", check=_port),
        Param("bin_dir", str, "programs (/usr/lib/postgresql/VER/bin)", check=_absolute),
        Param("user", str, "OS user owning and running the cluster", default="postgres"),
        Param("port", int, "port PostgreSQL listens on", default=5432, check=_port),
        Param("listen", str, "listen_addresses", default="*"),
        Param("socket_dir", str, "unix socket directory", False, "/var/run/postgresql", _absolute),
        Param("replication_user", str, "role of standbys and pg_rewind", default="replicator"),
        Param("replication_password", str, "its password (none: trust, or ~/.pgpass)"),
        Param("application_name", str, "name on the primary (default: node)", check=_app_name),
        Param("synchronous", bool, "strict synchronous replication", default=True),
        Param("maximum_lag_on_failover", int, "bytes of lag still promoted", False, MiB, _bytes),
        Param("fence", object, "command run before promoting over a dead primary", check=_fence),
        Param("health_listen", str, "host:port of the HTTP health endpoints", check=_listen),
        Param("wal_keep_size", str, "WAL kept for standbys", default="256MB", check=_wal_size),
    )

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
        self._remembered: dict[str, object] | None = None  # last record written
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
            raise self._config_error(exc.param, exc.expected) from None

    @property
    def instance(self) -> Instance:
        if self._instance is None:
            self._instance = Instance(
                self.data_dir, self.bin_dir(), self.user, self.port, self.values["socket_dir"]
            )
        return self._instance

    def _config_error(self, param: str, expected: str) -> ConfigError:
        return self.param_error(param, expected)

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
            raise self._config_error(exc.param, exc.expected) from None

    def settings(self, sync_names: Sequence[str] = ()) -> dict[str, str | int | bool]:
        """What ``farmnode.conf`` sets: everything the roles need."""
        v = self.values
        conninfo = make_conninfo(
            host=self.primary_host,
            port=self.primary_port,
            user=v["replication_user"],
            password=v["replication_password"],
            application_name=self.app_name,
            connect_timeout=2,
        )
        return {
            "port": self.port,
            "listen_addresses": v["listen"],
            "unix_socket_directories": v["socket_dir"],
            "wal_level": "replica",
            "hot_standby": True,
            "wal_log_hints": True,
            "full_page_writes": True,
            "wal_keep_size": v["wal_keep_size"],
            "max_wal_senders": 10,
            "synchronous_commit": "on",
            "synchronous_standby_names": render_sync_names(sync_names),
            "primary_conninfo": conninfo,
            "recovery_target_timeline": "latest",
            "wal_retrieve_retry_interval": "1s",
        }

    def _write_conf(self, sync_names: Sequence[str] = ()) -> bool:
        header = (
            f"Written by farmnode (resource {self.name}, node {self.context.node}) on every "
            "role change;\nedits are lost. Included at the end of postgresql.conf."
        )
        return self.instance.write_agent_conf(render_conf(self.settings(sync_names), header))

    def _take_force_marker(self) -> bool:
        """Whether ``farmnode promote --force`` asked for this node's next promotion within
        :data:`FORCE_VALID` seconds; the request is used up (or dropped) either way."""
        marker = Path(self.data_dir) / FORCE_MARKER
        try:
            request = json.loads(marker.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            log.warning("resource %s: unreadable %s dropped: %s", self.name, marker, exc)
            request = None
        with contextlib.suppress(FileNotFoundError):
            marker.unlink()
        if not isinstance(request, dict) or request.get("node") != self.context.node:
            log.warning(
                "resource %s: %s is not for %s: dropped", self.name, marker, self.context.node
            )
            return False
        at = request.get("at")
        age = time.time() - at if isinstance(at, int | float) else -1.0
        if not 0 <= age <= FORCE_VALID:
            log.warning(
                "resource %s: a forced promotion requested %.0f s ago dropped", self.name, age
            )
            return False
        log.warning(
            "resource %s: forced promotion of %s (farmnode promote --force)",
            self.name,
            self.context.node,
        )
        return True

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
            not snap.running and await self._crashed_primary()
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
            crashed = self.instance.exists(REWIND_MARKER) or await self._crashed_primary()
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
        env = {"FARM_FENCE_NODE": node}  # on top of the safe child environment
        try:
            async with asyncio.timeout(self.timeouts[Action.START]):
                code, output = await run_process(fence, env)
        except TimeoutError:
            return f"not promoting {self.context.node}: fencing {node} timed out"
        except OSError as exc:
            return f"not promoting {self.context.node}: cannot run the fence command: {exc}"
        if code != 0:
            said = last_line(output)
            return (
                f"not promoting {self.context.node}: fencing {node} failed "
                f"(exit {code}{': ' if said else ''}{said})"
            )
        log.warning("resource %s: fenced %s", self.name, node)
        return None

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
        if self.instance.exists(REWIND_MARKER) or await self._crashed_primary():
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

    async def _crashed_primary(self) -> bool:
        """Whether a stopped data directory last ran as a primary and did not shut down
        cleanly (``kill -9``): it must be rewound before it may run again. A clean
        ``shut down`` without a marker (a fresh cluster) is not."""
        if self.instance.exists("standby.signal") or self.instance.exists("backup_label"):
            return False
        state = (await self.instance.controldata()).get("Database cluster state", "")
        return state in ("in production", "shutting down", "in crash recovery")

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
        """Stop the server whatever it takes: fast, then immediate, then SIGKILL."""
        budget = self.timeouts[Action.STOP]
        if await self.instance.stop("fast", budget * 0.4):
            self._keep(Snapshot(running=False))
            return
        log.warning("resource %s: fast stop failed; stopping in immediate mode", self.name)
        if await self.instance.stop("immediate", budget * 0.2):
            self._keep(Snapshot(running=False))
            return
        log.error("resource %s: immediate stop failed; killing the postmaster", self.name)
        self.instance.kill()
        deadline = time.monotonic() + 2.0
        while self.instance.running() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._keep(Snapshot(running=self.instance.running()))

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
            members = self._standby_nodes()
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
        source = self._live_primary()
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
        env = {"PGPASSWORD": v["replication_password"]} if v["replication_password"] else {}
        try:
            with self.instance.kept_from_rewind():
                async with asyncio.timeout(REWIND_TIMEOUT):
                    code, output = await self.instance.run(
                        "pg_rewind", f"--target-pgdata={self.data_dir}",
                        f"--source-server={conninfo}", env=env,
                    )  # fmt: skip
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

    def _standby_nodes(self) -> set[str]:
        """Other nodes advertising ``pg.role = standby``: the synchronous candidates (a
        pg_basebackup or pg_receivewal streaming from the primary is not one)."""
        me = self.context.node
        return {
            n for n, s in self.context.observed(ROLE).items() if n != me and s.value == "standby"
        }

    def _live_primary(self) -> str | None:
        me = self.context.node
        for node, seen in self.context.observed(ROLE).items():
            if node != me and seen.value == "primary" and self.context.alive(node):
                return node
        return None

    def _last_primary(self) -> LastPrimary | None:
        """The other node last seen as primary (an alive one first, then the freshest)."""
        me = self.context.node
        roles = [
            seen
            for node, seen in self.context.observed(ROLE).items()
            if node != me and seen.value in ("primary", "demoted")
        ]
        if not roles:
            return self._remembered_primary()
        best = min(roles, key=lambda s: (not (s.alive and s.value == "primary"), s.age))
        lsn_seen = self.context.observed(LSN).get(best.node)
        sync_seen = self.context.observed(SYNC).get(best.node)
        try:
            lsn = int(lsn_seen.value) if lsn_seen is not None else None
        except ValueError:
            lsn = None
        sync = tuple(n for n in (sync_seen.value.split(",") if sync_seen else ()) if n)
        last = LastPrimary(best.node, best.value, self.context.alive(best.node), lsn, sync)
        self._remember(last)
        return last

    def _remember(self, last: LastPrimary) -> None:
        """Keep who the last primary was (not its position: that goes stale at once) in the
        data directory, rewritten only when it changes."""
        record: dict[str, object] = {"node": last.node, "role": last.role, "sync": list(last.sync)}
        if record == self._remembered:
            return
        try:
            self.instance.write_file(LAST_PRIMARY, json.dumps(record).encode())
        except OSError as exc:
            path = self.instance.file(LAST_PRIMARY)
            log.warning("resource %s: cannot keep the last primary in %s: %s", self.name, path, exc)
            return
        self._remembered = record

    def _remembered_primary(self) -> LastPrimary | None:
        """The last primary as kept in the data directory, or ``None`` (a fresh cluster)."""
        path = Path(self.data_dir) / LAST_PRIMARY
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            node, role, sync = record["node"], record["role"], record["sync"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # unreadable: assume the worst (a primary we know nothing of), never "fresh"
            log.warning("resource %s: %s unreadable (%s)", self.name, path, exc)
            return LastPrimary("unknown", "primary", False, None, (), remembered=True)
        if node == self.context.node or not isinstance(sync, list):
            return None
        names = tuple(str(name) for name in sync)
        return LastPrimary(
            str(node), str(role), self.context.alive(str(node)), None, names, remembered=True
        )

    # --- health and status -------------------------------------------------------------------

    async def _snapshot(self) -> Snapshot:
        """The server's state now, kept (with when) for :meth:`status`."""
        snap = await self.instance.snapshot()
        self._keep(snap)
        return snap

    def _keep(self, snap: Snapshot) -> None:
        self._seen = Seen(snap, time.monotonic())

    def _primary_position(self) -> int | None:
        """The live primary's (another node's) last advertised ``pg.lsn``, or ``None``."""
        source = self._live_primary()
        seen = self.context.observed(LSN).get(source) if source else None
        try:
            return int(seen.value) if seen is not None else None
        except ValueError:
            return None

    def _named_sync(self) -> bool:
        """Whether the live primary last named this node synchronous (``pg.sync``)."""
        source = self._live_primary()
        seen = self.context.observed(SYNC).get(source) if source else None
        return seen is not None and self.app_name in seen.value.split(",")

    def status(self) -> dict[str, Any]:
        """Role, timeline, positions and lag from the last snapshot (:mod:`farmnode.pg.view`;
        at most about a second old while the background task runs)."""
        return describe(
            self._seen, time.monotonic(), mode=self.mode, state=self.state,
            problem=self.problem, primary_lsn=self._primary_position(),
            named_sync=self._named_sync(),
        )  # fmt: skip

    async def health_state(self) -> HealthState:
        """This node's state for the HTTP endpoints."""
        snap = await self._snapshot()
        role = role_of(self.mode)
        lag: int | None = None
        if snap.writable:
            lag = 0
        elif snap.lsn is not None:
            primary_lsn = self._primary_position()
            lag = None if primary_lsn is None else max(0, primary_lsn - snap.lsn)
        state = self.state if self.mode in ("rejoin", "failed") else (
            "running" if snap.running else "stopped"
        )  # fmt: skip
        return HealthState(
            node=self.context.node,
            role=role,
            state=state,
            running=snap.reachable,
            primary=snap.writable and self.mode == "lead",
            streaming=snap.standby and snap.receiver == "streaming",
            timeline=snap.timeline,
            lsn=snap.lsn,
            lag=lag,
            sync_standbys=self._last_sync if self.mode == "lead" else (),
            reason=self.problem,
        )


def request_forced_promotion(data_dir: str, node: str) -> Path:
    """Leave ``farmnode promote --force``'s request for ``node`` in ``data_dir``: the agent
    on that node uses it at its next promotion (within :data:`FORCE_VALID` seconds). Raises
    ``OSError`` when the file cannot be written."""
    marker = Path(data_dir) / FORCE_MARKER
    marker.write_text(json.dumps({"node": node, "at": time.time()}), encoding="utf-8")
    return marker
