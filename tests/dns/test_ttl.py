"""A TTL that follows the state: long while the pool is stable, short for a window after a
site changes (health, drain, weight, addresses, added, removed), short while a site is
unprobed, and short for as long as a site flaps. Pure: the clock is injected."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from dispatcher.backends.health import State
from dispatcher.backends.sites import SiteSpec
from dispatcher.dns.service import DnsService
from tests.dns.helpers import WWW, Source, ask, make_config, query

# www: ttl "20/5"; the sites' checks: interval 2, rise 2, fall 3 -> a cycle of 10 s, so the
# window is max(20, 10) = 20 s
WINDOW = 20.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ttl(svc: DnsService) -> int:
    answer = ask(svc, query(WWW, "A"))
    return int(answer.answer[0].ttl)


def setup(health: dict[str, State] | None = None) -> tuple[Source, DnsService, Clock]:
    states = health if health is not None else {}
    source = Source(make_config(), health=lambda name: states.get(name, "up"))
    clock = Clock()
    return source, DnsService(source, clock=clock), clock


def test_stable_pools_get_the_long_ttl() -> None:
    _, svc, clock = setup()
    assert ttl(svc) == 20
    clock.now += 3600
    assert ttl(svc) == 20


def test_a_site_that_goes_down_shortens_the_ttl_for_the_window() -> None:
    states: dict[str, State] = {}
    source, svc, clock = setup(states)
    assert ttl(svc) == 20
    states["asia"] = "down"
    source.rebuild()
    assert ttl(svc) == 5
    clock.now += WINDOW - 0.1
    assert ttl(svc) == 5
    clock.now += 0.2
    assert ttl(svc) == 20


def test_a_flapping_site_keeps_it_short() -> None:
    states: dict[str, State] = {}
    source, svc, clock = setup(states)
    ttl(svc)
    for step in range(10):
        states["asia"] = "down" if step % 2 == 0 else "up"
        source.rebuild()
        clock.now += 8  # a flap every 8 s, within the window
        assert ttl(svc) == 5
    clock.now += WINDOW
    assert ttl(svc) == 20


def test_drain_weight_addresses_and_membership_are_changes() -> None:
    config = make_config()
    sites = list(config.sites)
    changes: list[Callable[[SiteSpec], SiteSpec]] = [
        lambda s: replace(s, drained=True),
        lambda s: replace(s, weight=3),
        lambda s: replace(s, addresses=("192.0.2.77",)),
    ]
    for change in changes:
        source, svc, _ = setup()
        ttl(svc)
        source.rebuild([change(sites[0]), *sites[1:]])
        assert ttl(svc) == 5, change
    source, svc, _ = setup()
    ttl(svc)
    source.rebuild(sites[:2])  # asia removed
    assert ttl(svc) == 5


def test_an_unprobed_site_keeps_it_short_and_the_first_snapshot_is_no_change() -> None:
    _, svc, clock = setup({"asia": "unknown"})
    assert ttl(svc) == 5
    clock.now += 3600
    assert ttl(svc) == 5
    _, fresh, _ = setup({"asia": "down"})
    assert ttl(fresh) == 20  # a process that has just started, told no history


def test_a_worker_started_after_a_change_adopts_the_controls_history() -> None:
    # the control process saw the default pool change 3 s ago; a worker that starts now
    # (its first snapshot is no change to it) answers with the short TTL for the rest of
    # the window, as the workers that saw the change do
    source, svc, clock = setup({"asia": "down"})
    source.dns_history = {"default": clock.now - 3.0, "other": clock.now}
    assert ttl(svc) == 5
    clock.now += WINDOW - 3.0 - 0.1
    assert ttl(svc) == 5
    clock.now += 0.2
    assert ttl(svc) == 20
    # an older change than the worker's own, and values that are no time, change nothing
    source.dns_history = {"default": 0.0, "x": float("nan"), "y": "soon"}  # type: ignore[dict-item]
    source.rebuild()
    assert ttl(svc) == 20


def test_the_control_ships_its_history_to_the_workers() -> None:
    from dispatcher.dns.ttl import ChangeTracker

    tracker = ChangeTracker()
    source = Source(make_config())
    tracker.observe(source.snapshot, 10.0)
    assert tracker.history() == {}
    sites = [replace(s, drained=True) if s.name == "asia" else s for s in source.config.sites]
    tracker.observe(source.rebuild(sites), 12.5)
    assert tracker.history() == {"default": 12.5}
    other = ChangeTracker()
    other.adopt(tracker.history())
    assert other.changed_at("default") == 12.5


def test_the_scope_of_an_answer_placed_by_a_policy_that_locates() -> None:
    """A policy that reads where the client is: the scope is the prefix that located the
    client, else the query's source prefix; 0 for a policy that does not locate."""
    from dispatcher.dns.message import Ecs
    from dispatcher.dns.resolve import _scope
    from dispatcher.dns.table import build_table
    from dispatcher.placement.model import Location, Placement

    source = Source(make_config())
    assert source.config.dns is not None
    entry = build_table(source.config.dns, source.snapshot).names[b"\x03www\x04farm\x07example\x00"]
    ecs = Ecs(1, 24, bytes([198, 51, 100]))
    located = Placement("default", (), Location(source="prefix-map", prefix="198.51.96.0/20"))
    nowhere = Placement("default", ())
    snapshot = source.snapshot
    assert _scope(snapshot, entry, ecs, located) == 0  # weighted does not locate
    entry.locates = True
    assert _scope(snapshot, entry, ecs, located) == 20
    assert _scope(snapshot, entry, ecs, nowhere) == 24
    assert _scope(snapshot, entry, Ecs(1, 0, b""), located) == 0  # /0: for the resolver
    assert _scope(snapshot, entry, None, located) == 0


def test_network_affinity_answers_hold_for_the_client_network_only() -> None:
    """With network affinity each client /24 sticks to its site: the ECS scope is 24 at
    least (a resolver must not hand one network's answer to another), not 0."""
    import dns.edns

    from dispatcher.config import build_config
    from dispatcher.dns.service import DnsService
    from tests.dns.helpers import SITES, TOKEN, ask, dns_table, query

    config = build_config(
        {
            "dispatcher": {"admin_tokens": [TOKEN], "affinity": "network"},
            "sites": [dict(s) for s in SITES],
            "dns": dns_table(
                names=[{"name": "one.farm.example.", "pool": "default", "answers": 1}]
            ),
        },
        environ={},
    )
    svc = DnsService(Source(config))
    for subnet, scope in (("198.51.100.0/24", 24), ("198.51.0.0/16", 24), ("10.1.2.3/32", 32)):
        answer = ask(svc, query("one.farm.example.", "A", subnet=subnet))
        (option,) = [o for o in answer.options if isinstance(o, dns.edns.ECSOption)]
        assert option.scopelen == scope, subnet
