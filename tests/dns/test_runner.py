"""The DNS front in the one-process runner: served from the farm's snapshot, changed by a
reload (but for its listen addresses, which need a restart), stopped with the runner."""

from __future__ import annotations

from pathlib import Path

import dns.asyncquery
import dns.message
import pytest

from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml
from tests.dns.helpers import dns_toml

pytestmark = pytest.mark.anyio


async def test_served_reloaded_and_stopped(sites: dict[str, LoopbackSite], tmp_path: Path) -> None:
    config_file = tmp_path / "farm.toml"
    base = farm_toml({"eu": (sites["eu"], 1)}, database_url=f"sqlite:///{tmp_path / 'farm.db'}")
    config_file.write_text(base + dns_toml(ttl=20))
    running = RunningDispatcher(await RunningDispatcher.start_runner(config_file))
    try:
        (port,) = running.runner.dns_ports
        query = dns.message.make_query("www.farm.example.", "A")
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)
        assert answer.answer[0].ttl == 20
        assert [r.to_text() for r in answer.answer[0]] == ["127.0.0.1"]
        changed = base + dns_toml(ttl=40, listen="127.0.0.1:1")
        config_file.write_text(changed)
        assert await running.runner.reload()
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)
        assert answer.answer[0].ttl == 40  # the new TTL, on the running listener
        assert running.runner.dns_ports == [port]
        assert running.runner.config.dns is not None
        assert running.runner.config.dns.listen == ("127.0.0.1:0",)
        status = (await running.admin.get("/api/v1/status")).json()
        assert status["dns"]["udp"] == 2
        assert status["dns"]["noerror"] == 2
    finally:
        await running.close()
    with pytest.raises(dns.exception.Timeout):
        await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=0.3)
