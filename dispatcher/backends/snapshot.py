"""The immutable snapshot the hot path reads: no I/O, no locks, swapped whole.

Everything slow (probes, load reports, database writes) ends by building a new
:class:`Snapshot` with :func:`build_snapshot` and assigning it in one step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.store import LoadReport
from dispatcher.config import Config, PoolConfig
from dispatcher.policies import Candidate, Policy, make_policy
from dispatcher.redirect import RewriteProgram


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
        return self.health.state == "up" and not self.spec.drained and self.spec.weight > 0


@dataclass(frozen=True, slots=True)
class PoolView:
    """A pool's eligible sites in configured order, and how to answer for it."""

    config: PoolConfig
    policy: Policy
    candidates: tuple[Candidate, ...]
    status: int
    by_name: Mapping[str, Candidate] = field(default_factory=dict)

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
    """Everything one request needs: pools, sites, and the rewrite rules (if any)."""

    revision: int
    pools: Mapping[str, PoolView]
    sites: Mapping[str, SiteStatus]
    default_pool: PoolView
    rules: RewriteProgram | None = None


def build_snapshot(
    config: Config,
    *,
    revision: int,
    sites: Sequence[SiteSpec],
    health: Callable[[str], Health],
    loads: Mapping[str, Load],
    policies: Mapping[str, Policy],
    rules: RewriteProgram | None = None,
) -> Snapshot:
    """Assemble a snapshot; ``policies`` are reused by pool name so rotations carry on."""
    statuses = {s.name: SiteStatus(s, health(s.name), loads.get(s.name)) for s in sites}
    pools: dict[str, PoolView] = {}
    for name, pool in config.pools.items():
        policy = policies.get(name)
        if policy is None or policy.name != pool.policy:
            policy = make_policy(pool.policy, load_max_age=config.dispatcher.load_max_age)
        candidates = tuple(
            _candidate(status)
            for status in statuses.values()
            if status.spec.pool == name and status.eligible
        )
        pools[name] = PoolView(pool, policy, candidates, config.pool_status(name))
    return Snapshot(
        revision=revision,
        pools=MappingProxyType(pools),
        sites=MappingProxyType(statuses),
        default_pool=pools[config.dispatcher.default_pool],
        rules=rules,
    )


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
