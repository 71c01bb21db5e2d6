"""The shipped systemd units, and both daemons as systemd runs them: ``Type=notify`` over a
real ``$NOTIFY_SOCKET`` (READY only once the listeners accept, RELOADING/READY around a
SIGHUP, STOPPING on SIGTERM), with ``log_format = "json"`` on every line they write."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, FARM_DISPATCHER, LoopbackSite, farm_toml, skip_or_fail
from tests.farmnode.test_daemon import FARMNODE, id_servers, node_text, service_toml
from tests.ports import free_port

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "contrib" / "systemd"
BIN = Path(sys.executable).parent
WAIT = 60.0  # worker processes take seconds to start on a busy machine
LINE_KEYS = {"time", "level", "logger", "message", "pid"}


# --- the unit files -----------------------------------------------------------------------


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        skip_or_fail("systemd-analyze is not installed (Debian's systemd package)")
    assert found is not None
    return found


def installed_copy(unit: str, tmp_path: Path) -> Path:
    """The unit with ExecStart/ExecReload pointing at this environment's entry points
    (``verify`` checks that each command exists and is executable)."""
    text = (UNITS / unit).read_text(encoding="utf-8").replace("/opt/webfarm/bin/", f"{BIN}/")
    path = tmp_path / unit
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("unit", ["farm-dispatcher.service", "farmnode.service"])
def test_the_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = systemd_analyze()
    path = installed_copy(unit, tmp_path)
    done = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    # unknown keys and system call groups are only warnings: none may be printed
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    text = path.read_text(encoding="utf-8")
    for needed in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes"):
        assert needed in text


@pytest.mark.parametrize(
    ("unit", "threshold"), [("farm-dispatcher.service", 20), ("farmnode.service", 40)]
)
def test_the_units_are_hardened(unit: str, threshold: int, tmp_path: Path) -> None:
    """``systemd-analyze security``'s exposure (0 best, 10 worst) stays below a bound:
    the dispatcher near 1.7, farmnode (root, network administration) near 3.8."""
    done = subprocess.run(
        [
            systemd_analyze(),
            "security",
            "--offline=true",
            f"--threshold={threshold}",
            str(installed_copy(unit, tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- sd_notify, for real ----------------------------------------------------------------


class NotifySocket:
    """A unix datagram socket as systemd binds it; the messages received, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    async def next(self, timeout: float = WAIT) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            data = await loop.sock_recv(self.sock, 4096)
        message = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.messages.append(message)
        return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def start(argv: list[str], notify: NotifySocket, tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "FARMNODE_"))}
    env["NOTIFY_SOCKET"] = str(notify.path)
    with (tmp_path / "stderr.log").open("wb") as stderr:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def json_lines(tmp_path: Path) -> list[dict[str, Any]]:
    """Every line the daemon wrote, each one JSON object with the documented keys."""
    lines = []
    for raw in (tmp_path / "stderr.log").read_text(encoding="utf-8").splitlines():
        line = json.loads(raw)  # a line that is not JSON fails here
        assert isinstance(line, dict), raw
        assert line.keys() >= LINE_KEYS, raw
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), raw
        lines.append(line)
    return lines


async def stop(proc: subprocess.Popen[bytes], notify: NotifySocket) -> None:
    proc.send_signal(signal.SIGTERM)
    assert (await notify.next(10.0)).get("STOPPING") == "1"
    deadline = time.monotonic() + 30
    while proc.poll() is None:
        assert time.monotonic() < deadline, "did not stop"
        await asyncio.sleep(0.05)
    assert proc.returncode == 0


