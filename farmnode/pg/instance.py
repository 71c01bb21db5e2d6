"""Control of one PostgreSQL data directory: commands, state, the files farmnode owns in it.

Everything runs as the cluster's OS user (``postgres``): farmnode runs as root, and
``pg_ctl`` refuses root, so each command is ``setpriv --reuid USER --regid GROUP
--init-groups -- COMMAND`` through :func:`farmnode.agents.base.run_process` (killed with its
process group when the caller is cancelled). SQL goes over the unix socket with psycopg as
that user, no password, autocommit, with short connect timeouts.

The one safety rule kept here rather than in the agent: :meth:`Instance.start` refuses to
start a server without ``standby.signal``. A node becomes writable only by
:meth:`Instance.promote`, never by starting.

Files of farmnode's in the data directory:

- ``farmnode.conf``: the settings the agent owns, included at the end of
  ``postgresql.conf`` (``include_if_exists = 'farmnode.conf'``), so they win over it;
- ``farmnode.rewind``: this data directory was a primary and must be rewound
  (``pg_rewind``) before it may run again;
- ``farmnode-postgresql.log``: what the server writes before its own logging starts
  (``pg_ctl -l``);
- ``farmnode.last-primary`` and ``farmnode.force-promote``: the agent's (who the last
  primary was; an operator's forced promotion).

A rewind (``pg_rewind``) makes the data directory a copy of the source's, files outside the
WAL included: the configuration and the files above would become the source's, or vanish.
:meth:`Instance.kept_from_rewind` keeps this node's own beside the data directory for the
rewind and puts them back after it, also after a crash in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import signal
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import psycopg

from farmnode.errors import FarmnodeError
from farmnode.pg.formats import log_reason, parse_controldata
from farmnode.process import last_line, run_process

AGENT_CONF: Final = "farmnode.conf"
REWIND_MARKER: Final = "farmnode.rewind"
SERVER_LOG: Final = "farmnode-postgresql.log"
#: Who the last primary seen from here was, kept across restarts of farmnode.
LAST_PRIMARY: Final = "farmnode.last-primary"
#: The file ``farmnode promote --force`` leaves in the data directory for the agent.
FORCE_MARKER: Final = "farmnode.force-promote"
INCLUDE_LINE: Final = f"include_if_exists = '{AGENT_CONF}'\t# added by farmnode"
#: Configuration files a rewind copies from its source: copied aside (single-user recovery
#: in pg_rewind reads them in place) and put back after it.
CONFIG_FILES: Final = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "pg_ident.conf")
#: This node's files that a rewind would replace with the source's or remove: moved aside.
NODE_FILES: Final = (SERVER_LOG, LAST_PRIMARY, FORCE_MARKER)
#: In the directory aside, once every file is there: only then is a missing one "absent".
_KEPT_ALL: Final = ".complete"
#: ``Database cluster state`` values (pg_controldata) of a data directory that ran writable.
PRIMARY_STATES: Final = frozenset(
    {"in production", "shut down", "shutting down", "in crash recovery"}
)
CONNECT_TIMEOUT: Final = 2


class InstanceError(FarmnodeError):
    """A command on the data directory failed; ``detail`` says which and what it printed."""

    def __init__(self, data_dir: str, detail: str) -> None:
        self.data_dir = data_dir
        self.detail = detail
        super().__init__(f"{data_dir}: {detail}")


# --- state snapshots -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replica:
    """One row of ``pg_stat_replication`` on a primary."""

    name: str
    state: str
    sync_state: str
    flush_lsn: int | None
    #: Bytes the standby has yet to replay of what the primary flushed (``None``: unknown).
    lag_bytes: int | None = None
    #: PostgreSQL's ``replay_lag`` in seconds (``None``: not measured, e.g. idle).
    lag_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the server said at one moment. ``running``: a postmaster is alive;
    ``reachable``: it answered SQL. ``lsn`` is the flush position on a primary, the larger
    of the receive and replay positions on a standby. ``receiver`` is the WAL receiver's
    status on a standby (``streaming`` when it streams). ``sync_names`` is the effective
    ``synchronous_standby_names``. On a standby, ``received`` and ``replayed`` are the
    receive and replay positions (bytes from ``0/0``; ``None`` when PostgreSQL has none),
    ``replayed_at`` the commit time of the last replayed transaction (epoch seconds) and
    ``replay_age`` its age by the server's clock."""

    running: bool
    reachable: bool = False
    in_recovery: bool | None = None
    timeline: int | None = None
    lsn: int | None = None
    receiver: str | None = None
    replicas: tuple[Replica, ...] = ()
    sync_names: str = ""
    error: str = ""
    received: int | None = None
    replayed: int | None = None
    replayed_at: float | None = None
    replay_age: float | None = None

    @property
    def writable(self) -> bool:
        return self.reachable and self.in_recovery is False

    @property
    def standby(self) -> bool:
        return self.reachable and self.in_recovery is True


