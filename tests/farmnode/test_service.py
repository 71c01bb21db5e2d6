"""VirtualService, pure: start state, fallback, persistence with drain, agents, reload."""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter

import pytest

from farmnode.errors import SchedulerError
from farmnode.spec import CheckSpec, PersistenceSpec, RealSpec, ServiceSpec
from farmnode.switch.service import VirtualService

A, B, C = "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
SORRY = "10.0.0.99:80"


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def spec(
    *,
    scheduler: str = "rr",
    weights: tuple[int, ...] = (1, 1, 1),
    check: str = "none",
    persistence: float | None = None,
    fallback: bool = False,
    **extra: object,
) -> ServiceSpec:
    real = tuple(RealSpec(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights))
    made = ServiceSpec(
        name="web",
        protocol="tcp",
        host="127.0.0.1",
        port=8080,
        scheduler=scheduler,
        real=real,
        persistence=PersistenceSpec(timeout=persistence) if persistence else None,
        fallback=RealSpec("10.0.0.99", 80) if fallback else None,
        check=CheckSpec(kind=check),  # type: ignore[arg-type]
    )
    return dataclasses.replace(made, **extra)  # type: ignore[arg-type]


def keys_of(service: VirtualService) -> list[str]:
    return [s.key for s in service.eligible()]


def chosen(service: VirtualService, client: str = "192.0.2.1") -> str | None:
    server = service.choose(client)
    return None if server is None else server.key


# -- start ------------------------------------------------------------------------------


def test_without_checks_every_real_server_starts_up() -> None:
    service = VirtualService(spec(check="none"))
    assert keys_of(service) == [A, B, C]
    assert [chosen(service) for _ in range(4)] == [A, B, C, A]


def test_with_checks_real_servers_start_down_until_the_first_probe() -> None:
    service = VirtualService(spec(check="tcp", fallback=True))
    assert keys_of(service) == [SORRY]
    assert [s["state"] for s in service.status()["real"]] == ["down"] * 3  # type: ignore[attr-defined]
    assert service.set_health(B, True)
    assert not service.set_health(B, True)
    assert keys_of(service) == [B]
    assert chosen(service) == B


# -- counters ----------------------------------------------------------------------------


def test_connections_and_bytes_are_counted() -> None:
    service = VirtualService(spec())
    server = service.choose("192.0.2.1")
    assert server is not None
    assert server.active == 0  # choosing does not count
    service.connected(server)
    service.connected(server)
    service.released(server)
    service.add_bytes(server, 100, 2000)
    assert (server.active, server.total, server.bytes_in, server.bytes_out) == (1, 2, 100, 2000)
    service.released(server)
    service.released(server)  # never below zero
    assert server.active == 0


def test_least_connection_services_see_the_counted_connections() -> None:
    service = VirtualService(spec(scheduler="wlc", weights=(1, 3)))
    counts: Counter[str] = Counter()
    for i in range(400):
        server = service.choose(f"192.0.2.{i % 250}")
        assert server is not None
        service.connected(server)
        counts[server.key] += 1
    assert counts == {A: 100, B: 300}


# -- fallback --------------------------------------------------------------------------


def test_fallback_is_used_only_while_every_real_server_is_down() -> None:
    service = VirtualService(spec(fallback=True))
    assert service.fallback is not None
    assert chosen(service) != SORRY
    service.set_health(A, False)
    service.set_health(B, False)
    assert keys_of(service) == [C]
    assert service.status()["fallback"] == {
        "address": SORRY,
        "in_use": False,
        "active": 0,
        "total": 0,
    }
    service.set_health(C, False)
    assert keys_of(service) == [SORRY]
    sorry = service.choose("192.0.2.1")
    assert sorry is service.fallback
    service.connected(sorry)
    assert service.status()["fallback"] == {
        "address": SORRY,
        "in_use": True,
        "active": 1,
        "total": 1,
    }
    service.set_health(B, True)  # one is back: the fallback leaves at once
    assert keys_of(service) == [B]
    assert chosen(service) == B


def test_fallback_also_covers_a_fully_drained_service() -> None:
    service = VirtualService(spec(fallback=True, check="agent"))
    for key in (A, B, C):
        service.set_health(key, True)
        service.set_agent_weight(key, 0)
    assert keys_of(service) == [SORRY]


def test_no_fallback_no_servers_means_nowhere() -> None:
    service = VirtualService(spec(check="http"))
    assert service.eligible() == []
    assert service.choose("192.0.2.1") is None


def test_a_full_overflow_service_refuses_rather_than_falls_back() -> None:
    service = VirtualService(spec(scheduler="ovf", weights=(1,), fallback=True))
    server = service.choose("192.0.2.1")
    assert server is not None
    assert server.key == A
    service.connected(server)
    assert service.choose("192.0.2.1") is None


