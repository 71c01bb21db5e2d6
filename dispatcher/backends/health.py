"""Health checks with ldirectord semantics: one probe implementation for all of webfarm.

- :class:`Hysteresis` is the pure core: ``rise`` consecutive successes bring a target up,
  ``fall`` consecutive failures take it down. The very first result decides the initial
  state, so a freshly started dispatcher knows after one round which sites are alive.
- The probes (:mod:`dispatcher.backends.probes`, re-exported here): ``http`` fetches a known
  page and expects a 2xx with a string in the body, ``tcp`` connects, ``agent`` reads the
  server's own verdict (HAProxy agent-check words).
- :class:`Prober` keeps one probing task per target on its own interval, including targets
  that are down (so they can come back), chooses the probe by the target's ``kind`` and
  reports every state change. Its HTTP checks share one lean checker (no client object per
  probe) and are spread over the interval, not fired in bursts.
- A verdict must be about the target, not about us: a probe that timed out while the prober
  itself was late (:func:`own_lateness` beyond the check's timeout: its task woke up late,
  or the event loop was blocked past the deadline) is not counted (:func:`trustworthy`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import httpx

from dispatcher.backends.httpcheck import HttpChecker
from dispatcher.backends.probes import (
    MAX_BODY,
    AgentReplyError,
    AgentReport,
    ProbeResult,
    check_http,
    parse_agent_reply,
    probe_agent,
    probe_http,
    probe_tcp,
)

log = logging.getLogger("webfarm.health")

State = Literal["unknown", "up", "down"]
ProbeKind = Literal["http", "tcp", "agent"]


class Hysteresis:
    """Debounces a stream of probe results into an up/down state."""

    __slots__ = ("failures", "fall", "rise", "state", "successes")

    def __init__(self, rise: int, fall: int) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.state: State = "unknown"
        self.successes = 0
        self.failures = 0

    def observe(self, ok: bool) -> bool:
        """Record one probe result; return ``True`` when the state changed."""
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        old = self.state
        if old == "unknown":
            self.state = "up" if ok else "down"
        elif old == "down" and self.successes >= self.rise:
            self.state = "up"
        elif old == "up" and self.failures >= self.fall:
            self.state = "down"
        return self.state != old

    def force(self, up: bool) -> bool:
        """Set the state at once (an agent said so); return ``True`` when it changed.

        The run counters restart as if ``rise``/``fall`` results had just been seen, so the
        next ordinary result continues from the forced state.
        """
        old = self.state
        self.state = "up" if up else "down"
        self.successes, self.failures = (self.rise, 0) if up else (0, self.fall)
        return self.state != old


@dataclass(frozen=True, slots=True)
class Target:
    """What to probe: ``key`` names it (a site, a real server), the rest says how.

    ``kind`` picks the probe: ``http`` GETs ``url`` and expects ``expect`` in a 2xx body;
    ``tcp`` connects to ``host:port``; ``agent`` reads an agent's line from ``host:port``
    (for a real server, its agent port). ``url``/``expect`` matter only for ``http``,
    ``host``/``port`` only for the others. Raises ``ValueError`` when the kind's fields are
    missing, so a bad target fails where it is built, not in the probing loop.
    """

    key: str
    url: str
    expect: str
    interval: float
    timeout: float
    rise: int
    fall: int
    kind: ProbeKind = "http"
    host: str = ""
    port: int = 0

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValueError(
                f"probe kind must be one of {', '.join(PROBE_KINDS)}, got {self.kind!r}"
            )
        if self.kind == "http" and not self.url:
            raise ValueError(f"{self.key}: an http target needs a url")
        if self.kind != "http" and (not self.host or not 0 < self.port < 65536):
            raise ValueError(f"{self.key}: a {self.kind} target needs a host and a port 1-65535")

    @property
    def where(self) -> str:
        """What is probed, for logs: the URL, or ``kind host:port``."""
        if self.kind == "http":
            return self.url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.kind} {host}:{self.port}"


Probe = Callable[[Target], Awaitable[ProbeResult]]
PROBE_KINDS: tuple[ProbeKind, ...] = ("http", "tcp", "agent")


@dataclass(frozen=True, slots=True)
class Health:
    """A target's health as the snapshot sees it: immutable, safe to share."""

    state: State
    last: ProbeResult | None


@dataclass(slots=True)
class Tally:
    """A target's check counters since it was added (HAProxy's ``chkfail``, ``chkdown``,
    ``downtime``): failed results counted, up -> down moves, seconds spent down (closed
    spells; :meth:`downtime` adds the open one)."""

    failures: int = 0
    up_down: int = 0
    down_for: float = 0.0
    down_since: float | None = None

    def record(self, ok: bool, before: State, after: State, now: float) -> None:
        if not ok:
            self.failures += 1
        if after == before:
            return
        if after == "down":
            self.up_down += before == "up"
            self.down_since = now
        elif self.down_since is not None:
            self.down_for += now - self.down_since
            self.down_since = None

    def downtime(self, now: float) -> float:
        """Seconds spent down so far, the current spell included."""
        since = self.down_since
        return self.down_for + (max(0.0, now - since) if since is not None else 0.0)


