"""Health checks: the hysteresis core (pure) and the HTTP probe against real loopback servers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.backends.health import Hysteresis, probe_http
from tests.conftest import LoopbackSite


def test_first_result_decides_the_initial_state() -> None:
    up, down = Hysteresis(rise=3, fall=3), Hysteresis(rise=3, fall=3)
    assert up.observe(True)
    assert up.state == "up"
    assert down.observe(False)
    assert down.state == "down"


def test_fall_consecutive_failures_take_it_down() -> None:
    h = Hysteresis(rise=2, fall=3)
    h.observe(True)
    assert [h.observe(False), h.observe(False)] == [False, False]
    assert h.state == "up"
    assert h.observe(False)
    assert str(h.state) == "down"


def test_a_success_resets_the_failure_run() -> None:
    h = Hysteresis(rise=2, fall=2)
    h.observe(True)
    for ok in (False, True, False, True, False):
        h.observe(ok)
    assert h.state == "up"


def test_rise_consecutive_successes_bring_it_back() -> None:
    h = Hysteresis(rise=2, fall=1)
    h.observe(False)
    assert not h.observe(True)
    assert h.observe(True)
    assert h.state == "up"


def test_rise_and_fall_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rise and fall"):
        Hysteresis(0, 1)


@given(st.integers(1, 5), st.integers(1, 5), st.lists(st.booleans(), min_size=1, max_size=60))
def test_state_moves_only_after_a_full_run(rise: int, fall: int, results: list[bool]) -> None:
    h = Hysteresis(rise, fall)
    run_ok = run_fail = 0
    for i, ok in enumerate(results):
        run_ok, run_fail = (run_ok + 1, 0) if ok else (0, run_fail + 1)
        before = h.state
        changed = h.observe(ok)
        assert changed == (h.state != before)
        if i == 0:
            assert h.state == ("up" if ok else "down")
        elif changed:
            assert (h.state == "up" and run_ok >= rise) or (h.state == "down" and run_fail >= fall)
        else:
            assert not (before == "down" and run_ok >= rise)
            assert not (before == "up" and run_fail >= fall)


# --- the probe, for real on loopback ---


@pytest.fixture
async def site() -> AsyncIterator[LoopbackSite]:
    s = LoopbackSite("probe")
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as c:
        yield c


@pytest.mark.anyio
async def test_probe_succeeds_on_2xx_with_the_expected_string(
    site: LoopbackSite, client: httpx.AsyncClient
) -> None:
    result = await probe_http(client, f"{site.url}/health", "OK", timeout=2)
    assert result.ok
    assert result.detail == "HTTP 200"
    assert 0 <= result.duration < 2


@pytest.mark.anyio
async def test_probe_fails_when_the_body_lacks_the_string(
    site: LoopbackSite, client: httpx.AsyncClient
) -> None:
    site.app.health_body = b"maintenance"
    result = await probe_http(client, f"{site.url}/health", "OK", timeout=2)
    assert not result.ok
    assert "body lacks 'OK'" in result.detail


@pytest.mark.anyio
async def test_probe_fails_on_a_non_2xx_status(
    site: LoopbackSite, client: httpx.AsyncClient
) -> None:
    site.app.health_status = 503
    result = await probe_http(client, f"{site.url}/health", "OK", timeout=2)
    assert (result.ok, result.detail) == (False, "HTTP 503")


@pytest.mark.anyio
async def test_probe_times_out(site: LoopbackSite, client: httpx.AsyncClient) -> None:
    site.app.health_delay = 1.0
    result = await probe_http(client, f"{site.url}/health", "OK", timeout=0.2)
    assert not result.ok
    assert result.detail == "no answer within 0.2s"
    assert result.duration < 0.9


@pytest.mark.anyio
async def test_probe_reports_a_refused_connection(client: httpx.AsyncClient) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = await probe_http(client, f"http://127.0.0.1:{port}/health", "OK", timeout=2)
    assert not result.ok
    assert "ConnectError" in result.detail
