"""tcp and agent probes: the agent-line parser (pure, property-tested) and real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.backends.health import (
    Health,
    Hysteresis,
    ProbeKind,
    Prober,
    Target,
    probe_agent,
    probe_tcp,
)
from dispatcher.backends.probes import (
    ADMIN_WORDS,
    HEALTH_WORDS,
    MAX_AGENT_LINE,
    MAX_AGENT_PERCENT,
    AgentReplyError,
    AgentReport,
    parse_agent_reply,
)
from tests.conftest import skip_or_fail
from tests.ports import free_port

# --- the agent's line, pure -------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"75%\n", AgentReport(weight_percent=75)),
        (b"up\n", AgentReport(health="up")),
        (b"UP 50%\r\n", AgentReport(health="up", weight_percent=50)),
        (b"drain\n", AgentReport(admin="drain")),
        (b"ready,100%\n", AgentReport(admin="ready", weight_percent=100)),
        (
            b"75%,maxconn:30,maint,down\n",
            AgentReport(health="down", admin="maint", weight_percent=75, maxconn=30),
        ),
        (b"down #disk full\n", AgentReport(health="down", description="disk full")),
        (b"down#disk\n", AgentReport(ignored=("down#disk",))),  # "#" must start a word
        (b"fail # \tdb gone  \n", AgentReport(health="fail", description="db gone")),
        (b"stopped\tmaint\n", AgentReport(health="stopped", admin="maint")),
        (b"25% 50%\n", AgentReport(weight_percent=50)),  # the last word of a kind wins
        (b"up down\n", AgentReport(health="down")),
        (b"000075%\n", AgentReport(weight_percent=75)),
        (b"0%\n", AgentReport(weight_percent=0)),
        (b"99999999999999999999%\n", AgentReport(weight_percent=MAX_AGENT_PERCENT)),
        (b"\n", AgentReport()),  # an answer that changes nothing
        (b"  ,\t \n", AgentReport()),
        (b"up\nignored second line\n", AgentReport(health="up")),
        (b"75 up\n", AgentReport(health="up", ignored=("75",))),  # HAProxy: weights need %
        (b"7%5 50%x up\n", AgentReport(health="up", ignored=("7%5", "50%x"))),
        (b"maxconn:x maxconn:12\n", AgentReport(maxconn=12, ignored=("maxconn:x",))),
        (b"up a#b\n", AgentReport(health="up", ignored=("a#b",))),  # '#' only starts a word
    ],
)
def test_agent_words(line: bytes, expected: AgentReport) -> None:
    assert parse_agent_reply(line) == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "no complete line"),
        (b"up", "no complete line"),
        (b"up\0down\n", "NUL byte"),
    ],
)
def test_unusable_replies_are_clear_failures(data: bytes, reason: str) -> None:
    with pytest.raises(AgentReplyError, match=reason):
        parse_agent_reply(data)


@given(st.binary(max_size=200))
def test_any_bytes_give_a_report_or_a_clear_failure(data: bytes) -> None:
    try:
        report = parse_agent_reply(data)
    except AgentReplyError as exc:
        failure: AgentReplyError | None = exc
    else:
        failure = None
    if failure is not None:
        assert failure.reason
        assert (b"\n" not in data and b"\r" not in data) or b"\0" in data
        return
    assert report.health is None or report.health in HEALTH_WORDS
    assert report.admin is None or report.admin in ADMIN_WORDS
    assert report.weight_percent is None or 0 <= report.weight_percent <= MAX_AGENT_PERCENT
    assert report.maxconn is None or report.maxconn >= 0
    assert isinstance(report.summary(), str)


words = st.one_of(
    st.sampled_from(sorted(HEALTH_WORDS | ADMIN_WORDS)).map(
        lambda w: w.upper() if len(w) % 2 else w
    ),
    st.integers(0, 500).map(lambda n: f"{n}%"),
    st.integers(0, 10_000).map(lambda n: f"maxconn:{n}"),
)


@given(st.lists(words, max_size=8), st.lists(st.sampled_from([" ", "\t", ",", " , "]), min_size=8))
def test_the_last_word_of_each_kind_wins(said: list[str], separators: list[str]) -> None:
    line = "".join(w + s for w, s in zip(said, separators, strict=False)) + "\r\n"
    report = parse_agent_reply(line.encode())
    lowered = [w.lower() for w in said]
    health = [w for w in lowered if w in HEALTH_WORDS]
    admin = [w for w in lowered if w in ADMIN_WORDS]
    percents = [int(w[:-1]) for w in lowered if w.endswith("%")]
    maxconns = [int(w[8:]) for w in lowered if w.startswith("maxconn:")]
    assert report.health == (health[-1] if health else None)
    assert report.admin == (admin[-1] if admin else None)
    assert report.weight_percent == (percents[-1] if percents else None)
    assert report.maxconn == (maxconns[-1] if maxconns else None)
    assert report.ignored == ()


def test_weight_follows_percentage_and_admin_state() -> None:
    assert AgentReport().weight(4) == 4
    assert AgentReport(weight_percent=75).weight(4) == 3
    assert AgentReport(weight_percent=MAX_AGENT_PERCENT).weight(65_535) == 65_535
    assert AgentReport(weight_percent=200).weight(10, limit=15) == 15
    assert AgentReport(admin="drain", weight_percent=75).weight(4) == 0
    assert AgentReport(admin="maint").weight(4) == 0
    assert AgentReport(admin="ready", weight_percent=50).weight(4) == 2


def test_serving_and_decisive() -> None:
    assert AgentReport().serving
    assert not AgentReport().decisive
    assert AgentReport(admin="drain").serving  # drained servers keep their persistent clients
    assert not AgentReport(admin="drain").decisive
    for word in ("down", "fail", "stopped"):
        report = parse_agent_reply(f"{word}\n".encode())
        assert (report.serving, report.decisive) == (False, True)
    assert (AgentReport(admin="maint").serving, AgentReport(admin="maint").decisive) == (
        False,
        True,
    )
    assert AgentReport(health="up", admin="maint").serving is False


def test_unsaid_words_keep_their_value() -> None:
    standing = AgentReport(health="down", admin="drain", weight_percent=50, maxconn=9)
    newer = parse_agent_reply(b"75% #busy\n")
    merged = standing.updated(newer)
    assert merged == AgentReport(
        health="down", admin="drain", weight_percent=75, maxconn=9, description="busy"
    )
    assert merged.updated(parse_agent_reply(b"up ready\n")).serving


def test_hysteresis_force_sets_the_state_and_its_counters() -> None:
    h = Hysteresis(rise=3, fall=3)
    h.observe(True)
    states = [(h.force(False), h.state), (h.force(False), h.state)]
    states += [(h.observe(True), h.state)]  # a forced down still needs rise successes...
    states += [(h.force(True), h.state)]  # ...unless forced up
    states += [(h.observe(False), h.state)]  # and after a forced up, the usual fall applies
    assert states == [(True, "down"), (False, "down"), (False, "down"), (True, "up"), (False, "up")]


def test_targets_say_what_they_need() -> None:
    http = Target("s", "http://127.0.0.1:1/", "OK", 1.0, 1.0, 1, 1)
    assert (http.kind, http.where) == ("http", "http://127.0.0.1:1/")
    tcp = Target("r", "", "", 1.0, 1.0, 1, 1, kind="tcp", host="::1", port=80)
    assert tcp.where == "tcp [::1]:80"
    with pytest.raises(ValueError, match="needs a host and a port"):
        Target("r", "", "", 1.0, 1.0, 1, 1, kind="agent", host="127.0.0.1")
    with pytest.raises(ValueError, match="needs a url"):
        Target("r", "", "", 1.0, 1.0, 1, 1)
    with pytest.raises(ValueError, match="probe kind"):
        Target("r", "", "", 1.0, 1.0, 1, 1, kind="ping", host="h", port=1)  # type: ignore[arg-type]


# --- real sockets on loopback -------------------------------------------------------------


class Agent:
    """A loopback agent: each connection gets ``reply`` and is closed (``None``: kept silent)."""

    def __init__(self, reply: bytes | None) -> None:
        self.reply = reply
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, host: str = "127.0.0.1") -> None:
        self._server = await asyncio.start_server(self._handle, host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if self.reply is None:
                await asyncio.sleep(5)
            else:
                writer.write(self.reply)
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.fixture
async def agent() -> AsyncIterator[Agent]:
    a = Agent(b"up 75%\n")
    await a.start()
    yield a
    await a.stop()


@pytest.fixture
def stuck_port() -> Iterator[int]:
    """A listener whose accept queue is full: a new connect gets no answer (SYNs dropped)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port: int = listener.getsockname()[1]
    fillers = []
    for _ in range(8):  # until a connect gets no answer: the queue is full
        s = socket.socket()
        s.settimeout(0.2)
        fillers.append(s)
        try:
            s.connect(("127.0.0.1", port))
        except TimeoutError:
            break
    else:
        pytest.fail("could not fill the accept queue of a loopback listener")
    try:
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


