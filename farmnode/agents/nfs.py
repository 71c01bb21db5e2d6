"""The ``nfsganesha`` agent: a userspace NFSv4 server (NFS-Ganesha, VFS backend) that moves
with its resource group.

``start`` writes the instance's own ``ganesha.conf`` into its run directory (one directory
per instance: config, pid file, log; nothing in ``/var/run/ganesha`` or ``/etc/ganesha``),
starts ``ganesha.nfsd -F`` in a session of its own (under ``ip netns exec`` with ``netns``)
and returns once that process listens on the NFS port and the port accepts a TCP
connection (``ERR_GENERIC`` with ganesha's FATAL log line when it exits instead).
``monitor``: the process named by the pid file is alive and is this instance's ganesha (its
command line names this instance's config: a reused pid is not mistaken for it), it holds
the listening socket, and the port accepts a connection; ``NOT_RUNNING`` when there is no
such process (a pid file left by a crash included). ``stop``: SIGTERM, SIGKILL after
``kill_after`` seconds; nothing running is ``SUCCESS``. A start that overruns its timeout
kills the process it started.

The server speaks NFSv4 only (4.0, 4.1, 4.2) over TCP: no rpcbind, no mountd, no NLM, no
rquota, no UDP. It keeps its NFSv4 recovery records (the ``fs`` backend) in ``state_dir``,
on the storage every node of the group reaches, so the node that takes over finds the
clients the old owner had and holds a grace period (``grace`` seconds; ganesha lifts it
early once every recorded client has finished reclaiming, and at once when there is no
record) in which they reclaim their opens and locks and no new open is granted. Every
node advertises the same ``Server_Scope``, which NFSv4.1 clients require before they
reclaim on another server.

D-Bus is not used: the server is pointed at a bus address that does not exist, so several
instances can run on one host (``ganesha_mgr``/``ganesha_stats`` do not reach them). Debian
packages: ``nfs-ganesha`` and ``nfs-ganesha-vfs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import ipaddress
import logging
import os
import re
import signal
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final

from farmnode.agents.base import (
    Action,
    Agent,
    OcfResult,
    Param,
    in_netns,
    positive,
)
from farmnode.process import child_environment, last_line

log = logging.getLogger("farmnode.agents.nfs")

#: Parent of the default run directory (``RUN_ROOT/<resource name>``).
RUN_ROOT: Final = "/run/farmnode/nfsganesha"
#: Where Debian, Fedora and source builds put the FSAL plugins (``libfsalvfs.so``).
PLUGIN_DIRS: Final = ("/usr/lib/*/ganesha", "/usr/lib64/ganesha", "/usr/lib/ganesha")
FSAL_VFS: Final = "libfsalvfs.so"
#: Ganesha's ranges for Grace_Period and Lease_Lifetime (ganesha-core-config(8)).
MAX_GRACE: Final = 180
MAX_LEASE: Final = 120
LOG_LEVELS: Final = ("FATAL", "MAJ", "CRIT", "WARN", "EVENT", "INFO", "DEBUG", "FULL_DEBUG")
ACCESS: Final = {"rw": "RW", "ro": "RO"}
SQUASH: Final = {
    "root_squash": "Root_Squash",
    "root_id_squash": "Root_Id_Squash",
    "all_squash": "All_Squash",
    "no_root_squash": "No_Root_Squash",
}
#: Seconds between readiness probes while starting, and each probe's connect timeout.
POLL: Final = 0.05
PROBE_TIMEOUT: Final = 1.0
#: Longest default wait from SIGTERM to SIGKILL.
KILL_AFTER: Final = 10.0
#: Seconds to wait for the process to vanish after SIGKILL.
KILL_WAIT: Final = 5.0
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f]')
_CLIENT = re.compile(r"^(\*|[A-Za-z0-9*?][A-Za-z0-9.:/*?_-]*)$")
_FATAL_LINE = re.compile(r":FATAL :")
_FAILURE_LINE = re.compile(r":(CRIT|MAJ) :")
#: Critical lines every start without D-Bus, rpcbind and a Kerberos keytab logs.
_NOISE = re.compile(r"DBUS|__Register_program|keytab|gssd_refresh")
#: The first line of every run in ganesha's log.
START_LINE: Final = "Starting: Ganesha Version"


# --- parameter checks -----------------------------------------------------------------------


def _abs_path(value: str) -> str | None:
    if not os.path.isabs(value) or _UNSAFE.search(value):
        return "an absolute path without quotes, backslashes or control characters"
    return None


def _pseudo(value: str) -> str | None:
    if _abs_path(value) or value == "/" or "//" in value or value.endswith("/"):
        return "an absolute NFSv4 pseudo path below / such as /export"
    return None


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else "a TCP port from 1 to 65535"


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "an IP address (10.0.0.5, fd00::5)"
    return None


def _grace(value: int) -> str | None:
    return None if 0 < value <= MAX_GRACE else f"seconds from 1 to {MAX_GRACE}"


def _lease(value: int) -> str | None:
    return None if 0 < value <= MAX_LEASE else f"seconds from 1 to {MAX_LEASE}"


def _one_of(choices: Mapping[str, str] | tuple[str, ...]) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        return None if value in choices else f"one of {', '.join(choices)}"

    return check


def _clients(value: str) -> str | None:
    items = [item.strip() for item in value.split(",")]
    if not all(_CLIENT.match(item) for item in items):
        return "a comma-separated list of hosts, networks (10.0.0.0/24) or *"
    return None


def _scope(value: str) -> str | None:
    ok = 0 < len(value) <= 64 and re.fullmatch(r"[A-Za-z0-9_.:-]+", value) is not None
    return None if ok else "1 to 64 letters, digits, '_', '.', ':' or '-'"


def _inside(path: str, parent: str) -> bool:
    path, parent = os.path.normpath(path), os.path.normpath(parent)
    return path == parent or path.startswith(parent.rstrip("/") + "/")


# --- the configuration file -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GaneshaConfig:
    """Everything one instance's ``ganesha.conf`` says; :meth:`render` writes it."""

    export: str
    state_dir: str
    pseudo: str
    port: int
    bind: str | None
    grace: int
    lease: int
    access: str
    squash: str
    clients: tuple[str, ...]
    server_scope: str
    log_level: str
    run_dir: str
    plugins_dir: str

    def render(self) -> str:
        bind = "" if self.bind is None else f"    Bind_Addr = {self.bind};\n"
        wide_open = self.clients == ("*",)
        access = ACCESS[self.access] if wide_open else "None"
        client = (
            ""
            if wide_open
            else "    CLIENT {\n"
            f"        Clients = {', '.join(self.clients)};\n"
            f"        Access_Type = {ACCESS[self.access]};\n"
            "    }\n"
        )
        return (
            "# Written by farmnode (agent nfsganesha); rewritten at every start.\n"
            "NFS_CORE_PARAM {\n"
            "    Protocols = 4;\n"
            f"    NFS_Port = {self.port};\n"
            f"{bind}"
            "    Enable_UDP = false;\n"
            "    Enable_NLM = false;\n"
            "    Enable_RQUOTA = false;\n"
            "    Clustered = false;\n"
            f'    Plugins_Dir = "{self.plugins_dir}";\n'
            "}\n"
            "NFS_KRB5 {\n"
            "    Active_krb5 = false;\n"
            f'    CCacheDir = "{self.run_dir}";\n'
            "}\n"
            "NFSv4 {\n"
            f"    Grace_Period = {self.grace};\n"
            f"    Lease_Lifetime = {self.lease};\n"
            "    RecoveryBackend = fs;\n"
            f'    RecoveryRoot = "{self.state_dir}";\n'
            f'    Server_Scope = "{self.server_scope}";\n'
            "}\n"
            "EXPORT {\n"
            "    Export_Id = 1;\n"
            f'    Path = "{self.export}";\n'
            f'    Pseudo = "{self.pseudo}";\n'
            "    Protocols = 4;\n"
            "    Transports = TCP;\n"
            "    SecType = sys;\n"
            f"    Access_Type = {access};\n"
            f"    Squash = {SQUASH[self.squash]};\n"
            "    FSAL {\n"
            "        Name = VFS;\n"
            "    }\n"
            f"{client}"
            "}\n"
            "LOG {\n"
            f"    Default_Log_Level = {self.log_level};\n"
            "}\n"
        )


