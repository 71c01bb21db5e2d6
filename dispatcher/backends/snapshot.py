"""The immutable snapshot the hot path reads: no I/O, no locks, swapped whole.

Everything slow (probes, load reports, database writes) ends by building a new
:class:`Snapshot` with :func:`build_snapshot` and assigning it in one step.

A pool whose ``all_down`` is ``"fail-open"`` and whose sites are all down sends clients to
them anyway (Route 53's rule: when every record is unhealthy, all are considered healthy),
drained and weight-0 sites still excluded; its :class:`PoolView` says so in
``failing_open``, and :func:`build_snapshot` logs each entry into and exit from that mode
once, at WARNING.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.store import LoadReport
from dispatcher.config import Config, PoolConfig
from dispatcher.placement.model import Candidate
from dispatcher.placement.rtt import EMPTY_VIEW, RttView
from dispatcher.policies import Policy, make_policy
from dispatcher.redirect import RewriteProgram

log = logging.getLogger("webfarm.farm")


@dataclass(frozen=True, slots=True)
class Load:
    """A load report and the monotonic time this process received (or learned of) it."""

    report: LoadReport
    received: float


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """One site as the snapshot sees it."""

    spec: SiteSpec
    health: Health
    load: Load | None

    @property
    def eligible(self) -> bool:
        """May take new clients: healthy, not drained, weight above zero."""
        return self.health.state == "up" and self.admitted

    @property
    def admitted(self) -> bool:
        """Eligible if health were ignored: not drained, weight above zero (fail-open's set)."""
        return not self.spec.drained and self.spec.weight > 0


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool's eligible sites in configured order, and how to answer for it.

    ``failing_open`` is ``True`` while every site is down and the pool's ``all_down`` is
    ``"fail-open"``: ``candidates`` are then the sites that would be eligible if health
    were ignored.
    """

    config: PoolConfig
    policy: Policy
    candidates: tuple[Candidate, ...]
    status: int
    by_name: Mapping[str, Candidate] = field(default_factory=dict)
    failing_open: bool = False

    def __post_init__(self) -> None:
        if not self.by_name and self.candidates:
            object.__setattr__(self, "by_name", {c.name: c for c in self.candidates})

    def choose(self, now: float, host: bytes = b"") -> Candidate | None:
        """Pick a site for a new client; never one whose address is ``host`` (a loop)."""
        site = self.policy.choose(self.candidates, now)
        if site is not None and host and site.netloc == host:
            others = [c for c in self.candidates if c.netloc != host]
            site = self.policy.choose(others, now)
        return site

    def named(self, name: str, host: bytes = b"") -> Candidate | None:
        """The site ``name`` if this pool can give it a client now (eligible, and not the
        address the request came to), else None: how affinity takes a client back."""
        site = self.by_name.get(name)
        if site is None or (host and site.netloc == host):
            return None
        return site


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one request needs: pools, sites, the rewrite rules (if any), and the RTT
    the sites' switches learned of client networks."""

    revision: int
    pools: Mapping[str, PoolView]
    sites: Mapping[str, SiteStatus]
    default_pool: PoolView
    rules: RewriteProgram | None = None
    rtt: RttView = EMPTY_VIEW


def build_snapshot(
    config: Config,
    *,
    revision: int,
    sites: Sequence[SiteSpec],
    health: Callable[[str], Health],
    loads: Mapping[str, Load],
    policies: Mapping[str, Policy],
    rules: RewriteProgram | None = None,
    rtt: RttView | None = None,
) -> Snapshot:
    """Assemble a snapshot; ``policies`` are reused by pool name so rotations carry on.

    A pool's fail-open state is carried by its policy, so whoever builds snapshots and
    passes the previous snapshot's policies back gets each transition logged once.
    """
    statuses = {s.name: SiteStatus(s, health(s.name), loads.get(s.name)) for s in sites}
    pools: dict[str, PoolView] = {}
    for name, pool in config.pools.items():
        policy = _policy(pool, policies.get(name), config.dispatcher.load_max_age)
        members = [s for s in statuses.values() if s.spec.pool == name]
        chosen = [s for s in members if s.eligible]
        failing_open = not chosen and pool.all_down == "fail-open"
        if failing_open:
            chosen = [s for s in members if s.admitted]
            failing_open = bool(chosen)
        _note_fail_open(name, policy, failing_open, members)
        pools[name] = PoolView(
            pool,
            policy,
            tuple(_candidate(status) for status in chosen),
            config.pool_status(name),
            failing_open=failing_open,
        )
    return Snapshot(
        revision=revision,
        pools=MappingProxyType(pools),
        sites=MappingProxyType(statuses),
        default_pool=pools[config.dispatcher.default_pool],
        rules=rules,
        rtt=EMPTY_VIEW if rtt is None else rtt,
    )


def _policy(pool: PoolConfig, held: Policy | None, load_max_age: float) -> Policy:
    """The pool's policy: the one held if it is still the configured kind, else a new one."""
    if held is not None and held.name == pool.policy:
        return held
    policy = make_policy(pool.policy, load_max_age=load_max_age)
    if held is not None:
        policy.failing_open = held.failing_open  # a new policy is not a new outage
    return policy


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


def _candidate(status: SiteStatus) -> Candidate:
    spec, load = status.spec, status.load
    return Candidate(
        name=spec.name,
        base_url=spec.base_url,
        weight=spec.weight,
        location_base=spec.base_url.encode("ascii"),
        netloc=urlsplit(spec.base_url).netloc.lower().encode("ascii"),
        load=load.report.load if load else None,
        load_at=load.received if load else None,
    )
