"""The DNS answer path of one process, independent of sockets: bytes in, bytes (or silence) out.

:class:`DnsService` reads the farm's current snapshot and configuration from its
``source`` (a worker's state, or the :class:`~dispatcher.farm.Farm` itself in one-process
mode), rebuilds its :class:`~dispatcher.dns.table.DnsTable` when the snapshot changes (an
identity check per query: no lock, no database), answers, applies response rate limiting
to UDP, and counts. It never raises on what a client sends.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

from dispatcher.backends.snapshot import Snapshot
from dispatcher.config import Config
from dispatcher.dns.answer import TCP_LIMIT, limit_for, respond, truncated
from dispatcher.dns.message import NOERROR, NXDOMAIN, Query, decode
from dispatcher.dns.rrl import DROP, SLIP, RateLimiter
from dispatcher.dns.table import DnsTable, build_table
from dispatcher.dns.ttl import ChangeTracker
from dispatcher.throttle import Throttle

log = logging.getLogger("webfarm.dns")

RCODE_NAMES = {0: "noerror", 1: "formerr", 2: "servfail", 3: "nxdomain", 4: "notimp"}
RCODE_NAMES |= {5: "refused", 16: "badvers"}


class DnsSource(Protocol):
    """Where the answer path reads the state from: the snapshot and the configuration it
    was built with (both replaced whole, never changed)."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def config(self) -> Config: ...


class DnsService:
    """One process's DNS answers. ``counts`` holds what happened since :meth:`take_counts`:
    ``udp`` and ``tcp`` queries, ``silent`` (not answered: not a query), one count per rcode
    answered, ``truncated`` (answers that did not fit), ``rrl_dropped``, ``rrl_slipped``."""

    def __init__(self, source: DnsSource, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.clock = clock
        self.tracker = ChangeTracker()
        self.counts: defaultdict[str, int] = defaultdict(int)
        self._snapshot: Snapshot | None = None
        self._table: DnsTable | None = None
        self._limiter: RateLimiter | None = None
        self._limiter_key: tuple[int, ...] = ()
        self._bugs = Throttle()

    def table(self) -> DnsTable | None:
        """The table for the current snapshot (``None`` when ``[dns]`` is not configured)."""
        snapshot = self.source.snapshot
        if snapshot is not self._snapshot:
            self._rebuild(snapshot)
        return self._table

    def _rebuild(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        config = self.source.config.dns
        if config is None:
            self._table = None
            return
        self.tracker.observe(snapshot, self.clock())
        self._table = build_table(config, snapshot, self.tracker)
        key = (
            config.rrl_rate,
            config.rrl_slip,
            config.rrl_table,
            config.rrl_ipv4_prefix,
            config.rrl_ipv6_prefix,
        )
        if key != self._limiter_key:
            self._limiter_key = key
            self._limiter = (
                RateLimiter(
                    config.rrl_rate,
                    config.rrl_slip,
                    config.rrl_table,
                    ipv4_prefix=config.rrl_ipv4_prefix,
                    ipv6_prefix=config.rrl_ipv6_prefix,
                )
                if config.rrl_rate
                else None
            )

    def answer_udp(self, data: bytes, address: str) -> bytes | None:
        """The datagram to send back to ``address`` for ``data``, or None (silence)."""
        self.counts["udp"] += 1
        query = decode(data)
        table = self.table()
        if query is None or table is None:
            self.counts["silent"] += 1
            return None
        now = self.clock()
        response, rcode = self._respond(
            table, query, address, now, limit_for(query, table.config.max_udp_payload)
        )
        limiter = self._limiter
        if limiter is not None:
            verdict = limiter.decide(address, _rrl_key(table, query, rcode), now)
            if verdict == DROP:
                self.counts["rrl_dropped"] += 1
                return None
            if verdict == SLIP:
                self.counts["rrl_slipped"] += 1
                return truncated(query, table.config.max_udp_payload)
        self.counts[RCODE_NAMES.get(rcode, "other")] += 1
        return response

    def answer_tcp(self, data: bytes, address: str) -> bytes | None:
        """The message to send back over TCP for one framed query, or None (close)."""
        self.counts["tcp"] += 1
        query = decode(data)
        table = self.table()
        if query is None or table is None:
            self.counts["silent"] += 1
            return None
        response, rcode = self._respond(table, query, address, self.clock(), TCP_LIMIT)
        self.counts[RCODE_NAMES.get(rcode, "other")] += 1
        return response

    def _respond(
        self, table: DnsTable, query: Query, address: str, now: float, limit: int
    ) -> tuple[bytes, int]:
        try:
            response, rcode = respond(table, query, address, now, limit)
        except Exception:  # a bug must cost one answer, not the listener
            if self._bugs.hit("answer") is not None:
                log.exception("could not answer a query (a bug; answered TC instead)")
            return truncated(query, table.config.max_udp_payload), NOERROR
        if response[3] & 0x02:  # TC
            self.counts["truncated"] += 1
        return response, rcode

    def take_counts(self) -> dict[str, int]:
        """The counts since the last call (and start again from zero)."""
        counts, self.counts = self.counts, defaultdict(int)
        return dict(counts)


def _rrl_key(table: DnsTable, query: Query, rcode: int) -> object:
    """What makes two responses "identical" for rate limiting (see :mod:`~dispatcher.dns.rrl`)."""
    if rcode == NOERROR:
        return (query.qname, query.qtype)
    if rcode == NXDOMAIN:
        zone = table.zone_of(query.qname)
        return (zone.apex if zone else b"", -NXDOMAIN)
    return -rcode
