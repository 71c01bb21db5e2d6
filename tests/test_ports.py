"""The test suite's own port allocator (tests/ports.py)."""

from __future__ import annotations

import socket

import pytest

from tests import ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    given = ports.free_ports(50)
    assert len(set(given)) == 50
    low = ports.ephemeral_low()
    assert all(ports.BAND_START <= port < min(ports.BAND_END, low) for port in given)
    for port in given[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_skipped() -> None:
    first = ports.free_port()
    slice_ = ports._slice()
    following = first + 1 if first + 1 in slice_ else slice_.start
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", following))
        assert ports.free_port() != following


@pytest.mark.parametrize("worker", ["gw0", "gw1", "gw2", "gw3"])
def test_each_xdist_worker_has_its_own_slice(worker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    slices = {}
    for name in ("gw0", "gw1", "gw2", "gw3"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", name)
        slices[name] = set(ports._slice())
    others = set().union(*(s for name, s in slices.items() if name != worker))
    assert slices[worker]
    assert not slices[worker] & others
