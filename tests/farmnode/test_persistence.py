"""Persistence templates with a fake clock: masking, expiry, holding, forgetting."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmnode.errors import SchedulerError
from farmnode.switch.persistence import PersistenceTable


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_network_masks_ipv4_and_ipv6_clients(clock: FakeClock) -> None:
    whole = PersistenceTable(60, clock=clock)
    assert whole.network("192.0.2.77") == "192.0.2.77"
    assert whole.network("2001:db8::1") == "2001:db8::1"
    assert whole.network("::ffff:192.0.2.77") == "192.0.2.77"  # dual-stack sockets
    masked = PersistenceTable(60, netmask=24, netmask6=64, clock=clock)
    assert masked.network("192.0.2.77") == "192.0.2.0/24"
    assert masked.network("::ffff:192.0.2.77") == "192.0.2.0/24"
    assert masked.network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert masked.network("fe80::1:2%eth0") == "fe80::/64"
    assert PersistenceTable(60, netmask=0, clock=clock).network("8.8.8.8") == "0.0.0.0/0"


def test_bad_settings_and_clients_are_named(clock: FakeClock) -> None:
    with pytest.raises(SchedulerError, match="timeout must be > 0"):
        PersistenceTable(0)
    with pytest.raises(SchedulerError, match=r"netmask must be 0\.\.32"):
        PersistenceTable(60, netmask=33)
    with pytest.raises(SchedulerError, match=r"netmask6 must be 0\.\.128"):
        PersistenceTable(60, netmask6=-1)
    with pytest.raises(SchedulerError, match="'not-an-ip' is not an IP address"):
        PersistenceTable(60, netmask=24, clock=clock).bind("not-an-ip", "s")


def test_a_template_lives_timeout_seconds_after_its_last_use(clock: FakeClock) -> None:
    table = PersistenceTable(300, clock=clock)
    assert table.lookup("192.0.2.1") is None
    table.bind("192.0.2.1", "10.0.0.1:80")
    clock.advance(299)
    assert table.lookup("192.0.2.1") == "10.0.0.1:80"  # a lookup refreshes nothing
    table.bind("192.0.2.1", "10.0.0.1:80")  # a new connection does
    clock.advance(299)
    assert table.lookup("192.0.2.1") == "10.0.0.1:80"
    clock.advance(1)
    assert table.lookup("192.0.2.1") is None
    assert len(table) == 1
    assert table.expire() == 1
    assert len(table) == 0


def test_one_template_per_client_network(clock: FakeClock) -> None:
    table = PersistenceTable(60, netmask=24, clock=clock)
    table.bind("192.0.2.1", "a")
    assert table.lookup("192.0.2.200") == "a"
    assert table.lookup("192.0.3.1") is None
    table.bind("192.0.2.9", "b")  # rebinding the network moves the whole network
    assert table.lookup("192.0.2.1") == "b"
    assert len(table) == 1


def test_an_open_connection_holds_its_template_past_the_timeout(clock: FakeClock) -> None:
    table = PersistenceTable(60, clock=clock)
    table.bind("192.0.2.1", "a")
    table.hold("192.0.2.1")
    table.hold("192.0.2.1")
    clock.advance(3600)
    assert table.expire() == 0
    assert table.lookup("192.0.2.1") == "a"
    table.unhold("192.0.2.1")
    clock.advance(3600)
    assert table.lookup("192.0.2.1") == "a"  # one is still open
    table.unhold("192.0.2.1")  # the last one closes: the timeout starts now
    clock.advance(59)
    assert table.lookup("192.0.2.1") == "a"
    clock.advance(1)
    assert table.lookup("192.0.2.1") is None
    table.unhold("192.0.2.1")  # more releases than holds are harmless
    table.hold("198.51.100.1")  # and so is holding a client without a template
    assert table.expire() == 1


def test_forget_server_drops_only_its_templates(clock: FakeClock) -> None:
    table = PersistenceTable(60, clock=clock)
    for i in range(10):
        table.bind(f"192.0.2.{i}", "a" if i % 3 else "b")
    assert table.servers() == {"a": 6, "b": 4}
    assert table.forget_server("b") == 4
    assert table.forget_server("b") == 0
    assert len(table) == 6
    assert all(table.lookup(f"192.0.2.{i}") in (None, "a") for i in range(10))


def test_binding_sweeps_expired_templates_now_and_then(clock: FakeClock) -> None:
    table = PersistenceTable(10, clock=clock)
    for i in range(100):
        table.bind(f"192.0.2.{i}", "a")
    clock.advance(11)
    table.bind("198.51.100.1", "b")
    assert len(table) == 1


addresses = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str).filter(lambda a: not a.startswith("::ffff:")),
)


@settings(max_examples=200, deadline=None)
@given(
    client=addresses,
    netmask=st.integers(0, 32),
    netmask6=st.integers(0, 128),
)
def test_network_agrees_with_the_ipaddress_module(client: str, netmask: int, netmask6: int) -> None:
    table = PersistenceTable(60, netmask=netmask, netmask6=netmask6)
    version = ipaddress.ip_address(client).version
    bits = netmask if version == 4 else netmask6
    full = 32 if version == 4 else 128
    expected = ipaddress.ip_network(f"{client}/{bits}", strict=False)
    got = table.network(client)
    if bits == full:
        assert got == client
    else:
        assert ipaddress.ip_network(got) == expected


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["bind", "advance"]), st.integers(0, 5), st.integers(0, 40)),
        max_size=30,
    )
)
def test_lookup_answers_exactly_while_the_last_bind_is_younger_than_the_timeout(
    steps: list[tuple[str, int, int]],
) -> None:
    clock = FakeClock()
    table = PersistenceTable(30, clock=clock)
    last_bind: dict[str, tuple[float, str]] = {}
    for op, n, amount in steps:
        client = f"192.0.2.{n}"
        if op == "bind":
            table.bind(client, f"s{amount}")
            last_bind[client] = (clock.now, f"s{amount}")
        else:
            clock.advance(amount)
        for i in range(6):
            c = f"192.0.2.{i}"
            expected = None
            if c in last_bind and clock.now - last_bind[c][0] < 30:
                expected = last_bind[c][1]
            assert table.lookup(c) == expected
