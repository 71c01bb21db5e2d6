"""The query decoder against hostile bytes: any datagram gives a query, an error to answer,
or silence, never an exception; and the hand-made cases of what a stranger sends."""

from __future__ import annotations

import struct

import dns.message
import dns.name
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.dns.message import (
    BADVERS,
    FORMERR,
    NOERROR,
    NOTIMP,
    decode,
)
from dispatcher.dns.names import BadName, read_name
from tests.dns.helpers import WWW, query

HEADER = struct.Struct("!HHHHHH")


def packet(
    *,
    flags: int = 0x0100,
    qd: int = 1,
    an: int = 0,
    ns: int = 0,
    ar: int = 0,
    body: bytes = b"\x03www\x04farm\x07example\x00\x00\x01\x00\x01",
) -> bytes:
    return HEADER.pack(0x1234, flags, qd, an, ns, ar) + body


def opt(
    options: bytes = b"", *, payload: int = 1232, ttl: int = 0, owner: bytes = b"\x00"
) -> bytes:
    return owner + struct.pack("!HHIH", 41, payload, ttl, len(options)) + options


def ecs(family: int, source: int, address: bytes, scope: int = 0) -> bytes:
    body = struct.pack("!HBB", family, source, scope) + address
    return struct.pack("!HH", 8, len(body)) + body


QUESTION = b"\x03www\x04farm\x07example\x00\x00\x01\x00\x01"


@given(st.binary(max_size=600))
@settings(max_examples=3000)
def test_any_bytes_decode_without_raising(data: bytes) -> None:
    result = decode(data)
    if result is not None:
        assert result.rcode in (NOERROR, FORMERR, NOTIMP, BADVERS)


@given(st.binary(min_size=12, max_size=300), st.integers(0, 11))
@settings(max_examples=2000)
def test_garbage_after_a_valid_header_prefix(data: bytes, cut: int) -> None:
    """Valid queries cut or spliced anywhere never make the decoder raise."""
    good = query(WWW, "A", subnet="198.51.100.0/24")
    for mixed in (good[: cut + 12] + data, data[:12] + good[12:], good[: -cut or None]):
        decode(mixed)


def test_short_datagrams_and_responses_get_silence() -> None:
    assert decode(b"") is None
    assert decode(bytes(11)) is None
    assert decode(packet(flags=0x8100)) is None  # QR set: a response, never answered


def test_a_plain_query() -> None:
    q = decode(query("WwW.Farm.Example.", "AAAA"))
    assert q is not None
    assert q.rcode == NOERROR
    assert q.qname == b"\x03www\x04farm\x07example\x00"  # lower-cased for lookups
    assert q.question.startswith(b"\x03WwW\x04Farm\x07Example\x00")  # echoed as sent
    assert (q.qtype, q.qclass, q.edns, q.payload, q.ecs) == (28, 1, False, 512, None)


def test_edns_payload_do_and_client_subnet() -> None:
    q = decode(query(WWW, "A", subnet="198.51.100.77/24", payload=4000, want_dnssec=True))
    assert q is not None
    assert q.rcode == NOERROR
    assert q.edns
    assert q.payload == 4000
    assert q.do
    assert q.ecs is not None
    assert q.ecs.subnet() == "198.51.100.0/24"
    q6 = decode(query(WWW, "A", subnet="2001:db8:aa:bb::/56"))
    assert q6 is not None
    assert q6.ecs is not None
    assert q6.ecs.subnet() == "2001:db8:aa::/56"


def test_a_tiny_payload_counts_as_512() -> None:
    q = decode(packet(ar=1, body=QUESTION + opt(payload=100)))
    assert q is not None
    assert q.payload == 512


