"""Real PostgreSQL clusters for tests: initdb as the ``postgres`` user in a temporary
directory, on free loopback ports, torn down afterwards (``pg_ctl stop -m immediate``, any
process left killed, the directory removed) — also when the test fails.

``PgLab`` owns one temporary directory (``/tmp/farm-pg-*``, owned by ``postgres``: pytest's
``tmp_path`` is root's and closed to other users). It makes data directories by ``initdb``,
by ``pg_basebackup`` from a running node, or by copying a stopped one (``cp -a``: cheaper
than initdb, for a fresh pair per test). Clusters are tuned to be quick on a loaded machine
(``fsync = off``: the tests kill processes, never the machine) and trust every loopback and
socket connection; the role ``replicator`` may replicate and run pg_rewind.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tests.ports import free_port

PG_ROOT = Path("/usr/lib/postgresql")
USER = "postgres"
REWIND_GRANTS = (
    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO replicator",
    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO replicator",
    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO replicator",
    "GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) "
    "TO replicator",
)
TEST_SETTINGS = """
# tests/farmnode/pgcluster.py: quick on a loaded machine
fsync = off
shared_buffers = 16MB
max_connections = 30
log_min_messages = warning
"""


def pg_bin() -> Path | None:
    """The newest installed PostgreSQL's ``bin`` directory, or ``None``."""
    found = sorted(
        (p for p in PG_ROOT.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def unavailable() -> str | None:
    """Why these clusters cannot be made here (``None``: they can)."""
    if os.geteuid() != 0:
        return "PostgreSQL clusters are made as the postgres user: needs root"
    if pg_bin() is None:
        return f"no PostgreSQL under {PG_ROOT}"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no {USER} OS user"
    return None


@dataclass
class PgNode:
    """One data directory with its port and socket directory."""

    name: str
    data_dir: Path
    port: int
    socket_dir: Path
    lab: PgLab

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        """A PostgreSQL program from ``bin`` as the postgres user; its output."""
        return self.lab.run_as_user([str(self.lab.bin / argv[0]), *argv[1:]], check, timeout)

    def start(self, *options: str) -> None:
        """Start the server directly (not through the agent), with test options."""
        opts = " ".join(
            (
                f"-c port={self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.socket_dir}",
                *options,
            )
        )
        log = str(self.data_dir.parent / f"{self.name}.log")
        self.run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", "60", "-l", log, "-o", opts
        )

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", check=False)

    def postmaster_pid(self) -> int | None:
        """The live (not zombie) postmaster's pid, or ``None``."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        return pid if process_alive(pid) else None

    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def kill9(self) -> None:
        """SIGKILL the postmaster and its children, as a crash would; wait until gone."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = [p for p in _pids() if _ppid(p) == pid]
        for target in (pid, *children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(process_alive(p) for p in (pid, *children)):
            time.sleep(0.02)
        # init reaps it a moment later (1-2 s here); until then PostgreSQL sees a zombie
        # postmaster holding the lock file: the agent must cope with that, so no wait here

    def connect(self, **kwargs: Any) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=USER,
            dbname="postgres",
            connect_timeout=3,
            autocommit=True,
            **kwargs,
        )

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run one statement on this node over its socket; the rows (``[]`` without)."""
        with self.connect() as conn:
            cur = conn.execute(query.encode(), params or None)
            return list(cur.fetchall()) if cur.description else []

    def in_recovery(self) -> bool | None:
        """``pg_is_in_recovery()``, or ``None`` when the server does not answer."""
        try:
            return bool(self.sql("SELECT pg_is_in_recovery()")[0][0])
        except psycopg.Error:
            return None

    def writable(self) -> bool:
        return self.in_recovery() is False

    def read_file(self, name: str) -> str:
        return (self.data_dir / name).read_text()


class PgLab:
    """A temporary directory of PostgreSQL nodes, removed with everything in it at close."""

    def __init__(self) -> None:
        reason = unavailable()
        if reason is not None:
            raise RuntimeError(reason)
        found = pg_bin()
        assert found is not None
        self.bin = found
        entry = pwd.getpwnam(USER)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.root = Path(tempfile.mkdtemp(prefix="farm-pg-", dir="/tmp"))
        os.chown(self.root, self.uid, self.gid)
        self.nodes: list[PgNode] = []

    def run_as_user(self, argv: Sequence[str], check: bool = True, timeout: float = 60) -> str:
        done = subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.root,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": "/tmp"},
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)} exited {done.returncode}: {done.stdout}{done.stderr}"
            )
        return done.stdout + done.stderr

    def _node(self, name: str) -> PgNode:
        socket_dir = self.root / f"sock-{name}"
        socket_dir.mkdir()
        os.chown(socket_dir, self.uid, self.gid)
        node = PgNode(name, self.root / name, free_port(), socket_dir, self)
        self.nodes.append(node)
        return node

    def initdb(self, name: str) -> PgNode:
        """A new cluster, started once to create ``replicator`` (with pg_rewind's grants),
        then stopped cleanly."""
        node = self._node(name)
        self.run_as_user(
            [
                str(self.bin / "initdb"),
                "-D",
                str(node.data_dir),
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-instructions",
                "--wal-segsize=1",
            ]
        )
        with open(node.data_dir / "postgresql.conf", "a") as conf:
            conf.write(TEST_SETTINGS)
        node.start()
        node.sql("CREATE ROLE replicator WITH REPLICATION LOGIN")
        for grant in REWIND_GRANTS:
            node.sql(grant)
        node.stop()
        return node

    def basebackup(self, source: PgNode, name: str) -> PgNode:
        """A base backup of the running ``source`` (no standby.signal: the agent decides)."""
        node = self._node(name)
        node.run(
            "pg_basebackup", "-D", str(node.data_dir), "-h", "127.0.0.1", "-p", str(source.port),
            "-U", "replicator", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        return node

    def copy(self, template: PgNode, name: str) -> PgNode:
        """A copy of the stopped ``template`` under a new name, port and socket."""
        node = self._node(name)
        subprocess.run(["cp", "-a", str(template.data_dir), str(node.data_dir)], check=True)
        return node

    def close(self) -> None:
        for node in self.nodes:
            if node.running():
                node.stop("immediate")
            node.kill9()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def pg_lab() -> Iterator[PgLab]:
    lab = PgLab()
    try:
        yield lab
    finally:
        lab.close()


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[1])


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] != "Z"
