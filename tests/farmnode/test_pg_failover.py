"""PostgreSQL failover for real (issue 7): ``farmnode serve`` processes and their PostgreSQL
servers in network namespaces, a client writing through the floating address.

Topology (built per test, removed afterwards, also on failure)::

    lan ns: bridge br0                                   10.213.72.0/24
      +-- n1      .11  farmnode (priority 150) and its PostgreSQL (port 5432, health :8008)
      +-- n2      .12  farmnode (priority 100) and its PostgreSQL
      +-- w       .13  farmnode, role = "witness"
      +-- client  .2   the writer

Group ``db``: the ``postgresql`` agent (``primary_host`` = the floating address .60, health
endpoints on the node's LAN address), then ``ipaddr`` 10.213.72.60/24 on the node's LAN
interface. Cluster timing at the defaults (interval 0.2 s, deadtime 1.0 s, initdead 2.0 s);
``failure_timeout = 5`` so that a refused promotion is tried again promptly. PostgreSQL runs
as a child of farmnode's ``pg_ctl``, so inside the node's namespace; each node has its own
data directory and socket directory under one ``/tmp/farm-pg-*`` owned by ``postgres``
(:mod:`tests.farmnode.pgcluster`). One initdb and one base backup per module (``pg_hba``
trusting the lab's LAN, the role ``replicator`` with pg_rewind's grants); each test copies
them. Each copy names itself in ``cluster_name``, so a client can tell which server answered.

Measured, from this process:

- **The writer** (:class:`Writer`), in the client namespace: connects to the floating
  address (psycopg, ``connect_timeout`` 2 s: libpq's minimum; TCP keepalives), commits
  unique ids, one row per transaction, and records each id whose ``COMMIT`` returned (an
  *acknowledged* id, with the server that acknowledged it and when); an id whose commit
  raised has an unknown outcome and is never counted as acknowledged. It reconnects on
  failure (every 20 ms), paces itself (5 ms between commits, a steady load that leaves the
  2-core machine to the heartbeats) and is bounded in ids and seconds.
- **The referee** (:class:`Referee`): ``SELECT pg_is_in_recovery()`` on both servers every
  50 ms over their unix sockets, for the whole test. A unix socket is not cut by a
  partition, so an isolated server that still runs writable is seen too. Any poll that finds
  both servers answering ``false`` fails the test ("two writable primaries").

The tests:

1. **kill -9 under write load, cycles alternating nodes**: the primary's farmnode and its
   postmaster (with its backends) are killed together, as a dead machine. The standby must
   be writable through the floating address within 5 s (kill -> the first acknowledged
   commit by the new primary, the issue's bound, asserted); every acknowledged id must be
   on the new primary; then the old node's farmnode is started again (a reboot): it must
   ``pg_rewind``, stream and become the synchronous standby again by itself (timed). Four
   cycles in ``make test`` (each node killed twice, about 40 s here), thirty under ``slow``
   (``make soak``).
2. **Partition**: the primary n1 cut from n2 and w (nft drop rules in n1's namespace, both
   directions, LAN only; the client still reaches it). "Stops accepting writes" means,
   asserted, for the writer (through the floating address) and for a prober writing on n1
   directly over its unix socket: (a) no write that *began* after the cut (once the rules
   are in force) is ever acknowledged by n1; (b) every write attempted on n1 since the cut
   *fails*: one that waits for the unreachable synchronous standby fails within
   ``FENCE_BOUND`` of the cut (when n1 loses quorum, releases the group and its agent stops
   PostgreSQL: the fast stop terminates the backends at once), and from then on each attempt
   fails at once (the server refuses connections, then is gone); (c) from then until the
   heal n1's server never answers (every referee poll finds it down): it does not rejoin
   while it cannot see the new primary. The fast stop itself lasts 0.4 x ``stop_timeout``
   (it waits for its walsender to the unreachable standby) before the agent stops it in
   immediate mode: printed, not asserted. The majority side promotes (n2 acknowledges writes
   through the floating address); after the heal there is one primary, n1 rejoins as its
   synchronous standby, and no acknowledged id is lost.
3. **Asynchronous control run**: ``synchronous = false`` on both nodes. Replication to n2 is
   stopped by blocking its walreceiver (nft in n2's namespace drops TCP to and from the
   floating address's port 5432), not by stopping its PostgreSQL: its farmnode keeps running
   and hearing n1's advertised position (a stopped standby would be started again by its
   own agent within 3 s). Over 1 MiB is then written and acknowledged on n1, n1 is killed
   (farmnode and postmaster): the failover is refused (lag over the 1 MiB limit), n2 stays
   a read-only standby through a retry, its health endpoint and log say why; ``farmnode
   promote --force n2`` on n2 makes it primary at its next try, and what n1 acknowledged
   after the block is not on n2 (the documented trade-off, asserted).
4. **The same refusal across a restart of n2's farmnode**: the node attributes that carry
   n1's last role, position and synchronous standbys live in the running cluster only, so
   the agent keeps who the last primary was and its synchronous standbys in the data
   directory (``farmnode.last-primary``); a restarted n2, not named synchronous there and
   with n1's position unknown, still refuses.

Times are printed (run with ``-s``); only the issue's 5 s failover bound and the fencing
bound of test 2 are asserted. Needs root, PostgreSQL, ``ip`` and (tests 2-4) ``nft``:
without them each test skips with the reason (under CI=true that is a failure).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from farmnode.__main__ import run as farmnode_cli
from tests.conftest import skip_or_fail
from tests.farmnode.netns import Lab, Namespace, unavailable_reason
from tests.farmnode.pgcluster import PgLab, PgNode, pg_lab
from tests.farmnode.pgcluster import unavailable as pg_unavailable
from tests.farmnode.test_cluster_lab import FARMNODE, ClusterLab, Member, _mac

PREFIX = "10.213.72"
VIP = f"{PREFIX}.60"
HOSTS = {"n1": 11, "n2": 12, "w": 13}
CLIENT = f"{PREFIX}.2"
PRIORITY = {"n1": 150, "n2": 100}
PG_PORT = 5432
HEALTH_PORT = 8008
HB_PORT = 6940
STATUS = ("127.0.0.1", 9100)
INTERVAL, DEADTIME, INITDEAD = 0.2, 1.0, 2.0
FAILURE_TIMEOUT = 5.0
STOP_TIMEOUT = 20.0  # the postgresql resource's stop_timeout (the default)
POLL = 0.05
#: The issue's bound: kill -> first acknowledged commit through the floating address.
FAILOVER_BOUND = 5.0
#: Test 2: every write attempted on the isolated primary has failed by the cut + this.
#: Expected: quorum lost after deadtime - 2 x interval (0.6 s), then a fast stop.
FENCE_BOUND = 10.0
WAIT = 40.0  # generous bound of every other wait
MiB = 1024 * 1024
WRITER_IDS = 1  # the writer's ids count up from here
PROBER_IDS = 1_000_000_000  # the prober's (test 2) from here
LAN_HBA = f"""
# tests/farmnode/test_pg_failover.py: the lab's LAN
host all all {PREFIX}.0/24 trust
host replication all {PREFIX}.0/24 trust
"""


def _unavailable(nft: bool) -> str | None:
    reason = unavailable_reason() or pg_unavailable()
    if reason is None and nft and shutil.which("nft") is None:
        reason = "the nft command (nftables) is missing: apt-get install nftables"
    return reason


# --- configuration -------------------------------------------------------------------------


def node_config(name: str, dev: str, pg: PgNode | None, *, synchronous: bool) -> str:
    """The TOML of ``name`` (a database node with ``pg``, or the witness with ``None``)."""
    peers = "".join(
        f'[[cluster.peers]]\nname = "{peer}"\naddresses = ["{PREFIX}.{host}:{HB_PORT}"]\n'
        for peer, host in HOSTS.items()
        if peer != name
    )
    role = 'role = "witness"' if pg is None else f"priority = {PRIORITY[name]}"
    text = f"""[node]