Listener = Callable[[str, Health, bool], None]
Clock = Callable[[], float]


def own_lateness(result: ProbeResult, *, timeout: float, scheduled: float, started: float) -> float:
    """How late the prober itself was around ``result``, in seconds (0 when on time).

    Two delays are ours, not the target's: the probe task waking up after its ``scheduled``
    time (it ``started`` late), and, for a probe the deadline ended, noticing the deadline
    long after it passed (``duration`` beyond ``timeout``: the loop was blocked). The larger
    counts. All times are monotonic.
    """
    woke_late = max(0.0, started - scheduled)
    overran = max(0.0, result.duration - timeout) if result.timed_out else 0.0
    return max(woke_late, overran)


def trustworthy(result: ProbeResult, lateness: float, timeout: float) -> bool:
    """``False`` for a timeout while the prober was later than the check's ``timeout``.

    Such a failure may be our own doing (a busy or blocked event loop), so it must not take a
    target down. Successes, and failures that are answers (refused, HTTP 500, a wrong body,
    an agent's ``down``), always count.
    """
    return result.ok or not result.timed_out or lateness <= timeout


#: The grid probes start on (seconds): probes due within one tick start together. Fully
#: spread, 1,000 sites at 2 s cost a third more CPU per probe (a wake-up each) than in ticks.
TICK = 0.05


def phase(key: str) -> float:
    """Where in its interval ``key``'s probes fall, in (0, 1]: fixed per key (CRC-32), so
    the probes of many targets spread evenly over the interval and stay where they were."""
    return (zlib.crc32(key.encode()) + 1) / 2**32


