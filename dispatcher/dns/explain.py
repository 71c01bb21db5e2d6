""" "What would this resolver be told for NAME TYPE, and why?" for the DNS front.

Shared by ``farm-dispatcher explain-dns`` and ``POST /api/v1/explain`` (``{"dns": ...}``).
The query is made by dnspython as a resolver would send it (EDNS, 1232 bytes, the client
subnet when one is given, no recursion wanted), answered by the same code as the real
front, and the answer read back by dnspython. Explaining never disturbs the live rotation:
it runs on copies of the pools' policies (the site the next query would get right now).
"""

from __future__ import annotations

import copy
import ipaddress
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import dns.edns
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from dispatcher.config import Config
from dispatcher.dns.answer import TCP_LIMIT, respond
from dispatcher.dns.message import AAAA, Query, decode
from dispatcher.dns.names import to_text
from dispatcher.dns.resolve import Resolved, resolve
from dispatcher.dns.table import DnsTable, Entry, build_table
from dispatcher.dns.ttl import ChangeTracker
from dispatcher.errors import InvalidValue
from dispatcher.snapshot import Snapshot

MAX_NAME_TEXT = 1024


@dataclass(frozen=True, slots=True)
class SiteVerdict:
    """One site of the name's pool: its health, its addresses, and what became of it."""

    site: str
    health: str
    addresses: tuple[str, ...]
    verdict: str


@dataclass(frozen=True, slots=True)
class DnsExplained:
    """The question, the answer as dnspython reads it, and the reasons, one line each."""

    question: str
    rcode: str
    flags: str
    answer: tuple[str, ...]
    authority: tuple[str, ...]
    additional: tuple[str, ...]
    reasons: tuple[str, ...]
    sites: tuple[SiteVerdict, ...]

    def format(self) -> str:
        lines = [self.question, *self.reasons]
        if self.sites:
            lines.append("sites of the pool:")
            width = max(len(s.site) for s in self.sites)
            for site in self.sites:
                shown = ", ".join(site.addresses) or "no address"
                lines.append(f"  {site.site:<{width}}  {site.health:<7}  {shown}: {site.verdict}")
        lines.append(f"answer: {self.rcode}, flags {self.flags}")
        for title, records in (
            ("answer", self.answer),
            ("authority", self.authority),
            ("additional", self.additional),
        ):
            lines.extend(f"  {title}: {record}" for record in records)
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        return {
            "dns": {
                "question": self.question,
                "rcode": self.rcode,
                "flags": self.flags,
                "answer": list(self.answer),
                "authority": list(self.authority),
                "additional": list(self.additional),
                "reasons": list(self.reasons),
                "sites": [
                    {
                        "site": s.site,
                        "health": s.health,
                        "addresses": list(s.addresses),
                        "verdict": s.verdict,
                    }
                    for s in self.sites
                ],
            },
            "text": self.format(),
        }


def make_query(
    name: str, rdtype: str = "A", resolver: str = "127.0.0.1", subnet: str | None = None
) -> bytes:
    """The query a resolver would send; :class:`InvalidValue` naming the bad argument."""
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_TEXT or not name.isprintable():
        raise InvalidValue("name", f"a domain name of 1-{MAX_NAME_TEXT} printable characters")
    try:
        qname = dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError, ValueError) as exc:
        raise InvalidValue("name", f"a domain name ({exc}), got {name!r}") from None
    try:
        qtype = dns.rdatatype.RdataType.from_text(rdtype)
    except (dns.exception.DNSException, ValueError, AttributeError):
        raise InvalidValue(
            "type", f"a record type such as A or TYPE65280, got {rdtype!r}"
        ) from None
    try:
        ipaddress.ip_address(resolver)
    except ValueError:
        raise InvalidValue("resolver", f"an IPv4 or IPv6 address, got {resolver!r}") from None
    options: list[dns.edns.Option] = []
    if subnet is not None:
        try:
            network = ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            raise InvalidValue(
                "subnet", f"a network such as 198.51.100.0/24, got {subnet!r}"
            ) from None
        options.append(dns.edns.ECSOption(str(network.network_address), network.prefixlen))
    message = dns.message.make_query(qname, qtype, use_edns=0, payload=1232, options=options)
    message.flags = 0  # a resolver asking an authoritative server wants no recursion
    return message.to_wire()


