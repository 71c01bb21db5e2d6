"""The fast path answers exactly as the general path does, byte for byte, and declines
everything it does not recognise (before placement is asked: the rotation moves once)."""

from __future__ import annotations

import struct

import dns.message
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config import Config
from dispatcher.dns.answer import TCP_LIMIT, limit_for, respond
from dispatcher.dns.fastpath import MAX_COMPILED, MAX_KEPT, MAX_TAILS, fast_answer
from dispatcher.dns.message import decode
from dispatcher.dns.service import DnsService
from dispatcher.dns.table import DnsTable, build_table
from tests.dns.helpers import SITES, WWW, Source, addresses, make_config, query

CONFIG = make_config(
    {
        "names": [
            {"name": WWW, "pool": "default", "ttl": "20/5", "answers": 2},
            {"name": "one.farm.example.", "pool": "default", "answers": 1, "all_down": "servfail"},
            {"name": "ns1.farm.example.", "addresses": ["192.0.2.53"]},
        ]
    }
)


#: Every site with an address of each family (so one-address names are compiled for both).
BOTH = make_config(
    {
        "names": [
            {"name": WWW, "pool": "default", "ttl": "20/5", "answers": 2},
            {"name": "one.farm.example.", "pool": "default", "ttl": "20/5", "answers": 1},
        ]
    },
    [
        {**site, "addresses": [f"192.0.2.{i}", f"2001:db8::{i}"]}
        for i, site in enumerate(SITES, start=1)
    ],
)


def twins(config: Config = CONFIG) -> tuple[Source, Source]:
    """Two sources in the same state: one for each path, so both rotations agree."""
    return Source(config), Source(config)


def table_of(source: Source) -> DnsTable:
    """The general path's table of ``source``'s snapshot (built anew: no compiled queries)."""
    assert source.config.dns is not None
    return build_table(source.config.dns, source.snapshot)


def drawn_query(
    name: str, rdtype: str, edns: int | None, payload: int, subnet: str | None, do: bool
) -> bytes:
    """The query drawn (with EDNS when a subnet or DO asks for it)."""
    if edns is None and (subnet or do):
        edns = 0
    return query(name, rdtype, edns=edns, payload=payload, subnet=subnet, want_dnssec=do)


def general(source: Source, data: bytes, tcp: bool) -> bytes | None:
    assert CONFIG.dns is not None
    q = decode(data)
    if q is None:
        return None
    limit = TCP_LIMIT if tcp else limit_for(q, CONFIG.dns.max_udp_payload)
    return respond(table_of(source), q, "192.0.2.200", 5.0, limit)[0]


def fast(source: Source, data: bytes, tcp: bool) -> bytes | None:
    found = fast_answer(table_of(source), data, "192.0.2.200", 5.0, tcp)
    return None if found is None else found[0]


NAMES = st.sampled_from([WWW, "WwW.FARM.example.", "one.farm.example.", "ns1.farm.example."])
PAYLOADS = st.integers(1, 65535)
SUBNETS = st.sampled_from([None, "198.51.100.0/24", "2001:db8::/56", "0.0.0.0/0"])


@given(
    name=NAMES,
    rdtype=st.sampled_from(["A", "AAAA", "MX"]),
    edns=st.sampled_from([None, 0, 1]),
    payload=PAYLOADS,
    subnet=SUBNETS,
    do=st.booleans(),
    tcp=st.booleans(),
    rounds=st.integers(1, 4),
)
@settings(max_examples=600, deadline=None)
def test_the_fast_path_gives_the_general_paths_bytes(
    name: str,
    rdtype: str,
    edns: int | None,
    payload: int,
    subnet: str | None,
    do: bool,
    tcp: bool,
    rounds: int,
) -> None:
    data = drawn_query(name, rdtype, edns, payload, subnet, do)
    left, right = twins()
    for _ in range(rounds):  # the rotations move in step
        quick = fast(left, data, tcp)
        slow = general(right, data, tcp)
        if quick is None:  # declined: not a common query
            assert rdtype == "MX" or edns == 1
            continue
        assert quick == slow


@given(st.binary(min_size=12, max_size=300))
@settings(max_examples=2000, deadline=None)
def test_random_bytes_are_declined_or_answered_alike(data: bytes) -> None:
    left, right = twins()
    quick = fast(left, data, False)
    if quick is not None:
        assert quick == general(right, data, False)


def _with_header_prefix(data: bytes) -> st.SearchStrategy[bytes]:
    return st.binary(max_size=40).map(lambda tail: data[:12] + data[12:] + tail)


@given(st.integers(0, 60), st.binary(min_size=1, max_size=8))
@settings(max_examples=1000, deadline=None)
def test_valid_queries_mangled_are_declined_or_answered_alike(at: int, junk: bytes) -> None:
    base = query(WWW, "A", subnet="198.51.100.0/24")
    data = base[:at] + junk + base[at + len(junk) :]
    left, right = twins()
    quick = fast(left, data, False)
    if quick is not None:
        assert quick == general(right, data, False)