# -- retries with exclude ----------------------------------------------------------------


def test_exclude_skips_servers_that_just_failed_to_connect() -> None:
    service = VirtualService(spec(scheduler="sh", fallback=True))
    first = service.choose("192.0.2.1")
    assert first is not None
    second = service.choose("192.0.2.1", exclude={first.key})
    assert second is not None
    assert second.key not in (first.key, SORRY)
    assert service.choose("192.0.2.1", exclude={A, B, C}) is None  # not the fallback


def test_exclude_moves_a_persistent_client_and_rebinds_it() -> None:
    service = VirtualService(spec(persistence=60))
    first = chosen(service)
    assert first is not None
    moved = service.choose("192.0.2.1", exclude={first})
    assert moved is not None
    assert moved.key != first
    assert [chosen(service) for _ in range(5)] == [moved.key] * 5


# -- persistence, drain and quiescence -----------------------------------------------------


def test_persistent_clients_stay_with_their_server() -> None:
    service = VirtualService(spec(persistence=60))
    picks = {c: chosen(service, c) for c in ("192.0.2.1", "192.0.2.2", "192.0.2.3")}
    assert len(set(picks.values())) == 3
    for _ in range(3):
        for client, key in picks.items():
            assert chosen(service, client) == key


def test_netmask_persistence_keeps_a_whole_network_together() -> None:
    service = VirtualService(
        dataclasses.replace(spec(), persistence=PersistenceSpec(timeout=60, netmask=24))
    )
    first = chosen(service, "192.0.2.1")
    assert all(chosen(service, f"192.0.2.{i}") == first for i in range(2, 40))
    assert chosen(service, "198.51.100.1") != first


def test_a_drained_server_keeps_its_persistent_clients_until_their_templates_expire() -> None:
    clock = FakeClock()
    service = VirtualService(spec(persistence=60, check="agent"), clock=clock)
    for key in (A, B, C):
        service.set_health(key, True)
    client = "192.0.2.1"
    assert chosen(service, client) == A
    assert service.set_agent_weight(A, 0)  # drain
    status = service.status()["real"]
    assert status[0]["state"] == "quiescent"  # type: ignore[index]
    assert A not in keys_of(service)
    clock.now += 59
    assert chosen(service, client) == A  # still, and the template is refreshed
    assert all(chosen(service, f"198.51.100.{i}") != A for i in range(20))
    clock.now += 60
    assert chosen(service, client) != A  # the template expired: elsewhere


def test_expire_quiescent_moves_persistent_clients_at_once() -> None:
    service = VirtualService(spec(persistence=60, check="agent", expire_quiescent=True))
    for key in (A, B, C):
        service.set_health(key, True)
    client = "192.0.2.1"
    assert chosen(service, client) == A
    assert service.status()["templates"] == 1
    service.set_agent_weight(A, 0)
    assert service.status()["templates"] == 0
    assert chosen(service, client) != A


def test_a_failed_server_loses_its_persistent_clients() -> None:
    service = VirtualService(spec(persistence=60, check="tcp"))
    for key in (A, B):
        service.set_health(key, True)
    client = "192.0.2.1"
    assert chosen(service, client) == A
    service.set_health(A, False)
    moved = chosen(service, client)
    assert moved == B
    service.set_health(A, True)
    assert chosen(service, client) == B  # rebound while A was down


def test_the_fallback_is_never_a_persistent_destination() -> None:
    service = VirtualService(spec(persistence=60, fallback=True, check="tcp"))
    assert chosen(service) == SORRY
    service.set_health(C, True)
    assert chosen(service) == C


def test_an_open_connection_keeps_its_template_beyond_the_timeout() -> None:
    clock = FakeClock()
    service = VirtualService(spec(persistence=10), clock=clock)
    client = "192.0.2.1"
    server = service.choose(client)
    assert server is not None
    service.connected(server, client)
    clock.now += 1000
    assert service.choose(client) is server
    service.released(server, client)
    clock.now += 11
    assert service.status()["templates"] == 0


@pytest.mark.parametrize(("quiescent", "effective"), [(True, 0), (False, 5)])
def test_a_failed_server_is_quiesced_or_removed(quiescent: bool, effective: int) -> None:
    service = VirtualService(spec(weights=(5, 1), check="tcp", quiescent=quiescent))
    service.set_health(A, True)
    service.set_health(B, True)
    service.set_health(A, False)
    real = service.status()["real"][0]  # type: ignore[index]
    assert real["state"] == "down"
    assert real["effective_weight"] == effective
    assert keys_of(service) == [B]