@pytest.mark.anyio
async def test_tcp_probe_succeeds_on_a_listening_port(agent: Agent) -> None:
    result = await probe_tcp("127.0.0.1", agent.port, timeout=2)
    assert (result.ok, result.detail, result.agent) == (True, "connected", None)


@pytest.mark.anyio
async def test_tcp_probe_works_over_ipv6_loopback() -> None:
    a = Agent(b"up\n")
    try:
        await a.start("::1")
    except OSError as exc:
        skip_or_fail(f"no IPv6 loopback here: {exc}")
    try:
        assert (await probe_tcp("::1", a.port, timeout=2)).ok
        assert (await probe_agent("::1", a.port, timeout=2)).ok
    finally:
        await a.stop()


@pytest.mark.anyio
async def test_tcp_probe_fails_on_a_free_port() -> None:
    result = await probe_tcp("127.0.0.1", free_port(), timeout=2)
    assert not result.ok
    assert "ConnectionRefusedError" in result.detail


@pytest.mark.anyio
async def test_tcp_probe_honours_its_timeout(stuck_port: int) -> None:
    result = await probe_tcp("127.0.0.1", stuck_port, timeout=0.3)
    assert (result.ok, result.detail) == (False, "no answer within 0.3s")
    assert result.duration < 2.5


