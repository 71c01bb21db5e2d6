"""Health checks: the hysteresis core (pure) and the HTTP probe against real loopback servers."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.backends.health import (
    Health,
    Hysteresis,
    Prober,
    ProbeResult,
    Target,
    own_lateness,
    trustworthy,
)
from tests.conftest import Fetch, LoopbackSite
from tests.ports import free_port


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


@pytest.mark.anyio
async def test_probe_succeeds_on_2xx_with_the_expected_string(
    site: LoopbackSite, fetch: Fetch
) -> None:
    result = await fetch(f"{site.url}/health", "OK", 2)
    assert result.ok
    assert result.detail == "HTTP 200"
    assert 0 <= result.duration < 2


@pytest.mark.anyio
async def test_probe_fails_when_the_body_lacks_the_string(site: LoopbackSite, fetch: Fetch) -> None:
    site.app.health_body = b"maintenance"
    result = await fetch(f"{site.url}/health", "OK", 2)
    assert not result.ok
    assert "body lacks 'OK'" in result.detail


@pytest.mark.anyio
async def test_probe_fails_on_a_non_2xx_status(site: LoopbackSite, fetch: Fetch) -> None:
    site.app.health_status = 503
    result = await fetch(f"{site.url}/health", "OK", 2)
    assert (result.ok, result.detail) == (False, "HTTP 503")


@pytest.mark.anyio
async def test_probe_times_out(site: LoopbackSite, fetch: Fetch) -> None:
    site.app.health_delay = 1.0
    result = await fetch(f"{site.url}/health", "OK", 0.2)
    assert not result.ok
    assert result.detail == "no answer within 0.2s"
    assert result.duration < 0.9


@pytest.mark.anyio
async def test_probe_reports_a_refused_connection(fetch: Fetch) -> None:
    port = free_port()  # a port nobody listens on
    result = await fetch(f"http://127.0.0.1:{port}/health", "OK", 2)
    assert not result.ok
    assert "ConnectError" in result.detail


# --- a trustworthy verdict: our own lateness is not the target's failure (pure) ----------


def result(*, ok: bool = False, duration: float = 0.3, timed_out: bool = True) -> ProbeResult:
    detail = "no answer within 0.3s" if timed_out else "HTTP 503"
    wall = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return ProbeResult(ok, detail, 0.0, wall, duration, timed_out=timed_out)


def test_lateness_is_the_later_of_waking_late_and_overrunning_the_deadline() -> None:
    on_time = result(duration=0.31)
    assert own_lateness(on_time, timeout=0.3, scheduled=10.0, started=10.0) == pytest.approx(0.01)
    assert own_lateness(on_time, timeout=0.3, scheduled=10.0, started=12.5) == 2.5
    blocked = result(duration=1.8)
    assert own_lateness(blocked, timeout=0.3, scheduled=10.0, started=10.2) == pytest.approx(1.5)
    early = result(duration=0.1, timed_out=False)  # an answer: no deadline to overrun
    assert own_lateness(early, timeout=0.3, scheduled=10.0, started=9.0) == 0.0


@pytest.mark.parametrize(
    ("probe", "lateness", "counted"),
    [
        (result(duration=0.31), 0.01, True),  # a plain timeout: the target's fault
        (result(duration=0.6), 0.3, True),  # late, but not beyond the timeout
        (result(duration=2.0), 1.7, False),  # the loop was blocked: our fault
        (result(duration=0.3), 5.0, False),  # the task woke up 5 s late
        (result(ok=True, duration=0.01, timed_out=False), 5.0, True),  # an answer is an answer
        (result(duration=0.01, timed_out=False), 5.0, True),  # so is an HTTP 503
    ],
)
def test_only_timeouts_while_we_were_late_are_not_counted(
    probe: ProbeResult, lateness: float, counted: bool
) -> None:
    assert trustworthy(probe, lateness, timeout=0.3) is counted


class TickingClock:
    """A monotonic clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 100.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class Canned:
    """A probe that answers what it is told, without a socket."""

    def __init__(self, *results: ProbeResult) -> None:
        self.results = list(results)
        self.calls = 0

    async def __call__(self, _target: Target) -> ProbeResult:
        self.calls += 1
        return self.results.pop(0) if self.results else result(ok=True, timed_out=False)


def target(key: str = "eu", *, url: str = "http://127.0.0.1:9/health") -> Target:
    return Target(key, url, "OK", interval=60, timeout=0.3, rise=1, fall=1)


async def wait_until(predicate: Callable[[], bool], limit: float = 3.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_late_timeout_is_not_fed_to_rise_fall_but_counted() -> None:
    heard: list[tuple[str, Health, bool]] = []
    canned = Canned(result(duration=2.0), result(duration=0.31))
    prober = Prober(lambda *args: heard.append(args), probes={"http": canned})
    try:
        await prober.sync([target()])  # the first probe: blocked for 2 s past a 0.3 s timeout
        assert (prober.health("eu").state, prober.health("eu").last) == ("unknown", None)
        assert (prober.late_results, heard) == (1, [])
        await prober.sync([])
        await prober.sync([target()])  # an ordinary timeout counts
        assert prober.health("eu").state == "down"
        assert prober.late_results == 1
        assert heard[-1][2] is True
    finally:
        await prober.close()


@pytest.mark.anyio
@pytest.mark.parametrize(("step", "late"), [(0.0, 0), (1.0, 1)])
async def test_a_probe_task_that_woke_up_late_does_not_count_its_timeout(
    step: float, late: int
) -> None:
    canned = Canned(result(duration=0.3))
    prober = Prober(lambda *_: None, probes={"http": canned}, clock=TickingClock(step))
    try:
        await prober.sync([target()], probe_new_now=False)  # its task probes at once
        await wait_until(lambda: canned.calls == 1)
        await asyncio.sleep(0.01)
        assert prober.late_results == late
        assert prober.health("eu").state == ("unknown" if late else "down")
    finally:
        await prober.close()


# --- and for real: a blocked event loop ------------------------------------------------------


@pytest.mark.anyio
async def test_a_blocked_loop_does_not_take_a_healthy_site_down(site: LoopbackSite) -> None:
    prober = Prober(lambda *_: None)
    site.app.health_delay = 0.1
    try:
        await prober.sync([target(url=f"{site.url}/health")])
        assert prober.health("eu").state == "up"
        await prober.sync([target("eu2", url=f"{site.url}/health")], probe_new_now=False)
        await asyncio.sleep(0.05)  # its probe is in flight, waiting for the site
        time.sleep(1.0)  # blocking the event loop is the point
        await wait_until(lambda: prober.late_results == 1)
        assert prober.health("eu2").state == "unknown"  # not counted: not "down"

        site.app.health_delay = 1.0  # now the site itself is slow: that counts
        await prober.sync([target("eu3", url=f"{site.url}/health")])
        assert prober.health("eu3").state == "down"
        assert prober.late_results == 1
    finally:
        await prober.close()