class Prober:
    """Probes every target on its own interval and tells ``listener`` about each result.

    ``listener(key, health, changed)`` runs in the event loop after every probe; ``changed``
    is ``True`` when the up/down state moved. Targets are replaced with :meth:`sync`.

    Agent targets follow HAProxy: a word the agent does not repeat keeps its last value, so
    each result's ``agent`` is the *standing* report (every answer so far merged, also kept
    on a failed probe), and ``ok`` is that report's ``serving``. An explicit ``up``, ``down``
    (``fail``, ``stopped``) or ``maint`` moves the state at once instead of waiting for
    rise/fall; an agent that cannot be reached counts as a failed probe (in webfarm the agent
    is a server's only check, unlike HAProxy where it rides along a regular one).

    A result that is not :func:`trustworthy` is not fed to rise/fall and not shown as the
    last probe; :attr:`late_results` counts them. ``probes`` (by kind) and ``clock`` are
    injectable so the logic can be tested without sockets.

    ``http`` targets are checked by :func:`check_http` with one
    :class:`~dispatcher.backends.httpcheck.HttpChecker` for all of them (``ssl_context``
    verifies https sites; default: certifi's CAs); given an httpx ``client``, by
    :func:`probe_http` with it instead. After a target's first probe, its probes are spread
    over the interval by a fixed phase per key (:func:`phase`) on a grid of :data:`TICK`, so
    many targets are probed in small batches, never all in one burst.
    """

    def __init__(
        self,
        listener: Listener,
        client: httpx.AsyncClient | None = None,
        *,
        probes: Mapping[str, Probe] | None = None,
        clock: Clock = time.monotonic,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._listener = listener
        self._client = client
        self._checker = HttpChecker(ssl_context)
        self._probes: dict[str, Probe] = {
            "http": self._probe_http,
            "tcp": lambda t: probe_tcp(t.host, t.port, t.timeout),
            "agent": lambda t: probe_agent(t.host, t.port, t.timeout),
            **(probes or {}),
        }
        self._clock = clock
        self.late_results = 0
        self._targets: dict[str, Target] = {}
        self._states: dict[str, Hysteresis] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last: dict[str, ProbeResult] = {}
        self._agents: dict[str, AgentReport] = {}
        self._tallies: dict[str, Tally] = {}

    def tally(self, key: str) -> Tally | None:
        """``key``'s check counters (read-only by convention), ``None`` if not probed."""
        return self._tallies.get(key)

    def now(self) -> float:
        """The prober's clock (what :meth:`Tally.downtime` wants)."""
        return self._clock()

    def health(self, key: str) -> Health:
        state = self._states.get(key)
        return Health(state.state if state else "unknown", self._last.get(key))

    async def sync(self, targets: Iterable[Target], *, probe_new_now: bool = True) -> None:
        """Probe exactly ``targets`` from now on; new or changed ones are probed at once
        (``probe_new_now``: here, before returning; else by their tasks, at once too)."""
        wanted = {t.key: t for t in targets}
        await self._stop(
            [key for key, t in self._targets.items() if key not in wanted or wanted[key] != t]
        )
        fresh = [t for key, t in wanted.items() if key not in self._targets]
        for target in fresh:
            self._targets[target.key] = target
            self._states[target.key] = Hysteresis(target.rise, target.fall)
            self._tallies[target.key] = Tally()
        if probe_new_now and fresh:
            now = self._clock()
            await asyncio.gather(*(self._probe(t, now) for t in fresh))
        now = self._clock()
        for target in fresh:
            first = self._next_tick(target, now) if probe_new_now else now
            self._tasks[target.key] = asyncio.create_task(
                self._loop(target, first), name=f"probe {target.key}"
            )

    def _next_tick(self, target: Target, now: float) -> float:
        """When a target probed at ``now`` is next due: at its :func:`phase` of the
        interval, rounded up to the :data:`TICK` grid (the targets in one tick share the
        event loop's wake-ups)."""
        return math.ceil((now + target.interval * phase(target.key)) / TICK) * TICK

    async def close(self) -> None:
        await self._stop(list(self._targets))
        if self._client is not None:
            await self._client.aclose()

    async def _stop(self, keys: list[str]) -> None:
        """Forget ``keys`` and end their tasks: all cancelled first, then awaited together
        (one by one, a thousand targets would take a thousand turns of a busy loop)."""
        tasks = [task for key in keys if (task := self._forget(key)) is not None]
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):
                log.error("probe task ended with %r", outcome)

    def _forget(self, key: str) -> asyncio.Task[None] | None:
        self._targets.pop(key, None)
        self._states.pop(key, None)
        self._last.pop(key, None)
        self._agents.pop(key, None)
        self._tallies.pop(key, None)
        return self._tasks.pop(key, None)

    def _probe_http(self, target: Target) -> Awaitable[ProbeResult]:
        if self._client is not None:
            return probe_http(self._client, target.url, target.expect, target.timeout)
        return check_http(self._checker, target.url, target.expect, target.timeout)

    async def _loop(self, target: Target, scheduled: float) -> None:
        while True:
            await asyncio.sleep(max(0.0, scheduled - self._clock()))
            await self._probe(target, scheduled)
            # The next start is one interval on, or now when the probe overran: either way
            # any delay beyond it is the prober's own lateness, not the previous probe's.
            scheduled = max(scheduled + target.interval, self._clock())

    async def _probe(self, target: Target, scheduled: float) -> None:
        started = self._clock()
        result = await self._probes[target.kind](target)
        state = self._states.get(target.key)
        if state is None:  # removed while the probe was in flight
            return
        lateness = own_lateness(
            result, timeout=target.timeout, scheduled=scheduled, started=started
        )
        if not trustworthy(result, lateness, target.timeout):
            self.late_results += 1
            log.info(
                "%s: not counting a failed probe, the prober was %.3fs late (timeout %gs); "
                "%d such result(s) so far",
                target.key,
                lateness,
                target.timeout,
                self.late_results,
            )
            return
        said = result.agent
        result = self._with_standing_agent(target.key, result)
        before = state.state
        if said is not None and said.decisive:
            changed = state.force(result.ok)
        else:
            changed = state.observe(result.ok)
        tally = self._tallies.get(target.key)
        if tally is not None:
            tally.record(result.ok, before, state.state, self._clock())
        self._last[target.key] = result
        if changed:
            level = logging.INFO if state.state == "up" else logging.WARNING
            log.log(level, "%s is %s: %s %s", target.key, state.state, target.where, result.detail)
        try:
            self._listener(target.key, Health(state.state, result), changed)
        except Exception:  # a listener bug must not stop probing
            log.exception("health listener failed for %s", target.key)

    def _with_standing_agent(self, key: str, result: ProbeResult) -> ProbeResult:
        """Merge an agent's answer into what it said before (unsaid words stay)."""
        standing = self._agents.get(key)
        if result.agent is None:
            return result if standing is None else replace(result, agent=standing)
        merged = result.agent if standing is None else standing.updated(result.agent)
        self._agents[key] = merged
        return replace(result, ok=merged.serving, agent=merged)


__all__ = [
    "MAX_BODY",
    "PROBE_KINDS",
    "TICK",
    "AgentReplyError",
    "AgentReport",
    "Clock",
    "Health",
    "Hysteresis",
    "Listener",
    "ProbeKind",
    "ProbeResult",
    "Prober",
    "State",
    "Tally",
    "Target",
    "check_http",
    "own_lateness",
    "parse_agent_reply",
    "phase",
    "probe_agent",
    "probe_http",
    "probe_tcp",
    "trustworthy",
]
