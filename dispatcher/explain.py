""" "What would client X get?": the rules' trace, how placement located the client and
weighed every site of the pool, and the dispatcher's final answer.

Shared by ``farm-dispatcher explain`` and ``POST /api/v1/explain``. Explaining never
disturbs the live rotation: each pool answers with a copy of its policy, i.e. the site
the next new client would get right now. The placement shown is
:func:`dispatcher.placement.engine.explain` on another copy, so it names the same site.
"""

from __future__ import annotations

import copy
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from dispatcher.app import Decision, SiteSelection, decide
from dispatcher.backends.health import Health
from dispatcher.backends.store import SiteStore
from dispatcher.clientaddr import FORWARDED_HEADERS, TrustedProxies, forwarded_client
from dispatcher.config import Config
from dispatcher.errors import InvalidValue, StoreError
from dispatcher.placement import engine
from dispatcher.placement.model import Client, Considered, Location, Placement
from dispatcher.placement.pool import Where
from dispatcher.redirect import (
    Explanation,
    Outcome,
    RewriteProgram,
    RewriteRequest,
    compile_rules,
    load_rules,
)
from dispatcher.redirect.request import DEFAULT_PORTS, split_host
from dispatcher.snapshot import Snapshot, build_snapshot, locator_for

#: The longest client subnet text accepted (an IPv6 address with a prefix fits in 50).
MAX_SUBNET = 64


