"""Rate-limited warnings: the pure throttle (hypothesis, an injected clock), the session
core and the relay behind it, and a flood of bogus hand-off tokens against a real dispatcher
that writes one line, not one per request."""

from __future__ import annotations

import itertools
import logging
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.relay import HandoffRelay
from dispatcher.session import HandoffToken
from dispatcher.session.core import RequestInfo, SessionCore, SessionSettings
from dispatcher.throttle import OVERFLOW, Pass, Throttle, ThrottledLog, ThrottleFilter
from tests.conftest import LoopbackSite, RunningDispatcher, farm_toml

KEY = "k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the throttle (pure) -------------------------------------------------------------------


def test_one_pass_per_interval_then_the_count() -> None:
    clock = Clock()
    throttle = Throttle(10.0, clock=clock)
    assert throttle.hit("a") == Pass(0, 0.0)
    for _ in range(2341):
        clock.now += 0.001
        assert throttle.hit("a") is None
    assert throttle.hit("b") == Pass(0, 0.0)  # another cause has its own window
    clock.now = 1010.0
    assert throttle.hit("a") == Pass(2341, 10.0)
    assert throttle.hit("a") is None
    clock.now = 1030.0
    assert throttle.hit("a") == Pass(1, 20.0)


EVENTS = st.lists(
    st.tuples(st.sampled_from("abc"), st.floats(min_value=0, max_value=7)), max_size=200
)


@given(events=EVENTS, interval=st.floats(min_value=0.5, max_value=20))
def test_lines_are_an_interval_apart_and_every_event_is_counted_once(
    events: list[tuple[str, float]], interval: float
) -> None:
    clock = Clock()
    throttle = Throttle(interval, clock=clock)
    passed: defaultdict[str, list[float]] = defaultdict(list)
    reported: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for cause, step in events:
        clock.now += step
        total[cause] += 1
        result = throttle.hit(cause)
        if result is not None:
            if passed[cause]:
                assert result.elapsed == clock.now - passed[cause][-1]
            else:
                assert result == Pass(0, 0.0)  # the first of a cause is always written
            passed[cause].append(clock.now)
            reported[cause] += 1 + result.suppressed
    for cause, times in passed.items():
        assert all(b - a >= interval for a, b in itertools.pairwise(times))
        pending = throttle._windows[cause].suppressed
        assert reported[cause] + pending == total[cause]


def test_causes_are_bounded() -> None:
    clock = Clock()
    throttle = Throttle(10.0, clock=clock, max_causes=3)
    assert [throttle.hit(c) for c in "abc"] == [Pass(0, 0.0)] * 3
    assert throttle.hit("d") == Pass(0, 0.0)  # the overflow cause's first line
    assert throttle.hit("e") is None  # shares it
    assert set(throttle._windows) == {"a", "b", "c", OVERFLOW}
    clock.now += 10
    assert throttle.hit("f") == Pass(0, 0.0)  # expired windows with nothing pending go
    assert "f" in throttle._windows


def test_the_interval_must_be_positive() -> None:
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="interval"):
            Throttle(bad)


def test_the_log_line_carries_the_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = ThrottledLog(logging.getLogger("webfarm.test"), Throttle(10.0, clock=clock))
    with caplog.at_level(logging.WARNING, logger="webfarm.test"):
        assert log.report("x", "bad thing: %s", "first")
        assert not any(log.report("x", "bad thing: %s", "again") for _ in range(2340))
        clock.now += 10
        assert log.report("x", "bad thing: %s", "later")
    assert [r.getMessage() for r in caplog.records] == [
        "bad thing: first",
        "bad thing: later (and 2,340 more like it in the last 10 s)",
    ]


def test_a_library_s_warnings_are_throttled_by_their_template(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    logger = logging.getLogger("webfarm.test.library")
    logger.addFilter(ThrottleFilter(Throttle(10.0, clock=clock)))
    with caplog.at_level(logging.INFO, logger="webfarm.test.library"):
        for _ in range(3078):
            logger.warning("Invalid HTTP request received.")
        logger.warning("Unsupported upgrade request: %s", "h2c")
        logger.info("Started server process [%d]", 1)  # below WARNING: never held back
        logger.info("Started server process [%d]", 2)
        clock.now += 10
        logger.warning("Invalid HTTP request received.")
    assert [r.getMessage() for r in caplog.records] == [
        "Invalid HTTP request received.",
        "Unsupported upgrade request: h2c",
        "Started server process [1]",
        "Started server process [2]",
        "Invalid HTTP request received. (and 3,077 more like it in the last 10 s)",
    ]


# --- behind the throttle: the session core and the relay -----------------------------------


def test_bad_cookies_and_tokens_at_a_site_write_one_line_per_cause(
    caplog: pytest.LogCaptureFixture,
) -> None:
    core = SessionCore(SessionSettings(secret_keys=KEY, site="eu"))
    bogus = RequestInfo("GET", "http", "eu", "/", "farm_handoff=forged", "farm_session=forged")
    with caplog.at_level(logging.WARNING, logger="webfarm.session"):
        for _ in range(1000):
            core.begin(bogus)
            core.load(bogus)
    assert core.stats["handoff_rejected"] == 1000
    assert core.stats["bad_cookie"] == 1000
    messages = sorted(r.getMessage() for r in caplog.records)
    assert len(messages) == 2, messages
    assert messages[0].startswith("ignoring bad session cookie")
    assert messages[1].startswith("rejecting hand-off token")


def test_the_relay_writes_one_line_per_cause(caplog: pytest.LogCaptureFixture) -> None:
    relay = HandoffRelay(HandoffToken(KEY), name="dispatcher")
    with caplog.at_level(logging.WARNING, logger="webfarm.dispatcher"):
        for i in range(1000):
            assert relay.forward(f"forged-{i}", "eu") is None
    assert relay.stats["dropped"] == 1000
    [record] = caplog.records
    assert record.getMessage().startswith("hand-off token dropped (")


# --- a flood against a real dispatcher -----------------------------------------------------


@pytest.fixture
async def farm(sites: dict[str, LoopbackSite], tmp_path: Path) -> AsyncIterator[RunningDispatcher]:
    path = tmp_path / "farm.toml"
    text = farm_toml(
        {"eu": (sites["eu"], 1)},
        database_url=f"sqlite:///{tmp_path / 'farm.db'}",
        extra=f'secret_keys = ["{KEY}"]',
    )
    path.write_text(text, encoding="utf-8")
    running = RunningDispatcher(await RunningDispatcher.start_runner(path))
    try:
        yield running
    finally:
        await running.close()


@pytest.mark.anyio
async def test_a_flood_of_bogus_handoff_tokens_writes_one_warning(
    farm: RunningDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="webfarm")
    statuses: Counter[int] = Counter()
    for i in range(300):
        response = await farm.public.get(f"/?farm_handoff=bogus{i}")
        statuses[response.status_code] += 1
    assert statuses == Counter({302: 300})
    assert farm.runner.core is not None
    assert farm.runner.core.relay is not None
    assert farm.runner.core.relay.stats["dropped"] == 300
    dropped = [r for r in caplog.records if "hand-off token dropped" in r.getMessage()]
    assert len(dropped) == 1