@pytest.mark.parametrize(
    ("wire", "rcode"),
    [
        (packet(qd=0, body=b""), FORMERR),  # no question
        (packet(qd=2, body=QUESTION + QUESTION), FORMERR),  # two questions
        (packet(an=1), FORMERR),  # an answer in a query
        (packet(ns=1), FORMERR),
        (packet(ar=5, body=QUESTION + opt() * 5), FORMERR),  # too many additional records
        (packet(body=QUESTION + b"\x00"), FORMERR),  # trailing garbage
        (packet(body=QUESTION[:-1]), FORMERR),  # question cut short
        (packet(body=b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"), FORMERR),  # 64-byte label
        (packet(body=(b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"), FORMERR),  # 257 bytes
        (packet(body=b"\xc0\x0c\x00\x01\x00\x01"), FORMERR),  # a pointer to itself
        (packet(body=b"\x01a\xc0\x0c\x00\x01\x00\x01"), FORMERR),  # a loop through a label
        (packet(body=b"\xc0\x20\x00\x01\x00\x01"), FORMERR),  # a pointer forwards
        (packet(body=b"\xc0"), FORMERR),  # a pointer cut short
        (packet(body=b"\x81abc\x00\x00\x01\x00\x01"), FORMERR),  # obsolete label type
        (packet(ar=2, body=QUESTION + opt() + opt()), FORMERR),  # two OPTs
        (packet(ar=1, body=QUESTION + opt(owner=b"\x01a\x00")), FORMERR),  # OPT not at root
        (packet(ar=1, body=QUESTION + opt(b"\x00\x08\x00\x09")), FORMERR),  # option overrun
        (packet(ar=1, body=QUESTION + opt()[:-1]), FORMERR),  # OPT cut short
        (packet(ar=1, body=QUESTION + opt(ttl=1 << 16)), BADVERS),  # EDNS version 1
        (packet(flags=0x2100), NOTIMP),  # opcode 4 (NOTIFY)
        (packet(flags=0x2900), NOTIMP),  # opcode 5 (UPDATE)
        (packet(flags=0x7900, qd=0, body=b""), NOTIMP),  # opcode 15, no question
    ],
)
def test_hostile_queries(wire: bytes, rcode: int) -> None:
    q = decode(wire)
    assert q is not None
    assert q.rcode == rcode


@pytest.mark.parametrize(
    ("option", "ok"),
    [
        (ecs(1, 24, b"\xc6\x33\x64"), True),
        (ecs(1, 0, b""), True),
        (ecs(2, 56, bytes(7)), True),
        (ecs(1, 24, b"\xc6\x33\x64", scope=5), True),  # a scope in a query is ignored
        (ecs(1, 24, b"\xc6\x33\x64\x00"), False),  # too many address bytes
        (ecs(1, 24, b"\xc6\x33"), False),  # too few
        (ecs(1, 23, b"\xc6\x33\x65"), False),  # a bit set beyond the source prefix
        (ecs(1, 33, bytes(5)), False),  # longer than IPv4
        (ecs(2, 129, bytes(17)), False),
        (ecs(3, 8, b"\x01"), False),  # unknown family
        (struct.pack("!HH", 8, 2) + b"\x00\x01", False),  # cut short
        (ecs(1, 24, b"\xc6\x33\x64") * 2, False),  # twice
        (struct.pack("!HH", 10, 8) + bytes(8), True),  # a client cookie: ignored
        (struct.pack("!HH", 65001, 3) + b"abc", True),  # an unknown option: ignored
    ],
)
def test_client_subnet_as_rfc_7871_says(option: bytes, ok: bool) -> None:
    q = decode(packet(ar=1, body=QUESTION + opt(option)))
    assert q is not None
    assert q.rcode == (NOERROR if ok else FORMERR)


def test_a_tsig_record_is_read_and_ignored() -> None:
    tsig = b"\x03key\x00" + struct.pack("!HHIH", 250, 255, 0, 4) + b"abcd"
    q = decode(packet(ar=2, body=QUESTION + opt() + tsig))
    assert q is not None
    assert q.rcode == NOERROR
    assert q.edns


def test_a_compressed_question_is_echoed_uncompressed() -> None:
    # the name's tail points back into the header's bytes: legal but odd; the echo must
    # not carry a pointer into a header that is not the same in the answer
    wire = HEADER.pack(0x0001, 0x0100, 1, 0, 0, 0) + b"\x01a\xc0\x05\x00\x01\x00\x01"
    q = decode(wire)
    assert q is not None
    if q.rcode == NOERROR:
        assert b"\xc0" not in q.question[:-4]


@given(st.binary(max_size=300), st.integers(0, 300))
@settings(max_examples=2000)
def test_read_name_terminates_or_refuses(data: bytes, offset: int) -> None:
    try:
        name, end = read_name(data, offset)
    except BadName:
        return
    assert len(name) <= 255
    assert name.endswith(b"\x00")
    assert offset < end <= len(data)


def test_every_name_dnspython_writes_reads_back() -> None:
    for name in ("a.", "x" * 63 + ".example.", ".".join(["a" * 62] * 4) + "."):
        wire = dns.message.make_query(name, "A").to_wire()
        q = decode(wire)
        assert q is not None
        assert q.rcode == NOERROR
        assert dns.name.from_wire(q.question, 0)[0] == dns.name.from_text(name)