def explain_dns(
    snapshot: Snapshot,
    config: Config,
    name: str,
    rdtype: str = "A",
    *,
    resolver: str = "127.0.0.1",
    subnet: str | None = None,
    tracker: ChangeTracker | None = None,
    now: float | None = None,
) -> DnsExplained:
    """Answer the query ``make_query`` builds on a dry copy of ``snapshot``; see the module."""
    if config.dns is None:
        raise InvalidValue("dns", "a dispatcher with a [dns] table (this one has none)")
    wire = make_query(name, rdtype, resolver, subnet)
    query = decode(wire)
    assert query is not None  # we made it
    now = time.monotonic() if now is None else now
    table = build_table(config.dns, _dry(snapshot), tracker)
    reply, _ = respond(table, query, resolver, now, TCP_LIMIT)
    answer = dns.message.from_wire(reply)
    reasons, sites = _reasons(_dry(snapshot), table, query, resolver, subnet, now)
    return DnsExplained(
        question=f"{to_text(query.qname)} {_type_text(query.qtype)}, asked by"
        f" {resolver}" + (f" for client subnet {subnet}" if subnet else ""),
        rcode=dns.rcode.to_text(answer.rcode()),
        flags=dns.flags.to_text(answer.flags).lower(),
        answer=tuple(_records(answer.answer)),
        authority=tuple(_records(answer.authority)),
        additional=tuple(_records(answer.additional)),
        reasons=tuple(reasons),
        sites=tuple(sites),
    )


def _type_text(qtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))


def _dry(snapshot: Snapshot) -> Snapshot:
    pools = {name: replace(p, policy=copy.deepcopy(p.policy)) for name, p in snapshot.pools.items()}
    return replace(snapshot, pools=pools, default_pool=pools[snapshot.default_pool.config.name])


def _records(rrsets: list[Any]) -> list[str]:
    return [line for rrset in rrsets for line in rrset.to_text().splitlines()]


def _reasons(
    snapshot: Snapshot,
    table: DnsTable,
    query: Query,
    resolver: str,
    subnet: str | None,
    now: float,
) -> tuple[list[str], list[SiteVerdict]]:
    zone = table.zone_of(query.qname)
    if zone is None:
        return [f"not in any zone ({_zones(table)}): REFUSED, as any name not ours"], []
    reasons = [f"in zone {to_text(zone.apex)}"]
    entry = table.names.get(query.qname)
    if entry is None:
        exists = query.qname in table.existing
        known = "it exists (an apex, or above configured names)" if exists else "no such name"
        return [*reasons, f"not a configured name; {known}"], []
    if entry.pool is None:
        return [*reasons, f"a configured name with fixed addresses, ttl {entry.config.ttl}"], []
    pool = snapshot.pools.get(entry.pool)
    policy = pool.config.policy if pool else "?"
    reasons.append(
        f"a configured name placed from pool {entry.pool} (policy {policy}), at most"
        f" {entry.answers} address(es), ttl {entry.config.ttl}, all_down {entry.config.all_down}"
    )
    client = f"subnet {subnet} (EDNS client subnet)" if subnet else f"the resolver {resolver}"
    reasons.append(f"client: {client}")
    reasons.append(_ttl_reason(entry, now))
    family = 2 if query.qtype == AAAA else 0
    resolved = resolve(snapshot, entry, family, query.ecs, resolver, now)
    reasons.append(f"answered by: {resolved.how}, client subnet scope /{resolved.scope}")
    return reasons, _verdicts(snapshot, entry, resolved, family)


def _zones(table: DnsTable) -> str:
    return ", ".join(to_text(z) for z in table.zones)


def _ttl_reason(entry: Entry, now: float) -> str:
    ttl = entry.config.ttl
    if now >= entry.short_until:
        return f"ttl {ttl.high}: the pool is stable"
    if entry.short_until == math.inf:
        return f"ttl {ttl.low}: a site of the pool is not probed yet"
    left = entry.short_until - now
    return f"ttl {ttl.low}: a site of the pool changed lately (short for {left:.0f} s more)"


def _verdicts(
    snapshot: Snapshot, entry: Entry, resolved: Resolved, family: int
) -> list[SiteVerdict]:
    placed = [c.name for c in resolved.placement.sites] if resolved.placement else []
    answered = set(resolved.records)
    verdicts: list[SiteVerdict] = []
    for status in snapshot.sites.values():
        spec = status.spec
        if spec.pool != entry.pool:
            continue
        records = entry.records.get(spec.name, ((), (), (), ()))
        mine = records[family] + records[family + 1]
        if spec.name in placed:
            position = placed.index(spec.name) + 1
            if answered & set(mine):
                verdict = f"answered (placed {position})"
            elif not records[family]:
                verdict = f"placed {position}, but has no {'IPv6' if family else 'IPv4'} address"
            else:
                verdict = f"placed {position}, beyond the {entry.answers} answer(s)"
        elif spec.drained:
            verdict = "drained"
        elif spec.weight == 0:
            verdict = "weight 0"
        elif status.health.state != "up":
            verdict = f"{status.health.state}: not placed"
        else:
            verdict = "not placed (the policy chose others)"
        verdicts.append(SiteVerdict(spec.name, status.health.state, spec.dns_addresses, verdict))
    return verdicts
