"""The query decoder: a datagram (or a TCP frame) from a stranger -> a :class:`Query`, or
``None`` for silence. It never raises, whatever the bytes.

What it accepts, and what it answers otherwise:

- fewer than 12 bytes, or the QR bit set (a response: answering responses makes loops
  between servers): silence, ``None``;
- an opcode other than QUERY: a :class:`Query` whose ``rcode`` is NOTIMP (the question is
  echoed when it can be read);
- not exactly one question, records in the answer or authority section, more than
  :data:`MAX_ADDITIONAL` additional records, a name that cannot be read (compression loops,
  pointers forwards, labels past the end, oversized labels or names, obsolete label types),
  records cut short, bytes after the last record, two OPT records, an OPT not owned by the
  root, an option running past its record, an EDNS Client Subnet option that is not as RFC
  7871 says (family 1 or 2, source prefix within the family, exactly ``ceil(source / 8)``
  address bytes, no bit set beyond the source prefix, at most one): ``rcode`` FORMERR;
- an EDNS version other than 0: ``rcode`` BADVERS (RFC 6891), answered with an OPT.

Other additional records (TSIG, SIG(0)) must be well formed and are ignored: this server
signs nothing. The DNS cookie option (RFC 7873) and unknown options are ignored.
"""

from __future__ import annotations

import ipaddress
import struct

from dispatcher.dns.names import MAX_LABEL, MAX_NAME, BadName, read_name

HEADER = struct.Struct("!HHHHHH")
TWO = struct.Struct("!HH")
RECORD = struct.Struct("!HHIH")

# header flags
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
# response codes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
# types and classes
A, NS, SOA, HINFO, AAAA, OPT = 1, 2, 6, 13, 28, 41
IXFR, AXFR, MAILB, MAILA, ANY = 251, 252, 253, 254, 255
IN = 1
# EDNS options
ECS_OPTION, COOKIE_OPTION = 8, 10
DO = 0x8000

#: Additional records a query may carry (an OPT, a TSIG, and some slack).
MAX_ADDITIONAL = 4
#: The smallest payload size a client may announce: smaller values count as 512.
MIN_PAYLOAD = 512


class Ecs:
    """An EDNS Client Subnet option from a query (RFC 7871), checked.

    ``address`` holds the ``ceil(source / 8)`` address bytes as sent (bits past ``source``
    are zero, or the query was refused); ``text`` the subnet (``"192.0.2.0/24"``,
    ``"2001:db8::/56"``); ``echo`` the option as it goes back with scope 0.
    """

    __slots__ = ("address", "echo", "family", "source", "text")

    def __init__(self, family: int, source: int, address: bytes) -> None:
        self.family = family
        self.source = source
        self.address = address
        self.text = self.subnet()
        self.echo = _ecs_option(family, source, 0, address)

    def subnet(self) -> str:
        """``"192.0.2.0/24"`` or ``"2001:db8::/56"``."""
        if self.family == 1:
            padded = self.address + bytes(4 - len(self.address))
            return f"{padded[0]}.{padded[1]}.{padded[2]}.{padded[3]}/{self.source}"
        padded = self.address + bytes(16 - len(self.address))
        return f"{ipaddress.IPv6Address(padded)}/{self.source}"

    def option(self, scope: int) -> bytes:
        """This option as it goes back in the answer, with ``scope`` (RFC 7871 section 7.2)."""
        if scope == 0:
            return self.echo
        return _ecs_option(self.family, self.source, scope, self.address)


def _ecs_option(family: int, source: int, scope: int, address: bytes) -> bytes:
    body = struct.pack("!HBB", family, source, scope) + address
    return TWO.pack(ECS_OPTION, len(body)) + body