# -- agent weights -----------------------------------------------------------------------


def test_an_agent_weight_overrides_the_configured_weight() -> None:
    service = VirtualService(spec(scheduler="wrr", weights=(1, 1, 0), check="agent"))
    for key in (A, B, C):
        service.set_health(key, True)
    assert keys_of(service) == [A, B]
    assert service.set_agent_weight(A, 3)
    assert not service.set_agent_weight(A, 3)
    assert service.set_agent_weight(C, 2)  # even a configured 0
    counts = Counter(chosen(service) for _ in range(600))
    assert counts == {A: 300, B: 100, C: 200}
    service.set_agent_weight(A, None)
    assert Counter(chosen(service) for _ in range(400)) == {A: 100, B: 100, C: 200}
    assert not service.set_agent_weight("10.9.9.9:80", 1)
    with pytest.raises(SchedulerError, match="agent weight -1"):
        service.set_agent_weight(A, -1)


def test_unknown_servers_in_health_reports_are_ignored() -> None:
    service = VirtualService(spec())
    assert not service.set_health("10.9.9.9:80", False)
    assert not service.set_health(SORRY, False)


# -- reload ----------------------------------------------------------------------------


def test_reload_keeps_servers_that_stay_with_their_counters_and_health() -> None:
    service = VirtualService(spec(check="tcp", persistence=60))
    for key in (A, B, C):
        service.set_health(key, True)
    a, c = service.servers[A], service.servers[C]
    service.connected(a)
    service.add_bytes(a, 10, 20)
    assert chosen(service, "192.0.2.3") is not None
    scheduler = service.scheduler
    new = dataclasses.replace(
        spec(check="tcp", persistence=60),
        real=(RealSpec("10.0.0.1", 80, 4), RealSpec("10.0.0.3", 80), RealSpec("10.0.0.4", 80)),
    )
    service.reload(new)
    assert service.spec is new
    assert service.scheduler is scheduler
    assert list(service.servers) == [A, C, "10.0.0.4:80"]
    assert service.servers[A] is a
    assert service.servers[C] is c
    assert (a.active, a.total, a.bytes_in, a.weight) == (1, 1, 10, 4)
    assert not service.servers["10.0.0.4:80"].up  # new: down until probed
    assert keys_of(service) == [A, C]
    assert B not in service.persistence.servers()  # type: ignore[union-attr]


def test_reload_to_no_checks_brings_every_server_up() -> None:
    service = VirtualService(spec(check="tcp"))
    service.reload(spec(check="none"))
    assert keys_of(service) == [A, B, C]


def test_reload_replaces_the_scheduler_when_its_name_changes() -> None:
    service = VirtualService(spec(scheduler="rr"), rng=random.Random(1))
    service.reload(spec(scheduler="twos"))
    assert service.scheduler.name == "twos"
    with pytest.raises(SchedulerError, match="unknown scheduler"):
        service.reload(spec(scheduler="nope", weights=(1,)))
    assert service.scheduler.name == "twos"
    assert len(service.servers) == 3  # nothing changed


def test_reload_drops_an_agent_weight_when_the_agent_check_goes() -> None:
    service = VirtualService(spec(check="agent"))
    service.set_agent_weight(A, 7)
    service.reload(spec(check="agent"))
    assert service.servers[A].agent_weight == 7
    service.reload(spec(check="tcp"))
    assert service.servers[A].agent_weight is None


def test_reload_keeps_templates_unless_the_netmask_changes() -> None:
    service = VirtualService(spec(persistence=60))
    chosen(service)
    table = service.persistence
    service.reload(spec(persistence=120))
    assert service.persistence is table
    assert table is not None
    assert table.timeout == 120
    service.reload(spec())
    assert service.persistence is None


# -- status ----------------------------------------------------------------------------


def test_status_is_json_and_complete() -> None:
    service = VirtualService(spec(persistence=30, fallback=True))
    chosen(service)
    status = json.loads(json.dumps(service.status()))
    assert status["name"] == "web"
    assert status["protocol"] == "tcp"
    assert status["listen"] == "127.0.0.1:8080"
    assert status["scheduler"] == "rr"
    assert status["dataplane"] == "userspace"
    assert status["persistence"] == {"timeout": 30, "netmask": 32, "netmask6": 128}
    assert status["templates"] == 1
    assert status["real"][0] == {
        "address": A,
        "state": "up",
        "weight": 1,
        "agent_weight": None,
        "effective_weight": 1,
        "active": 0,
        "inactive": 0,
        "total": 0,
        "bytes_in": 0,
        "bytes_out": 0,
    }
    assert status["fallback"]["in_use"] is False
