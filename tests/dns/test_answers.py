"""The answer builder, with dnspython as the reference reader of every answer: what each
kind of query is told, truncation, EDNS and client subnet echoes, and hypothesis for the
promises (every answer parses, is never larger than the client allows, echoes the
question as sent, never offers recursion)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.dns.answer import limit_for
from dispatcher.dns.message import decode
from tests.dns.helpers import (
    WWW,
    ZONE,
    Source,
    addresses,
    ask,
    make_config,
    query,
    service,
)


def test_a_and_aaaa_in_placement_order() -> None:
    svc = service()
    answer = ask(svc, query(WWW, "A"))
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.AA
    assert not answer.flags & dns.flags.RA
    assert addresses(answer) == ["192.0.2.1", "192.0.2.3"]  # eu first (weight 10), 2 answers
    assert answer.answer[0].ttl == 20
    six = ask(svc, query(WWW, "AAAA"))
    assert addresses(six) == ["2001:db8::2"]  # only us has IPv6


def test_the_question_is_echoed_as_sent_and_names_match_any_case() -> None:
    answer = ask(service(), query("wWw.FaRm.ExAmPlE.", "A"))
    assert answer.question[0].name.to_text() == "wWw.FaRm.ExAmPlE."
    assert len(addresses(answer)) == 2


def test_unknown_names_are_nxdomain_with_the_soa_and_the_negative_ttl() -> None:
    answer = ask(service(), query("nope.farm.example.", "A"))
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert answer.flags & dns.flags.AA
    (soa,) = answer.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name == dns.name.from_text(ZONE)
    assert soa.ttl == 60  # min(SOA TTL 3600, minimum 60)
    assert soa[0].serial == 1  # the registry's revision


def test_other_types_of_existing_names_are_nodata() -> None:
    svc = service()
    for name, rdtype in ((WWW, "MX"), (WWW, 65280), ("eu.farm.example.", "A"), (ZONE, "A")):
        answer = ask(svc, query(name, rdtype))
        assert answer.rcode() == dns.rcode.NOERROR, (name, rdtype)
        assert not answer.answer
        assert answer.authority[0].rdtype == dns.rdatatype.SOA


def test_names_outside_the_zones_other_classes_and_transfers_are_refused() -> None:
    svc = service()
    for wire in (
        query("www.example.com.", "A"),
        query("farm.example.com.", "A"),
        query("example.", "SOA"),
        query(ZONE, "AXFR"),
        query(ZONE, "IXFR"),
    ):
        answer = ask(svc, wire)
        assert answer.rcode() == dns.rcode.REFUSED
        assert not answer.flags & dns.flags.AA
    chaos = dns.message.make_query("version.bind.", "TXT", rdclass="CH").to_wire()
    assert ask(svc, chaos).rcode() == dns.rcode.REFUSED
    assert ask(svc, query(ZONE, "MAILB")).rcode() == dns.rcode.NOTIMP


def test_soa_and_ns_at_the_apex_with_glue() -> None:
    svc = service()
    soa = ask(svc, query(ZONE, "SOA", edns=0))
    assert soa.answer[0][0].to_text() == (
        "ns1.farm.example. hostmaster.farm.example. 1 3600 600 604800 60"
    )
    ns = ask(svc, query("FARM.example.", "NS"))
    assert ns.question[0].name.to_text() == "FARM.example."
    # (dnspython compresses against the question as sent: names compare without case)
    assert sorted(r.to_text().lower() for r in ns.answer[0]) == [
        "ns.elsewhere.example.",
        "ns1.farm.example.",
    ]
    glue = {(r.name.to_text().lower(), rdata.to_text()) for r in ns.additional for rdata in r}
    assert glue == {("ns1.farm.example.", "192.0.2.53"), ("ns1.farm.example.", "2001:db8::53")}


def test_any_is_answered_with_one_rrset() -> None:
    svc = service()
    www = ask(svc, query(WWW, "ANY"))
    assert [r.rdtype for r in www.answer] == [dns.rdatatype.A]
    apex = ask(svc, query(ZONE, "ANY"))
    assert [r.rdtype for r in apex.answer] == [dns.rdatatype.SOA]
    ent = ask(svc, query("eu.farm.example.", "ANY"))
    assert ent.rcode() == dns.rcode.NOERROR
    assert not ent.answer


def test_edns_is_echoed_with_our_payload_and_the_do_bit() -> None:
    answer = ask(service(), query(WWW, "A", payload=4096, want_dnssec=True))
    assert answer.edns == 0
    assert answer.payload == 1232
    assert answer.ednsflags & dns.flags.DO
    plain = ask(service(), query(WWW, "A"))
    assert plain.edns == -1  # no OPT in the query: none in the answer


def test_client_subnet_is_echoed_with_scope_zero_for_a_policy_that_does_not_locate() -> None:
    answer = ask(service(), query(WWW, "A", subnet="198.51.100.0/24"))
    (option,) = answer.options
    assert isinstance(option, dns.edns.ECSOption)
    assert (option.address, option.srclen, option.scopelen) == ("198.51.100.0", 24, 0)
    nx = ask(service(), query("x.farm.example.", "A", subnet="2001:db8::/48"))
    assert nx.options[0].srclen == 48
    assert nx.options[0].scopelen == 0


def test_badvers_for_edns_version_one() -> None:
    answer = ask(service(), query(WWW, "A", edns=1))
    assert answer.rcode() == dns.rcode.BADVERS
    assert answer.edns == 0


def test_formerr_and_notimp_carry_the_id() -> None:
    svc = service()
    bad = bytearray(query(WWW, "A"))
    bad[5] = 2  # two questions announced, one sent
    reply = svc.answer_udp(bytes(bad), "127.0.0.1")
    assert reply is not None
    parsed = dns.message.from_wire(reply, question_only=True)
    assert parsed.id == int.from_bytes(bad[:2], "big")
    assert parsed.rcode() == dns.rcode.FORMERR
    notify = bytearray(query(WWW, "SOA"))
    notify[2] = (notify[2] & 0x87) | (4 << 3)
    assert ask(svc, bytes(notify)).rcode() == dns.rcode.NOTIMP


def _many(count: int) -> list[dict[str, object]]:
    return [
        {
            "name": f"s{i}",
            "base_url": f"http://192.0.2.{i + 1}",
            "addresses": [f"2001:db8::{i + 1:x}"],
        }
        for i in range(count)
    ]


LONG = ".".join(["a" * 60] * 3) + ".farm.example."


def test_an_answer_that_does_not_fit_is_truncated_and_fits_over_tcp() -> None:
    config = make_config({"names": [{"name": LONG, "pool": "default", "answers": 16}]}, _many(16))
    svc = service(config)
    udp = ask(svc, query(LONG, "AAAA"))  # no EDNS: 512 bytes
    assert udp.flags & dns.flags.TC
    assert not udp.answer
    assert len(svc.answer_udp(query(LONG, "AAAA"), "127.0.0.1") or b"") <= 512
    big = ask(svc, query(LONG, "AAAA", edns=0, payload=1232))
    assert not big.flags & dns.flags.TC
    assert len(addresses(big)) == 16
    tcp = svc.answer_tcp(query(LONG, "AAAA"), "127.0.0.1")
    assert tcp is not None
    assert len(addresses(dns.message.from_wire(tcp))) == 16


def test_weights_ten_five_one_over_100000_queries() -> None:
    sites = [
        {"name": "eu", "base_url": "http://192.0.2.1", "weight": 10},
        {"name": "us", "base_url": "http://192.0.2.2", "weight": 5},
        {"name": "asia", "base_url": "http://192.0.2.3", "weight": 1},
    ]
    names = [{"name": WWW, "pool": "default", "answers": 1}]
    svc = service(make_config({"names": names}, sites))
    wire = query(WWW, "A", subnet="198.51.100.0/24")
    parsed = decode(wire)
    assert parsed is not None
    at = 12 + len(parsed.question) + 12  # the one A record's address: after its 12-byte head
    seen: Counter[bytes] = Counter()
    last = b""
    for _ in range(100_000):
        reply = svc.answer_udp(wire, "127.0.0.1")
        assert reply is not None
        seen[reply[at : at + 4]] += 1
        last = reply
    assert addresses(dns.message.from_wire(last))[0] == ".".join(map(str, last[at : at + 4]))
    total = sum(seen.values())
    shares = {bytes(k).hex(): v / total for k, v in seen.items()}
    assert shares.keys() == {"c0000201", "c0000202", "c0000203"}
    for address, weight in (("c0000201", 10), ("c0000202", 5), ("c0000203", 1)):
        assert abs(shares[address] - weight / 16) < 0.01


def test_a_drained_or_dead_site_is_not_answered_at_once() -> None:
    config = make_config()
    source = Source(config)
    from dispatcher.dns.service import DnsService

    svc = DnsService(source)
    assert "192.0.2.1" in addresses(ask(svc, query(WWW, "A")))
    drained = [replace(s, drained=True) if s.name == "eu" else s for s in config.sites]
    source.rebuild(drained)
    for _ in range(20):
        assert "192.0.2.1" not in addresses(ask(svc, query(WWW, "A")))
    source.health = lambda name: "down" if name == "asia" else "up"
    source.rebuild(drained)
    for _ in range(20):
        assert addresses(ask(svc, query(WWW, "A"))) == []  # us has no IPv4: NODATA


@pytest.mark.parametrize(
    ("all_down", "extra", "rcode", "expected"),
    [
        ("failsafe", {"failsafe": ["203.0.113.9"]}, dns.rcode.NOERROR, ["203.0.113.9"]),
        ("fail-open", {}, dns.rcode.NOERROR, ["192.0.2.1", "192.0.2.3"]),
        ("servfail", {}, dns.rcode.SERVFAIL, []),
    ],
)
def test_when_every_site_is_down_all_down_answers(
    all_down: str, extra: dict[str, object], rcode: int, expected: list[str]
) -> None:
    names = [{"name": WWW, "pool": "default", "ttl": "20/5", "all_down": all_down, **extra}]
    source = Source(make_config({"names": names}), health=lambda name: "down")
    from dispatcher.dns.service import DnsService

    answer = ask(DnsService(source), query(WWW, "A"))
    assert answer.rcode() == rcode
    assert addresses(answer) == expected
    if expected:
        assert answer.answer[0].ttl == 5  # the short TTL: come back soon


# --- hypothesis --------------------------------------------------------------------------

LABELS = st.sampled_from(["www", "WWW", "eu", "deep", "ns1", "x", "farm", "example", "com"])
NAMES = st.lists(LABELS, min_size=0, max_size=5).map(lambda ls: ".".join([*ls, ""]) or ".")
TYPES = st.sampled_from(["A", "AAAA", "SOA", "NS", "ANY", "MX", "TXT", "CNAME", "HINFO", 65280])


@given(
    name=NAMES,
    rdtype=TYPES,
    edns=st.sampled_from([None, 0]),
    payload=st.integers(0, 65535),
    subnet=st.sampled_from([None, "198.51.100.0/24", "0.0.0.0/0", "2001:db8::/56"]),
    do=st.booleans(),
)
@settings(max_examples=1500, deadline=None)
def test_every_answer_parses_fits_and_echoes(
    name: str, rdtype: str | int, edns: int | None, payload: int, subnet: str | None, do: bool
) -> None:
    svc = SERVICE
    if edns is None and (subnet or do):
        edns = 0
    wire = query(name, rdtype, edns=edns, payload=max(payload, 1), subnet=subnet, want_dnssec=do)
    sent = dns.message.from_wire(wire)
    parsed = decode(wire)
    assert parsed is not None
    reply = svc.answer_udp(wire, "127.0.0.1")
    assert reply is not None
    assert len(reply) <= limit_for(parsed, 1232)
    answer = dns.message.from_wire(reply)
    assert answer.id == sent.id
    assert answer.flags & dns.flags.QR
    assert not answer.flags & dns.flags.RA
    assert answer.question[0].name.to_text() == sent.question[0].name.to_text()
    tcp = svc.answer_tcp(wire, "127.0.0.1")
    assert tcp is not None
    dns.message.from_wire(tcp)


SERVICE = service()


@given(st.binary(min_size=12, max_size=700))
@settings(max_examples=3000, deadline=None)
def test_any_datagram_gets_an_answer_or_silence_within_512_bytes(data: bytes) -> None:
    reply = SERVICE.answer_udp(data, "192.0.2.200")
    if reply is None:
        return
    parsed = decode(data)
    assert parsed is not None
    assert len(reply) <= limit_for(parsed, 1232)
    dns.message.from_wire(reply, question_only=True)