def test_unusual_queries_are_declined() -> None:
    source = Source(CONFIG)
    plain = bytearray(query(WWW, "A"))
    for flags in (0x8100, 0x2900, 0x0140, 0x0300):  # QR, opcode, Z, TC
        mangled = bytes(plain[:2]) + struct.pack("!H", flags) + bytes(plain[4:])
        assert fast(source, mangled, False) is None
    assert fast(source, query(WWW, "A", edns=1), False) is None  # BADVERS: general path
    assert fast(source, query("nope.farm.example.", "A"), False) is None
    assert fast(source, query(WWW, "A"), False) is not None


def test_the_opt_cache_is_bounded() -> None:
    table = table_of(Source(CONFIG))
    for i in range(MAX_KEPT + 10):
        data = query(WWW, "A", subnet=f"10.{i // 256 % 256}.{i % 256}.0/24")
        assert fast_answer(table, data, "192.0.2.1", 1.0, False) is not None
    assert len(table.kept) <= MAX_KEPT


@given(
    name=st.sampled_from(["one.farm.example.", "ONE.farm.example.", WWW]),
    rdtype=st.sampled_from(["A", "AAAA"]),
    edns=st.sampled_from([None, 0]),
    payload=PAYLOADS,
    subnet=SUBNETS,
    do=st.booleans(),
    short=st.booleans(),
    ident=st.integers(0, 65535),
)
@settings(max_examples=300, deadline=None)
def test_compiled_answers_are_the_general_paths_bytes(
    name: str,
    rdtype: str,
    edns: int | None,
    payload: int,
    subnet: str | None,
    do: bool,
    short: bool,
    ident: int,
) -> None:
    """Over a whole rotation and more (10:5:1 is 16 picks), with a new ID each time: the
    service's answers (compiled after the first) are the general path's, in step."""
    data = drawn_query(name, rdtype, edns, payload, subnet, do)
    left, right = twins(BOTH)
    service = DnsService(left, clock=lambda: 5.0)
    table = service.table()
    assert table is not None
    if short:  # the short TTL in force (a site of the pool just changed)
        for entry in table.names.values():
            entry.short_until = 10.0
    reference = table_of(right)
    assert BOTH.dns is not None
    for entry in reference.names.values():
        entry.short_until = table.names[entry.name].short_until
    for round_ in range(40):
        wire = ((ident + round_) % 65536).to_bytes(2, "big") + data[2:]
        quick = service.answer_udp(wire, "192.0.2.200")
        q = decode(wire)
        assert q is not None
        limit = limit_for(q, BOTH.dns.max_udp_payload)
        assert quick == respond(reference, q, "192.0.2.200", 5.0, limit)[0]
    assert len(table.compiled) == (name.lower() == "one.farm.example.")  # (www: two answers)


def test_a_compiled_query_is_answered_without_the_fast_path() -> None:
    """The second time, the answer comes from the compiled query (the fast path is not
    called: a table whose fast index is emptied still answers it)."""
    service = DnsService(Source(BOTH))
    data = query("one.farm.example.", "AAAA", subnet="198.51.100.0/24")
    first = service.answer_udp(data, "192.0.2.1")
    table = service.table()
    assert table is not None
    assert first is not None
    assert len(table.compiled) == 1
    table.fast.clear()
    again = service.answer_udp(data, "192.0.2.1")
    assert again is not None
    assert len(addresses(dns.message.from_wire(again))) == 1
    assert service.report().counts["noerror"] == 2


def test_the_compiled_queries_and_their_answers_are_bounded() -> None:
    many = make_config(
        {"names": [{"name": "one.farm.example.", "pool": "default", "answers": 1}]},
        [
            {"name": f"s{i}", "base_url": f"http://192.0.2.{i + 1}", "weight": 1}
            for i in range(MAX_TAILS + 6)
        ],
    )
    service = DnsService(Source(many))
    seen = set()
    for _ in range(2 * (MAX_TAILS + 6)):  # the whole rotation, twice: every site placed
        answer = service.answer_udp(query("one.farm.example.", "A"), "192.0.2.200")
        assert answer is not None
        seen.update(addresses(dns.message.from_wire(answer)))
    table = service.table()
    assert table is not None
    (compiled,) = table.compiled.values()
    assert len(compiled.long) == MAX_TAILS
    assert len(seen) == MAX_TAILS + 6  # those not kept are rendered each time
    for i in range(MAX_COMPILED + 10):
        subnet = f"10.{i // 256 % 256}.{i % 256}.0/24"
        service.answer_udp(query("one.farm.example.", "A", subnet=subnet), "192.0.2.200")
    assert len(table.compiled) <= MAX_COMPILED
