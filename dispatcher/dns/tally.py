"""The DNS front's counters: what one process counts as it answers, what a worker reports,
and the totals the control process adds up (``GET /api/v1/status``'s ``dns``, ``/metrics``).

A :class:`~dispatcher.dns.service.DnsService` counts in three places, each an increment,
cheap on purpose (the answer path is a hot path): ``counts`` (flat: ``udp``, ``tcp``,
``silent``, ``truncated``, ``rrl_dropped``, ``rrl_slipped``, the TCP connections and
their closings, ...); ``answered``, the answers sent, in an :func:`answer_matrix`
indexed by rcode, then by the question type's slot (:func:`slot_of`: the type itself below
:data:`QTYPE_SLOTS`, else 0; list indexing, no key to build or hash); and, through the
table's entries, an :class:`AnswerTally`: address answers by the site placement put
first, and answers from a name's ``all_down`` by (pool, how). The compiled UDP path
(:mod:`dispatcher.dns.fastpath`) counts once per answer, in the compiled query, and folds
its counts into the tally (the site's, and the NOERROR answers' by type in ``noerror``)
before the tally is read. :func:`labelled` turns them
into a :class:`DnsReport` of plain string keys, bounded: a type has its name
(:data:`QTYPE_NAMES`) or is ``other``, an rcode its name (:data:`RCODE_NAMES`), and the
flat counts get the answers by rcode (``noerror``, ...). :class:`DnsTotals` adds reports
up, and a live one (the front in the control process itself) on top.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

#: The question types counted by name (every other one is ``other``, type 0 when counted).
QTYPE_NAMES: Final = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 35: "NAPTR", 41: "OPT", 43: "DS", 48: "DNSKEY", 52: "TLSA",
    64: "SVCB", 65: "HTTPS", 99: "SPF", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR",
    253: "MAILB", 254: "MAILA", 255: "ANY", 257: "CAA",
}  # fmt: skip
#: Question types counted in a slot of their own (the highest named one is CAA, 257).
QTYPE_SLOTS: Final = 258
#: The rcodes by name: every one the answer path sends (the matrix has a row for each up
#: to the highest, BADVERS; the answer path sends no other).
RCODE_NAMES: Final = {
    0: "noerror", 1: "formerr", 2: "servfail", 3: "nxdomain", 4: "notimp", 5: "refused",
    16: "badvers",
}  # fmt: skip
#: How a name answers when placement has no site (:mod:`dispatcher.dns.resolve`).
FALLBACK_KINDS: Final = ("failsafe", "fail-open", "servfail")
#: The flat counters that are TCP connections' closings, and the label each has in metrics.
TCP_CLOSINGS: Final = {
    "tcp_idle_closed": "idle",
    "tcp_query_limit": "query_limit",
    "tcp_too_large": "too_large",
    "tcp_evicted": "evicted",
}


def answer_matrix() -> list[list[int]]:
    """Zeroed counters of answers sent, ``[rcode][slot_of(qtype)]``."""
    return [[0] * QTYPE_SLOTS for _ in range(max(RCODE_NAMES) + 1)]


def slot_of(qtype: int) -> int:
    """The question type's column in :func:`answer_matrix` (0, ``other``, if it has none)."""
    return qtype if qtype < QTYPE_SLOTS else 0


class AnswerTally:
    """Address answers, counted where they are made (every entry of every table one
    service builds shares one): ``placed`` by the site placement put first, ``fallbacks``
    by (pool, how) when placement had no site; ``noerror``, by :func:`slot_of` the type,
    the NOERROR answers of compiled queries folded in (added to the answers sent)."""

    __slots__ = ("fallbacks", "noerror", "placed")

    def __init__(self) -> None:
        self.placed: defaultdict[str, int] = defaultdict(int)
        self.fallbacks: defaultdict[tuple[str | None, str], int] = defaultdict(int)
        self.noerror = [0] * QTYPE_SLOTS

    def clear(self) -> None:
        """Start again from zero (in place: the tables' entries hold the counters)."""
        self.placed.clear()
        self.fallbacks.clear()
        self.noerror[:] = [0] * QTYPE_SLOTS


@dataclass(frozen=True, slots=True)
class DnsReport:
    """One process's DNS counters with string keys: ``counts`` flat (see the module),
    ``queries`` by ``"QTYPE/rcode"`` (``"AAAA/noerror"``), ``answers`` by site,
    ``fallbacks`` by ``"pool/how"`` (names hold no ``/``)."""

    counts: Mapping[str, int] = field(default_factory=dict)
    queries: Mapping[str, int] = field(default_factory=dict)
    """The answers sent, by question type and rcode."""
    answers: Mapping[str, int] = field(default_factory=dict)
    fallbacks: Mapping[str, int] = field(default_factory=dict)


def labelled(counts: Mapping[str, int], answered: list[list[int]], tally: AnswerTally) -> DnsReport:
    """What a service counted, as a :class:`DnsReport` (bounded keys: see the module)."""
    flat = dict(counts)
    queries: defaultdict[str, int] = defaultdict(int)
    rows = [[a + b for a, b in zip(answered[0], tally.noerror, strict=True)], *answered[1:]]
    for rcode, row in enumerate(rows):
        if not any(row):
            continue
        name = RCODE_NAMES.get(rcode, "other")
        flat[name] = flat.get(name, 0) + sum(row)
        for qtype, count in enumerate(row):
            if count:
                queries[f"{QTYPE_NAMES.get(qtype, 'other')}/{name}"] += count
    fallbacks = {f"{pool}/{how}": n for (pool, how), n in tally.fallbacks.items() if pool}
    return DnsReport(flat, dict(queries), dict(tally.placed), fallbacks)


def query_labels(key: str) -> tuple[str, str]:
    """``"A/noerror"`` -> ``("A", "noerror")``."""
    qtype, _, rcode = key.partition("/")
    return qtype, rcode


class DnsTotals:
    """The DNS front's counters since start, summed over the reports added; ``local`` (if
    set) reads a front in this process, added on top when asked."""

    def __init__(self) -> None:
        self._sums: tuple[defaultdict[str, int], ...] = tuple(defaultdict(int) for _ in range(4))
        self.local: Callable[[], DnsReport] | None = None

    def add(self, report: DnsReport) -> None:
        for mine, theirs in zip(self._sums, _parts(report), strict=True):
            for name, count in theirs.items():
                mine[name] += count

    def totals(self) -> DnsReport:
        totals = [dict(part) for part in self._sums]
        if self.local is not None:
            for total, more in zip(totals, _parts(self.local()), strict=True):
                for name, count in more.items():
                    total[name] = total.get(name, 0) + count
        return DnsReport(*totals)


def _parts(report: DnsReport) -> tuple[Mapping[str, int], ...]:
    return report.counts, report.queries, report.answers, report.fallbacks


__all__ = [
    "FALLBACK_KINDS",
    "QTYPE_NAMES",
    "QTYPE_SLOTS",
    "RCODE_NAMES",
    "TCP_CLOSINGS",
    "AnswerTally",
    "DnsReport",
    "DnsTotals",
    "answer_matrix",
    "labelled",
    "query_labels",
    "slot_of",
]