@dataclass(frozen=True, slots=True)
class Explained:
    """The rules' explanation (``None`` without rules), the client as placement saw it,
    the placement in each pool that placed it (the default pool's when none did), and the
    dispatcher's answer."""

    request: RewriteRequest
    explanation: Explanation | None
    decision: Decision
    client: Client
    placements: tuple[Placement, ...] = ()

    def format(self) -> str:
        lines = [self.explanation.format()] if self.explanation else ["no rewrite rules"]
        for placement in self.placements:
            lines.extend(format_placement(placement, self.client))
        lines.append(f"dispatcher answers: {describe(self.decision)}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        outcome = self.explanation.outcome if self.explanation else None
        return {
            "outcome": None
            if outcome is None
            else {
                "action": outcome.action,
                "status": outcome.status,
                "location": outcome.location,
                "path": outcome.path,
                "query_string": outcome.query_string,
                "cookies": list(outcome.cookies),
                "env": dict(outcome.env),
            },
            "answer": {
                "status": self.decision.status,
                "location": None
                if self.decision.location is None
                else self.decision.location.decode("latin-1"),
                "sites": list(self.decision.sites),
                "sorry": self.decision.sorry,
            },
            "client": {"remote_addr": self.client.address, "subnet": self.client.subnet or None},
            "placements": [placement_dict(p) for p in self.placements],
            "text": self.format(),
        }


def located_dict(located: Location) -> dict[str, Any]:
    return {
        "source": located.source,
        "prefix": located.prefix,
        "region": located.region,
        "asn": located.asn,
        "country": located.country,
        "continent": located.continent,
        "coordinates": list(located.coordinates) if located.coordinates else None,
    }


def placement_dict(placement: Placement) -> dict[str, Any]:
    return {
        "pool": placement.pool,
        "sites": [site.name for site in placement.sites],
        "located": located_dict(placement.located),
        "considered": [
            {
                "site": c.site,
                "verdict": c.verdict,
                "tier": c.tier,
                "distance_km": c.distance_km,
                "rtt_ms": None if c.rtt is None else round(c.rtt * 1000, 3),
                "detail": c.detail,
            }
            for c in placement.considered
        ],
    }


def format_placement(placement: Placement, client: Client) -> list[str]:
    """The placement as text: how the client was located, then one line per site."""
    who = client.address or "an unknown address"
    if client.subnet:
        who += f" (client subnet {client.subnet})"
    lines = [f"client {who}: {describe_location(placement.located)}"]
    lines.append(f"pool {placement.pool}:")
    width = max((len(c.site) for c in placement.considered), default=0)
    lines.extend(f"  {c.site:<{width}}  {describe_verdict(c)}" for c in placement.considered)
    if not placement.considered:
        lines.append("  (no sites)")
    return lines


def describe_location(located: Location) -> str:
    if located.source == "none" and not located.rtt:
        return "not located"
    parts = [f"{k} {v}" for k, v in located_dict(located).items() if k != "source" and v]
    how = f"located by {located.source}" if located.source != "none" else "not located"
    if located.rtt:
        parts.append(f"learned RTT from {len(located.rtt)} site(s)")
    return f"{how}: {', '.join(parts)}" if parts else how


def describe_verdict(considered: Considered) -> str:
    text = considered.verdict
    extra = []
    if considered.tier is not None:
        extra.append(f"tier {considered.tier}")
    if considered.distance_km is not None:
        extra.append(f"{considered.distance_km:.0f} km")
    if considered.rtt is not None:
        extra.append(f"RTT {considered.rtt * 1000:.1f} ms")
    if considered.detail:
        extra.append(considered.detail)
    return f"{text} ({'; '.join(extra)})" if extra else text


def describe(decision: Decision) -> str:
    if decision.sorry:
        return "503 sorry page (no site can take the client)"
    if decision.location is not None:
        return f"{decision.status} Location: {decision.location.decode('latin-1')}"
    return str(decision.status)


def request_from_url(
    url: str,
    *,
    method: str = "GET",
    remote_addr: str = "127.0.0.1",
    headers: Iterable[tuple[str, str]] = (),
    trusted: TrustedProxies | None = None,
    forwarded_header: str = FORWARDED_HEADERS[0],
) -> RewriteRequest:
    """The request a client would make for ``url`` (absolute http(s) URL). With
    ``trusted`` proxies (``[dispatcher] trusted_proxies``) and ``remote_addr`` one of them,
    the client is the one its headers name, as the public listener would see it."""
    if not url.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidValue(
            "url", f"an ASCII URL (%-encoded, punycode) without spaces or controls, got {url!r}"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidValue("url", f"an absolute http:// or https:// URL, got {url!r}")
    joined: dict[str, str] = {}
    for name, value in headers:
        key = name.strip().lower()
        if not key or any(c in key for c in " :\r\n") or any(c in value for c in "\r\n"):
            raise InvalidValue("headers", f"a valid header, got {name!r}: {value!r}")
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    host = joined.setdefault("host", parts.netloc)
    server_name, server_port = split_host(host, DEFAULT_PORTS[parts.scheme])
    scheme, remote_port = parts.scheme, 0
    if trusted is not None and remote_addr in trusted:
        pairs = [
            (k.encode("latin-1", "replace"), v.encode("latin-1", "replace"))
            for k, v in joined.items()
        ]
        hop = forwarded_client(pairs, trusted, forwarded_header)
        remote_addr, remote_port = hop.address or remote_addr, hop.port if hop.address else 0
        scheme = hop.scheme or scheme
    return RewriteRequest(
        method=method.upper(),
        scheme=scheme,
        host=host,
        server_name=server_name,
        server_port=server_port,
        path=parts.path or "/",
        query_string=parts.query,
        remote_addr=remote_addr,
        remote_port=remote_port,
        headers=joined,
    )


def explain(snapshot: Snapshot, request: RewriteRequest, *, subnet: str = "") -> Explained:
    """Run ``request`` through ``snapshot``'s rules and placement, leaving it untouched.

    ``subnet`` is a client subnet (as EDNS gives it) placement locates instead of the
    request's address."""
    subnet = client_subnet(subnet)
    pristine = _dry(snapshot)  # (copied before the decision advances any rotation)
    dry = _dry(snapshot)
    now, host = time.monotonic(), request.host.lower().encode("latin-1")
    target = request.path.encode("latin-1")
    if request.query_string:
        target += b"?" + request.query_string.encode("latin-1")
    scope = {"client": (request.remote_addr, 0)}
    selection = SiteSelection(dry, now, host, scope=scope, subnet=subnet)
    explanation = None
    if dry.rules is None:
        outcome = Outcome("none", None, None, request.path, request.query_string, (), {})
    else:
        explanation = dry.rules.explain(request, sites=selection)
        outcome = explanation.outcome
    decision = decide(dry, outcome, target, selection)
    client = Client(request.remote_addr, subnet, host, None, now)
    answered = outcome.action in ("redirect", "forbidden", "gone", "status") and outcome.status
    pools = _placing_pools(pristine, decision, asked_default=not answered)
    placements = tuple(engine.explain(pristine.pools[name], client) for name in pools)
    return Explained(request, explanation, decision, client, placements)


def client_subnet(value: str) -> str:
    """A client subnet as ``explain`` accepts it, normalised (``198.51.100.0/24``); ``""``
    for none. :class:`InvalidValue` naming ``subnet`` for anything else."""
    if not value:
        return ""
    expected = "an IPv4 or IPv6 network such as 198.51.100.0/24"
    if len(value) > MAX_SUBNET or not value.isprintable():
        raise InvalidValue("subnet", f"{expected}, got {value[:MAX_SUBNET]!r}")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise InvalidValue("subnet", f"{expected}, got {value!r}") from None


def _placing_pools(snapshot: Snapshot, decision: Decision, *, asked_default: bool) -> list[str]:
    """The pools of the sites the answer sends the client to (each once, in order); the
    default pool when it was asked and placed nobody (its fallback answers)."""
    pools: list[str] = []
    for name in decision.sites:
        status = snapshot.sites.get(name)
        if status is not None and status.spec.pool not in pools:
            pools.append(status.spec.pool)
    if not pools and asked_default:
        pools.append(snapshot.default_pool.name)
    return [name for name in pools if name in snapshot.pools]


def _dry(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with copies of its policies, so explaining leaves the rotation alone."""
    pools = {
        name: replace(pool, policy=copy.deepcopy(pool.policy))
        for name, pool in snapshot.pools.items()
    }
    default = pools[snapshot.default_pool.config.name]
    return replace(snapshot, pools=pools, default_pool=default)


def offline_snapshot(config: Config, store: SiteStore | None) -> tuple[Snapshot, str]:
    """A snapshot for explaining without a running dispatcher; the string says its sources.

    Sites and rules come from the database when it is usable (what running dispatchers
    use), else from the config file. Every site counts as healthy: no probe runs here.
    """
    sites, stored, source = config.sites, None, f"config file {config.source}"
    if store is not None:
        try:
            store.check_schema()
            sites, stored = store.list_sites(), store.get_rules()
            source = "database"
        except StoreError as exc:
            source = f"config file {config.source} (database not usable: {exc})"
    if stored is not None:
        rules: RewriteProgram | None = compile_rules(
            stored.text,
            filename=stored.origin,
            base_dir=config.rules_base_dir,
            known_pools=config.pools,
        )
        rules_source = (
            f"rules from {stored.origin} (as stored {stored.updated_at:%Y-%m-%d %H:%M} UTC)"
        )
    elif config.dispatcher.rules is not None:
        rules = load_rules(config.dispatcher.rules, known_pools=config.pools)
        rules_source = f"rules from {config.dispatcher.rules}"
    else:
        rules, rules_source = None, "no rules"
    snapshot = build_snapshot(
        config,
        revision=0,
        sites=sites,
        health=lambda name: Health("up", None),
        loads={},
        rules=rules,
        where=Where(locator_for(config), None),
    )
    note = f"sites from the {source}, all assumed healthy; {rules_source}"
    return snapshot, note
