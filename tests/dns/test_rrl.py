"""Response rate limiting: the pure token buckets under hypothesis (never more than the
rate plus one second's burst gets through, the table never grows past its size, slips
every slip-th), the service's keys, and a flood over a real UDP socket."""

from __future__ import annotations

import asyncio
import socket

import dns.flags
import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.dns.rrl import DROP, SEND, SLIP, RateLimiter
from dispatcher.dns.server import DnsFront, bind_pair
from dispatcher.dns.service import DnsService
from tests.dns.helpers import WWW, Source, make_config, query, service


def test_a_stream_beyond_the_rate_is_dropped_and_slipped() -> None:
    limiter = RateLimiter(rate=5, slip=2, size=100)
    verdicts = [limiter.decide("192.0.2.7", "k", 0.0) for _ in range(11)]
    assert verdicts[:5] == [SEND] * 5  # one second's burst
    assert verdicts[5:] == [DROP, SLIP, DROP, SLIP, DROP, SLIP]
    assert (limiter.dropped, limiter.slipped) == (3, 3)
    assert limiter.decide("192.0.2.7", "k", 0.2) == SEND  # a token back after 1/5 s
    assert limiter.decide("192.0.2.7", "k", 0.2) != SEND


def test_networks_keys_and_the_prefixes() -> None:
    limiter = RateLimiter(rate=1, slip=0, size=100)
    assert limiter.decide("192.0.2.7", "k", 0.0) == SEND
    assert limiter.decide("192.0.2.200", "k", 0.0) == DROP  # the same /24
    assert limiter.decide("192.0.3.7", "k", 0.0) == SEND  # another /24
    assert limiter.decide("192.0.2.7", "other", 0.0) == SEND  # another answer
    assert limiter.decide("2001:db8:0:aa::1", "k", 0.0) == SEND
    assert limiter.decide("2001:db8:0:ff::2", "k", 0.0) == DROP  # the same /56
    assert limiter.decide("2001:db8:0:100::2", "k", 0.0) == SEND
    wide = RateLimiter(rate=1, slip=0, size=100, ipv4_prefix=16)
    assert wide.decide("10.1.2.3", "k", 0.0) == SEND
    assert wide.decide("10.1.200.3", "k", 0.0) == DROP


def test_the_table_forgets_the_oldest_when_full() -> None:
    limiter = RateLimiter(rate=1, slip=0, size=3)
    for i in range(10):
        limiter.decide(f"10.0.{i}.1", "k", 0.0)
    assert len(limiter) == 3
    assert limiter.forgotten == 7


@given(
    rate=st.integers(1, 50),
    slip=st.integers(0, 5),
    size=st.integers(1, 20),
    events=st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 3), st.floats(0, 0.5)),
        max_size=400,
    ),
)
@settings(max_examples=300, deadline=None)
def test_the_buckets_keep_their_promises(
    rate: int, slip: int, size: int, events: list[tuple[int, int, float]]
) -> None:
    limiter = RateLimiter(rate=rate, slip=slip, size=size)
    now = 0.0
    sent: dict[tuple[int, int], int] = {}
    limited: dict[tuple[int, int], int] = {}
    for network, key, step in events:
        now += step
        verdict = limiter.decide(f"10.0.{network}.1", key, now)
        assert verdict in (SEND, DROP, SLIP)
        assert len(limiter) <= size
        if verdict == SEND:
            sent[network, key] = sent.get((network, key), 0) + 1
        else:
            limited[network, key] = limited.get((network, key), 0) + 1
    assert limiter.dropped + limiter.slipped == sum(limited.values())
    if slip == 0:
        assert limiter.slipped == 0
    if not limiter.forgotten:  # no bucket restarted: each stream kept to rate x time + burst
        for count in sent.values():
            assert count <= rate * now + rate + 1e-9


def test_the_service_limits_udp_not_tcp_and_counts() -> None:
    svc = service(make_config({"rrl_rate": 2, "rrl_slip": 2}))
    wire = query(WWW, "A")
    answers = [svc.answer_udp(wire, "198.51.100.9") for _ in range(6)]
    assert [a is not None for a in answers] == [True, True, False, True, False, True]
    slipped = dns.message.from_wire(answers[3] or b"")
    assert slipped.flags & dns.flags.TC
    assert not slipped.answer
    assert (svc.counts["rrl_dropped"], svc.counts["rrl_slipped"]) == (2, 2)
    assert all(svc.answer_tcp(wire, "198.51.100.9") for _ in range(10))  # TCP: never
    assert svc.answer_udp(wire, "203.0.113.9") is not None  # another network


def test_nxdomain_for_random_names_is_one_stream_per_zone() -> None:
    svc = service(make_config({"rrl_rate": 3, "rrl_slip": 0}))
    answers = [svc.answer_udp(query(f"r{i}.farm.example.", "A"), "198.51.100.9") for i in range(10)]
    assert sum(a is not None for a in answers) == 3
    assert svc.answer_udp(query(WWW, "A"), "198.51.100.9") is not None  # answers: their own


@pytest.mark.anyio
async def test_a_flood_over_a_real_socket_is_cut_to_the_rate() -> None:
    config = make_config({"rrl_rate": 10, "rrl_slip": 5})
    front = DnsFront(DnsService(Source(config)), [bind_pair("127.0.0.1:0", reuseport=False)])
    await front.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        wire = query(WWW, "A")
        for _ in range(200):
            sock.sendto(wire, ("127.0.0.1", front.ports[0]))
        await asyncio.sleep(0.3)
        replies = []
        while True:
            try:
                replies.append(await asyncio.wait_for(loop.sock_recv(sock, 2048), 0.2))
            except TimeoutError:
                break
        full = [r for r in replies if not dns.message.from_wire(r).flags & dns.flags.TC]
        tc = [r for r in replies if dns.message.from_wire(r).flags & dns.flags.TC]
        # ~10 answered in the burst (plus the refill while 200 arrive), ~1 in 5 of the rest slip
        assert 10 <= len(full) <= 20, len(full)
        assert 30 <= len(tc) <= 40, len(tc)
        counts = front.service.counts
        assert counts["rrl_dropped"] + counts["rrl_slipped"] + len(full) == 200
    finally:
        sock.close()
        await front.stop()
