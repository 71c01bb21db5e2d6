"""The DNS front's counters in ``/metrics``: counted by the answer path (queries by type and
rcode, answers by the site placed first, ``all_down`` answers by pool), carried from the
workers to the control process and summed, and exported; checked with real ``dig`` queries
and a burst that response rate limiting cuts, against ``farm-dispatcher serve``, the output
read by ``promtool check metrics``."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.flags
import dns.message
import httpx
import pytest

from dispatcher.dns.message import BADVERS, FORMERR, NOERROR, NOTIMP, NXDOMAIN, REFUSED, SERVFAIL
from dispatcher.dns.tally import RCODE_NAMES, DnsReport, DnsTotals, answer_matrix, slot_of
from dispatcher.wire import MAX_DNS_QUERY_KINDS, WireError, decode_report, encode_dns
from tests.conftest import ADMIN_TOKEN, LoopbackSite
from tests.dns.helpers import ask, make_config, query, service
from tests.dns.test_real_clients import DIG, config_text, dig, status
from tests.test_metrics import promtool, samples
from tests.test_serve_processes import Serve, upgrade

# --- counted by the answer path ----------------------------------------------------------


def test_queries_by_type_and_rcode_and_answers_by_site() -> None:
    svc = service()
    for _ in range(3):
        ask(svc, query("www.farm.example.", "A"))  # the fast path
    ask(svc, query("www.farm.example.", "AAAA", subnet="198.51.100.0/24"))
    ask(svc, query("www.farm.example.", "MX"))  # NODATA
    ask(svc, query("www.farm.example.", 65280))  # an unknown type: "other"
    ask(svc, query("nope.farm.example.", "A"))
    ask(svc, query("www.example.com.", "A"))
    ask(svc, query("ns1.farm.example.", "A"))  # fixed addresses: no site placed
    assert svc.answer_udp(b"\x00" * 5, "127.0.0.1") is None  # not a query
    report = svc.take_report()
    assert report.queries == {
        "A/noerror": 4,
        "AAAA/noerror": 1,
        "MX/noerror": 1,
        "other/noerror": 1,
        "A/nxdomain": 1,
        "A/refused": 1,
    }
    assert sum(report.answers.values()) == 4  # www: three A, one AAAA
    assert set(report.answers) <= {"eu", "us", "asia"}
    assert report.counts["udp"] == 10
    assert report.counts["silent"] == 1
    assert svc.take_report() == DnsReport({}, {}, {}, {})  # taken: from zero again
    ask(svc, query("www.farm.example.", "A"))
    assert svc.report().queries == {"A/noerror": 1}


def test_every_rcode_the_answer_path_sends_has_a_row() -> None:
    sent = {NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS}
    assert sent == set(RCODE_NAMES)
    assert len(answer_matrix()) == max(sent) + 1
    assert slot_of(257) == 257  # CAA
    assert slot_of(65280) == 0  # other
    svc = service()
    ask(svc, query("www.farm.example.", 65535))  # the highest type: counted as other
    ask(svc, query("www.farm.example.", "CAA"))
    assert svc.take_report().queries == {"other/noerror": 1, "CAA/noerror": 1}


def test_answers_from_all_down_by_pool_and_how() -> None:
    names = [
        {"name": "www.farm.example.", "pool": "default", "all_down": "servfail"},
        {"name": "open.farm.example.", "pool": "default"},  # fail-open, the default
    ]
    svc = service(make_config({"names": names}))
    svc.source.health = lambda name: "down"  # type: ignore[attr-defined]
    svc.source.rebuild()  # type: ignore[attr-defined]
    assert ask(svc, query("www.farm.example.", "A")).rcode() == 2  # SERVFAIL
    ask(svc, query("www.farm.example.", "A"))
    assert ask(svc, query("open.farm.example.", "A")).rcode() == 0
    report = svc.take_report()
    assert report.fallbacks == {"default/servfail": 2, "default/fail-open": 1}
    assert report.answers == {}
    assert report.queries == {"A/servfail": 2, "A/noerror": 1}


def test_counts_survive_a_new_snapshot() -> None:
    svc = service()
    ask(svc, query("www.farm.example.", "A"))
    svc.source.rebuild()  # type: ignore[attr-defined]  # (a new table, the same tally)
    ask(svc, query("www.farm.example.", "A"))
    assert sum(svc.take_report().answers.values()) == 2


def test_totals_add_reports_and_a_live_front() -> None:
    totals = DnsTotals()
    totals.add(DnsReport({"udp": 2}, {"A/noerror": 2}, {"eu": 2}, {"p/failsafe": 1}))
    totals.add(DnsReport({"udp": 1, "tcp": 1}, {"A/noerror": 1}, {"us": 1}, {}))
    totals.local = lambda: DnsReport({"udp": 5}, {}, {"eu": 1}, {})
    assert totals.totals() == DnsReport(
        {"udp": 8, "tcp": 1}, {"A/noerror": 3}, {"eu": 3, "us": 1}, {"p/failsafe": 1}
    )


def test_a_report_on_the_wire_and_hostile_ones() -> None:
    report = DnsReport({"udp": 3}, {"A/noerror": 3}, {"eu": 3}, {"default/failsafe": 1})
    wire = json.dumps({"type": "counts", "redirects": {}, **encode_dns(report)}).encode()
    assert decode_report(wire).dns == report
    too_many = {f"TYPE{i}/noerror": 1 for i in range(MAX_DNS_QUERY_KINDS + 1)}
    for bad in (
        {"dns_queries": too_many},
        {"dns_queries": {"A/noerror": -1}},
        {"dns_answers": {"eu": "3"}},
        {"dns_fallbacks": ["default/failsafe"]},
    ):
        with pytest.raises(WireError):
            decode_report(json.dumps({"type": "counts", "redirects": {}, **bad}).encode())


# --- through farm-dispatcher serve, with dig ---------------------------------------------

RRL = 'rrl_rate = 10\nrrl_slip = 2\nns = ["ns1.farm.example."]\n'
BURST = 40


@pytest.fixture
async def serving(tmp_path: Path) -> AsyncIterator[tuple[Serve, int]]:
    if DIG is None:
        pytest.fail("dig is not installed (./.ci/system-deps)")
    sites = {name: LoopbackSite(name) for name in ("eu", "us", "asia")}
    for site in sites.values():
        await site.start()
    text = config_text(sites, "sqlite:///farm.db").replace('ns = ["ns1.farm.example."]\n', RRL)
    (tmp_path / "farm.toml").write_text(text)
    await asyncio.to_thread(upgrade, f"sqlite:///{tmp_path / 'farm.db'}")
    serve = Serve(tmp_path / "farm.toml")
    try:
        await serve.ready()
        await serve.wait_for("DNS on udp+tcp")
        found = re.search(r"DNS on udp\+tcp: port\(s\) (\d+)", serve.output)
        assert found is not None
        yield serve, int(found[1])
    finally:
        serve.close()
        for site in sites.values():
            await site.stop()


def burst(port: int) -> tuple[int, int]:
    """:data:`BURST` identical queries at once: (full answers, truncated slips) back."""
    wire = dns.message.make_query("ns1.farm.example.", "A").to_wire()
    full = slipped = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(BURST):
            sock.sendto(wire, ("127.0.0.1", port))
        sock.sendto(b"\x00\x00\x80" + b"\x00" * 9, ("127.0.0.1", port))  # QR set: not answered
        sock.settimeout(1.0)
        try:
            while True:
                reply = dns.message.from_wire(sock.recv(4096))
                if reply.flags & dns.flags.TC:
                    slipped += 1
                else:
                    full += 1
        except TimeoutError:
            pass
    return full, slipped


async def metrics(admin: int) -> str:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        answer = await client.get(f"http://127.0.0.1:{admin}/metrics", headers=headers)
    assert answer.status_code == 200
    return answer.text


@pytest.mark.anyio
async def test_dig_queries_show_in_the_metrics(serving: tuple[Serve, int]) -> None:
    serve, port = serving
    for transport in ("+notcp", "+notcp", "+notcp", "+tcp", "+tcp"):
        assert status(await dig(port, transport, "www.farm.example", "A")) == "NOERROR"
    assert status(await dig(port, "www.farm.example", "AAAA")) == "NOERROR"
    assert status(await dig(port, "www.farm.example", "TYPE65280")) == "NOERROR"
    assert status(await dig(port, "nope.farm.example", "A")) == "NXDOMAIN"
    assert status(await dig(port, "www.example.com", "A")) == "REFUSED"
    full, slipped = await asyncio.to_thread(burst, port)
    assert 1 <= full < BURST

    want = {("A", "noerror"): 5 + full, ("AAAA", "noerror"): 1, ("other", "noerror"): 1}
    want |= {("A", "nxdomain"): 1, ("A", "refused"): 1}
    deadline = time.monotonic() + 10
    while True:  # (the workers report twice a second)
        text = await metrics(serve.admin)
        found = samples(text)
        queries = {
            (dict(labels)["qtype"], dict(labels)["rcode"]): value
            for (name, labels), value in found.items()
            if name == "webfarm_dns_queries_total"
        }
        if queries == want or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    assert queries == want, text
    promtool(text)

    def one(name: str, **labels: str) -> float:
        return found[(name, frozenset(labels.items()))]

    def total(name: str) -> float:
        return sum(v for (n, _), v in found.items() if n == name)

    assert one("webfarm_dns_requests_total", transport="udp") == 3 + 4 + BURST + 1
    assert one("webfarm_dns_requests_total", transport="tcp") == 2
    assert total("webfarm_dns_requests_total") == sum(  # (every one counted once)
        (
            total("webfarm_dns_queries_total"),
            total("webfarm_dns_rrl_responses_total"),
            one("webfarm_dns_unanswered_total", cause="not_a_query"),
        )
    )
    assert one("webfarm_dns_tcp_connections_total") == 2
    assert total("webfarm_dns_answers_total") == 6  # www's A and AAAA: placed
    assert {dict(k[1])["pool"] for k in found if k[0] == "webfarm_dns_answers_total"} == {"default"}
    assert one("webfarm_dns_rrl_responses_total", action="slipped") == slipped
    assert one("webfarm_dns_rrl_responses_total", action="dropped") == BURST - full - slipped
    assert one("webfarm_dns_unanswered_total", cause="not_a_query") == 1
    assert one("webfarm_dns_truncated_answers_total") == 0
    assert total("webfarm_dns_tcp_closed_total") == 0
    named = "webfarm_worker_dns_tcp_connections"
    assert {dict(k[1])["worker"] for k in found if k[0] == named} == {"0", "1"}