name = "{name}"
status_listen = "{STATUS[0]}:{STATUS[1]}"

[cluster]
name = "pglab"
key = "pglab-cluster-key-0123456789"
interval = {INTERVAL}
deadtime = {DEADTIME}
initdead = {INITDEAD}
{role}
[[cluster.transports]]
kind = "udp"
bind = "{PREFIX}.{HOSTS[name]}:{HB_PORT}"
{peers}"""
    if pg is None:
        return text
    return (
        text
        + f"""
[[groups]]
name = "db"
failure_timeout = {FAILURE_TIMEOUT}
[[groups.resources]]
agent = "postgresql"
name = "pg"
data_dir = "{pg.data_dir}"
bin_dir = "{pg.lab.bin}"
port = {PG_PORT}
socket_dir = "{pg.socket_dir}"
primary_host = "{VIP}"
health_listen = "{PREFIX}.{HOSTS[name]}:{HEALTH_PORT}"
synchronous = {"true" if synchronous else "false"}
start_timeout = 30
stop_timeout = {STOP_TIMEOUT}
monitor_interval = 2
monitor_timeout = 2
[[groups.resources]]
agent = "ipaddr"
name = "vip"
address = "{VIP}/24"
interface = "{dev}"
"""
    )


# --- the writer: acknowledged ids through the floating address ----------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledged id: the server (``cluster_name``) whose COMMIT returned, and when the
    transaction began and the COMMIT returned (monotonic seconds)."""

    id: int
    node: str
    began: float
    ended: float


@dataclass(frozen=True, slots=True)
class Attempt:
    """One write attempt of the prober (test 2): when, whether acknowledged, what failed."""

    id: int
    began: float
    ended: float
    ok: bool
    error: str = ""