@pytest.mark.anyio
async def test_agent_reply_is_parsed(agent: Agent) -> None:
    result = await probe_agent("127.0.0.1", agent.port, timeout=2)
    assert result.ok
    assert result.agent == AgentReport(health="up", weight_percent=75)
    assert result.detail == "agent: up 75%"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("reply", "ok", "detail"),
    [
        (b"drain 0%\n", True, "agent: drain 0%"),
        (b"down #maintenance window\n", False, "agent: down (maintenance window)"),
        (b"maint\n", False, "agent: maint"),
        (b"hello\n", True, "agent: no change; ignored 'hello'"),
    ],
)
async def test_agent_verdicts(agent: Agent, reply: bytes, ok: bool, detail: str) -> None:
    agent.reply = reply
    result = await probe_agent("127.0.0.1", agent.port, timeout=2)
    assert (result.ok, result.detail) == (ok, detail)
    assert result.agent == parse_agent_reply(reply)


@pytest.mark.anyio
@pytest.mark.parametrize("reply", [b"up", b"", b"x" * (MAX_AGENT_LINE + 10)])
async def test_agent_without_a_complete_line_fails(agent: Agent, reply: bytes) -> None:
    agent.reply = reply
    result = await probe_agent("127.0.0.1", agent.port, timeout=2)
    assert not result.ok
    assert result.agent is None
    assert "no complete line" in result.detail


@pytest.mark.anyio
async def test_silent_agent_times_out(agent: Agent) -> None:
    agent.reply = None
    result = await probe_agent("127.0.0.1", agent.port, timeout=0.3)
    assert (result.ok, result.detail, result.agent) == (False, "no answer within 0.3s", None)
    assert result.duration < 2.5


@pytest.mark.anyio
async def test_unreachable_agent_fails() -> None:
    result = await probe_agent("127.0.0.1", free_port(), timeout=2)
    assert not result.ok
    assert "ConnectionRefusedError" in result.detail


