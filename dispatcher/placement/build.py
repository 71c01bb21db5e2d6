"""Building the pools of a snapshot, off the hot path: plain data in, :class:`PoolView` out.

The caller (:func:`dispatcher.snapshot.build_snapshot`) passes the pools' configuration,
every site as the backends see it and the previous snapshot's pools; nothing here reads the
configuration module, the rules or the network.

A pool whose ``all_down`` is ``"fail-open"`` and whose sites are all down sends clients to
them anyway (Route 53's rule: when every record is unhealthy, all are considered healthy),
drained and weight-0 sites still excluded; its view says so in ``failing_open``, and each
entry into and exit from that mode is logged once, at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from dispatcher.backends.snapshot import SiteStatus
from dispatcher.placement.catalog import make_policy
from dispatcher.placement.locate import site_topology
from dispatcher.placement.model import DOWN, DRAINED, WEIGHT_ZERO, Candidate
from dispatcher.placement.policy import Policy
from dispatcher.placement.pool import NO_WHERE, PoolConfig, PoolView, Where
from dispatcher.placement.ring import NetworkRing

log = logging.getLogger("webfarm.farm")


@dataclass(frozen=True, slots=True)
class Hashing:
    """Network affinity's settings: clients are one network per ``/netmask`` (IPv4) and
    ``/netmask6`` (IPv6)."""

    netmask: int = 24
    netmask6: int = 64


def build_pools(
    pools: Mapping[str, PoolConfig],
    statuses: Mapping[str, SiteStatus],
    *,
    redirect_status: int,
    held: Mapping[str, PoolView] | None = None,
    hashing: Hashing | None = None,
    where: Where = NO_WHERE,
) -> dict[str, PoolView]:
    """Every pool's view. ``held`` (the previous snapshot's pools) lends its policies, so
    rotations and fail-open state carry on, and its rings while their sites stay the same.
    ``redirect_status`` applies to pools without their own; ``hashing`` turns on network
    affinity (a ring per pool)."""
    held = held or {}
    views: dict[str, PoolView] = {}
    for name, pool in pools.items():
        before = held.get(name)
        policy = _policy(pool, before.policy if before is not None else None)
        members = [s for s in statuses.values() if s.spec.pool == name]
        chosen = [s for s in members if s.eligible]
        failing_open = not chosen and pool.all_down == "fail-open"
        if failing_open:
            chosen = [s for s in members if s.admitted]
            failing_open = bool(chosen)
        _note_fail_open(name, policy, failing_open, members)
        taken = {s.spec.name for s in chosen}
        views[name] = PoolView(
            pool,
            policy,
            tuple(_candidate(status, where) for status in chosen),
            pool.redirect_status if pool.redirect_status is not None else redirect_status,
            failing_open=failing_open,
            members=tuple(s.spec.name for s in members),
            excluded={s.spec.name: _verdict(s) for s in members if s.spec.name not in taken},
            ring=_ring(members, hashing, before.ring if before is not None else None),
            where=where,
        )
    return views


def _policy(pool: PoolConfig, held: Policy | None) -> Policy:
    """The pool's policy: the one held if it is still the configured kind with the same
    options, else a new one."""
    if held is not None and held.name == pool.policy and held.settings == pool.options:
        return held
    policy = make_policy(pool.policy, dict(pool.options))
    if held is not None:
        policy.failing_open = held.failing_open  # a new policy is not a new outage
    return policy


def _ring(
    members: Sequence[SiteStatus], hashing: Hashing | None, held: NetworkRing | None
) -> NetworkRing | None:
    """The pool's network ring: every site with a weight above zero, whatever its health
    or drain (a lookup steps over those that cannot take clients)."""
    if hashing is None:
        return None
    entries = [(s.spec.name, s.spec.weight) for s in members if s.spec.weight > 0]
    if not entries:
        return None
    netmask, netmask6 = hashing.netmask, hashing.netmask6
    if held is not None and held.same(entries, netmask, netmask6):
        return held
    return NetworkRing.build(entries, netmask=netmask, netmask6=netmask6)


def _verdict(status: SiteStatus) -> str:
    """Why a site of the pool takes no new clients (a drain is named before health)."""
    if status.spec.drained:
        return DRAINED
    if status.spec.weight <= 0:
        return WEIGHT_ZERO
    return DOWN


def _note_fail_open(
    name: str, policy: Policy, failing_open: bool, members: Sequence[SiteStatus]
) -> None:
    """Log a pool entering or leaving fail-open, once per transition."""
    if failing_open == policy.failing_open:
        return
    policy.failing_open = failing_open
    if failing_open:
        names = ", ".join(s.spec.name for s in members if s.admitted)
        log.warning(
            "pool %s: every site is down, failing open: sending clients to %s anyway", name, names
        )
    else:
        up = ", ".join(s.spec.name for s in members if s.eligible) or "none (all drained)"
        log.warning("pool %s: no longer failing open; sites up: %s", name, up)


def _candidate(status: SiteStatus, where: Where) -> Candidate:
    spec, load = status.spec, status.load
    topology = site_topology(spec, where.locator)
    base = spec.base_url.encode("ascii")
    return Candidate(
        name=spec.name,
        base_url=spec.base_url,
        weight=spec.weight,
        location_base=base,
        redirect_head=b"content-length: 0\r\nlocation: " + base,
        netloc=urlsplit(spec.base_url).netloc.lower().encode("ascii"),
        load=load.report.load if load else None,
        load_at=load.received if load else None,
        region=topology.region,
        country=topology.country,
        continent=topology.continent,
        asn=topology.asn,
        coordinates=topology.coordinates,
    )
