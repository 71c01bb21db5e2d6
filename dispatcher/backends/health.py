"""Health checks with ldirectord semantics: one probe implementation for all of webfarm.

- :class:`Hysteresis` is the pure core: ``rise`` consecutive successes bring a target up,
  ``fall`` consecutive failures take it down. The very first result decides the initial
  state, so a freshly started dispatcher knows after one round which sites are alive.
- :func:`probe_http` fetches a known page and expects a 2xx with a string in the body.
- :class:`Prober` keeps one probing task per target on its own interval, including targets
  that are down (so they can come back), and reports every state change.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import httpx

log = logging.getLogger("webfarm.health")

State = Literal["unknown", "up", "down"]
MAX_BODY = 64 * 1024


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


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's verdict. ``at`` is monotonic; ``wall`` is for people reading status."""

    ok: bool
    detail: str
    at: float
    wall: dt.datetime
    duration: float


@dataclass(frozen=True, slots=True)
class Target:
    """What to probe: ``key`` names it (a site, a real server), the rest says how."""

    key: str
    url: str
    expect: str
    interval: float
    timeout: float
    rise: int
    fall: int


async def probe_http(
    client: httpx.AsyncClient, url: str, expect: str, timeout: float
) -> ProbeResult:
    """GET ``url``; success is a 2xx answer whose body (first 64 KiB) contains ``expect``."""
    start = time.monotonic()
    wall = dt.datetime.now(dt.UTC)
    try:
        async with asyncio.timeout(timeout):
            ok, detail = await _fetch(client, url, expect)
    except TimeoutError:
        ok, detail = False, f"no answer within {timeout:g}s"
    except httpx.HTTPError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    except OSError as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    end = time.monotonic()
    return ProbeResult(ok=ok, detail=detail, at=end, wall=wall, duration=end - start)


async def _fetch(client: httpx.AsyncClient, url: str, expect: str) -> tuple[bool, str]:
    async with client.stream("GET", url, follow_redirects=False) as response:
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= MAX_BODY:
                break
    status = response.status_code
    if not 200 <= status < 300:
        return False, f"HTTP {status}"
    if expect and expect.encode() not in body:
        return False, f"HTTP {status}, body lacks {expect!r}"
    return True, f"HTTP {status}"


@dataclass(frozen=True, slots=True)
class Health:
    """A target's health as the snapshot sees it: immutable, safe to share."""

    state: State
    last: ProbeResult | None


Listener = Callable[[str, Health, bool], None]


class Prober:
    """Probes every target on its own interval and tells ``listener`` about each result.

    ``listener(key, health, changed)`` runs in the event loop after every probe; ``changed``
    is ``True`` when the up/down state moved. Targets are replaced with :meth:`sync`.
    """

    def __init__(self, listener: Listener, client: httpx.AsyncClient | None = None) -> None:
        self._listener = listener
        self._client = client or httpx.AsyncClient(
            trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)
        )
        self._targets: dict[str, Target] = {}
        self._states: dict[str, Hysteresis] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._last: dict[str, ProbeResult] = {}

    def health(self, key: str) -> Health:
        state = self._states.get(key)
        return Health(state.state if state else "unknown", self._last.get(key))

    async def sync(self, targets: Iterable[Target], *, probe_new_now: bool = True) -> None:
        """Probe exactly ``targets`` from now on; new or changed ones are probed at once."""
        wanted = {t.key: t for t in targets}
        for key in list(self._targets):
            if key not in wanted or wanted[key] != self._targets[key]:
                await self._stop(key)
        fresh = [t for key, t in wanted.items() if key not in self._targets]
        for target in fresh:
            self._targets[target.key] = target
            self._states[target.key] = Hysteresis(target.rise, target.fall)
        if probe_new_now and fresh:
            await asyncio.gather(*(self._probe(t) for t in fresh))
        for target in fresh:
            self._tasks[target.key] = asyncio.create_task(
                self._loop(target, delay=target.interval if probe_new_now else 0.0),
                name=f"probe {target.key}",
            )

    async def close(self) -> None:
        for key in list(self._targets):
            await self._stop(key)
        await self._client.aclose()

    async def _stop(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        self._targets.pop(key, None)
        self._states.pop(key, None)
        self._last.pop(key, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _loop(self, target: Target, delay: float) -> None:
        next_at = time.monotonic() + delay
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at = max(next_at + target.interval, time.monotonic())
            await self._probe(target)

    async def _probe(self, target: Target) -> None:
        result = await probe_http(self._client, target.url, target.expect, target.timeout)
        state = self._states.get(target.key)
        if state is None:  # removed while the probe was in flight
            return
        changed = state.observe(result.ok)
        self._last[target.key] = result
        if changed:
            level = logging.INFO if state.state == "up" else logging.WARNING
            log.log(level, "%s is %s: %s %s", target.key, state.state, target.url, result.detail)
        try:
            self._listener(target.key, Health(state.state, result), changed)
        except Exception:  # a listener bug must not stop probing
            log.exception("health listener failed for %s", target.key)
