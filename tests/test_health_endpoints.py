"""/livez and /readyz on a real admin listener, without a token, and request ids on every
admin answer and in its log line (the dispatcher in this process, then with real worker
processes)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from dispatcher.logsetup import JsonFormatter
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml

pytestmark = pytest.mark.anyio


async def running(
    tmp_path: Path, sites: dict[str, LoopbackSite], extra: str = "", *, workers: bool = False
) -> RunningDispatcher:
    config_file = tmp_path / "farm.toml"
    config_file.write_text(
        farm_toml(
            {"eu": (sites["eu"], 1)},
            database_url=f"sqlite:///{tmp_path / 'farm.db'}",
            extra=extra,
        )
    )
    runner = await RunningDispatcher.start_runner(config_file, worker_processes=workers)
    return RunningDispatcher(runner)


@pytest.fixture
async def farm(tmp_path: Path, sites: dict[str, LoopbackSite]) -> AsyncIterator[RunningDispatcher]:
    farm = await running(tmp_path, sites)
    try:
        yield farm
    finally:
        await farm.close()


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """The admin access log as JSON lines, as ``log_format = "json"`` writes them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("webfarm.admin.access")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)


def stranger(farm: RunningDispatcher) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=str(farm.admin.base_url), trust_env=False)


async def test_livez_and_readyz_answer_without_a_token(farm: RunningDispatcher) -> None:
    async with stranger(farm) as client:
        live = await client.get("/livez")
        assert live.status_code == 200, live.text
        assert live.headers["content-type"] == "application/json"
        assert live.headers["cache-control"] == "no-store"
        control = {"ok": True, "detail": "running"}
        assert live.json() == {"status": "ok", "checks": {"control": control}}
        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text
        doc = ready.json()
        assert doc["status"] == "ok"
        assert set(doc["checks"]) == {"snapshot", "probes", "database", "listening"}
        assert 0 <= doc["snapshot_age"] < 5
        head = await client.head("/readyz")
        assert (head.status_code, head.content) == (200, b"")
        assert int(head.headers["content-length"]) > 0
        refused = await client.post("/livez")
        assert refused.status_code == 405
        assert refused.headers["allow"] == "GET, HEAD"
        assert refused.json()["error"]["code"] == "method_not_allowed"
        # everything else still wants a token
        assert (await client.get("/api/v1/status")).status_code == 401
        assert (await client.get("/livez/x")).status_code == 401


async def test_every_admin_answer_carries_a_request_id_that_its_log_line_has(
    farm: RunningDispatcher, access_lines: io.StringIO
) -> None:
    mine = await farm.admin.get("/api/v1/status", headers={"x-request-id": "lb-7f3a.42"})
    assert mine.headers["x-request-id"] == "lb-7f3a.42"
    forged = await farm.admin.get("/api/v1/sites", headers={"x-request-id": "a b\tc"})
    made = forged.headers["x-request-id"]
    assert made != "a b\tc"
    assert len(made) == 32
    async with stranger(farm) as client:
        refused = await client.get("/api/v1/sites")
    assert refused.status_code == 401
    assert len(refused.headers["x-request-id"]) == 32
    assert (await farm.admin.get("/livez")).headers["x-request-id"]
    await asyncio.sleep(0.05)
    lines = [json.loads(line) for line in access_lines.getvalue().splitlines()]
    by_id = {line["request_id"]: line["message"] for line in lines}
    assert '"GET /api/v1/status" 200' in by_id["lb-7f3a.42"]
    assert '"GET /api/v1/sites" 200' in by_id[made]
    assert not any("/livez" in line["message"] for line in lines)  # checks are not logged


async def test_livez_fails_while_a_worker_process_is_down(
    tmp_path: Path, sites: dict[str, LoopbackSite]
) -> None:
    farm = await running(tmp_path, sites, "workers = 2\ngraceful_timeout = 1.0", workers=True)
    try:
        async with stranger(farm) as client:
            live = await client.get("/livez")
            assert live.status_code == 200, live.text
            assert live.json()["checks"]["workers"]["detail"] == "2 worker(s) running"
            assert (await client.get("/readyz")).status_code == 200
            assert farm.runner.workers is not None
            victim = farm.runner.workers.views()[1].pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while (live := await client.get("/livez")).status_code == 200:
                assert time.monotonic() < deadline, "a dead worker was never noticed"
                await asyncio.sleep(0.02)
            assert live.status_code == 503
            assert "worker 1" in live.json()["checks"]["workers"]["detail"]
            deadline = time.monotonic() + 30
            while (live := await client.get("/livez")).status_code != 200:
                assert time.monotonic() < deadline, live.text
                await asyncio.sleep(0.1)
    finally:
        await farm.close()
