"""The answer builder: a decoded query and the table -> the response's bytes. Pure.

Every response is authoritative (AA) for names in the zones, never offers recursion (RA
clear), copies the query's ID, opcode, RD and CD bits, echoes the question as it was sent
(case included), and carries an OPT record when the query had one (our payload size, the
DO bit copied, the client subnet option echoed with its scope). A response larger than the
client allows (its EDNS payload size, at most ``max_udp_payload``; 512 without EDNS; 65,535
over TCP) goes out with TC set and its record sections empty: the client asks again over
TCP.

What is answered how:

- A or AAAA for a configured name: its placed addresses (:mod:`dispatcher.dns.resolve`);
  NODATA when there is none of that family; SERVFAIL when placement has no site and the
  name's ``all_down`` says so;
- SOA and NS at a zone's apex: the zone's SOA, or its name servers (with the addresses of
  those among them that are configured names with fixed addresses, as glue);
- ANY (RFC 8482, section 4.1: one RRset of those that exist): at an apex its SOA; at a
  configured name its A records, or its AAAA records when it has no IPv4; else NODATA;
- another type at a name that exists (a configured name, an apex, or an empty
  non-terminal: a name with configured names below it, RFC 8020): NODATA, the zone's SOA in
  the authority section with the negative TTL, min(SOA TTL, minimum) (RFC 2308);
- a name in a zone that does not exist: NXDOMAIN, the SOA likewise;
- a name in none of the zones, a class other than IN, AXFR and IXFR (no zone transfers):
  REFUSED, without AA;
- MAILA and MAILB: NOTIMP; OPT, TKEY and TSIG as the question's type: FORMERR.

A, AAAA, NXDOMAIN, NODATA and the errors are rendered here from precomputed wire bytes;
SOA, NS and the apex's ANY through dnspython (:mod:`dispatcher.dns.slow`).
"""

from __future__ import annotations

from dispatcher.dns.message import (
    AA,
    AAAA,
    ANY,
    AXFR,
    BADVERS,
    CD,
    DO,
    FORMERR,
    HEADER,
    IN,
    IXFR,
    MAILA,
    MAILB,
    NOERROR,
    NOTIMP,
    NS,
    NXDOMAIN,
    OPT,
    QR,
    RD,
    RECORD,
    REFUSED,
    SOA,
    TC,
    A,
    Query,
)
from dispatcher.dns.resolve import Resolved, resolve
from dispatcher.dns.slow import apex_answer
from dispatcher.dns.table import DnsTable, Entry, Zone

#: The largest response over TCP.
TCP_LIMIT = 65_535
#: The header bits a response copies from its query: opcode, RD, CD.
COPIED = 0x7800 | RD | CD
TKEY, TSIG = 249, 250
ADDRESS_TYPES = frozenset((A, AAAA))


def limit_for(query: Query, max_udp_payload: int) -> int:
    """How large a UDP response to ``query`` may be."""
    if not query.edns:
        return 512
    return min(query.payload, max_udp_payload)


def respond(
    table: DnsTable, query: Query, resolver: str, now: float, limit: int
) -> tuple[bytes, int]:
    """The response's bytes and its rcode (see the module). Never raises on client input."""
    payload = table.config.max_udp_payload
    if query.rcode or query.qclass != IN:
        rcode = query.rcode or REFUSED
        return error(query, rcode, payload), rcode
    qtype = query.qtype
    entry = table.names.get(query.qname)
    if entry is not None and qtype in ADDRESS_TYPES:
        family = 0 if qtype == A else 2
        resolved = resolve(table.snapshot, entry, family, query.ecs, resolver, now)
        if not resolved.records and resolved.rcode == NOERROR:
            return negative(query, entry.zone, NOERROR, payload, limit), NOERROR
        return addresses(query, resolved, payload, limit), resolved.rcode
    return _other(table, entry, query, resolver, now, limit)


def _other(
    table: DnsTable, entry: Entry | None, query: Query, resolver: str, now: float, limit: int
) -> tuple[bytes, int]:
    """Everything but an A or AAAA query for a configured name."""
    payload = table.config.max_udp_payload
    qtype = query.qtype
    zone = table.zone_of(query.qname)
    if zone is None or qtype in (AXFR, IXFR):
        return error(query, REFUSED, payload), REFUSED
    if qtype in (MAILA, MAILB):
        return error(query, NOTIMP, payload), NOTIMP
    if qtype in (OPT, TKEY, TSIG):
        return error(query, FORMERR, payload), FORMERR
    if query.qname == zone.apex and qtype in (SOA, NS, ANY):
        return apex_answer(table, zone, query, limit), NOERROR
    if entry is None and query.qname not in table.existing:
        return negative(query, zone, NXDOMAIN, payload, limit), NXDOMAIN
    if entry is not None and qtype == ANY:
        return _any(table, entry, query, resolver, now, limit)
    return negative(query, zone, NOERROR, payload, limit), NOERROR