class Writer:
    """Commits unique ids through the floating address from the client namespace (see the
    module docstring); :attr:`acks` in the order the COMMITs returned."""

    def __init__(
        self,
        ns: Namespace,
        *,
        pace: float = 0.005,
        max_ids: int = 200_000,
        max_seconds: float = 900.0,
    ) -> None:
        self.ns = ns
        self.pace = pace
        self.max_ids = max_ids
        self.max_seconds = max_seconds
        self.acks: list[Ack] = []
        self.ends: list[float] = []  # acks' ``ended``, for bisect
        self.unknown: list[int] = []  # the COMMIT raised: maybe committed, never acknowledged
        self.connects = 0
        self.connect_failures = 0
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name="writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _main(self) -> None:
        try:
            self.ns.call(self._loop)  # a thread inside the client namespace
        except BaseException as exc:  # reported by check()
            self.error = exc

    def _connect(self) -> tuple[psycopg.Connection[Any], str]:
        conn = psycopg.connect(
            host=VIP,
            port=PG_PORT,
            user="postgres",
            dbname="postgres",
            connect_timeout=2,
            application_name="writer",
            keepalives=1,
            keepalives_idle=1,
            keepalives_interval=1,
            keepalives_count=2,
        )
        try:
            row = conn.execute("SHOW cluster_name").fetchone()
            conn.rollback()
        except BaseException:
            conn.close()
            raise
        return conn, str(row[0]) if row else "?"

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        ids = iter(range(WRITER_IDS, WRITER_IDS + self.max_ids))
        conn: psycopg.Connection[Any] | None = None
        node = ""
        try:
            while not self._done.is_set() and time.monotonic() < deadline:
                if conn is None:
                    try:
                        conn, node = self._connect()
                    except psycopg.Error:
                        self.connect_failures += 1
                        self._done.wait(0.02)
                        continue
                    self.connects += 1
                row_id = next(ids, None)
                if row_id is None:
                    return
                began = time.monotonic()
                try:
                    conn.execute("INSERT INTO acked (id, node) VALUES (%s, %s)", (row_id, node))
                    conn.commit()
                except psycopg.Error:
                    self.unknown.append(row_id)
                    conn.close()
                    conn = None
                    continue
                ended = time.monotonic()
                self.acks.append(Ack(row_id, node, began, ended))
                self.ends.append(ended)
                self._done.wait(self.pace)
        finally:
            if conn is not None:
                conn.close()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}") from self.error
        assert self._thread.is_alive() or self._done.is_set(), "the writer ended early"

    def first_ack(self, node: str, after: float) -> Ack | None:
        """The first commit acknowledged by ``node`` whose COMMIT returned after ``after``."""
        for ack in self.acks[bisect.bisect_right(self.ends, after) :]:
            if ack.node == node:
                return ack
        return None

    def acked_ids(self) -> list[int]:
        return [ack.id for ack in self.acks[:]]


class Prober:
    """Test 2: writes on one server directly, over its unix socket, one id per transaction,
    and records every attempt (a connection kept, made again after a failure)."""

    def __init__(self, pg: PgNode, *, pace: float = 0.02, max_seconds: float = 300.0) -> None:
        self.pg = pg
        self.pace = pace
        self.max_seconds = max_seconds
        self.attempts: list[Attempt] = []
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name="prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn: psycopg.Connection[Any] | None = None
        try:
            for row_id in itertools.count(PROBER_IDS):
                if self._done.is_set() or time.monotonic() > deadline:
                    return
                began = time.monotonic()
                try:
                    if conn is None:
                        conn = psycopg.connect(
                            host=str(self.pg.socket_dir), port=PG_PORT, user="postgres",
                            dbname="postgres", connect_timeout=2, application_name="prober",
                        )  # fmt: skip
                    conn.execute("INSERT INTO acked (id, node) VALUES (%s, 'prober')", (row_id,))
                    conn.commit()
                except psycopg.Error as exc:
                    text = str(exc).strip().splitlines()
                    error = text[0] if text else type(exc).__name__
                    self.attempts.append(Attempt(row_id, began, time.monotonic(), False, error))
                    if conn is not None:
                        conn.close()
                        conn = None
                else:
                    self.attempts.append(Attempt(row_id, began, time.monotonic(), True))
                self._done.wait(self.pace)
        finally:
            if conn is not None:
                conn.close()


# --- the referee: never two writable primaries ---------------------------------------------------

State = str  # "primary" (pg_is_in_recovery() false), "standby" (true), "down" (no answer)


class Referee:
    """``pg_is_in_recovery()`` of each server every POLL s over its unix socket (module
    docstring); a poll with two ``primary`` answers is a violation, reported by
    :meth:`check`. ``samples`` keeps every poll: (monotonic time, state by node)."""

    def __init__(self, servers: Mapping[str, PgNode]) -> None:
        self.servers = dict(servers)
        self.samples: list[tuple[float, dict[str, State]]] = []
        self.violations: list[str] = []
        self.error: BaseException | None = None
        self._conns: dict[str, psycopg.Connection[Any]] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._main, name="referee", daemon=True)

    def begin(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()

    def _main(self) -> None:
        try:
            while not self._done.is_set():
                polled = time.monotonic()
                states = {name: self._state(name) for name in self.servers}
                self.samples.append((polled, states))
                writable = sorted(n for n, s in states.items() if s == "primary")
                if len(writable) > 1:
                    self.violations.append(f"{polled:.3f}: two writable primaries {writable}")
                self._done.wait(max(0.0, POLL - (time.monotonic() - polled)))
        except BaseException as exc:  # reported by check()
            self.error = exc

    def _state(self, name: str) -> State:
        conn = self._conns.get(name)
        try:
            if conn is None:
                pg = self.servers[name]
                conn = psycopg.connect(
                    host=str(pg.socket_dir), port=PG_PORT, user="postgres", dbname="postgres",
                    connect_timeout=2, autocommit=True, application_name="referee",
                )  # fmt: skip
                self._conns[name] = conn
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            if conn is not None:
                conn.close()
            self._conns.pop(name, None)
            return "down"
        return "standby" if row and row[0] else "primary"

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"the referee failed: {self.error!r}") from self.error
        assert not self.violations, "; ".join(self.violations[:10])

    def states(self, name: str, since: float, until: float = float("inf")) -> set[State]:
        return {s[name] for at, s in self.samples[:] if since <= at <= until}

    def first(self, name: str, state: State, since: float) -> float | None:
        """Seconds from ``since`` to the first poll that found ``name`` in ``state``."""
        for at, states in self.samples[:]:
            if at >= since and states[name] == state:
                return at - since
        return None

    def summary(self) -> str:
        times = [at for at, _ in self.samples[:]]
        gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
        return (
            f"referee: {len(times)} polls of both servers, at most {gap * 1000:.0f} ms apart, "
            f"{len(self.violations)} with two writable primaries"
        )


# --- the lab ------------------------------------------------------------------------------------