_PRIMARY_SQL = """
SELECT pg_wal_lsn_diff(pg_current_wal_flush_lsn(), '0/0')::bigint,
       ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int
"""
_STANDBY_SQL = """
SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), '0/0')::bigint,
       pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint,
       coalesce((SELECT received_tli FROM pg_stat_wal_receiver),
                (SELECT timeline_id FROM pg_control_checkpoint())),
       (SELECT status FROM pg_stat_wal_receiver),
       extract(epoch FROM pg_last_xact_replay_timestamp())::float8,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8
"""
_REPLICAS_SQL = """
SELECT coalesce(application_name, ''), coalesce(state, ''), coalesce(sync_state, ''),
       pg_wal_lsn_diff(flush_lsn, '0/0')::bigint,
       pg_wal_lsn_diff(pg_current_wal_flush_lsn(), replay_lsn)::bigint,
       extract(epoch FROM replay_lag)::float8
FROM pg_stat_replication ORDER BY application_name
"""


# --- the instance ------------------------------------------------------------------------------


class Instance:
    """One data directory and the server that runs on it (see the module docstring)."""

    def __init__(self, data_dir: str, bin_dir: str, user: str, port: int, socket_dir: str) -> None:
        self.data_dir = data_dir
        self.bin_dir = bin_dir
        self.user = user
        self.port = port
        self.socket_dir = socket_dir
        self.path = Path(data_dir)

    # --- running commands as the user ---------------------------------------------------

    def account(self) -> pwd.struct_passwd:
        """The OS user's entry; raises :class:`InstanceError` when there is none."""
        try:
            return pwd.getpwnam(self.user)
        except KeyError:
            raise InstanceError(self.data_dir, f"no such OS user {self.user!r}") from None

    def command(self, program: str, *args: str) -> list[str]:
        """The argv that runs ``bin_dir/program args`` as the user."""
        argv = [str(Path(self.bin_dir, program)), *args]
        entry = self.account()
        if os.geteuid() == entry.pw_uid:
            return argv
        if os.geteuid() != 0:
            raise InstanceError(
                self.data_dir, f"cannot run {program} as {self.user}: farmnode is not root"
            )
        return [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--init-groups",
            "--",
            *argv,
        ]

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A small, predictable environment: C locale (pg_controldata is parsed), the user's
        home, nothing of farmnode's own (no cluster key)."""
        entry = self.account()
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LC_ALL": "C",
            "LANG": "C",
            "HOME": entry.pw_dir,
            "USER": self.user,
            "LOGNAME": self.user,
        }
        env.update(extra or {})
        return env

    async def run(
        self, program: str, *args: str, env: Mapping[str, str] | None = None
    ) -> tuple[int, str]:
        """Run ``program`` from ``bin_dir`` as the user: exit code and output. Raises
        :class:`InstanceError` when it cannot be executed."""
        argv = self.command(program, *args)
        try:
            return await run_process(argv, self.environment(env))
        except OSError as exc:
            raise InstanceError(self.data_dir, f"cannot run {argv[0]}: {exc}") from exc

    async def checked(self, program: str, *args: str, env: Mapping[str, str] | None = None) -> str:
        """:meth:`run`, raising :class:`InstanceError` (with the last line printed) when the
        exit code is not 0."""
        code, output = await self.run(program, *args, env=env)
        if code != 0:
            said = last_line(output)
            raise InstanceError(self.data_dir, f"{program} exited {code}: {said or 'no output'}")
        return output

    # --- files ---------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    def exists(self, name: str) -> bool:
        return self.file(name).exists()

    def write_file(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """Replace ``name`` atomically with ``data``, owned by the user."""
        entry = self.account()
        target = self.file(name)
        temporary = target.with_name(f".{target.name}.farmnode-tmp")
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        with contextlib.suppress(PermissionError):  # not root: the file is ours already
            os.chown(temporary, entry.pw_uid, entry.pw_gid)
        os.replace(temporary, target)

    def remove_file(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.file(name).unlink()

    def write_agent_conf(self, text: str) -> bool:
        """Write ``farmnode.conf`` (and the include line into ``postgresql.conf``); whether
        anything changed."""
        changed = self.ensure_include()
        data = text.encode()
        current = self.file(AGENT_CONF).read_bytes() if self.exists(AGENT_CONF) else None
        if current != data:
            self.write_file(AGENT_CONF, data)
            changed = True
        return changed

    def ensure_include(self) -> bool:
        """Append the include of ``farmnode.conf`` to ``postgresql.conf`` unless there."""
        conf = self.file("postgresql.conf")
        text = conf.read_text() if conf.exists() else ""
        if any(line.strip().startswith(INCLUDE_LINE.split("\t")[0]) for line in text.splitlines()):
            return False
        if text and not text.endswith("\n"):
            text += "\n"
        self.write_file("postgresql.conf", (text + INCLUDE_LINE + "\n").encode())
        return True

    @property
    def aside(self) -> Path:
        """Where :meth:`kept_from_rewind` keeps this node's files: beside the data directory
        (the same filesystem, so a move is a rename), out of pg_rewind's reach."""
        return self.path.parent / f".{self.path.name}.farmnode-rewind"

    @contextlib.contextmanager
    def kept_from_rewind(self) -> Iterator[None]:
        """Around a pg_rewind: :data:`CONFIG_FILES` copied aside and :data:`NODE_FILES` moved
        aside; afterwards, also when the body raises, each put back over whatever the rewind
        left, and one that did not exist before removed (:meth:`put_back`)."""
        self.put_back()  # an earlier rewind that never finished: its files first
        self.aside.mkdir(mode=0o700)
        for name in CONFIG_FILES:
            if self.exists(name):
                (self.aside / name).write_bytes(self.file(name).read_bytes())
        for name in NODE_FILES:
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.file(name), self.aside / name)
        (self.aside / _KEPT_ALL).touch()
        try:
            yield
        finally:
            self.put_back()

    def put_back(self) -> None:
        """Put the files :meth:`kept_from_rewind` keeps aside back into the data directory
        (configuration owned by the user, the rest as they were) and remove the aside
        directory. Where it was complete, a file it lacks did not exist before the rewind
        and is removed. Where it was not (farmnode died while filling it, before any
        rewind), the configuration in place is the node's own and stays; the files moved
        aside go back. Nothing aside: nothing to do."""
        if not self.aside.is_dir():
            return
        complete = (self.aside / _KEPT_ALL).exists()
        for name in CONFIG_FILES:
            kept = self.aside / name
            if complete and kept.exists():
                self.write_file(name, kept.read_bytes())
            elif complete:
                self.remove_file(name)
            kept.unlink(missing_ok=True)
        for name in NODE_FILES:
            kept = self.aside / name
            if kept.exists():
                os.replace(kept, self.file(name))
            elif complete:
                self.remove_file(name)
        (self.aside / _KEPT_ALL).unlink(missing_ok=True)
        self.aside.rmdir()

    # --- the postmaster --------------------------------------------------------------------

    def postmaster_pid(self) -> int | None:
        """The pid of the live postmaster of this data directory, or ``None``."""
        try:
            first = self.file("postmaster.pid").read_text().split("\n", 1)[0].strip()
            pid = int(first)
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (OSError, ValueError):
            return None
        name = stat[stat.find("(") + 1 : stat.rfind(")")]
        state = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
        if state == "Z" or name not in ("postgres", "postmaster"):
            return None
        return pid

    def running(self) -> bool:
        return self.postmaster_pid() is not None

    async def wait_reaped(self, timeout: float = 15.0) -> None:
        """Wait (at most ``timeout``) while the pid in ``postmaster.pid`` is a zombie: a
        killed postmaster not yet reaped by its parent (init) still holds the lock file for
        PostgreSQL, which would refuse to start (and pg_rewind with it)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                pid = int(self.file("postmaster.pid").read_text().split("\n", 1)[0].strip())
                stat = Path(f"/proc/{pid}/stat").read_text()
            except (OSError, ValueError):
                return
            if stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] != "Z":
                return
            await asyncio.sleep(0.1)

    async def start(self, timeout: float) -> None:
        """Start the server as a standby and wait (``timeout``) until it accepts connections.

        Raises :class:`InstanceError` without ``standby.signal`` (this class never starts a
        writable server) or when ``pg_ctl start`` fails.
        """
        if not self.exists("standby.signal"):
            raise InstanceError(self.data_dir, "refusing to start without standby.signal")
        await self.wait_reaped(min(timeout, 15.0))
        log = str(self.file(SERVER_LOG))
        code, output = await self.run(
            "pg_ctl",
            "start",
            "-D",
            self.data_dir,
            "-l",
            log,
            "-w",
            "-t",
            str(max(1, round(timeout))),
        )
        if code != 0:
            said = last_line(output)
            if not said or "log output" in said:  # "Examine the log output."
                said = self._log_reason()
            raise InstanceError(self.data_dir, f"pg_ctl start exited {code}: {said}")

    def _log_reason(self) -> str:
        try:
            return log_reason(self.file(SERVER_LOG).read_text(errors="replace")[-4096:])
        except OSError:
            return "no output"

    async def stop(self, mode: str, timeout: float) -> bool:
        """``pg_ctl stop -m MODE`` within ``timeout``; whether the server is down after it."""
        if not self.running():
            return True
        try:
            async with asyncio.timeout(timeout + 1.0):
                await self.run(
                    "pg_ctl", "stop", "-D", self.data_dir, "-m", mode, "-w",
                    "-t", str(max(1, round(timeout))),
                )  # fmt: skip
        except TimeoutError:
            pass
        return not self.running()

    def kill(self) -> None:
        """SIGKILL the postmaster and every child of it (backends run in their own process
        groups, so its group is not enough). The last resort of a demotion."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = list(_children_of(pid))
        for target in (pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)

    async def promote(self, timeout: float) -> None:
        """``pg_ctl promote -w``; raises :class:`InstanceError` when it fails."""
        await self.checked(
            "pg_ctl", "promote", "-D", self.data_dir, "-w", "-t", str(max(1, round(timeout)))
        )

    async def controldata(self) -> dict[str, str]:
        """``pg_controldata`` of the data directory as a mapping of its labels."""
        return parse_controldata(await self.checked("pg_controldata", "-D", self.data_dir))

    # --- SQL ---------------------------------------------------------------------------

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            host=self.socket_dir,
            port=self.port,
            user=self.user,
            dbname="postgres",
            connect_timeout=CONNECT_TIMEOUT,
            application_name="farmnode",
            autocommit=True,
        )

    async def execute(self, sql: str) -> None:
        """Run one statement (``CHECKPOINT``, ``SELECT pg_reload_conf()``); raises
        :class:`InstanceError` on failure."""
        try:
            async with await self.connect() as conn:
                await conn.execute(sql.encode())
        except psycopg.Error as exc:
            raise InstanceError(self.data_dir, f"{sql}: {_pg_error(exc)}") from exc

    async def snapshot(self) -> Snapshot:
        """What the server says now (never raises: an unreachable server is a snapshot)."""
        if not self.running():
            return Snapshot(running=False)
        try:
            async with await self.connect() as conn:
                return await _query_snapshot(conn)
        except psycopg.Error as exc:
            return Snapshot(running=self.running(), error=_pg_error(exc))

    async def wait_writable(self, timeout: float) -> Snapshot:
        """Poll until the server accepts writes; the last snapshot (maybe not writable)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            snap = await self.snapshot()
            if snap.writable or asyncio.get_running_loop().time() >= deadline:
                return snap
            await asyncio.sleep(0.1)


async def _query_snapshot(conn: psycopg.AsyncConnection[Any]) -> Snapshot:
    cur = await conn.execute(
        b"SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names')"
    )
    row = await cur.fetchone() or (None, "")
    in_recovery, sync_names = bool(row[0]), str(row[1])
    if in_recovery:
        cur = await conn.execute(_STANDBY_SQL.encode())
        received, replayed, timeline, receiver, replayed_at, replay_age = (
            await cur.fetchone() or (None,) * 6
        )
        known = [position for position in (received, replayed) if position is not None]
        lsn = max(known) if known else None
        return Snapshot(
            True, True, True, timeline, lsn, receiver, (), sync_names,
            received=received, replayed=replayed, replayed_at=replayed_at, replay_age=replay_age,
        )  # fmt: skip
    cur = await conn.execute(_PRIMARY_SQL.encode())
    lsn, timeline = await cur.fetchone() or (None, None)
    cur = await conn.execute(_REPLICAS_SQL.encode())
    replicas = tuple(Replica(*r) for r in await cur.fetchall())
    return Snapshot(True, True, False, timeline, lsn, None, replicas, sync_names)


def _pg_error(exc: psycopg.Error) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _children_of(parent: int) -> Iterable[int]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == str(parent):
            yield int(entry.name)


async def tcp_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