class Query:
    """A decoded query. ``rcode`` is :data:`NOERROR` when it can be answered, else the error
    to answer with. ``question`` is the question section as it will be echoed (the name in
    the case it was sent, uncompressed; empty when it could not be read), ``qname`` the
    lower-cased wire name. ``payload`` is the UDP size the client accepts (512 without
    EDNS), ``edns`` whether it sent an OPT, ``do`` its DNSSEC OK bit, ``ecs`` its client
    subnet (``None`` when it sent none)."""

    __slots__ = (
        "do",
        "ecs",
        "edns",
        "flags",
        "ident",
        "payload",
        "qclass",
        "qname",
        "qtype",
        "question",
        "rcode",
    )

    def __init__(self, ident: int, flags: int) -> None:
        self.ident = ident
        self.flags = flags
        self.rcode = NOERROR
        self.question = b""
        self.qname = b""
        self.qtype = 0
        self.qclass = 0
        self.edns = False
        self.payload = MIN_PAYLOAD
        self.do = False
        self.ecs: Ecs | None = None

    def fail(self, rcode: int) -> Query:
        self.rcode = rcode
        return self


def decode(data: bytes) -> Query | None:
    """Decode ``data``; see the module. Never raises."""
    if len(data) < 12:
        return None
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        return None
    query = Query(ident, flags)
    opcode = (flags >> 11) & 0xF
    if qdcount != 1:
        return query.fail(NOTIMP if opcode else FORMERR)
    offset = _question(data, query)
    if offset < 0:
        return query.fail(FORMERR)
    if opcode:
        return query.fail(NOTIMP)
    if ancount or nscount or arcount > MAX_ADDITIONAL:
        return query.fail(FORMERR)
    for _ in range(arcount):
        offset = _additional(data, offset, query)
        if offset < 0:
            break
    return query if offset == len(data) else query.fail(FORMERR)


def _question(data: bytes, query: Query) -> int:
    """Read the question into ``query``; the offset after it, or -1 when unreadable."""
    size = len(data)
    i = 12
    while True:  # the common case: no compression pointer
        if i >= size:
            return -1
        length = data[i]
        if length == 0:
            name = data[12 : i + 1]
            end = i + 1
            break
        if length > MAX_LABEL:  # a pointer (or an obsolete label type): the careful reader
            try:
                name, end = read_name(data, 12)
            except BadName:
                return -1
            break
        i += 1 + length
        if i - 12 >= MAX_NAME:
            return -1
    if end + 4 > size:
        return -1
    query.qname = name.lower()
    query.question = name + data[end : end + 4]
    query.qtype, query.qclass = TWO.unpack_from(data, end)
    return end + 4


def _additional(data: bytes, offset: int, query: Query) -> int:
    """Read one additional record; the offset after it, or -1 when it is not acceptable."""
    try:
        owner, offset = read_name(data, offset)
    except BadName:
        return -1
    if offset + 10 > len(data):
        return -1
    rtype, rclass, ttl, rdlength = RECORD.unpack_from(data, offset)
    start = offset + 10
    end: int = start + rdlength
    if end > len(data):
        return -1
    if rtype != OPT:
        return end  # TSIG, SIG(0)...: well formed, ignored
    if query.edns or owner != b"\x00":
        return -1
    query.edns = True
    query.payload = max(MIN_PAYLOAD, rclass)
    query.do = bool(ttl & DO)
    if (ttl >> 16) & 0xFF:
        query.rcode = BADVERS
    return end if _options(data, start, end, query) else -1


def _options(data: bytes, i: int, end: int, query: Query) -> bool:
    """Read the OPT record's options; False when one is malformed."""
    while i < end:
        if i + 4 > end:
            return False
        code, length = TWO.unpack_from(data, i)
        i += 4
        if i + length > end:
            return False
        if code == ECS_OPTION:
            if query.ecs is not None:
                return False
            ecs = _ecs(data[i : i + length])
            if ecs is None:
                return False
            query.ecs = ecs
        i += length
    return True


def _ecs(body: bytes) -> Ecs | None:
    """The client subnet option's body, checked as RFC 7871 section 6 says; None if bad.
    (Its SCOPE PREFIX-LENGTH must be 0 in a query; a non-zero one is ignored, as most
    servers do.)"""
    if len(body) < 4:
        return None
    family, source = body[0] << 8 | body[1], body[2]
    bits = 32 if family == 1 else 128 if family == 2 else 0
    if not bits or source > bits:
        return None
    address = body[4:]
    if len(address) != (source + 7) // 8:
        return None
    if source % 8 and address[-1] & (0xFF >> (source % 8)):
        return None  # bits set beyond the source prefix
    return Ecs(family, source, address)
