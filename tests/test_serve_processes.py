"""``farm-dispatcher serve`` as it runs in production: a control process and real worker
processes, real signals, real load (``wrk``) against the public port, loopback sites."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from dispatcher.backends.store import SqlSiteStore
from tests.conftest import ADMIN_TOKEN, FARM_DISPATCHER, LoopbackSite, farm_toml, skip_or_fail
from tests.farmnode.pgcluster import _pids, _ppid, pg_lab, process_alive, unavailable

pytestmark = pytest.mark.anyio

READY = re.compile(r"dispatching on .*: public port (\d+), admin port (\d+)")


class Serve:
    """A ``farm-dispatcher serve`` process; its output is collected as it comes."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.proc = subprocess.Popen(
            [FARM_DISPATCHER, "serve", "-c", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.public = self.admin = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (found := READY.search(self.output)) is None:
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            await asyncio.sleep(0.05)
        self.public, self.admin = int(found[1]), int(found[2])

    def workers(self) -> set[int]:
        """The pids of the worker processes (this process's children)."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return {int(c) for c in children}

    def listening(self) -> int:
        """How many sockets listen on the public port (one per serving worker)."""
        count = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{self.public:04X}") and fields[3] == "0A":
                count += 1
        return count

    async def wait_for(self, text: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"{text!r} not in:\n{self.output}"
            await asyncio.sleep(0.05)

    async def stop(self) -> float:
        """SIGTERM; the seconds it took to exit."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.proc.wait, 30)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Kill it if it still runs; release the pipe."""
        self.kill()
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass(frozen=True)
class WrkResult:
    requests: int
    socket_errors: int
    not_2xx_3xx: int
    text: str


WRK = shutil.which("wrk")


async def wrk(url: str, *, connections: int, seconds: int, threads: int = 1) -> WrkResult:
    """Run ``wrk`` (bounded: ``seconds`` plus a margin) and read its summary."""
    if WRK is None:
        skip_or_fail("wrk is not installed (./.ci/system-deps)")
        raise AssertionError  # not reached
    proc = await asyncio.create_subprocess_exec(
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout=5s",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), seconds + 20)
    text = out.decode()
    requests = re.search(r"(\d+) requests in", text)
    assert requests is not None, text
    errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    socket_errors = sum(int(n) for n in errors.groups()) if errors else 0
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(int(requests[1]), socket_errors, int(bad[1]) if bad else 0, text)


@pytest.fixture
async def two_sites() -> AsyncIterator[dict[str, LoopbackSite]]:
    started = {name: LoopbackSite(name) for name in ("eu", "us")}
    for site in started.values():
        await site.start()
    try:
        yield started
    finally:
        for site in started.values():
            await site.stop()


def write_config(
    tmp_path: Path, sites: dict[str, LoopbackSite], extra: str = "", check: str | None = None
) -> Path:
    config = tmp_path / "farm.toml"
    kwargs = {} if check is None else {"check": check}
    config.write_text(
        farm_toml(
            {name: (site, 1) for name, site in sites.items()},
            database_url="sqlite:///farm.db",
            extra=f"workers = 2\ngraceful_timeout = 1.0\n{extra}",
            **kwargs,
        )
    )
    upgrade(f"sqlite:///{tmp_path / 'farm.db'}")
    return config


def upgrade(url: str) -> None:
    store = SqlSiteStore(url)
    store.upgrade()
    store.close()


async def get(port: int, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}")


@pytest.fixture
async def serve(
    tmp_path: Path, two_sites: dict[str, LoopbackSite]
) -> AsyncIterator[tuple[Serve, Path]]:
    # lenient checks: these tests are about processes, not health verdicts on a busy machine
    check = "interval = 0.5, timeout = 2.0, rise = 1, fall = 3"
    config = await asyncio.to_thread(write_config, tmp_path, two_sites, check=check)
    running = Serve(config)
    try:
        await running.ready()
        yield running, config
    finally:
        running.close()


async def test_a_worker_killed_under_load_is_replaced_and_none_outlives_the_control_process(
    serve: tuple[Serve, Path],
) -> None:
    running, _ = serve
    workers = running.workers()
    assert len(workers) == 2
    assert running.listening() == 2
    assert {niceness(pid) for pid in workers} == {niceness(running.proc.pid) + 10}
    load = asyncio.ensure_future(
        wrk(f"http://127.0.0.1:{running.public}/x", connections=20, seconds=3)
    )
    await asyncio.sleep(1.0)
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    while process_alive(victim):  # until its sockets are closed (a connection that raced
        await asyncio.sleep(0.001)  # into its queue before that was in flight on it)
    answers = [await get(running.public, f"/after{i}") for i in range(10)]
    assert {a.status_code for a in answers} == {302}  # the other worker answers at once
    while running.listening() < 2 or len(running.workers() - {victim}) < 2:
        assert time.monotonic() - killed < 15, running.output
        await asyncio.sleep(0.02)
    back = time.monotonic() - killed
    result = await load
    print(f"worker killed with SIGKILL: a new one listening after {back:.2f} s; {result.text}")
    assert f"(pid {victim}) is gone (killed by SIGKILL)" in running.output
    assert result.not_2xx_3xx == 0, result.text + running.output
    assert result.socket_errors <= 20, result.text  # at most what was in flight on the victim
    assert result.requests > 1000, result.text
    workers = running.workers()
    assert len(workers) == 2
    running.kill()  # the control process, outright: its workers must not outlive it
    deadline = time.monotonic() + 5
    while any(process_alive(pid) for pid in workers):
        assert time.monotonic() < deadline, "worker processes outlived the control process"
        await asyncio.sleep(0.05)


async def test_sighup_under_load_fails_no_request_then_sigterm_stops_within_the_bound(
    serve: tuple[Serve, Path],
) -> None:
    running, config = serve
    good = config.read_text()
    load = asyncio.ensure_future(
        wrk(f"http://127.0.0.1:{running.public}/x", connections=20, seconds=3)
    )
    await asyncio.sleep(1)
    config.write_text(good + "\n[dispatcher\n")  # broken: refused, nothing changes
    running.proc.send_signal(signal.SIGHUP)
    await running.wait_for("refused, the running configuration stays")
    assert re.search(r"ERROR +webfarm.server: reload of .* refused", running.output)
    changed = good.replace(
        "registry_refresh = 0.2", "registry_refresh = 0.2\nredirect_status = 307"
    )
    config.write_text(changed.replace("workers = 2", "workers = 3"))
    running.proc.send_signal(signal.SIGHUP)
    await running.wait_for("reloaded ")
    result = await load
    assert result.socket_errors == 0, result.text
    assert result.not_2xx_3xx == 0, result.text + running.output
    assert running.proc.poll() is None
    assert "needs a restart (running values kept): dispatcher.workers" in running.output
    await asyncio.sleep(0.1)
    answers = [await get(running.public, f"/p{i}") for i in range(20)]
    assert {a.status_code for a in answers} == {307}
    workers = running.workers()
    assert len(workers) == 2
    took = await running.stop()
    print(f"SIGTERM: stopped in {took:.2f} s")
    assert running.proc.returncode == 0, running.output
    assert took < 1.0 + 5.0  # graceful_timeout + 5 s
    assert "Traceback" not in running.output
    assert not any(process_alive(pid) for pid in workers)


async def test_overload_never_marks_a_healthy_site_down(
    tmp_path: Path, two_sites: dict[str, LoopbackSite]
) -> None:
    config = await asyncio.to_thread(
        write_config,
        tmp_path,
        two_sites,
        check="interval = 0.5, timeout = 0.3, rise = 2, fall = 2",
    )
    running = Serve(config)
    try:
        await running.ready()
        load = asyncio.ensure_future(
            wrk(f"http://127.0.0.1:{running.public}/x", connections=1000, seconds=12, threads=2)
        )
        seen: list[dict[str, str]] = []
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        async with httpx.AsyncClient(trust_env=False, timeout=5, headers=auth) as admin:
            while not load.done():
                status = (await admin.get(f"http://127.0.0.1:{running.admin}/api/v1/status")).json()
                seen.append({s["name"]: s["health"] for s in status["sites"]})
                await asyncio.sleep(0.5)
        result = await load
        answers = result.requests
        redirects = answers - result.not_2xx_3xx
        print(f"overload: {len(seen)} status polls; {result.text}")
        assert len(seen) >= 20
        assert all(set(health.values()) == {"up"} for health in seen), seen
        assert " is down" not in running.output
        assert "hung, replacing it" not in running.output
        assert redirects >= 0.99 * (answers + result.socket_errors), result.text
    finally:
        running.close()


def niceness(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2 :].split()[16])


def cluster_pids(postmaster: int) -> list[int]:
    """The postmaster and every process it started."""
    return [postmaster, *(pid for pid in _pids() if _ppid(pid) == postmaster)]


async def test_sigterm_stops_within_the_bound_while_the_database_hangs(
    tmp_path: Path, two_sites: dict[str, LoopbackSite]
) -> None:
    reason = unavailable()
    if reason is not None:
        skip_or_fail(reason)
    with pg_lab() as lab:
        node = await asyncio.to_thread(lab.initdb, "hang")
        await asyncio.to_thread(node.start)
        url = f"postgresql://postgres@127.0.0.1:{node.port}/postgres"
        config = tmp_path / "farm.toml"
        config.write_text(
            farm_toml(
                {name: (site, 1) for name, site in two_sites.items()},
                database_url=url,
                extra="workers = 2\ngraceful_timeout = 1.0",
            )
        )
        await asyncio.to_thread(upgrade, url)
        running = Serve(config)
        postmaster = node.postmaster_pid()
        assert postmaster is not None
        stopped: list[int] = []
        try:
            await running.ready()
            stopped = cluster_pids(postmaster)
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            await asyncio.sleep(1.0)  # the registry refresher is now stuck in a query
            answer = await get(running.public, "/during")
            assert answer.status_code == 302  # the workers never touch the database
            took = await running.stop()
            print(f"stop with a hung database: {took:.2f} s; exit {running.proc.returncode}")
            assert took < 1.0 + 5.0, running.output
            assert "(a hung database?): exiting now" in running.output
            assert "Traceback" not in running.output
        finally:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            running.close()
