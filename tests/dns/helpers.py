"""Builders shared by the DNS tests: a configuration, a snapshot, a service, and queries
made by dnspython (the reference: nothing of ours encodes the queries the tests send)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dns.edns
import dns.message
import dns.rdatatype

from dispatcher.backends.health import Health, State
from dispatcher.config import Config, build_config
from dispatcher.dns.service import DnsService
from dispatcher.snapshot import Snapshot, build_snapshot
from tests.tomlwrite import toml_value

TOKEN = "dns-test-token-0123456789"
ZONE = "farm.example."
WWW = "www.farm.example."


def dns_table(**overrides: Any) -> dict[str, Any]:
    """A ``[dns]`` table: zone farm.example., www placed from the default pool (two
    answers), ns1 with fixed addresses, a name deeper down (so ``eu`` is an empty
    non-terminal)."""
    table: dict[str, Any] = {
        "listen": ["127.0.0.1:0"],
        "zones": [ZONE],
        "ns": ["ns1.farm.example.", "ns.elsewhere.example."],
        "names": [
            {"name": WWW, "pool": "default", "ttl": "20/5", "answers": 2},
            {"name": "ns1.farm.example.", "addresses": ["192.0.2.53", "2001:db8::53"]},
            {"name": "deep.eu.farm.example.", "pool": "default", "ttl": 30},
        ],
    }
    table.update(overrides)
    return table


def dns_toml(
    *,
    listen: str = "127.0.0.1:0",
    ttl: int | str | None = None,
    names: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The same zone as a farm file's ``[dns]`` table, to append to one: farm.example.
    served by ns1.farm.example., www placed from the default pool (with ``ttl`` when one is
    given, else the default), then ``names`` (fixed addresses, say)."""
    www: dict[str, Any] = {"name": WWW, "pool": "default"}
    if ttl is not None:
        www["ttl"] = ttl
    lines = [
        "\n[dns]",
        f"listen = {toml_value([listen])}",
        f"zones = {toml_value([ZONE])}",
        'ns = ["ns1.farm.example."]',
    ]
    for entry in (www, *names):
        lines.append("\n[[dns.names]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in entry.items())
    return "\n".join(lines) + "\n"


SITES: list[dict[str, Any]] = [
    {"name": "eu", "base_url": "http://192.0.2.1", "weight": 10},
    {"name": "us", "base_url": "http://192.0.2.2", "weight": 5, "addresses": ["2001:db8::2"]},
    {"name": "asia", "base_url": "http://192.0.2.3", "weight": 1},
]


def make_config(
    dns_overrides: Mapping[str, Any] | None = None,
    sites: Sequence[Mapping[str, Any]] = tuple(SITES),
    pools: Mapping[str, Any] | None = None,
) -> Config:
    raw: dict[str, Any] = {
        "dispatcher": {"admin_tokens": [TOKEN]},
        "sites": [dict(s) for s in sites],
        "dns": dns_table(**(dns_overrides or {})),
    }
    if pools is not None:
        raw["pools"] = dict(pools)
    return build_config(raw, environ={})


class Source:
    """A :class:`~dispatcher.dns.service.DnsSource` whose state a test changes."""

    def __init__(self, config: Config, health: Callable[[str], State] | None = None) -> None:
        self.config = config
        self.previous: Snapshot | None = None
        self.health = health or (lambda name: "up")
        self.revision = 1
        self.dns_history: dict[str, float] = {}  # (what a worker is sent by the control)
        self.snapshot = self.rebuild()

    def rebuild(self, sites: Any = None) -> Snapshot:
        snapshot = build_snapshot(
            self.config,
            revision=self.revision,
            sites=self.config.sites if sites is None else sites,
            health=lambda name: Health(self.health(name), None),
            loads={},
            previous=self.previous,
        )
        self.previous = snapshot
        self.snapshot = snapshot
        return snapshot


def service(config: Config | None = None, clock: Callable[[], float] | None = None) -> DnsService:
    source = Source(config or make_config())
    return DnsService(source, clock=clock) if clock else DnsService(source)


def query(
    name: str,
    rdtype: str | int = "A",
    *,
    edns: int | None = None,
    payload: int = 1232,
    subnet: str | None = None,
    want_dnssec: bool = False,
) -> bytes:
    options: list[dns.edns.Option] = []
    if subnet is not None:
        address, _, prefix = subnet.partition("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    use_edns = edns if edns is not None else (0 if (options or want_dnssec) else None)
    rdtype = dns.rdatatype.RdataType.make(rdtype) if isinstance(rdtype, int) else rdtype
    if use_edns is None:
        return dns.message.make_query(name, rdtype).to_wire()
    message = dns.message.make_query(
        name,
        rdtype,
        use_edns=use_edns,
        payload=payload,
        options=options,
        want_dnssec=want_dnssec,
    )
    return message.to_wire()


def ask(svc: DnsService, wire: bytes, client: str = "127.0.0.1") -> dns.message.Message:
    """Send ``wire`` over "UDP" and parse the answer with dnspython (it must parse)."""
    answer = svc.answer_udp(wire, client)
    assert answer is not None
    return dns.message.from_wire(answer)


def addresses(message: dns.message.Message) -> list[str]:
    return [rdata.to_text() for rrset in message.answer for rdata in rrset]
