"""The nftables plane's pure core: what it accepts, and the nft text it renders.

No root and no nft here; ``test_nftables_netns.py`` loads the same text into a real kernel.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmnode.dataplane.nftables import NftablesPlane
from farmnode.dataplane.ruleset import (
    HASH_SEED,
    KERNEL_SCHEDULERS,
    NftOptions,
    chains,
    count_flows,
    render,
    render_removal,
    service_rules,
    slots,
    stale_chains,
    table_is_empty,
    unsupported_reason,
    wrr_cycle,
)
from farmnode.errors import DataplaneError
from farmnode.spec import CheckSpec, PersistenceSpec, Protocol, RealSpec, ServiceSpec
from farmnode.switch.schedulers import SCHEDULERS, RealServer
from farmnode.switch.service import VirtualService
from farmnode.switch.tables import maglev_table, sh_table

VIP = "10.213.0.10"


def spec(
    scheduler: str = "rr",
    *,
    protocol: Protocol = "tcp",
    name: str = "web",
    n: int = 3,
    **extra: object,
) -> ServiceSpec:
    made = ServiceSpec(
        name=name,
        protocol=protocol,
        host=VIP,
        port=80,
        scheduler=scheduler,
        real=tuple(RealSpec(f"10.213.1.{i + 2}", 8080) for i in range(n)),
        check=CheckSpec(kind="none"),
        dataplane="nftables",
    )
    return replace(made, **extra)  # type: ignore[arg-type]


def servers(weights: Sequence[int]) -> list[RealServer]:
    return [RealServer(f"10.213.1.{i + 2}", 8080, w) for i, w in enumerate(weights)]


_ELEMENT = re.compile(r"(\d+) : (\d+\.\d+\.\d+\.\d+) \. (\d+)")


def parse_map(rule: str) -> dict[int, str]:
    """The ``map { i : host . port, ... }`` of a rendered dnat rule, as slot -> host:port."""
    return {int(i): f"{host}:{port}" for i, host, port in _ELEMENT.findall(rule)}


# -- what the plane accepts ----------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", KERNEL_SCHEDULERS)
def test_kernel_schedulers_are_supported(scheduler: str) -> None:
    assert unsupported_reason(spec(scheduler)) is None
    assert unsupported_reason(spec(scheduler, protocol="udp")) is None


def test_every_scheduler_the_registry_calls_kernel_is_rendered() -> None:
    kernel = {name for name, cls in SCHEDULERS.items() if cls.kernel}
    assert kernel <= set(KERNEL_SCHEDULERS)
    for name in set(SCHEDULERS) - set(KERNEL_SCHEDULERS):
        reason = unsupported_reason(spec(name))
        assert reason is not None
        assert reason.startswith(f"scheduler {name!r}")
        assert reason.endswith("the nftables plane does rr, wrr, sh, mh, fo")


def test_connection_counting_schedulers_are_refused_with_the_reason() -> None:
    assert unsupported_reason(spec("wlc")) == (
        "scheduler 'wlc' needs connection counts the kernel plane does not keep; "
        "the nftables plane does rr, wrr, sh, mh, fo"
    )
    assert "not a scheduler the kernel plane knows" in str(unsupported_reason(spec("lblc")))


def test_persistence_is_refused_pointing_at_sh_and_mh() -> None:
    reason = unsupported_reason(spec("rr", persistence=PersistenceSpec()))
    assert reason is not None
    assert "persistence" in reason
    assert "'sh' or 'mh'" in reason


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"host": "2001:db8::1"}, "virtual address '2001:db8::1' is not an IPv4 address"),
        ({"host": "www.example.org"}, "is not an IPv4 address"),
        ({"host": "0.0.0.0"}, "needs the VIP"),
        ({"real": (RealSpec("web1", 80),)}, "real server web1:80 is not an IPv4 address"),
        ({"real": (RealSpec("2001:db8::2", 80),)}, "real server [2001:db8::2]:80"),
        ({"fallback": RealSpec("::1", 80)}, "fallback [::1]:80 is not an IPv4 address"),
    ],
)
def test_addresses_must_be_ipv4(changes: dict[str, object], words: str) -> None:
    reason = unsupported_reason(replace(spec(), **changes))  # type: ignore[arg-type]
    assert reason is not None
    assert words in reason


def test_the_plane_refuses_an_unsupported_service_when_built() -> None:
    bad = spec("wlc")
    with pytest.raises(DataplaneError, match=r"nftables data plane: service 'web': scheduler"):
        NftablesPlane(bad, VirtualService(bad))


@pytest.mark.parametrize("table", ["", "1abc", "far mode", "x;flush ruleset", "a" * 65])
def test_table_names_nft_cannot_read_are_refused(table: str) -> None:
    with pytest.raises(DataplaneError, match="table name"):
        NftOptions(table=table)


# -- chain names -----------------------------------------------------------------------------------


def test_chain_names_follow_the_service_name() -> None:
    assert tuple(chains(spec(name="web"))) == (
        "web-prerouting",
        "web-output",
        "web-input",
        "web-postrouting",
        "web-raw",
        "web-reply",
    )


@given(st.text(min_size=1, max_size=80))
def test_every_service_name_gives_chain_names_nft_can_read(name: str) -> None:
    names = chains(spec(name=name))
    for chain in names:
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", chain), chain
        assert len(chain) <= 80
    assert len(set(names)) == 6


@given(st.lists(st.text(min_size=1, max_size=20), min_size=2, max_size=6, unique=True))
def test_distinct_service_names_get_distinct_chains(names: list[str]) -> None:
    made = [chains(spec(name=name)).prerouting for name in names]
    assert len(set(made)) == len(names)


# -- slot tables ---------------------------------------------------------------------------------


def test_rr_takes_each_server_once_ignoring_weights() -> None:
    pool = servers([5, 1, 2])
    assert slots("rr", pool) == pool


def test_wrr_repeats_servers_by_reduced_weight_interleaved() -> None:
    assert wrr_cycle([3, 1]) == [0, 0, 1, 0]
    assert wrr_cycle([2, 4, 6]) == [2, 1, 0, 2, 1, 2]
    assert wrr_cycle([]) == []
    pool = servers([4, 2])
    assert [s.key for s in slots("wrr", pool)] == [pool[0].key, pool[1].key, pool[0].key]


@given(st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=12))
def test_wrr_cycle_gives_exact_shares_when_it_fits(weights: list[int]) -> None:
    cycle = wrr_cycle(weights, limit=10_000)
    counts = Counter(cycle)
    for i, w in enumerate(weights):  # shares exactly proportional to the weights
        assert counts[i] * sum(weights) == w * len(cycle)
    # smooth: after any k picks each server's count stays within 2 of its share of k
    # (in bursts, 0 0 0 0 0 1 1 1 1 1 for [5, 5], server 1 would be 2.5 behind after 5)
    seen = [0] * len(weights)
    for k, index in enumerate(cycle, start=1):
        seen[index] += 1
        for i, w in enumerate(weights):
            assert abs(seen[i] - k * w / sum(weights)) < 2


@given(
    st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=20),
    st.integers(min_value=20, max_value=200),
)
def test_wrr_cycle_is_bounded_and_keeps_every_server(weights: list[int], limit: int) -> None:
    cycle = wrr_cycle(weights, limit)
    assert len(cycle) <= limit + len(weights)
    assert set(cycle) == set(range(len(weights)))


def test_hash_schedulers_use_the_switch_core_tables() -> None:
    pool = servers([1, 2, 3])
    entries = [(s.key, s.effective_weight) for s in pool]
    options = NftOptions(sh_size=251, mh_size=1021)
    assert [s.key for s in slots("sh", pool, options)] == [
        pool[i].key for i in sh_table(entries, 251)
    ]
    assert [s.key for s in slots("mh", pool, options)] == [
        pool[i].key for i in maglev_table(entries, 1021)
    ]


def test_fo_takes_the_heaviest_server_the_first_on_a_tie() -> None:
    pool = servers([2, 5, 5])
    assert slots("fo", pool) == [pool[1]]


def test_one_server_is_one_slot_and_none_is_no_slot() -> None:
    pool = servers([7])
    for scheduler in KERNEL_SCHEDULERS:
        assert slots(scheduler, pool) == pool
        assert slots(scheduler, []) == []


def test_a_table_too_small_for_the_servers_is_a_dataplane_error() -> None:
    with pytest.raises(DataplaneError, match="do not fit"):
        slots("mh", servers([1] * 12), NftOptions(mh_size=11))


# -- the rules -------------------------------------------------------------------------------------


def test_rr_rule_alternates_over_every_server() -> None:
    rules = dict(service_rules(spec("rr"), servers([1, 1, 1])))
    rule = rules["web-prerouting"]
    assert rule.startswith(f"ip daddr {VIP} tcp dport 80 counter dnat to numgen inc mod 3 map {{")
    assert parse_map(rule) == {0: "10.213.1.2:8080", 1: "10.213.1.3:8080", 2: "10.213.1.4:8080"}
    assert rules["web-output"] == rule  # locally originated traffic is switched alike


@pytest.mark.parametrize(("scheduler", "size"), [("sh", 251), ("mh", 1021)])
def test_hash_rules_hash_the_client_address_with_a_fixed_seed(scheduler: str, size: int) -> None:
    pool = servers([1, 1, 2])
    rule = dict(service_rules(spec(scheduler), pool))["web-prerouting"]
    assert f"dnat to jhash ip saddr mod {size} seed {HASH_SEED:#x} map {{" in rule
    mapping = parse_map(rule)
    assert sorted(mapping) == list(range(size))
    assert [mapping[i] for i in range(size)] == [s.key for s in slots(scheduler, pool)]


@given(
    st.sampled_from(KERNEL_SCHEDULERS),
    st.lists(st.integers(min_value=1, max_value=20), min_size=2, max_size=8),
)
def test_the_rendered_map_is_the_slot_table(scheduler: str, weights: list[int]) -> None:
    pool = servers(weights)
    options = NftOptions(sh_size=31, mh_size=31)
    rule = dict(service_rules(spec(scheduler), pool, options))["web-prerouting"]
    table = slots(scheduler, pool, options)
    if len(table) == 1:
        assert rule.endswith(f"dnat to {table[0].host}:{table[0].port}")
    else:
        assert parse_map(rule) == {i: s.key for i, s in enumerate(table)}
        assert f" mod {len(table)} " in rule


def test_every_rule_set_refuses_new_connections_nothing_took() -> None:
    rules = service_rules(spec(), servers([1]))
    assert (
        "web-input",
        f"ip daddr {VIP} tcp dport 80 ct state new counter reject with tcp reset",
    ) in (rules)
    udp = service_rules(spec(protocol="udp"), servers([1]))
    assert ("web-input", f"ip daddr {VIP} udp dport 80 ct state new counter reject") in udp


def test_no_eligible_server_leaves_only_the_refusal() -> None:
    assert [chain for chain, _ in service_rules(spec(), [])] == ["web-input"]


def test_the_fallback_is_rendered_while_every_server_is_down() -> None:
    fallback = RealSpec("10.213.1.9", 8081)
    vs = VirtualService(spec(fallback=fallback))
    for real in vs.spec.real:
        vs.set_health(real.key, False)
    rules = dict(service_rules(vs.spec, vs.eligible()))
    assert rules["web-prerouting"].endswith("dnat to 10.213.1.9:8081")


def test_snat_masquerades_the_service_connections() -> None:
    rules = dict(service_rules(spec(), servers([1]), NftOptions(snat=True)))
    assert rules["web-postrouting"] == (
        f"meta l4proto tcp ct original ip daddr {VIP} ct original proto-dst 80 counter masquerade"
    )
    assert "web-postrouting" not in dict(service_rules(spec(), servers([1])))


# -- transactions ----------------------------------------------------------------------------------


def test_render_creates_flushes_and_fills_in_one_transaction() -> None:
    text = render([(spec(), servers([1, 1]))])
    lines = text.splitlines()
    assert lines[0] == "add table ip farmnode"
    assert lines[1:7] == [
        "add chain ip farmnode web-prerouting "
        "{ type nat hook prerouting priority dstnat; policy accept; }",
        "flush chain ip farmnode web-prerouting",
        "add chain ip farmnode web-output { type nat hook output priority -100; policy accept; }",
        "flush chain ip farmnode web-output",
        "add chain ip farmnode web-input "
        "{ type filter hook input priority filter; policy accept; }",
        "flush chain ip farmnode web-input",
    ]
    # the SNAT chain and the stateless chains of an older configuration go; deleting never
    # fails (added first)
    assert lines[7:13] == [
        f"{verb} chain ip farmnode web-{hook}"
        for hook in ("postrouting", "raw", "reply")
        for verb in ("add", "delete")
    ]
    assert [line.split()[4] for line in lines[13:]] == [
        "web-prerouting",
        "web-output",
        "web-input",
    ]
    assert all(line.startswith("add rule ip farmnode ") for line in lines[13:])
    assert text.endswith("\n")


def test_render_of_several_services_keeps_them_apart() -> None:
    text = render(
        [(spec(name="a"), servers([1])), (spec(name="b", port=81), servers([1]))],
        NftOptions(table="node1", snat=True),
    )
    assert text.count("add table ip node1") == 1
    assert "add chain ip node1 a-postrouting { type nat hook postrouting" in text
    assert "add rule ip node1 b-prerouting ip daddr 10.213.0.10 tcp dport 81" in text
    deleted = {line.split()[-1] for line in text.splitlines() if line.startswith("delete chain")}
    assert deleted == {"a-raw", "a-reply", "b-raw", "b-reply"}  # only what neither uses


def test_removal_deletes_the_service_chains_only() -> None:
    text = render_removal([spec(name="gone")], "farmnode")
    assert text.splitlines() == [
        "add table ip farmnode",
        *(
            line
            for hook in ("prerouting", "output", "input", "postrouting", "raw", "reply")
            for line in (
                f"add chain ip farmnode gone-{hook}",
                f"delete chain ip farmnode gone-{hook}",
            )
        ),
    ]


def test_stateless_nat_rewrites_both_ways_without_conntrack() -> None:
    """Every packet to the VIP: notrack, then the hash picks address and port; every reply
    from any real server (or the fallback), not for this node: notrack, then its source goes
    back to VIP:PORT; nothing eligible: refused in the input chain."""
    stateless = spec(
        scheduler="mh",
        nat="stateless",
        real=(RealSpec("10.213.1.2", 8080), RealSpec("10.213.1.3", 8081)),
        fallback=RealSpec("10.213.1.9", 8099),
    )
    reals = [RealServer(r.host, r.port, r.weight) for r in stateless.real]
    rules = service_rules(stateless, reals, NftOptions(mh_size=7))
    assert [chain for chain, _ in rules] == ["web-raw", "web-raw", "web-reply", "web-input"]
    inbound = rules[0][1]
    assert inbound.startswith("ip daddr 10.213.0.10 tcp dport 80 notrack counter ip daddr set ")
    assert "jhash ip saddr mod 7 seed 0x6661726d map" in inbound
    assert "tcp dport set jhash ip saddr mod 7" in inbound  # ports differ: a map of them too
    servers_ = "ip saddr . tcp sport { 10.213.1.2 . 8080, 10.213.1.3 . 8081, 10.213.1.9 . 8099 }"
    assert rules[1][1] == f"{servers_} fib daddr type != local notrack"
    assert rules[2][1] == f"{servers_} counter ip saddr set 10.213.0.10 tcp sport set 80"
    assert rules[3][1] == "ip daddr 10.213.0.10 tcp dport 80 counter reject with tcp reset"
    one = service_rules(stateless, reals[:1])[0][1]
    assert one.endswith("notrack counter ip daddr set 10.213.1.2 tcp dport set 8080")
    assert [chain for chain, _ in service_rules(stateless, [])] == [
        "web-raw",
        "web-reply",
        "web-input",
    ]
    text = render([(stateless, reals)])
    assert "add chain ip farmnode web-raw { type filter hook prerouting priority raw;" in text
    assert "delete chain ip farmnode web-prerouting" in text  # the stateful chains go


def test_table_is_empty_reads_nft_json() -> None:
    meta = {"metainfo": {"version": "1.0.6", "json_schema_version": 1}}
    table = {"table": {"family": "ip", "name": "farmnode", "handle": 1}}
    chain = {"chain": {"family": "ip", "table": "farmnode", "name": "web-input"}}
    assert table_is_empty(json.dumps({"nftables": [meta, table]}))
    assert not table_is_empty(json.dumps({"nftables": [meta, table, chain]}))


# -- conntrack -------------------------------------------------------------------------------------

CONNTRACK = """\
ipv4     2 tcp      6 431999 ESTABLISHED src=10.213.0.2 dst=10.213.0.10 sport=40000 dport=80 \
src=10.213.1.2 dst=10.213.0.2 sport=8080 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 119 TIME_WAIT src=10.213.0.3 dst=10.213.0.10 sport=40001 dport=80 \
src=10.213.1.3 dst=10.213.0.3 sport=8080 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 59 FIN_WAIT src=10.213.0.4 dst=10.213.0.10 sport=40002 dport=80 \
src=10.213.1.4 dst=10.213.0.4 sport=8080 dport=40002 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=10.213.0.2 dst=10.213.0.10 sport=40003 dport=81 \
src=10.213.1.2 dst=10.213.0.2 sport=8080 dport=40003 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=10.213.1.2 dst=10.213.0.10 sport=80 dport=40000 \
src=10.213.0.10 dst=10.213.1.2 sport=40000 dport=80 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 28 src=10.213.0.2 dst=10.213.0.10 sport=5000 dport=80 \
src=10.213.1.2 dst=10.213.0.2 sport=8080 dport=5000 mark=0 zone=0 use=2
"""


def test_count_flows_counts_open_flows_to_the_vip_port() -> None:
    assert count_flows(CONNTRACK, spec()) == 2  # the established one and the closing one
    assert count_flows(CONNTRACK, spec(protocol="udp")) == 1
    assert count_flows(CONNTRACK, spec(port=81)) == 1
    assert count_flows("", spec()) == 0


def test_stale_chains_are_those_of_services_not_kept() -> None:
    listing = {
        "nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"table": {"family": "ip", "name": "farmnode"}},
            *(
                {"chain": {"family": "ip", "table": "farmnode", "name": name}}
                for name in ("web-prerouting", "web-input", "old-prerouting", "old-output")
            ),
            {"rule": {"chain": "old-prerouting", "expr": []}},
        ]
    }
    assert stale_chains(json.dumps(listing), [spec(name="web")]) == [
        "old-prerouting",
        "old-output",
    ]
    assert stale_chains(json.dumps(listing), [spec(name="web"), spec(name="old")]) == []
