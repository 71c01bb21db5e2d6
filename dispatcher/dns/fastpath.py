"""The hot path: the common query answered from precomputed wire bytes, in one function.

The common query is an A or AAAA question, class IN, for a configured name, with
recursion or not, with or without EDNS (version 0, any options, at most one client
subnet option) and nothing else: no compression pointer in the question, no other
additional record. :func:`fast_answer` recognises it with a handful of slices and struct
reads and answers it exactly as the general path (:func:`~dispatcher.dns.answer.respond`
on a :func:`~dispatcher.dns.message.decode`\\ d query) would, without building a query
object; anything else, malformed or merely unusual, it declines (``None``) *before*
placement is asked, and the general path answers. Tests hold the two paths to the same
bytes.

Client subnet options are parsed once per distinct option and kept (a resolver sends the
same few subnets again and again), at most :data:`MAX_SUBNETS` per table.
"""

from __future__ import annotations

from dispatcher.dns.answer import addresses, negative
from dispatcher.dns.message import (
    AAAA,
    ECS_OPTION,
    HEADER,
    MIN_PAYLOAD,
    NOERROR,
    RECORD,
    TWO,
    A,
    Ecs,
    Query,
    _ecs,
)
from dispatcher.dns.resolve import resolve
from dispatcher.dns.table import DnsTable

#: Client subnet options kept per table (parsed once each).
MAX_SUBNETS = 4096
#: Flags a common query may have: RD, CD, AD (the opcode, QR, Z must be zero).
_ALLOWED_FLAGS = 0x0100 | 0x0020 | 0x0010


def fast_answer(  # noqa: PLR0911 - one flat function: the hot path
    table: DnsTable, data: bytes, resolver: str, now: float, tcp: bool
) -> tuple[bytes, bytes, int] | None:
    """(the answer, its rate-limiting key, its rcode), or None: not a common query."""
    size = len(data)
    if size < 17:
        return None
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & ~_ALLOWED_FLAGS & 0xFFF0 or qdcount != 1 or ancount or nscount or arcount > 1:
        return None
    end = 12
    length = data[12]
    while length:
        if length > 63:
            return None
        end += length + 1
        if end >= size or end > 266:
            return None
        length = data[end]
    end += 1  # past the root: the question's type at end
    if end + 4 > size:
        return None
    qtype, qclass = TWO.unpack_from(data, end)
    if qclass != 1 or (qtype != A and qtype != AAAA):  # noqa: PLR1714 - the hot path
        return None
    key = data[12 : end + 2].lower()
    entry = table.names.get(key[:-2])
    if entry is None:
        return None
    query = Query(ident, flags)
    if arcount == 1:
        if not _opt(table, data, end + 4, query):
            return None
    elif end + 4 != size:
        return None
    query.question = data[12 : end + 4]
    query.qname = key[:-2]
    query.qtype, query.qclass = qtype, 1
    edns, payload, ecs = query.edns, query.payload, query.ecs
    config = table.config
    limit = 65_535 if tcp else min(payload, config.max_udp_payload) if edns else 512
    resolved = resolve(table.snapshot, entry, 0 if qtype == A else 2, ecs, resolver, now)
    if not resolved.records and resolved.rcode == NOERROR:
        return negative(query, entry.zone, NOERROR, config.max_udp_payload, limit), key, NOERROR
    return addresses(query, resolved, config.max_udp_payload, limit), key, resolved.rcode


def _opt(table: DnsTable, data: bytes, position: int, query: Query) -> bool:
    """Read the OPT record that ends the message into ``query``; False if not common."""
    size = len(data)
    if size < position + 11 or data[position]:
        return False
    rtype, payload, ttl, rdlength = RECORD.unpack_from(data, position + 1)
    if rtype != 41 or ttl & 0x00FF0000 or position + 11 + rdlength != size:
        return False
    query.edns = True
    query.payload = max(payload, MIN_PAYLOAD)
    query.do = bool(ttl & 0x8000)
    i = position + 11
    while i < size:
        if i + 4 > size:
            return False
        code, length = TWO.unpack_from(data, i)
        i += 4
        if i + length > size:
            return False
        if code == ECS_OPTION:
            if query.ecs is not None:
                return False
            query.ecs = _subnet(table, data[i : i + length])
            if query.ecs is None:
                return False
        i += length
    return True


def _subnet(table: DnsTable, body: bytes) -> Ecs | None:
    """The client subnet option ``body`` (checked), kept for the next query that sends it."""
    subnets = table.subnets
    found = subnets.get(body)
    if found is None:
        found = _ecs(body)
        if found is None:
            return None
        if len(subnets) >= MAX_SUBNETS:
            subnets.clear()
        subnets[body] = found
    return found
