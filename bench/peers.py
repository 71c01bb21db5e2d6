"""The dispatcher's hot path beside nginx and Apache, in one run (part of ``make bench``).

Six servers answer ``GET /bench/path?x=1`` with a 302 to a site:

- **nginx 302**: nginx ``return 302 http://127.0.0.1:9001$request_uri``, one worker process;
- **dispatcher**: ``python -m bench.servers dispatcher`` (three sites in one pool);
- **Apache + 50 rules**: Apache 2.4, event MPM, ONE child process (``ServerLimit 1``,
  ``StartServers 1``, 64 threads), serving ``bench/rules50.conf`` with an ``rnd:`` map named
  ``site`` in place of the dispatcher's ``${site:}`` and, last, the dispatcher's default
  placement as a rule (``RewriteRule ^/(.*)$ ${site:default}/$1 [R=302,L]``);
- **dispatcher + 50 rules**: ``python -m bench.servers dispatcher-rules``;
- **serve, workers = 1**: ``farm-dispatcher serve`` as deployed, a control process and one
  worker process (``python -m bench.servers serve-workers-1``): beside the in-process
  dispatcher, what the control/worker split costs per request (all processes counted);
- **serve, workers = 2**: the same with two workers, NOT pinned (two workers on one core
  would only take turns): they share both cores with wrk, so its figures are the machine's,
  not a core's.

The request matches none of the 50 rules (every rule is tried), so each server ends with a
302 to one of the sites. Every server runs pinned to core 0 (``taskset -c 0``: all its
processes), and wrk to core 1 (``taskset -c 1 wrk -t1``), so a server has a core to itself.
**Server CPU per request** is the user + system CPU time of all the server's processes (the
started process and its descendants, from ``/proc/<pid>/stat``) over a round, divided by the
requests wrk counted in it. Rounds alternate between the servers (a slow spell of the shared
machine weighs on all of them); each figure is the median of the rounds.

nginx and Apache run from a private temporary directory (their own configuration, pid and
logs; the system's configuration is not read), on a free loopback port, started as
``tests/redirect/apache.py`` starts Apache for the differential test (``-f conf
-DFOREGROUND``; children as ``www-data`` when started as root). ``make bench`` installs both
(``.ci/system-deps --bench``). This is a benchmark, not a test: it prints figures for
docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

RULES = Path(__file__).with_name("rules50.conf")
TARGET = "/bench/path?x=1"
SITES = ("http://127.0.0.1:9001", "http://127.0.0.1:9002", "http://127.0.0.1:9003")
APACHE_MODULES = Path("/usr/lib/apache2/modules")
SERVER_CORE, CLIENT_CORE = 0, 1
START_TIMEOUT = 20.0
ROUNDS = 3
DEFAULT_PLACEMENT = "RewriteRule ^/(.*)$ ${site:default}/$1 [R=302,L]"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


@dataclass(frozen=True, slots=True)
class Round:
    requests_per_s: float
    p99_ms: float
    cpu_us: float  # all the server's processes: CPU time per request


@dataclass(frozen=True, slots=True)
class Server:
    """A started server: its root process and the port it answers on."""

    name: str
    process: subprocess.Popen[bytes]
    port: int


Starter = Callable[[Path, int, list[str]], subprocess.Popen[bytes]]


# --- processes and their CPU -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def tree(root: int) -> list[int]:
    """``root`` and every process descended from it (Linux ``/proc``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU time so far of ``root`` and its descendants."""
    ticks = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def pinning() -> tuple[list[str], list[str]]:
    """``taskset`` prefixes for the servers and for wrk (none on a machine of one core)."""
    cores = os.sched_getaffinity(0)
    if shutil.which("taskset") is None or not {SERVER_CORE, CLIENT_CORE} <= cores:
        return [], []
    return ["taskset", "-c", str(SERVER_CORE)], ["taskset", "-c", str(CLIENT_CORE)]


def wait_port(process: subprocess.Popen[bytes], port: int, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {what} exited {process.returncode}:\n{_tail(log)}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"bench: {what} did not answer within {START_TIMEOUT} s:\n{_tail(log)}")


def _tail(log: Path) -> str:
    with contextlib.suppress(OSError):
        return log.read_text(errors="replace")[-2000:]
    return "(no log)"


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --- nginx -------------------------------------------------------------------------------


def nginx_config(root: Path, port: int) -> str:
    temps = "".join(
        f"    {kind}_temp_path {root}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_requests 1000000;
{temps}    server {{
        listen 127.0.0.1:{port};
        location / {{ return 302 {SITES[0]}$request_uri; }}
    }}
}}
"""


def start_nginx(root: Path, port: int, pin: list[str]) -> subprocess.Popen[bytes]:
    binary = shutil.which("nginx", path="/usr/sbin:/usr/bin:/usr/local/sbin")
    if binary is None:
        raise SystemExit("bench: nginx is missing (make bench installs it: nginx-light)")
    conf = root / "nginx.conf"
    conf.write_text(nginx_config(root, port))
    argv = [*pin, binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
    log = root / "startup.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    wait_port(process, port, "nginx", log)
    return process


# --- Apache ------------------------------------------------------------------------------


def apache_rules(text: str) -> str:
    """``rules50.conf`` for Apache: ``${site:POOL|default}`` reads an ``rnd:`` map named
    ``site`` (the same syntax), and the dispatcher's default placement becomes the last rule."""
    return f"{text}\n# the dispatcher's default placement\n{DEFAULT_PLACEMENT}\n"


def site_map() -> str:
    """The ``rnd:`` map: the default pool's three sites, one in each regional pool."""
    lines = [f"default {'|'.join(SITES)}"]
    lines += [f"{region} {site}" for region, site in zip(("eu", "us", "asia"), SITES, strict=True)]
    return "\n".join(lines) + "\n"


def _apache_user() -> tuple[str, str] | None:
    if os.geteuid() != 0:
        return None
    for user, group in (("www-data", "www-data"), ("nobody", "nogroup")):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(user)
            return user, group
    raise SystemExit("bench: running as root, but neither www-data nor nobody exists")


def apache_config(root: Path, port: int, compiled: set[str]) -> str:
    modules = [("mpm_event_module", "mod_mpm_event"), ("rewrite_module", "mod_rewrite")]
    lines = [f'ServerRoot "{root}"']
    lines += [
        f'LoadModule {name} "{APACHE_MODULES / so}.so"'
        for name, so in modules
        if so not in compiled
    ]
    run_as = _apache_user()
    if run_as is not None:
        lines += [f"User {run_as[0]}", f"Group {run_as[1]}"]
    lines += [
        f"Listen 127.0.0.1:{port}",
        "ServerName bench.invalid",
        f'PidFile "{root}/apache2.pid"',
        f'DefaultRuntimeDir "{root}"',
        f'ErrorLog "{root}/error.log"',
        "LogLevel warn",
        # one process: the event MPM's one child with enough threads for wrk's connections
        "ServerLimit 1",
        "StartServers 1",
        "ThreadLimit 64",
        "ThreadsPerChild 64",
        "MaxRequestWorkers 64",
        "MinSpareThreads 1",
        "MaxSpareThreads 64",
        "MaxConnectionsPerChild 0",
        "KeepAlive On",
        "MaxKeepAliveRequests 0",
        "KeepAliveTimeout 5",
        f'DocumentRoot "{root}/htdocs"',
        f"RewriteMap site rnd:{root}/sites.map",
        apache_rules(RULES.read_text(encoding="utf-8")),
    ]
    return "\n".join(lines) + "\n"


def start_apache(root: Path, port: int, pin: list[str]) -> subprocess.Popen[bytes]:
    binary = shutil.which("apache2", path="/usr/sbin:/usr/bin:/usr/local/sbin")
    if binary is None or not (APACHE_MODULES / "mod_mpm_event.so").exists():
        raise SystemExit("bench: Apache (apache2, with mod_mpm_event) is missing")
    listed = subprocess.run([binary, "-l"], capture_output=True, text=True, check=True).stdout
    compiled = {line.strip().removesuffix(".c") for line in listed.splitlines()[1:]}
    root.chmod(0o755)
    (root / "htdocs").mkdir()
    (root / "sites.map").write_text(site_map())
    (root / "sites.map").chmod(0o644)
    conf = root / "apache2.conf"
    conf.write_text(apache_config(root, port, compiled))
    log = root / "startup.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*pin, binary, "-f", str(conf), "-DFOREGROUND"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=ENV,
            start_new_session=True,
        )
    wait_port(process, port, "Apache", log)
    return process


# --- the dispatcher (bench.servers) ------------------------------------------------------


def dispatcher_starter(kind: str) -> Starter:
    def start(root: Path, port: int, pin: list[str]) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [*pin, sys.executable, "-m", "bench.servers", kind, str(port)],
            stdout=subprocess.PIPE,
            cwd=root,
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != b"ready":
            process.kill()
            raise SystemExit(f"bench: the {kind} server did not start")
        return process

    return start


def unpinned(root: Path, port: int) -> subprocess.Popen[bytes]:
    return dispatcher_starter("serve-workers-2")(root, port, [])


# --- wrk ---------------------------------------------------------------------------------


def wrk(port: int, seconds: int, connections: int, pin: list[str], server: int) -> Round:
    before = cpu_seconds(server)
    out = subprocess.run(
        [*pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
         f"http://127.0.0.1:{port}{TARGET}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout  # fmt: skip
    used = cpu_seconds(server) - before
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    if rps is None or count is None or p99 is None:
        raise SystemExit(f"bench: cannot read wrk's output:\n{out}")
    if "Non-2xx or 3xx responses" in out or "Socket errors" in out:
        raise SystemExit(f"bench: errors or unexpected responses on port {port}:\n{out}")
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    requests = int(count.group(1))
    return Round(float(rps.group(1)), float(p99.group(1)) * scale, used / max(requests, 1) * 1e6)


def check_redirect(port: int) -> str:
    """The ``Location`` of one answer (it must be a 302 to one of the sites)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            f"GET {TARGET} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = head.split(" ", 2)[1] if " " in head else "?"
    location = next(
        (
            line.split(":", 1)[1].strip()
            for line in head.split("\r\n")
            if line.lower().startswith("location:")
        ),
        "",
    )
    site = re.fullmatch(r"http://127\.0\.0\.1:\d+" + re.escape(TARGET), location)
    if status != "302" or site is None:  # the dispatcher's sites have ports of their own
        raise SystemExit(
            f"bench: port {port} answered {status} to {location!r}, not a 302 to a site"
        )
    return location


# --- the run -----------------------------------------------------------------------------

SERVERS: tuple[tuple[str, Starter], ...] = (
    ("nginx 302 (1 worker)", start_nginx),
    ("dispatcher", dispatcher_starter("dispatcher")),
    ("Apache + 50 rules (1 proc)", start_apache),
    ("dispatcher + 50 rules", dispatcher_starter("dispatcher-rules")),
    ("serve, workers = 1", dispatcher_starter("serve-workers-1")),
    # two workers on two cores: not pinned, so they share both cores with wrk
    ("serve, workers = 2 (unpinned)", lambda root, port, _pin: unpinned(root, port)),
)


@contextlib.contextmanager
def started(pin: list[str]) -> Iterator[list[Server]]:
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="webfarm-peers-") as tmp:
        Path(tmp).chmod(0o755)  # Apache's children (www-data) read the rnd: map in it
        try:
            for i, (name, start) in enumerate(SERVERS):
                root = Path(tmp) / str(i)
                root.mkdir()
                port = free_port()
                servers.append(Server(name, start(root, port, pin), port))
            yield servers
        finally:
            for server in servers:
                stop(server.process)


def measure(seconds: int, rounds: int, connections: int) -> dict[str, list[Round]]:
    server_pin, client_pin = pinning()
    results: dict[str, list[Round]] = {name: [] for name, _ in SERVERS}
    with started(server_pin) as servers:
        for server in servers:
            check_redirect(server.port)
            wrk(server.port, 1, connections, client_pin, server.process.pid)  # warm-up
        for _ in range(rounds):
            for server in servers:
                pid = server.process.pid
                results[server.name].append(wrk(server.port, seconds, connections, client_pin, pid))
    return results


def report(results: dict[str, list[Round]], seconds: int, connections: int) -> None:
    server_pin, _ = pinning()
    where = "servers on core 0, wrk -t1 on core 1" if server_pin else "not pinned (one core)"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"peers, {where}, wrk -c{connections}, {len(next(iter(results.values())))} rounds of "
        f"{seconds}s each, medians; cpu = all the server's processes (load average {load}):"
    )
    print(f"{'server':<30}{'requests/s':>12}{'p99 ms':>9}{'cpu us/req':>12}")
    medians: dict[str, Round] = {}
    for name, rounds in results.items():
        medians[name] = Round(
            statistics.median(r.requests_per_s for r in rounds),
            statistics.median(r.p99_ms for r in rounds),
            statistics.median(r.cpu_us for r in rounds),
        )
        m = medians[name]
        print(f"{name:<30}{m.requests_per_s:>12.0f}{m.p99_ms:>9.2f}{m.cpu_us:>12.1f}")
    for name, rounds in results.items():
        print(
            f"  {name}: " + ", ".join(f"{r.requests_per_s:.0f}/s {r.cpu_us:.1f}us" for r in rounds)
        )
    names = [name for name, _ in SERVERS]
    plain = medians[names[1]].cpu_us / medians[names[0]].cpu_us
    rules = medians[names[3]].cpu_us / medians[names[2]].cpu_us
    split = medians[names[4]].cpu_us / medians[names[1]].cpu_us
    print(
        f"serve (control + 1 worker) / the in-process dispatcher, cpu per request: "
        f"{split:.2f}x (target <= 1.05x)"
    )
    print(
        f"dispatcher / nginx, cpu per request: {plain:.2f}x (target <= 1.5x); "
        f"dispatcher + rules / Apache + rules: {rules:.2f}x (target <= 0.7x; "
        f"{1 / rules:.2f}x Apache's rate per core)"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="length of one wrk round")
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("bench: wrk is missing (make bench installs it: apt-get install wrk)")
    results = measure(args.seconds, args.rounds, args.connections)
    report(results, args.seconds, args.connections)


if __name__ == "__main__":
    main()