# --- the Prober dispatching by kind, for real ---------------------------------------------


class Recorder:
    """The Prober's listener: every (health, changed) per key, and a way to wait for one."""

    def __init__(self) -> None:
        self.seen: list[tuple[Health, bool]] = []
        self._event = asyncio.Event()

    def __call__(self, _key: str, health: Health, changed: bool) -> None:
        self.seen.append((health, changed))
        self._event.set()

    async def wait_for(self, predicate: Callable[[Health], bool], budget: float = 10.0) -> Health:
        """The first health (from now on) for which ``predicate(health)`` holds."""
        start = len(self.seen)
        async with asyncio.timeout(budget):
            while True:
                for health, _ in self.seen[start:]:
                    if predicate(health):
                        return health
                start = len(self.seen)
                self._event.clear()
                await self._event.wait()


def said(health: Health) -> AgentReport:
    """The standing agent report a health carries (empty before the agent first answered)."""
    last = health.last
    return last.agent if last is not None and last.agent is not None else AgentReport()


def detail(health: Health) -> str:
    return health.last.detail if health.last is not None else ""


def ok(health: Health) -> bool:
    return health.last is not None and health.last.ok


def agent_target(port: int, *, kind: ProbeKind = "agent", fall: int = 3) -> Target:
    return Target(
        "127.0.0.1:80", "", "", 0.05, 1.0, 2, fall, kind=kind, host="127.0.0.1", port=port
    )


@pytest.mark.anyio
async def test_prober_follows_an_agent_like_haproxy(agent: Agent) -> None:
    recorder = Recorder()
    prober = Prober(recorder)
    try:
        agent.reply = b"50%\n"
        await prober.sync([agent_target(agent.port)])
        health = prober.health("127.0.0.1:80")
        assert health.state == "up"
        assert said(health) == AgentReport(weight_percent=50)

        agent.reply = b"down #going away\n"  # at once, not after fall=3 probes
        health = await recorder.wait_for(lambda h: said(h).health == "down")
        assert health.state == "down"
        assert said(health).weight_percent == 50  # unsaid, so kept

        agent.reply = b"75%\n"  # HAProxy: only "up" undoes "down"
        health = await recorder.wait_for(lambda h: said(h).weight_percent == 75)
        assert not ok(health)
        await recorder.wait_for(lambda h: True)
        assert prober.health("127.0.0.1:80").state == "down"

        agent.reply = b"up drain\n"  # at once, not after rise=2 probes
        back = await recorder.wait_for(lambda h: said(h).health == "up")
        assert back.state == "up"
        assert said(back).weight(4) == 0  # drained: quiesced, still up

        await agent.stop()  # an unreachable agent is a failed probe; fall applies
        health = await recorder.wait_for(lambda h: h.state == "down")
        assert "ConnectionRefusedError" in detail(health)
        assert said(health) == AgentReport(health="up", admin="drain", weight_percent=75)
        refused = [h for h, _ in recorder.seen if "Refused" in detail(h)]
        assert [h.state for h in refused[:3]] == ["up", "up", "down"]  # fall=3
        changes = [(h.state, said(h).summary()) for h, changed in recorder.seen if changed]
        assert changes == [
            ("up", "50%"),
            ("down", "down 50% (going away)"),
            ("up", "up drain 75%"),
            ("down", "up drain 75%"),
        ]
    finally:
        await prober.close()


@pytest.mark.anyio
async def test_prober_runs_tcp_targets(agent: Agent) -> None:
    recorder = Recorder()
    prober = Prober(recorder)
    try:
        await prober.sync([agent_target(agent.port, kind="tcp", fall=2)])
        assert prober.health("127.0.0.1:80").state == "up"
        assert detail(prober.health("127.0.0.1:80")) == "connected"
        await agent.stop()
        health = await recorder.wait_for(lambda h: h.state == "down")
        assert "ConnectionRefusedError" in detail(health)
        failures = [h for h, _ in recorder.seen if not ok(h)]
        assert [h.state for h in failures[:2]] == ["up", "down"]  # fall=2
    finally:
        await prober.close()
