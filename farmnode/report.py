"""The load reporter: tells the dispatcher how busy this node's site is, every few seconds.

Every ``report.interval`` seconds the node measures itself (:class:`Measure`: active
connections summed over its services, and whether any real server can take a new
connection) and sends ``PUT {url}/api/v1/sites/{site}/load`` with ``Authorization: Bearer
{token}`` and the body the dispatcher's admin API takes::

    {"load": 0.0-1.0, "connections": N}

**Load.** ``connections / capacity``, clamped to 1.0: more connections than ``capacity``
is still "full", because the API accepts nothing above 1. ``connections`` is sent as is.

**No healthy real server.** The API has no field for health (the dispatcher's own probes
decide whether a site is up). A node none of whose real servers is available (every one
down or quiescent; a fallback server does not count) reports load 1.0, so a load-aware
dispatcher policy (``least-load``) sends new clients to other sites first, while the site's
own fallback answers whoever still arrives.

**Learned latency.** With an :class:`~farmnode.rtt.RttTable` (the daemon passes the node's),
a report carries, at most once per ``rtt_interval`` seconds (default
:data:`RTT_INTERVAL`, a minute), the networks with the most samples (at most
:data:`MAX_RTT_ENTRIES`, which keeps the body far below the admin API's 1 MiB)::

    "rtt": [{"network": "192.0.2.0/24", "rtt": 0.0123, "samples": 17}, ...]

The first table goes with the first report that has one; an empty table is sent only to
replace a non-empty one sent before. A report whose table was refused or lost sends it again
at the next report.

**Failures** (the dispatcher is down, refuses the token, does not know the site, answers
garbage) are logged — a warning when the reason changes, then quietly — and the next
interval simply tries again; nothing here raises into the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from dispatcher.placement.rtt import MAX_REPORT_ENTRIES
from farmnode.config import ReportSettings
from farmnode.rtt import RttTable

log = logging.getLogger("webfarm.farmnode.report")
JSON = "application/json"

#: Seconds one report may take at most (shorter when the interval is shorter, >= 1 s).
MAX_REQUEST_TIMEOUT = 5.0
#: Seconds between two reports that carry the RTT table.
RTT_INTERVAL = 60.0
#: The most client networks one report carries (the dispatcher takes no more).
MAX_RTT_ENTRIES = MAX_REPORT_ENTRIES


@dataclass(frozen=True, slots=True)
class Measure:
    """What the node measured: open connections over all services (fallback included)
    and whether any real server of any service can take a new connection."""

    connections: int
    available: bool


def load_body(measure: Measure, capacity: int) -> dict[str, Any]:
    """The JSON body of one report: ``{"load": 0..1, "connections": N}``.

    ``load`` is ``connections / capacity`` clamped to [0, 1], and 1.0 when no real server
    is available (see the module's docstring). ``capacity`` must be >= 1.
    """
    connections = max(0, measure.connections)
    load = min(1.0, connections / capacity) if measure.available else 1.0
    return {"load": load, "connections": connections}


def rtt_list(table: RttTable, limit: int = MAX_RTT_ENTRIES) -> list[dict[str, Any]]:
    """The report's ``rtt`` list: the ``limit`` networks with the most samples."""
    return [
        {"network": network, "rtt": rtt, "samples": samples}
        for network, rtt, samples in table.top(limit)
    ]


def request_timeout(interval: float) -> float:
    """One report's timeout: the interval, but at least 1 s and at most 5 s."""
    return min(MAX_REQUEST_TIMEOUT, max(1.0, interval))


class Reporter:
    """Sends load reports for one site on its own monotonic timer.

    ``measure`` is called once per report, in the event loop. :meth:`report_once` sends one
    report and returns a short status line (also kept in :attr:`last`); :meth:`run` does so
    every interval until cancelled. ``rtt`` is the node's RTT table, sent every
    ``rtt_interval`` seconds (see the module's docstring). ``client`` is for tests; by
    default an ``httpx.AsyncClient`` that ignores proxy settings from the environment.
    """

    def __init__(
        self,
        settings: ReportSettings,
        measure: Callable[[], Awaitable[Measure]],
        *,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        rtt: RttTable | None = None,
        rtt_interval: float = RTT_INTERVAL,
    ) -> None:
        self.settings = settings
        self._measure = measure
        self.rtt = rtt
        self.rtt_interval = rtt_interval
        self._rtt_sent_at = -math.inf
        self._rtt_sent_any = False
        self._clock = clock
        self._client = client or httpx.AsyncClient(trust_env=False)
        self._own_client = client is None
        self.last = ""
        self.last_at: float | None = None
        self.sent = 0
        self.failed = 0
        self.body: dict[str, Any] | None = None  # the last body sent (or tried)

    async def report_once(self) -> str:
        """Measure, send one report, and return what happened (never raises for the
        dispatcher's sake; cancellation passes through)."""
        s = self.settings
        body = load_body(await self._measure(), s.capacity)
        self.body = dict(body)
        rtt = self._rtt_due()
        if rtt is not None:
            body["rtt"] = rtt
            self.body["rtt"] = f"{len(rtt)} networks"
        try:
            response = await self._client.put(
                s.load_url,
                content=json.dumps(body, separators=(",", ":"), allow_nan=False),
                headers={"authorization": f"Bearer {s.token}", "content-type": JSON},
                timeout=request_timeout(s.interval),
            )
        except httpx.HTTPError as exc:
            return self._outcome(False, f"report failed: {s.load_url}: {_describe(exc)}")
        if response.status_code == 200:
            load, connections = body["load"], body["connections"]
            text = f"reported load {load:.3f} ({connections} conn)"
            if rtt is not None:
                self._rtt_sent_at, self._rtt_sent_any = self._clock(), bool(rtt)
                text += f", RTT of {len(rtt)} networks"
            return self._outcome(True, text)
        return self._outcome(False, f"report refused: {_refusal(response, s.site)}")

    def _rtt_due(self) -> list[dict[str, Any]] | None:
        """The RTT list if this report should carry one, else ``None``."""
        if self.rtt is None or self._clock() - self._rtt_sent_at < self.rtt_interval:
            return None
        if not len(self.rtt) and not self._rtt_sent_any:
            return None
        return rtt_list(self.rtt)

    async def run(self) -> None:
        """Report every ``interval`` seconds (the first at once) until cancelled."""
        next_at = self._clock()
        while True:
            await asyncio.sleep(max(0.0, next_at - self._clock()))
            next_at = max(next_at + self.settings.interval, self._clock())
            try:
                await self.report_once()
            except Exception:  # a bug in measuring must not end the daemon's reports
                log.exception("load report for site %s failed", self.settings.site)

    async def close(self) -> None:
        if self._own_client:
            await self._client.aclose()

    def _outcome(self, ok: bool, text: str) -> str:
        if ok:
            self.sent += 1
            if self.last and not self.last.startswith("reported"):
                log.info("site %s: load reports go through again: %s", self.settings.site, text)
            else:
                log.debug("site %s: %s", self.settings.site, text)
        else:
            self.failed += 1
            level = logging.DEBUG if text == self.last else logging.WARNING
            log.log(
                level,
                "site %s: %s (retrying every %gs)",
                self.settings.site,
                text,
                self.settings.interval,
            )
        self.last = text
        self.last_at = self._clock()
        return text

    def status(self) -> dict[str, Any]:
        """For the status document: where reports go, the last outcome and its age."""
        age = None if self.last_at is None else round(self._clock() - self.last_at, 3)
        return {
            "url": self.settings.url,
            "site": self.settings.site,
            "interval": self.settings.interval,
            "capacity": self.settings.capacity,
            "last": self.last,
            "age": age,
            "body": self.body,
            "sent": self.sent,
            "failed": self.failed,
            "rtt_networks": None if self.rtt is None else len(self.rtt),
        }


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _refusal(response: httpx.Response, site: str) -> str:
    """Why the dispatcher said no, in its own words where it gave some."""
    message = ""
    with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
        message = str(response.json()["error"]["message"])
    hints = {
        401: "the dispatcher does not accept the token (report.token / FARMNODE_REPORT_TOKEN)",
        403: (
            f"the token may not report load for site {site!r}: give this node a reporter"
            f" token whose sites include {site!r} ({message or 'forbidden'})"
        ),
        404: f"the dispatcher knows no site {site!r} (report.site)",
    }
    reason = hints.get(response.status_code, message or response.reason_phrase)
    return f"HTTP {response.status_code}: {reason}"


__all__ = ["RTT_INTERVAL", "Measure", "Reporter", "load_body", "request_timeout", "rtt_list"]