def find_plugins_dir() -> str | None:
    """The first directory of :data:`PLUGIN_DIRS` that holds the VFS FSAL, or ``None``."""
    for pattern in PLUGIN_DIRS:
        for directory in sorted(glob.glob(pattern)):
            if os.path.isfile(os.path.join(directory, FSAL_VFS)):
                return directory
    return None


# --- processes ------------------------------------------------------------------------------


def _reap(pid: int) -> int | None:
    """Collect ``pid`` if it is a child of this process that has exited (no zombie left);
    its exit code then (negative: the signal that ended it), else ``None``."""
    with contextlib.suppress(ChildProcessError, OSError):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
    return None


def _live_tasks(pid: int) -> list[str]:
    """The threads of process ``pid`` that have not exited (none when it is gone)."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    live = []
    for tid in tasks:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            if stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"]):
                live.append(tid)
    return live


def process_alive(pid: int, marker: str) -> bool:
    """Whether process ``pid`` runs with ``marker`` among its arguments.

    The marker (the instance's config path) guards against a reused pid. Any thread counts:
    the main thread of a killed server may be a zombie while others still exit. A process
    in the middle of ``exec`` shows no arguments for a moment: right after a spawn, ask
    :func:`process_gone` instead.
    """
    _reap(pid)
    for tid in _live_tasks(pid):
        with contextlib.suppress(OSError):
            args = Path(f"/proc/{pid}/task/{tid}/cmdline").read_bytes()
            if marker.encode() in args.split(b"\0"):
                return True
    return False


def process_gone(pid: int) -> bool:
    """Whether every thread of ``pid`` has exited, so its sockets and files are closed."""
    _reap(pid)
    return not _live_tasks(pid)


def holds_listener(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a TCP socket listening on ``port`` (in its namespace).

    Another program listening on the port would answer a connection too; this tells them
    apart (``/proc/PID/net/tcp*`` shows the process's network namespace).
    """
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if (
                len(fields) > 9
                and fields[3] == "0A"
                and int(fields[1].rpartition(":")[2], 16) == port
            ):
                inodes.add(fields[9])
    if not inodes:
        return False
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return True
    return False


def _probe(address: tuple[str, int]) -> None:
    """Connect to ``address`` and close; :class:`OSError` when nothing accepts."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(PROBE_TIMEOUT)
        sock.connect(address)


class NfsGanesha(Agent):
    """NFS-Ganesha (VFS backend) serving one export over NFSv4, state on shared storage."""

    kind: ClassVar[str] = "nfsganesha"
    description: ClassVar[str] = (
        "An NFSv4 server (NFS-Ganesha with the VFS backend) exporting a directory on storage "
        "every node reaches, its recovery state on that storage so that clients reclaim their "
        "state on the node that takes over."
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("export", str, "the directory exported", required=True, check=_abs_path),
        Param(
            "state_dir",
            str,
            "NFSv4 recovery state: a directory on the shared storage, outside export",
            required=True,
            check=_abs_path,
        ),
        Param(
            "pseudo", str, "the NFSv4 pseudo path of the export", default="/export", check=_pseudo
        ),
        Param("port", int, "the NFS TCP port", default=2049, check=_port),
        Param("bind", str, "the address to listen on (default: every address)", check=_ip),
        Param("grace", int, "seconds of grace after a start", default=90, check=_grace),
        Param("lease", int, "NFSv4 lease lifetime, seconds (<= grace)", default=60, check=_lease),
        Param("access", str, "rw or ro", default="rw", check=_one_of(ACCESS)),
        Param(
            "squash",
            str,
            "root_squash, root_id_squash, all_squash or no_root_squash",
            default="root_squash",
            check=_one_of(SQUASH),
        ),
        Param("clients", str, "who may mount: hosts, networks or *", default="*", check=_clients),
        Param("server_scope", str, "NFSv4 server scope (default farmnode-<name>)", check=_scope),
        Param(
            "ganesha", str, "the server binary", default="/usr/bin/ganesha.nfsd", check=_abs_path
        ),
        Param("plugins_dir", str, "FSAL plugin directory (default: found)", check=_abs_path),
        Param("run_dir", str, f"config, pid and log (default {RUN_ROOT}/<name>)", check=_abs_path),
        Param("log_level", str, "ganesha's log level", default="EVENT", check=_one_of(LOG_LEVELS)),
        Param(
            "kill_after",
            float,
            "seconds from SIGTERM to SIGKILL (default: half stop_timeout, at most 10)",
            check=positive,
        ),
        Param("netns", str, "network namespace (name in /run/netns) to run the server in"),
    )

    def __init__(self, params: Mapping[str, Any], *, name: str = "") -> None:
        super().__init__(params, name=name)
        v = self.values
        self.export: str = os.path.normpath(v["export"])
        self.state_dir: str = os.path.normpath(v["state_dir"])
        self.binary: str = v["ganesha"]
        self.netns: str | None = v["netns"]
        if _inside(self.state_dir, self.export):
            raise self.param_error(
                "state_dir", f"a directory outside the export {self.export} (clients would see it)"
            )
        if v["lease"] > v["grace"]:
            raise self.param_error(
                "grace", f"seconds >= lease ({v['lease']}): clients need a lease to reclaim"
            )
        stop_timeout = self.timeouts[Action.STOP]
        self.kill_after: float = v["kill_after"] or min(KILL_AFTER, stop_timeout / 2)
        if self.kill_after >= stop_timeout:
            raise self.param_error("kill_after", f"seconds < stop_timeout ({stop_timeout:g})")
        if v["run_dir"] is None and (_UNSAFE.search(self.name) or "/" in self.name):
            raise self.param_error("run_dir", f"a path (resource name {self.name!r} is no name)")
        self.run_dir = Path(v["run_dir"] or os.path.join(RUN_ROOT, self.name))
        self.config_file = self.run_dir / "ganesha.conf"
        self.pid_file = self.run_dir / "ganesha.pid"
        self.log_file = self.run_dir / "ganesha.log"
        self.out_file = self.run_dir / "ganesha.out"
        bind = v["bind"]
        self.bind_address: str | None = None if bind is None or _unspecified(bind) else bind
        self.probe_address = (self.bind_address or "127.0.0.1", int(v["port"]))
        self._plugins_dir = ""

    def ganesha_config(self, plugins_dir: str) -> GaneshaConfig:
        """This instance's configuration, with the FSAL plugins in ``plugins_dir``."""
        v = self.values
        return GaneshaConfig(
            export=self.export,
            state_dir=self.state_dir,
            pseudo=v["pseudo"],
            port=v["port"],
            bind=self.bind_address,
            grace=v["grace"],
            lease=v["lease"],
            access=v["access"],
            squash=v["squash"],
            clients=tuple(item.strip() for item in v["clients"].split(",")),
            server_scope=v["server_scope"] or _default_scope(self.name),
            log_level=v["log_level"],
            run_dir=str(self.run_dir),
            plugins_dir=plugins_dir,
        )

    def argv(self) -> list[str]:
        """The command line that runs the server in the foreground."""
        argv = [
            self.binary,
            "-F",
            "-f",
            str(self.config_file),
            "-L",
            str(self.log_file),
            "-p",
            str(self.pid_file),
            "-N",
            f"NIV_{self.values['log_level']}",
        ]
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    # --- actions ---------------------------------------------------------------------------

    async def start(self) -> OcfResult:
        problem = self._check_installed()
        if problem is not None:
            return self.fail(OcfResult.ERR_INSTALLED, problem)
        problem = self._check_storage()
        if problem is not None:
            return self.fail(OcfResult.ERR_CONFIGURED, problem)
        pid = self._running_pid()
        if pid is None:
            try:
                pid = self._spawn()
            except PermissionError as exc:
                return self.fail(OcfResult.ERR_PERM, f"cannot start {self.binary}: {exc}")
            except OSError as exc:
                return self.fail(OcfResult.ERR_GENERIC, f"cannot start {self.binary}: {exc}")
            log.info("%s: ganesha started (pid %d), waiting for port %d", self.name, pid, self.port)
        try:
            return await self._until_ready(pid)
        except BaseException:  # cancelled (the start timeout): leave nothing half-started
            self._kill_now(pid)
            raise

    async def stop(self) -> OcfResult:
        pid = self._running_pid()
        if pid is None:
            self._remove_pid_file()
            return OcfResult.SUCCESS
        began = time.monotonic()
        try:
            self._signal(pid, signal.SIGTERM)
            if not await self._gone(pid, self.kill_after):
                log.warning("%s: ganesha (pid %d) ignored SIGTERM; SIGKILL", self.name, pid)
                self._signal(pid, signal.SIGKILL)
                if not await self._gone(pid, KILL_WAIT):
                    return self.fail(OcfResult.ERR_GENERIC, f"ganesha (pid {pid}) survives SIGKILL")
        except PermissionError as exc:
            return self.fail(OcfResult.ERR_PERM, f"cannot signal ganesha (pid {pid}): {exc}")
        self._remove_pid_file()
        log.info("%s: ganesha (pid %d) stopped in %.3f s", self.name, pid, time.monotonic() - began)
        return OcfResult.SUCCESS

    async def monitor(self) -> OcfResult:
        pid = self._pid_from_file()
        if pid is None:
            return self.fail(OcfResult.NOT_RUNNING, "not running (no pid file)")
        if not process_alive(pid, str(self.config_file)):
            return self.fail(OcfResult.NOT_RUNNING, f"ganesha (pid {pid}) is dead{self._said()}")
        if not holds_listener(pid, self.port):
            return self.fail(
                OcfResult.ERR_GENERIC, f"ganesha (pid {pid}) does not listen on port {self.port}"
            )
        try:
            await in_netns(self.netns, lambda: _probe(self.probe_address))
        except OSError as exc:
            return self.fail(
                OcfResult.ERR_GENERIC,
                f"ganesha (pid {pid}) runs but port {self._where()} refuses: {exc}",
            )
        return OcfResult.SUCCESS

    # --- helpers ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.probe_address[1]

    def _where(self) -> str:
        host, port = self.probe_address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _check_installed(self) -> str | None:
        if not os.access(self.binary, os.X_OK):
            return f"{self.binary} is missing or not executable (apt-get install nfs-ganesha)"
        plugins = self.values["plugins_dir"] or find_plugins_dir()
        if plugins is None or not os.path.isfile(os.path.join(plugins, FSAL_VFS)):
            where = plugins or ", ".join(PLUGIN_DIRS)
            return f"no {FSAL_VFS} in {where} (apt-get install nfs-ganesha-vfs)"
        self._plugins_dir = plugins
        return None

    def _check_storage(self) -> str | None:
        for param, path in (("export", self.export), ("state_dir", self.state_dir)):
            if not os.path.isdir(path):
                return f"{param} {path} is not a directory (shared storage not mounted?)"
        return None

    def _pid_from_file(self) -> int | None:
        try:
            text = self.pid_file.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def _running_pid(self) -> int | None:
        pid = self._pid_from_file()
        return pid if pid is not None and process_alive(pid, str(self.config_file)) else None

    def _remove_pid_file(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _spawn(self) -> int:
        """Write the config and start the server in a new session; its pid (raises OSError)."""
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = self.ganesha_config(self._plugins_dir).render()
        scratch = self.config_file.with_suffix(".conf.new")
        scratch.write_text(text)
        os.replace(scratch, self.config_file)
        self._remove_pid_file()
        env = child_environment(
            {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.run_dir / 'no-dbus'}"}
        )
        out = os.open(self.out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            pid = os.posix_spawnp(
                self.argv()[0],
                self.argv(),
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, out, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(out)
        self.pid_file.write_text(f"{pid}\n")  # ganesha writes the same pid again
        return pid

    async def _until_ready(self, pid: int) -> OcfResult:
        """Wait until the port accepts (``SUCCESS``) or the process dies (``ERR_GENERIC``)."""
        while True:
            if not _live_tasks(pid):  # exited; a child of ours is a zombie until reaped
                code = _reap(pid)
                self._remove_pid_file()
                how = "" if code is None else f" (exit code {code})"
                return self.fail(
                    OcfResult.ERR_GENERIC, f"ganesha exited at start{how}{self._said()}"
                )
            if holds_listener(pid, self.port):
                try:
                    await in_netns(self.netns, lambda: _probe(self.probe_address))
                except OSError:
                    pass
                else:
                    return OcfResult.SUCCESS
            await asyncio.sleep(POLL)

    def _said(self) -> str:
        """``: <what the server's last run logged as fatal or critical>``, or nothing.

        Only the last run counts (the log is appended to); a FATAL line wins; the noise of
        a server without D-Bus, rpcbind and Kerberos is left out. Without such a line, the
        last line of its standard error.
        """
        lines: list[str] = []
        for path in (self.log_file, self.out_file):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                lines += text[max(0, text.rfind(START_LINE)) :].splitlines()[-300:]
        for pattern in (_FATAL_LINE, _FAILURE_LINE):
            found = [line for line in lines if pattern.search(line) and not _NOISE.search(line)]
            if found:
                return ": " + found[-1].split("] ", 1)[-1].strip()[:200]
        with contextlib.suppress(OSError):  # what it (or ip netns exec) said on stderr
            said = last_line(self.out_file.read_text(errors="replace"))
            if said:
                return f": {said}"
        return ""

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        """Send ``sig``; a process gone already is fine (raises :class:`PermissionError`)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    async def _gone(self, pid: int, within: float) -> bool:
        deadline = time.monotonic() + within
        while not process_gone(pid):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)
        return True

    def _kill_now(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_WAIT
        while not process_gone(pid) and time.monotonic() < deadline:
            time.sleep(POLL)
        self._remove_pid_file()


def _unspecified(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


def _default_scope(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.:-]", "-", name)[:55]
    return f"farmnode-{cleaned}"