def _any(
    table: DnsTable, entry: Entry, query: Query, resolver: str, now: float, limit: int
) -> tuple[bytes, int]:
    """RFC 8482: one RRset, the A records (or AAAA when there is no IPv4 record)."""
    payload = table.config.max_udp_payload
    resolved = resolve(table.snapshot, entry, 0, query.ecs, resolver, now)
    if not resolved.records and resolved.rcode == NOERROR:
        resolved = resolve(table.snapshot, entry, 2, query.ecs, resolver, now)
    if not resolved.records and resolved.rcode == NOERROR:
        return negative(query, entry.zone, NOERROR, payload, limit), NOERROR
    return addresses(query, resolved, payload, limit), resolved.rcode


def header(query: Query, bits: int, rcode: int, counts: tuple[int, int, int, int]) -> bytes:
    flags = QR | (query.flags & COPIED) | bits | (rcode & 0xF)
    return HEADER.pack(query.ident, flags, *counts)


def opt(query: Query, payload: int, rcode: int = 0, options: bytes = b"") -> bytes:
    """The response's OPT record: our payload size, the extended rcode, DO copied."""
    ttl = (rcode >> 4) << 24 | (DO if query.do else 0)
    return b"\x00" + RECORD.pack(OPT, payload, ttl, len(options)) + options


def addresses(query: Query, resolved: Resolved, payload: int, limit: int) -> bytes:
    """An A/AAAA answer with ``resolved``'s records (none for SERVFAIL)."""
    records = resolved.records
    extra = b""
    if query.edns:
        ecs = query.ecs
        extra = opt(query, payload, 0, ecs.option(resolved.scope) if ecs is not None else b"")
    question = query.question
    bits = AA if resolved.rcode == NOERROR else 0
    body = b"".join(records)
    arcount = 1 if extra else 0
    size = 12 + len(question) + len(body) + len(extra)
    if size > limit:
        return header(query, bits | TC, resolved.rcode, (1, 0, 0, arcount)) + question + extra
    return header(query, bits, resolved.rcode, (1, len(records), 0, arcount)) + (
        question + body + extra
    )


def negative(query: Query, zone: Zone, rcode: int, payload: int, limit: int) -> bytes:
    """NXDOMAIN or NODATA: the zone's SOA in the authority section, its owner a pointer to
    the apex's place inside the question's name."""
    question = query.question
    extra = opt(query, payload, 0, _ecs_echo(query)) if query.edns else b""
    arcount = 1 if extra else 0
    pointer = 0xC000 | (12 + len(query.qname) - len(zone.apex))
    soa = pointer.to_bytes(2, "big") + zone.negative_tail
    if 12 + len(question) + len(soa) + len(extra) > limit:
        return header(query, AA | TC, rcode, (1, 0, 0, arcount)) + question + extra
    return header(query, AA, rcode, (1, 0, 1, arcount)) + question + soa + extra


def _ecs_echo(query: Query) -> bytes:
    """The client subnet option of an answer that does not depend on the client (scope 0)."""
    ecs = query.ecs
    return ecs.option(0) if ecs is not None else b""


def error(query: Query, rcode: int, payload: int) -> bytes:
    """A response without records: FORMERR and NOTIMP (no OPT: the query may not have been
    understood), REFUSED (OPT when the query had one), BADVERS (in the OPT)."""
    question = query.question
    qdcount = 1 if question else 0
    if rcode == BADVERS:
        return header(query, 0, rcode, (qdcount, 0, 0, 1)) + question + opt(query, payload, rcode)
    if rcode == REFUSED and query.edns:
        extra = opt(query, payload, 0, _ecs_echo(query))
        return header(query, 0, rcode, (qdcount, 0, 0, 1)) + question + extra
    return header(query, 0, rcode, (qdcount, 0, 0, 0)) + question


def truncated(query: Query, payload: int) -> bytes:
    """An empty answer with TC set (what response rate limiting "slips"): a real client
    asks again over TCP, where no address can be forged."""
    extra = opt(query, payload) if query.edns else b""
    counts = (1 if query.question else 0, 0, 0, 1 if extra else 0)
    return header(query, TC, NOERROR, counts) + query.question + extra
