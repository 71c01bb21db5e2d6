"""Learned latency on the dispatcher, pure: network syntax, the view's lookups (hypothesis
against :mod:`ipaddress` as the reference), its pickling, and how reports age."""

from __future__ import annotations

import datetime as dt
import ipaddress
import pickle
from collections.abc import Mapping

from hypothesis import given
from hypothesis import strategies as st

from dispatcher.placement.model import RttSample
from dispatcher.placement.rtt import (
    EMPTY_VIEW,
    LearnedRtt,
    RttEntry,
    RttReport,
    RttView,
    address_key,
    build_view,
    client_network,
    entries_from_rows,
    is_network,
    key_network,
    network_key,
)

T0 = dt.datetime(2026, 12, 10, 12, 0, tzinfo=dt.UTC)

V4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
V6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.integers(0, 2**48 - 1).map(lambda top: top << 80),  # many zero groups
    st.integers(0, 7).map(lambda bits: 1 << (80 + bits * 6)),
).map(ipaddress.IPv6Address)
ADDRESSES = st.one_of(V4, V6)


def reference_network(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """What ``ipaddress`` calls the client's network (IPv4-mapped as IPv4)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    length = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{length}", strict=False))


def report(site: str, *entries: tuple[str, float, int], at: dt.datetime = T0) -> RttReport:
    return RttReport(site, tuple(RttEntry(*e) for e in entries), at)


# --- network syntax ---------------------------------------------------------------------------


@given(ADDRESSES)
def test_client_network_is_what_ipaddress_says(address: ipaddress.IPv4Address) -> None:
    network = client_network(str(address))
    assert network == reference_network(address)
    assert is_network(network)
    assert key_network(network_key(network)) == network
    assert address_key(str(address)) == network_key(network)


@given(V4)
def test_ipv4_mapped_ipv6_counts_as_ipv4(address: ipaddress.IPv4Address) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    assert client_network(str(mapped)) == client_network(str(address))
    assert client_network(f"::FFFF:{address}") == client_network(str(address))


@given(st.text(max_size=30) | st.from_regex(r"[0-9a-f:./]{1,24}", fullmatch=True))
def test_is_network_accepts_exactly_canonical_24s_and_48s(text: str) -> None:
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        canonical = False
    else:
        canonical = str(net) == text and net.prefixlen == (24 if net.version == 4 else 48)
    assert is_network(text) == canonical


def test_network_examples() -> None:
    good = ["192.0.2.0/24", "0.0.0.0/24", "2001:db8:1::/48", "2001:db8::/48", "::/48", "0:1::/48"]
    bad = ["192.0.2.1/24", "192.0.02.0/24", "192.0.2.0/23", "2001:db8:1::/56", "2001:DB8::/48",
           "2001:0db8::/48", "1:0:0::/48", "192.0.2.0", " 192.0.2.0/24",
           "192.0.2.0/24\n"]  # fmt: skip
    assert all(map(is_network, good))
    assert not any(map(is_network, bad))
    assert client_network("fe80::1%eth0") == "fe80::/48"
    for junk in ("", "x", "1.2.3", "01.2.3.4", "1.2.3.4.5", "a\x00", "é::1", ":::"):
        assert client_network(junk) is None


# --- the view ---------------------------------------------------------------------------------


@given(
    st.lists(ADDRESSES, min_size=1, max_size=8),
    st.lists(ADDRESSES, max_size=8),
    st.sampled_from(["eu", "us"]),
)
def test_lookup_finds_the_network_of_every_address_and_nothing_else(
    reported: list[ipaddress.IPv4Address], others: list[ipaddress.IPv4Address], site: str
) -> None:
    networks = {reference_network(a) for a in reported}
    entries = [(net, 0.001 * (i + 1), i + 1) for i, net in enumerate(sorted(networks))]
    view = build_view([report(site, *entries)])
    by_network = {net: (rtt, samples) for net, rtt, samples in entries}
    for address in reported + others:
        expected = by_network.get(reference_network(address))
        assert view.lookup(str(address)) == ({site: expected} if expected else {})


@given(st.text(max_size=60), st.text(max_size=60))
def test_lookup_never_raises(address: str, subnet: str) -> None:
    view = build_view([report("eu", ("192.0.2.0/24", 0.01, 3), ("2001:db8::/48", 0.02, 4))])
    assert isinstance(view.lookup(address), Mapping)
    assert isinstance(view.lookup(address, subnet), Mapping)


def test_lookup_examples_with_two_sites_and_subnets() -> None:
    view = build_view(
        [
            report("eu", ("192.0.2.0/24", 0.010, 5), ("2001:db8:1::/48", 0.020, 3)),
            report("us", ("192.0.2.0/24", 0.090, 7)),
        ]
    )
    both: dict[str, RttSample] = {"eu": (0.010, 5), "us": (0.090, 7)}
    assert view.lookup("192.0.2.200") == both
    assert view.lookup("::ffff:192.0.2.1") == both
    assert view.lookup("2001:db8:1:ffff::5") == {"eu": (0.020, 3)}
    assert view.lookup("192.0.3.1") == {}
    assert view.lookup("192.0.2.256") == {}
    # an EDNS client subnet: its /24 or /48 when it is at least that long, else nothing
    assert view.lookup("203.0.113.9", "192.0.2.128/25") == both
    assert view.lookup("203.0.113.9", "192.0.2.0/24") == both
    assert view.lookup("192.0.2.1", "192.0.2.0/23") == {}
    assert view.lookup("", "2001:db8:1:ab00::/56") == {"eu": (0.020, 3)}
    assert view.lookup("", "2001:db8:1::/47") == {}
    assert view.lookup("", "::ffff:192.0.2.0/120") == both
    assert view.lookup("", "::ffff:192.0.2.0/119") == {}
    for junk in ("192.0.2.0/33", "192.0.2.0/", "/24", "192.0.2.0/2a", "192.0.2.0/0024"):
        assert view.lookup("192.0.2.1", junk) == {}
    assert (len(view), view.pairs, view.sites) == (2, 3, ("eu", "us"))
    assert EMPTY_VIEW.lookup("192.0.2.1") == {}


def test_over_the_pair_limit_each_site_keeps_its_best_sampled_networks() -> None:
    eu = report("eu", *[(f"10.0.{i}.0/24", 0.01, i + 1) for i in range(10)])
    us = report("us", ("10.0.0.0/24", 0.05, 1), ("10.0.1.0/24", 0.05, 2))
    view = build_view([eu, us], max_pairs=8)
    assert view.pairs == 6  # 4 per site; us has only 2
    assert [n for n in range(10) if "eu" in view.lookup(f"10.0.{n}.1")] == [6, 7, 8, 9]
    assert view.lookup("10.0.0.1") == {"us": (0.05, 1)}  # eu's least-sampled went
    assert view.lookup("10.0.1.1") == {"us": (0.05, 2)}


def test_a_view_pickles_once_and_a_process_decodes_it_once() -> None:
    view = build_view([report("eu", ("192.0.2.0/24", 0.01, 5), ("2001:db8::/48", 0.02, 2))], 7)
    first = pickle.loads(pickle.dumps(view))
    again = pickle.loads(pickle.dumps(view))
    assert first is again  # the same tables: the decoded view is reused
    assert first.generation == 7
    assert first.lookup("192.0.2.9") == view.lookup("192.0.2.9")
    assert first.lookup("2001:db8::1") == {"eu": (0.02, 2)}
    other = build_view([report("us", ("192.0.2.0/24", 0.03, 1))], 8)
    decoded = pickle.loads(pickle.dumps(other))
    assert decoded is not first
    assert decoded.lookup("192.0.2.9") == {"us": (0.03, 1)}
    assert pickle.loads(pickle.dumps(EMPTY_VIEW)).lookup("192.0.2.9") == {}


def test_a_big_view_pickles_as_one_blob() -> None:
    entries = [(f"10.{i // 256}.{i % 256}.0/24", 0.01, 1) for i in range(10_000)]
    view = build_view([report("eu", *entries)])
    first = pickle.dumps(view)
    assert view._blob is not None
    assert pickle.dumps(view) == first  # the blob is made once
    assert len(first) < 400_000


# --- reports and their age -------------------------------------------------------------------


def test_newer_reports_replace_older_ones_and_old_ones_are_ignored() -> None:
    learned = LearnedRtt(max_age=600)
    eu = report("eu", ("192.0.2.0/24", 0.01, 5))
    assert learned.adopt(eu, T0)
    assert not learned.adopt(eu, T0)  # the same again
    older = report("eu", ("192.0.2.0/24", 0.5, 5), at=T0 - dt.timedelta(seconds=1))
    assert not learned.adopt(older, T0)
    stale = report("us", ("192.0.2.0/24", 0.5, 5), at=T0 - dt.timedelta(seconds=601))
    assert not learned.adopt(stale, T0)
    assert set(learned.reports) == {"eu"}
    generation, reports = learned.current()
    assert generation == 1
    assert reports == (eu,)


def test_merging_what_other_replicas_stored() -> None:
    learned = LearnedRtt(max_age=600)
    eu = report("eu", ("192.0.2.0/24", 0.01, 5))
    learned.adopt(eu, T0)
    later = T0 + dt.timedelta(seconds=30)
    us = report("us", ("192.0.2.0/24", 0.05, 2), at=later)
    stamps = {"eu": T0, "us": later, "asia": T0 - dt.timedelta(seconds=900)}
    assert learned.wanted(stamps, later) == ["us"]  # eu is held; asia is too old
    assert learned.merge(stamps, [us], later)
    assert set(learned.reports) == {"eu", "us"}
    assert not learned.merge(stamps, [], later)  # nothing new
    # eu's site was deleted (its row is gone); us ages out ten minutes after its report
    assert learned.merge({"us": later}, [], later + dt.timedelta(seconds=1))
    assert set(learned.reports) == {"us"}
    assert learned.merge({"us": later}, [], later + dt.timedelta(seconds=601))
    assert learned.reports == {}
    generation, _ = learned.current()
    assert generation >= 4


def test_a_report_received_after_the_stamps_were_read_is_kept() -> None:
    learned = LearnedRtt()
    fresh = report("eu", ("192.0.2.0/24", 0.01, 5), at=T0 + dt.timedelta(seconds=1))
    learned.adopt(fresh, T0 + dt.timedelta(seconds=1))
    assert not learned.merge({}, [], T0)  # stamps read at T0, before it was stored
    assert set(learned.reports) == {"eu"}


def test_stored_rows_that_do_not_fit_are_skipped() -> None:
    rows = [
        ["192.0.2.0/24", 0.01, 3],
        ["192.0.2.1/24", 0.01, 3],
        ["198.51.100.0/24", -1, 3],
        ["203.0.113.0/24", 0.01, 0],
        ["203.0.113.0/24", 0.01, True],
        ["2001:db8::/48", 0.5, 1],
        "junk",
        [1, 2],
    ]
    assert entries_from_rows(rows) == (
        RttEntry("192.0.2.0/24", 0.01, 3),
        RttEntry("2001:db8::/48", 0.5, 1),
    )
    assert entries_from_rows({"not": "a list"}) == ()


def test_an_empty_view() -> None:
    view = RttView()
    assert len(view) == 0
    assert view.lookup("192.0.2.1") == {}
    assert build_view([report("eu")]).sites == ()
