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
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from dispatcher.config import Config
from dispatcher.dns.answer import TCP_LIMIT, limit_for, respond, truncated
from dispatcher.dns.fastpath import compiled_answer, fast_answer
from dispatcher.dns.message import NOERROR, NXDOMAIN, SERVFAIL, Query, decode
from dispatcher.dns.rrl import DROP, SEND, RateLimiter
from dispatcher.dns.table import DnsTable, build_table
from dispatcher.dns.tally import AnswerTally, DnsReport, answer_matrix, labelled, slot_of
from dispatcher.dns.ttl import ChangeTracker
from dispatcher.snapshot import Snapshot
from dispatcher.throttle import Throttle

log = logging.getLogger("webfarm.dns")


class DnsSource(Protocol):
    """Where the answer path reads the state from: the snapshot and the configuration it
    was built with (both replaced whole, never changed), and when the control process saw
    each pool change last (see :meth:`~dispatcher.dns.ttl.ChangeTracker.adopt`)."""

    @property
    def snapshot(self) -> Snapshot: ...

    @property
    def config(self) -> Config: ...

    @property
    def dns_history(self) -> Mapping[str, float]: ...


class DnsService:
    """One process's DNS answers. ``counts`` holds what happened since :meth:`take_report`:
    ``udp`` and ``tcp`` queries, ``silent`` (not answered: not a query), ``truncated``
    (answers that did not fit), ``rrl_dropped``, ``rrl_slipped``; the UDP readers add
    ``udp_backlog``, ``udp_send_failed`` and ``udp_oversized`` (:mod:`dispatcher.dns.udp`).
    ``answered`` holds the answers sent by rcode and qtype, and ``tally`` the address
    answers by site (:mod:`dispatcher.dns.tally`; :meth:`take_report` takes them all)."""

    def __init__(self, source: DnsSource, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.clock = clock
        self.tracker = ChangeTracker()
        self.counts: defaultdict[str, int] = defaultdict(int)
        self.answered = answer_matrix()
        self.tally = AnswerTally()
        self._snapshot: Snapshot | None = None
        self._table: DnsTable | None = None
        self._limiter: RateLimiter | None = None
        self._limiter_key: tuple[int, ...] = ()
        self._bugs = Throttle()

    def table(self) -> DnsTable | None:
        """The table for the current snapshot (``None`` when ``[dns]`` is not configured)."""
        snapshot = self.source.snapshot
        if snapshot is not self._snapshot:
            try:
                self._rebuild(snapshot)
            except Exception:  # a bug must not cost every answer: the last table stays
                if self._bugs.hit("table") is not None:
                    log.exception("could not build the DNS table; answering from the last one")
        return self._table

    def _rebuild(self, snapshot: Snapshot) -> None:
        self._fold()  # (the table's compiled queries go with it: their counts stay)
        self._snapshot = snapshot
        config = self.source.config.dns
        if config is None:
            self._table = None
            return
        self.tracker.adopt(self.source.dns_history)  # (a worker's: the control's changes)
        self.tracker.observe(snapshot, self.clock())
        self._table = build_table(config, snapshot, self.tracker, self.tally)
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
        return self.answer_datagrams([data], [address])[0]

    def answer_datagrams(
        self, datagrams: Sequence[bytes], addresses: Sequence[str]
    ) -> list[bytes | None]:
        """:meth:`answer_udp` for datagrams read together (``addresses[i]`` sent
        ``datagrams[i]``): one table and one clock reading for all of them, the common
        query's compiled answer looked up first (:mod:`dispatcher.dns.fastpath`)."""
        counts = self.counts
        counts["udp"] += len(datagrams)
        table = self.table()
        if table is None:
            counts["silent"] += len(datagrams)
            return [None] * len(datagrams)
        now = self.clock()
        compiled_for = table.compiled.get
        limiter = self._limiter
        answers: list[bytes | None] = []
        answered = self.answered[NOERROR]  # (compiled answers: NOERROR, by qtype)
        for data, address in zip(datagrams, addresses, strict=True):
            compiled = compiled_for(data[2:])
            if compiled is None:
                answers.append(self._answer_udp(table, data, address, now))
                continue
            try:
                response: bytes | None = compiled_answer(compiled, data, now)
            except Exception:  # noqa: BLE001 - a bug must cost one answer (_failed logs it)
                answers.append(self._failed(table, data))
                continue
            if compiled.truncated:  # (counted before rate limiting, as _answer does)
                counts["truncated"] += 1
            if limiter is not None:
                verdict = limiter.decide(address, compiled.key, now)
                if verdict != SEND:  # (counted as sent by compiled_answer: it was not)
                    answered[compiled.key[-1]] -= 1  # (the type's low byte ends the key)
                    answers.append(self._limited(table, data, verdict))
                    continue
            answers.append(response)  # (counted by compiled_answer: see Compiled.fold)
        return answers

    def _answer_udp(self, table: DnsTable, data: bytes, address: str, now: float) -> bytes | None:
        """One datagram's answer by the fast or the general path, rate limited."""
        counts = self.counts
        answered = self._answer(table, data, address, now, tcp=False)
        if answered is None:
            counts["silent"] += 1
            return None
        response, key, rcode, qtype = answered
        limiter = self._limiter
        if limiter is not None:
            verdict = limiter.decide(address, key, now)
            if verdict != SEND:
                return self._limited(table, data, verdict)
        self.answered[rcode][qtype] += 1
        return response

    def _limited(self, table: DnsTable, data: bytes, verdict: int) -> bytes | None:
        """What response rate limiting's ``verdict`` (DROP or SLIP) sends: nothing, or an
        empty answer with TC set."""
        if verdict == DROP:
            self.counts["rrl_dropped"] += 1
            return None
        self.counts["rrl_slipped"] += 1
        query = decode(data)
        assert query is not None  # it was answered
        return truncated(query, table.config.max_udp_payload)

    def answer_tcp(self, data: bytes, address: str) -> bytes | None:
        """The message to send back over TCP for one framed query, or None (close)."""
        self.counts["tcp"] += 1
        table = self.table()
        answered = (
            None if table is None else self._answer(table, data, address, self.clock(), tcp=True)
        )
        if answered is None:
            self.counts["silent"] += 1
            return None
        self.answered[answered[2]][answered[3]] += 1
        return answered[0]

    def _answer(
        self, table: DnsTable, data: bytes, address: str, now: float, *, tcp: bool
    ) -> tuple[bytes, object, int, int] | None:
        """(answer, rate-limiting key, rcode, qtype's counter slot): the fast path's, else
        the general path's; None for silence."""
        query: Query | None = None
        key: object
        try:
            fast = fast_answer(table, data, address, now, tcp)
            if fast is not None:
                response, key, rcode = fast
                qtype = key[-1]  # (A or AAAA: the low byte of the type the key ends with)
            else:
                query = decode(data)
                if query is None:
                    return None
                limit = TCP_LIMIT if tcp else limit_for(query, table.config.max_udp_payload)
                response, rcode = respond(table, query, address, now, limit)
                key = _rrl_key(table, query, rcode)
                qtype = slot_of(query.qtype)
        except Exception:  # noqa: BLE001 - a bug must cost one answer (_failed logs it)
            failed = self._failed(table, data, query)
            if failed is None:
                return None
            asked = query or decode(data)
            return failed, -SERVFAIL, NOERROR, 0 if asked is None else slot_of(asked.qtype)
        if response[2] & 0x02:  # TC
            self.counts["truncated"] += 1
        return response, key, rcode, qtype

    def _failed(self, table: DnsTable, data: bytes, query: Query | None = None) -> bytes | None:
        """The answer when answering raised (a bug): TC, so the client asks over TCP."""
        if self._bugs.hit("answer") is not None:
            log.exception("could not answer a query (a bug; answered TC instead)")
        query = query or decode(data)
        if query is None:
            return None
        return truncated(query, table.config.max_udp_payload)

    def report(self) -> DnsReport:
        """Everything counted since the last :meth:`take_report`, labelled."""
        self._fold()
        return labelled(self.counts, self.answered, self.tally)

    def take_report(self) -> DnsReport:
        """:meth:`report`, and start again from zero."""
        report = self.report()
        self.counts, self.answered = defaultdict(int), answer_matrix()
        self.tally.clear()  # (in place: the table's entries hold its counters)
        return report

    def _fold(self) -> None:
        """Add what the compiled queries counted to the tally (see
        :class:`~dispatcher.dns.fastpath.Compiled`)."""
        table = self._table
        if table is not None:
            for compiled in table.compiled.values():
                compiled.fold()


def _rrl_key(table: DnsTable, query: Query, rcode: int) -> object:
    """What makes two responses "identical" for rate limiting (see :mod:`~dispatcher.dns.rrl`)."""
    if rcode == NOERROR:  # (the fast path's key for the same answer)
        return query.qname + query.qtype.to_bytes(2, "big")
    if rcode == NXDOMAIN:
        zone = table.zone_of(query.qname)
        return (zone.apex if zone else b"", -NXDOMAIN)
    return -rcode