def garbage(port: int) -> None:
    """A request uvicorn refuses (and logs on uvicorn.error)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(b"NOT HTTP\r\n\r\n")
        conn.recv(100)


async def test_the_dispatcher_notifies_systemd_and_logs_json(
    tmp_path: Path, sites: dict[str, LoopbackSite], notify: NotifySocket
) -> None:
    config = tmp_path / "farm.toml"
    text = farm_toml(
        {"eu": (sites["eu"], 1)},
        database_url=f"sqlite:///{tmp_path / 'farm.db'}",
        extra='workers = 2\ngraceful_timeout = 1.0\nlog_format = "json"',
    )
    config.write_text(text, encoding="utf-8")
    subprocess.run([FARM_DISPATCHER, "db", "upgrade", "-c", str(config)], check=True, timeout=60)
    proc = start([FARM_DISPATCHER, "serve", "-c", str(config)], notify, tmp_path)
    try:
        ready = await notify.next()
        assert ready["READY"] == "1", ready
        # ready means the listeners accept now: the admin one and every worker process
        found = re.search(r"public port (\d+), admin port (\d+)", ready["STATUS"])
        assert found is not None, ready
        public, admin = f"http://127.0.0.1:{found[1]}", f"http://127.0.0.1:{found[2]}"
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            assert (await client.get(f"{admin}/readyz")).status_code == 200
            live = (await client.get(f"{admin}/livez")).json()
            assert live["checks"]["workers"] == {"ok": True, "detail": "2 worker(s) running"}
            assert (await client.get(f"{public}/")).status_code == 302
            asked = await client.get(
                f"{admin}/api/v1/status",
                headers={"authorization": f"Bearer {ADMIN_TOKEN}", "x-request-id": "op-42"},
            )
            assert asked.headers["x-request-id"] == "op-42"
            await asyncio.to_thread(garbage, int(found[2]))

            config.write_text(text.replace("registry_refresh = 0.2", "registry_refresh = 0.3"))
            proc.send_signal(signal.SIGHUP)
            reloading = await notify.next(10.0)
            assert reloading["RELOADING"] == "1"
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            assert 0 <= now - int(reloading["MONOTONIC_USEC"]) < 10_000_000
            again = await notify.next(10.0)
            assert (again["READY"], again["STATUS"]) == ("1", "reloaded")
            assert (await client.get(f"{admin}/readyz")).status_code == 200
        await stop(proc, notify)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = json_lines(tmp_path)
    loggers = {line["logger"] for line in lines}
    assert {"webfarm.server", "webfarm.control", "webfarm.worker", "uvicorn.error"} <= loggers
    workers = {line.get("worker") for line in lines if line["logger"] == "webfarm.worker"}
    assert workers == {0, 1}
    access = [line for line in lines if line.get("request_id") == "op-42"]
    assert [line["logger"] for line in access] == ["webfarm.admin.access"]
    assert any("reloaded" in line["message"] for line in lines)


CLUSTER = """
[cluster]
name = "units"
key = "units-test-cluster-key-0123456789abcdef"
interval = 0.2
deadtime = 1.0
initdead = 1.0
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:{port}"

[[groups]]
name = "front"
[[groups.resources]]
agent = "switch"
name = "web"
service = "web"
"""


async def test_farmnode_notifies_systemd_and_logs_json(
    tmp_path: Path, notify: NotifySocket
) -> None:
    """A node with a single-node [cluster] whose group opens service ``web`` and a plain
    service ``api``: ready, live and ready with its cluster conditions; a reload that adds
    a service it cannot open makes it not ready (and says why); SIGTERM."""
    async with id_servers("a") as (a,):
        path = tmp_path / "node.toml"
        services = service_toml("web", free_port(), [a]) + service_toml("api", free_port(), [a])
        text = node_text(services, status_listen="127.0.0.1:0")
        text = text.replace('name = "n1"', 'name = "n1"\nlog_format = "json"', 1)
        text += CLUSTER.format(port=free_port())
        path.write_text(text, encoding="utf-8")
        proc = start([FARMNODE, "serve", "--config", str(path)], notify, tmp_path)
        try:
            ready = await notify.next()
            assert ready["READY"] == "1", ready
            assert ready["STATUS"].startswith("running: 2 service(s)"), ready
            found = re.search(r"status on (http://\S+)/status", ready["STATUS"])
            assert found is not None, ready
            base = found[1]
            async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
                live = await client.get(f"{base}/livez")
                assert live.status_code == 200, live.text
                assert set(live.json()["checks"]) == {"node", "cluster"}
                deadline = time.monotonic() + 15
                while (readyz := await client.get(f"{base}/readyz")).status_code != 200:
                    assert time.monotonic() < deadline, readyz.text
                    await asyncio.sleep(0.1)
                checks = readyz.json()["checks"]
                assert set(checks) == {"started", "services", "cluster", "quorum"}
                assert checks["quorum"] == {"ok": True, "detail": "quorate"}
                await asyncio.to_thread(garbage, int(base.rsplit(":", 1)[1]))

                with socket.socket() as taken:  # a port the new service cannot have
                    taken.bind(("127.0.0.1", 0))
                    taken.listen(1)
                    busy = service_toml("busy", taken.getsockname()[1], [a])
                    path.write_text(text.replace("[cluster]", busy + "\n[cluster]", 1))
                    proc.send_signal(signal.SIGHUP)
                    assert (await notify.next(10.0))["RELOADING"] == "1"
                    again = await notify.next(10.0)
                    assert again["READY"] == "1"
                    assert "failed to start: busy" in again["STATUS"], again
                    readyz = await client.get(f"{base}/readyz")
                    assert readyz.status_code == 503
                    assert readyz.json()["checks"]["services"] == {
                        "ok": False,
                        "detail": "not running: busy",
                    }
                    assert (await client.get(f"{base}/livez")).status_code == 200
            await stop(proc, notify)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = json_lines(tmp_path)
    loggers = {line["logger"] for line in lines}
    assert {"webfarm.farmnode", "uvicorn.error"} <= loggers
    assert any("failed to start: busy" in line["message"] for line in lines)