def _pids_of(paths: Sequence[Path]) -> list[int]:
    """Processes whose command line names one of ``paths`` (a data directory): postmasters,
    pg_ctl, pg_rewind and its single-user postgres."""
    wanted = [str(p) for p in paths]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(a == p or a.endswith("=" + p) or (p + "/") in a for a in args for p in wanted):
            found.append(int(entry.name))
    return found


@dataclass
class DbLab:
    """The namespaces, the three farmnode processes, the two servers, the referee."""

    cluster: ClusterLab
    pg: dict[str, PgNode]
    tmp: Path
    referee: Referee
    synchronous: bool
    writer: Writer | None = None

    def member(self, name: str) -> Member:
        return self.cluster.members[name]

    # --- processes ---

    def start(self, name: str) -> float:
        """Start ``name``'s farmnode; the moment it was launched."""
        launched = time.monotonic()
        self.cluster.start(name)
        return launched

    def rewinds(self, name: str) -> int:
        """How many times ``name``'s farmnode log says it rewound its data directory."""
        return self.member(name).log.read_text().count("resource pg: rewound from")

    def kill(self, name: str) -> float:
        """``kill -9`` of ``name``'s farmnode and of its postmaster with every backend, as a
        dead machine; the moment of the first signal."""
        process = self.member(name).process
        assert process is not None, f"{name}'s farmnode was never started"
        assert process.poll() is None, f"{name}'s farmnode is not running"
        assert self.pg[name].running(), f"{name}'s PostgreSQL is not running"
        killed = time.monotonic()
        os.killpg(process.pid, signal.SIGKILL)
        self.pg[name].kill9()
        process.wait(timeout=WAIT)
        return killed

    def logs(self) -> str:
        text = [self.cluster.logs()]
        for name, pg in self.pg.items():
            with contextlib.suppress(OSError):
                server = (pg.data_dir / "farmnode-postgresql.log").read_text(errors="replace")
                text.append(f"--- {name}'s PostgreSQL\n{server[-1500:]}")
        return "\n".join(text)

    def wait(self, what: str, ready: Callable[[], bool], timeout: float = WAIT) -> float:
        """Poll ``ready`` every POLL s; the seconds it took, or fail with the logs. The
        writer and the referee are checked on the way."""
        began = time.monotonic()
        while not ready():
            self.referee.check()
            if self.writer is not None:
                self.writer.check()
            if time.monotonic() - began > timeout:
                pytest.fail(f"not within {timeout} s: {what}\n{self.logs()}")
            time.sleep(POLL)
        return time.monotonic() - began

    # --- looking at the nodes ---

    def http(self, ns: Namespace, address: tuple[str, int], path: str) -> tuple[int, Any]:
        request = f"GET {path} HTTP/1.0\r\nHost: {address[0]}\r\n\r\n".encode()
        with ns.connect(address, timeout=10) as sock:
            sock.sendall(request)
            answer = b"".join(iter(lambda: sock.recv(1 << 16), b""))
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body) if body else None

    def health(self, name: str, path: str) -> tuple[int, dict[str, Any]]:
        """``name``'s health endpoint, asked from the client namespace over the LAN (as a
        load balancer would); (0, {}) when nothing answers."""
        try:
            code, body = self.http(
                self.cluster.client, (f"{PREFIX}.{HOSTS[name]}", HEALTH_PORT), path
            )
        except (OSError, ValueError, IndexError):
            return 0, {}
        return code, body if isinstance(body, dict) else {}

    def status(self, name: str) -> dict[str, Any]:
        """``name``'s cluster status (what ``farmnode status --json`` prints)."""
        code, body = self.http(self.member(name).ns, STATUS, "/status")
        assert code == 200, body
        doc = body["cluster"]
        assert isinstance(doc, dict)
        return doc

    def synchronous_pair(self, primary: str, standby: str) -> bool:
        """``standby`` streams from ``primary`` as its synchronous standby, and ``primary``
        advertises it so (``pg.sync``, shown as the health document's ``sync_standbys``)."""
        try:
            rows = self.pg[primary].sql(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                standby,
            )
        except psycopg.Error:
            return False
        if rows != [("streaming", "sync")]:
            return False
        code, body = self.health(primary, "/primary")
        return code == 200 and body.get("sync_standbys") == [standby]

    def streaming_pair(self, primary: str, standby: str) -> bool:
        try:
            rows = self.pg[primary].sql(
                "SELECT state FROM pg_stat_replication WHERE application_name = %s", standby
            )
        except psycopg.Error:
            return False
        return rows == [("streaming",)] and self.health(standby, "/replica")[0] == 200

    def missing(self, name: str, ids: Sequence[int]) -> list[int]:
        """Which of ``ids`` are not in ``name``'s table (over its socket)."""
        rows = self.pg[name].sql(
            "SELECT x FROM unnest(%s::bigint[]) AS x EXCEPT SELECT id FROM acked ORDER BY 1",
            list(ids),
        )
        return [int(row[0]) for row in rows]

    def has_all(self, name: str, ids: Sequence[int]) -> Callable[[], bool]:
        def check() -> bool:
            try:
                return not self.missing(name, ids)
            except psycopg.Error:
                return False

        return check

    # --- bring-up ---

    def bring_up(self) -> float:
        """Start n1, n2 and w; wait until n1 is the primary (writable, health 200) and n2 its
        streaming (synchronous) standby; create the table. The seconds it took."""
        began = time.monotonic()
        for name in ("n1", "n2", "w"):
            self.start(name)
        self.wait("n1 is the primary", lambda: self.health("n1", "/primary")[0] == 200)
        if self.synchronous:
            self.wait("n2 is n1's synchronous standby", lambda: self.synchronous_pair("n1", "n2"))
        else:
            self.wait("n2 streams from n1", lambda: self.streaming_pair("n1", "n2"))
        took = time.monotonic() - began
        self.pg["n1"].sql("CREATE TABLE acked (id bigint PRIMARY KEY, node text NOT NULL)")
        assert self.pg["n2"].in_recovery() is True
        return took

    def start_writer(self) -> Writer:
        self.writer = Writer(self.cluster.client)
        self.writer.start()
        return self.writer

    def first_ack(self, node: str, after: float) -> Ack:
        """Wait for the first commit acknowledged by ``node`` (through the floating address)
        that returned after ``after``."""
        writer = self.writer
        assert writer is not None
        self.wait(f"{node} acknowledges a commit through {VIP}",
                  lambda: writer.first_ack(node, after) is not None)  # fmt: skip
        ack = writer.first_ack(node, after)
        assert ack is not None
        return ack

    def writes_by(self, node: str, count: int = 20) -> float:
        """Wait until ``count`` more commits are acknowledged by ``node`` (load is flowing)."""
        writer = self.writer
        assert writer is not None
        since = time.monotonic()

        def flowing() -> bool:
            later = writer.acks[bisect.bisect_right(writer.ends, since) :]
            return sum(1 for ack in later if ack.node == node) >= count

        return self.wait(f"{count} commits acknowledged by {node}", flowing)

    # --- nft ---

    def nft(self, name: str, table: str, rules: str) -> None:
        path = self.tmp / f"{table}-{name}.nft"
        path.write_text(f"table inet {table} {{\n{rules}}}\n")
        self.member(name).ns.run("nft", "-f", str(path))

    def cut_lan(self, name: str, *peers: str) -> None:
        """In ``name``'s namespace, drop every IPv4 packet from and to ``peers``."""
        addresses = ", ".join(f"{PREFIX}.{HOSTS[peer]}" for peer in peers)
        self.nft(
            name,
            "pgcut",
            "  chain input { type filter hook input priority 0; policy accept;\n"
            f"    ip saddr {{ {addresses} }} drop; }}\n"
            "  chain output { type filter hook output priority 0; policy accept;\n"
            f"    ip daddr {{ {addresses} }} drop; }}\n",
        )

    def block_replication(self, name: str) -> None:
        """In ``name``'s namespace, drop TCP to and from the floating address's port 5432:
        its walreceiver (and pg_rewind) stall; heartbeats and health go on."""
        self.nft(
            name,
            "pgrepl",
            "  chain input { type filter hook input priority 0; policy accept;\n"
            f"    ip saddr {VIP} tcp sport {PG_PORT} drop; }}\n"
            "  chain output { type filter hook output priority 0; policy accept;\n"
            f"    ip daddr {VIP} tcp dport {PG_PORT} drop; }}\n",
        )

    def unblock(self, name: str, table: str) -> None:
        self.member(name).ns.run("nft", "delete", "table", "inet", table)

    # --- teardown ---

    def close(self) -> None:
        """Writer, referee, farmnode processes (SIGKILL: nothing is to be released), the
        PostgreSQL servers and anything else running on their data directories."""
        if self.writer is not None:
            self.writer.stop()
        self.referee.close()
        for member in self.cluster.members.values():
            process = member.process
            if process is not None and process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=WAIT)
        for pg in self.pg.values():
            pg.kill9()
        for pid in _pids_of([pg.data_dir for pg in self.pg.values()]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def make_template() -> Iterator[PgLab]:
    """One initdb (``tpl``, trusting the lab's LAN) and one base backup of it
    (``tpl-standby``), both stopped; copied by each lab. Needs what the lab needs (no nft)."""
    reason = _unavailable(nft=False)
    if reason is not None:
        skip_or_fail(reason)
    with pg_lab() as made:
        began = time.monotonic()
        primary = made.initdb("tpl")
        with open(primary.data_dir / "pg_hba.conf", "a") as hba:
            hba.write(LAN_HBA)
        primary.start()
        made.basebackup(primary, "tpl-standby")
        primary.stop()
        print(f"\ntemplate pair (initdb + base backup): {time.monotonic() - began:.2f} s")
        yield made


@pytest.fixture(scope="module")
def template() -> Iterator[PgLab]:
    with make_template() as made:
        yield made


_serial = itertools.count()


def _copy(template: PgLab, source: str, name: str) -> PgNode:
    """A copy of the template ``source`` for node ``name``: port 5432 (its own namespace),
    ``cluster_name`` = ``name``."""
    [origin] = [node for node in template.nodes if node.name == source]
    pg = template.copy(origin, f"{name}-{next(_serial)}")
    pg.port = PG_PORT
    with open(pg.data_dir / "postgresql.conf", "a") as conf:
        conf.write(f"cluster_name = '{name}'\t# tests/farmnode/test_pg_failover.py\n")
    return pg


@contextlib.contextmanager
def db_lab(
    tmp: Path, template: PgLab, *, synchronous: bool = True, nft: bool = False
) -> Iterator[DbLab]:
    """The lab of the module docstring (nothing started yet); everything removed on exit,
    also on failure: the processes and servers first, then the namespaces and data."""
    reason = _unavailable(nft)
    if reason is not None:
        skip_or_fail(reason)
    pg = {"n1": _copy(template, "tpl", "n1"), "n2": _copy(template, "tpl-standby", "n2")}
    members: dict[str, Member] = {}
    built: DbLab | None = None
    try:
        with Lab() as lab:
            try:
                lan = lab.namespace("lan")
                lab.bridge(lan)
                for name, host in HOSTS.items():
                    ns = lab.namespace(name)
                    dev = lab.attach(ns, f"{PREFIX}.{host}/24", lan)
                    config = tmp / f"{name}.toml"
                    config.write_text(node_config(name, dev, pg.get(name), synchronous=synchronous))
                    members[name] = Member(
                        name, ns, dev, _mac(ns, dev), config, tmp / f"{name}.log"
                    )
                for name in pg:  # the file and the system as check-config sees them
                    assert (
                        farmnode_cli(["check-config", "--config", str(members[name].config)]) == 0
                    )
                client = lab.namespace("client")
                lab.attach(client, f"{CLIENT}/24", lan)
                referee = Referee(pg)
                built = DbLab(ClusterLab(lab, client, members, tmp), pg, tmp, referee, synchronous)
                referee.begin()
                yield built
            finally:
                if built is not None:
                    built.close()
                else:
                    for node in pg.values():
                        node.kill9()
                lab.close()  # the namespaces, once nothing runs in them
                for member in members.values():
                    for out in member.logs:
                        out.close()
    finally:
        for node in pg.values():
            shutil.rmtree(node.data_dir, ignore_errors=True)


def _seconds(values: Sequence[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


# --- 1. kill -9 of the primary under write load, cycles alternating nodes ----------------------


@pytest.mark.parametrize(
    "cycles",
    [
        pytest.param(4, id="4-cycles", marks=pytest.mark.timeout(300)),
        pytest.param(30, id="30-cycles", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_kill_9_of_the_primary_under_write_load(
    tmp_path: Path, template: PgLab, cycles: int
) -> None:
    with db_lab(tmp_path, template) as lab:
        kill_cycles(lab, cycles)


@dataclass(frozen=True, slots=True)
class Cycles:
    """What :func:`kill_cycles` measured: per cycle, kill -> first commit acknowledged by the
    new primary through the floating address, and the old node's farmnode start -> it is the
    synchronous standby again; the writer's counts over the whole run."""

    failovers: list[float]
    rejoins: list[float]
    acknowledged: int
    unknown: int  # commits that raised: outcome unknown, never counted as acknowledged


def kill_cycles(lab: DbLab, cycles: int) -> Cycles:
    """Test 1 in ``lab`` (nothing started yet): bring-up, the writer, ``cycles`` kill -9
    cycles alternating nodes, each asserted (within ``FAILOVER_BOUND``, no acknowledged id
    lost, the old node rewound and synchronous again), then the whole run (every id on both
    nodes, never two writable primaries). Also the benchmark's loop (``bench.pg_failover``)."""
    print(f"\nbring-up: n1 primary, n2 its synchronous standby after {lab.bring_up():.2f} s")
    writer = lab.start_writer()
    lab.writes_by("n1")
    failovers: list[float] = []
    rejoins: list[float] = []
    primary, standby = "n1", "n2"
    for cycle in range(1, cycles + 1):
        lab.wait(f"{standby} is {primary}'s synchronous standby",
                 functools.partial(lab.synchronous_pair, primary, standby))  # fmt: skip
        lab.writes_by(primary)
        killed = lab.kill(primary)
        failover = lab.first_ack(standby, killed).ended - killed
        acked = writer.acked_ids()
        missing = lab.missing(standby, acked)
        assert not missing, f"cycle {cycle}: acknowledged ids lost on {standby}: {missing[:20]}"
        assert lab.referee.first(standby, "primary", killed) is not None
        assert lab.health(standby, "/primary")[0] == 200

        rewound = lab.rewinds(primary)
        restarted = lab.start(primary)  # the dead machine reboots
        lab.wait(f"{primary} rejoins as {standby}'s synchronous standby",
                 functools.partial(lab.synchronous_pair, standby, primary))  # fmt: skip
        rejoin = time.monotonic() - restarted
        assert lab.pg[primary].in_recovery() is True
        assert lab.health(primary, "/replica")[0] == 200
        assert lab.health(primary, "/primary")[0] == 503
        assert not (lab.pg[primary].data_dir / "farmnode.rewind").exists()
        assert lab.rewinds(primary) == rewound + 1, f"{primary} rejoined without pg_rewind"
        print(
            f"cycle {cycle}: kill -9 {primary} -> first commit acknowledged by {standby} "
            f"through {VIP}: {failover:.2f} s; {primary} rejoined (farmnode start -> "
            f"synchronous standby): {rejoin:.2f} s; "
            f"{len(acked)} ids acknowledged so far, none lost; "
            f"{len(writer.unknown)} commits failed (outcome unknown)"
        )
        assert failover <= FAILOVER_BOUND, (
            f"cycle {cycle}: {standby} writable through {VIP} only after {failover:.2f} s"
        )
        failovers.append(failover)
        rejoins.append(rejoin)
        primary, standby = standby, primary

    lab.writes_by(primary)
    writer.stop()
    writer.check()
    acked = writer.acked_ids()
    assert len(set(acked)) == len(acked)
    assert not lab.missing(primary, acked), "acknowledged ids lost on the last primary"
    lab.wait(f"{standby} has every acknowledged id", lab.has_all(standby, acked))
    lab.referee.check()
    for name in ("n1", "n2"):  # the referee saw each role and each death
        assert {"primary", "standby", "down"} <= lab.referee.states(name, 0.0), name
    print(
        f"{cycles} cycles: failover median {statistics.median(failovers):.2f} s, "
        f"max {max(failovers):.2f} s ({_seconds(failovers)}); rejoin median "
        f"{statistics.median(rejoins):.2f} s, max {max(rejoins):.2f} s ({_seconds(rejoins)})"
    )
    print(
        f"writer: {len(acked)} ids acknowledged, 0 lost; {len(writer.unknown)} commits "
        f"failed (outcome unknown); {writer.connects} connections, "
        f"{writer.connect_failures} failed connection attempts"
    )
    print(lab.referee.summary())
    return Cycles(failovers, rejoins, len(acked), len(writer.unknown))


# --- 2. the primary partitioned away --------------------------------------------------------------


@pytest.mark.timeout(180)
def test_partitioned_primary_stops_accepting_writes_and_the_majority_promotes(
    tmp_path: Path, template: PgLab
) -> None:
    with db_lab(tmp_path, template, nft=True) as lab:
        print(f"\nbring-up: n1 primary, n2 its synchronous standby after {lab.bring_up():.2f} s")
        writer = lab.start_writer()
        lab.writes_by("n1")
        prober = Prober(lab.pg["n1"])
        prober.start()
        try:
            lab.wait("the prober's writes on n1 are acknowledged",
                     lambda: sum(a.ok for a in prober.attempts) >= 5)  # fmt: skip

            cutting = time.monotonic()
            lab.cut_lan("n1", "n2", "w")
            cut = time.monotonic()  # the rules are in force
            first = lab.first_ack("n2", cut)

            def since_cut() -> list[Attempt]:  # in flight while cutting, or begun after it
                return [a for a in prober.attempts[:] if a.ended >= cutting]

            def refusing() -> bool:
                late = [a for a in since_cut() if a.began >= cut]
                return len(late) >= 3 and all(a.ended - a.began < 0.5 for a in late[-3:])

            lab.wait("writes on n1 fail at once", refusing, FENCE_BOUND)
            refused = time.monotonic()
            # the agent's fence ends with the server stopped: a fast stop (it refuses
            # connections at once, but waits for its walsender to the unreachable standby),
            # then an immediate one after 0.4 x stop_timeout
            lab.wait("n1's PostgreSQL stops", lambda: not lab.pg["n1"].running(), STOP_TIMEOUT)
            stopped = time.monotonic()
            time.sleep(3 * DEADTIME)  # (c) it stays down: it cannot see the new primary
            held = time.monotonic()
        finally:
            prober.stop()
        assert prober.error is None, repr(prober.error)
        attempts = since_cut()
        late = [a for a in attempts if a.began >= cut]
        assert late, "the prober made no attempt after the cut"
        assert not [a for a in late if a.ok], "n1 acknowledged a write begun after the cut"
        assert not [a for a in writer.acks[:] if a.node == "n1" and a.began >= cut]
        hung = [a for a in attempts if a.ended - a.began >= 0.5]  # waited for the standby
        assert all(a.ended - cut <= FENCE_BOUND for a in hung), hung
        assert all(a.ended - a.began < 2.0 for a in late if a.began >= refused), late[-5:]
        assert lab.referee.states("n1", refused, held) == {"down"}
        assert lab.health("n2", "/primary")[0] == 200
        isolated = lab.status("n1")
        assert (isolated["state"], isolated["quorum"]["quorate"]) == ("noquorum", False)
        assert isolated["groups"]["db"]["local"] == "stopped"
        code, body = lab.health("n1", "/health")
        assert (code, body.get("role")) == (503, "demoted"), body
        down, n2_up = lab.referee.first("n1", "down", cut), lab.referee.first("n2", "primary", cut)
        assert down is not None
        assert n2_up is not None
        figures = {
            "n1 stops answering pg_is_in_recovery() (referee)": down,
            "n2 answers as a primary (referee)": n2_up,
            "n2 acknowledges a commit through the floating address": first.ended - cut,
            "n1's postmaster exited (fast stop, then immediate)": stopped - cut,
        }
        for what, seconds in figures.items():
            print(f"cut -> {what}: {seconds:.2f} s")
        for a in hung:
            print(
                f"a write on n1 waited {a.ended - a.began:.2f} s for the cut standby, then "
                f"failed {a.ended - cut:.2f} s after the cut: {a.error}"
            )
        print(f"n1's refusals: {sorted({a.error for a in late})}")

        # the heal: one primary; n1 rejoins as the synchronous standby; nothing lost
        lab.unblock("n1", "pgcut")
        healed = time.monotonic()
        lab.wait("n1 rejoins as n2's synchronous standby", lambda: lab.synchronous_pair("n2", "n1"))
        print(f"heal -> n1 the synchronous standby of n2: {time.monotonic() - healed:.2f} s")
        assert lab.pg["n1"].in_recovery() is True
        assert lab.pg["n2"].in_recovery() is False
        assert lab.rewinds("n1") == 1
        lab.writes_by("n2")
        writer.stop()
        writer.check()
        acked = writer.acked_ids() + [a.id for a in prober.attempts if a.ok]
        assert not lab.missing("n2", acked), "acknowledged ids lost"
        lab.wait("n1 has every acknowledged id", lab.has_all("n1", acked))
        lab.referee.check()
        print(
            f"writer: {len(writer.acks)} acknowledged; prober: "
            f"{sum(a.ok for a in prober.attempts)} acknowledged before the cut, "
            f"{len(late)} refused after it; none lost"
        )
        print(lab.referee.summary())


# --- 3. asynchronous control run: the failover refused, then forced ------------------------------


def _standby_left_behind(lab: DbLab) -> tuple[Writer, list[int], float]:
    """Test 3's start: n1 primary, n2 streaming asynchronously, the writer going; then n2's
    walreceiver blocked and ~3 MiB acknowledged on n1, until n2 has heard n1's advertised
    position over 1 MiB ahead of its own. The writer, the ids n2 holds, when it was blocked."""
    print(f"\nbring-up: n1 primary, n2 streaming (async) after {lab.bring_up():.2f} s")
    assert lab.pg["n1"].sql("SHOW synchronous_standby_names") == [("",)]
    writer = lab.start_writer()
    lab.writes_by("n1")
    replicated = writer.acked_ids()
    lab.wait("n2 has replayed the writer's first ids", lab.has_all("n2", replicated))

    lab.block_replication("n2")
    blocked = time.monotonic()
    lab.pg["n1"].sql("CREATE TABLE big (id int, pad text)")
    lab.pg["n1"].sql(
        "INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 3000) g"
    )  # acknowledged: with synchronous = false nothing waits for n2
    print(f"3000 rows (~3 MiB) acknowledged on n1 {time.monotonic() - blocked:.2f} s after")

    def n2_sees_lag() -> bool:
        code, body = lab.health("n2", "/replica")
        return code == 200 and (body.get("lag") or 0) > MiB

    lab.wait("n2 hears n1's position over 1 MiB ahead", n2_sees_lag)
    lag = lab.health("n2", "/replica")[1]["lag"]
    print(f"n2 heard n1's advertised position {lag / MiB:.1f} MiB ahead of its own")
    return writer, replicated, blocked


def _refused(lab: DbLab) -> Callable[[], bool]:
    def check() -> bool:
        code, body = lab.health("n2", "/primary")
        return code == 503 and "not promoting n2" in body.get("reason", "")

    return check


@pytest.mark.timeout(180)
def test_async_standby_behind_is_refused_until_forced(tmp_path: Path, template: PgLab) -> None:
    with db_lab(tmp_path, template, synchronous=False, nft=True) as lab:
        writer, replicated, blocked = _standby_left_behind(lab)
        last_on_n1 = writer.acks[-1].id
        killed = lab.kill("n1")
        took = lab.wait("n2 refuses the promotion", _refused(lab))
        print(f"kill -9 n1 -> n2 refused the promotion: {took:.2f} s")
        time.sleep(FAILURE_TIMEOUT + 2.0)  # a retry after failure_timeout: refused again
        code, body = lab.health("n2", "/primary")
        reason = body["reason"]
        print(f"n2's health /primary: {code}, reason: {reason}")
        assert code == 503
        assert "not promoting n2: not synchronous at n1's last report and" in reason
        assert "MiB behind it (limit 1.0 MiB); `farmnode promote --force n2` to override" in reason
        log = lab.member("n2").log.read_text()
        tries = log.count("not promoting n2: not synchronous at n1's last report")
        assert tries >= 2, f"n2 tried {tries} time(s) in {FAILURE_TIMEOUT + 2} s"
        status = lab.status("n2")
        print(f"n2's status line: {status['status']}")
        assert status["groups"]["db"]["owner"] is None
        assert "db: failed here" in status["status"]
        assert lab.referee.states("n2", killed) == {"standby"}, "n2 left recovery unforced"
        assert writer.first_ack("n2", killed) is None

        # the operator accepts the loss: promote --force on n2
        lab.unblock("n2", "pgrepl")  # changes nothing now: there is no primary to stream from
        argv = [FARMNODE, "promote", "--config", str(lab.member("n2").config), "--force", "n2"]
        forced = time.monotonic()
        said = lab.member("n2").ns.run(*argv, timeout=WAIT)
        assert "skips the synchronous and lag rules" in said, said
        first = lab.first_ack("n2", forced)
        print(
            f"promote --force n2 -> first commit acknowledged by n2 through {VIP}: "
            f"{first.ended - forced:.2f} s (the next try comes within failure_timeout)"
        )
        assert lab.health("n2", "/primary")[0] == 200
        assert "forced promotion of n2" in lab.member("n2").log.read_text()

        # the documented trade-off: what n1 acknowledged after the block is gone
        writer.stop()
        writer.check()
        assert not lab.missing("n2", replicated)
        assert lab.pg["n2"].sql("SELECT to_regclass('big') IS NULL") == [(True,)]
        on_n1 = [a.id for a in writer.acks if a.node == "n1" and a.id <= last_on_n1]
        lost = lab.missing("n2", on_n1)
        assert lost, "nothing acknowledged by n1 after the block was lost: was it blocked?"
        assert min(lost) > max(replicated)
        lab.referee.check()
        print(
            f"lost by the forced promotion, as documented: the table big (3000 rows) and "
            f"{len(lost)} of the writer's {len(on_n1)} ids acknowledged by n1 (all after "
            f"the block, {killed - blocked:.1f} s before the kill)"
        )
        print(lab.referee.summary())


@pytest.mark.timeout(120)
def test_async_refusal_survives_a_restart_of_the_standbys_farmnode(
    tmp_path: Path, template: PgLab
) -> None:
    with db_lab(tmp_path, template, synchronous=False, nft=True) as lab:
        _standby_left_behind(lab)
        lab.kill("n1")
        lab.wait("n2 refuses the promotion", _refused(lab))
        process = lab.member("n2").process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)  # its farmnode only: the standby runs on
        process.wait(timeout=WAIT)
        restarted = lab.start("n2")
        while time.monotonic() - restarted < INITDEAD + FAILURE_TIMEOUT + 2.0:
            assert lab.pg["n2"].in_recovery() is not False, (
                f"n2 promoted itself {time.monotonic() - restarted:.2f} s after its farmnode "
                "restarted, without --force, over a primary it had refused to replace"
            )
            time.sleep(POLL)
        assert _refused(lab)()
