"""The immutable snapshot the hot path reads: no I/O, no locks, swapped whole.

Everything slow (probes, load reports, database writes, a reload) ends by building a new
:class:`Snapshot` with :func:`build_snapshot` and assigning it in one step. It holds what a
request needs, precomputed: the rules, every pool's view (:mod:`dispatcher.placement`) and
every site's status. This module joins the configuration and the rules to placement and the
backends; those two never import it, nor the configuration.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.snapshot import Load, SiteStatus
from dispatcher.config import Config
from dispatcher.placement.build import Hashing, build_pools
from dispatcher.placement.catalog import REGISTRY
from dispatcher.placement.locate import Locator
from dispatcher.placement.pool import NO_WHERE, PoolView, Where
from dispatcher.placement.rtt import EMPTY_VIEW, RttView
from dispatcher.redirect import RewriteProgram


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one request needs: pools, sites, the rewrite rules (if any), and how
    clients are located (``where``). ``placed`` (computed) maps each candidate site's name
    to its redirect counter cell (:attr:`~dispatcher.placement.model.Candidate.placed`)."""

    revision: int
    pools: Mapping[str, PoolView]
    sites: Mapping[str, SiteStatus]
    default_pool: PoolView
    rules: RewriteProgram | None = None
    where: Where = NO_WHERE
    placed: Mapping[str, list[int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        cells = {c.name: c.placed for pool in self.pools.values() for c in pool.candidates}
        object.__setattr__(self, "placed", MappingProxyType(cells))

    @property
    def rtt(self) -> RttView:
        """The RTT the sites' switches learned of client networks (empty without reports)."""
        rtt = self.where.rtt
        return rtt if isinstance(rtt, RttView) else EMPTY_VIEW


def build_snapshot(
    config: Config,
    *,
    revision: int,
    sites: Sequence[SiteSpec],
    health: Callable[[str], Health],
    loads: Mapping[str, Load],
    previous: Snapshot | None = None,
    rules: RewriteProgram | None = None,
    where: Where = NO_WHERE,
) -> Snapshot:
    """Assemble a snapshot. ``previous`` lends its pools' policies (rotations and fail-open
    state carry on, each fail-open transition is logged once) and network rings."""
    statuses = {s.name: SiteStatus(s, health(s.name), loads.get(s.name)) for s in sites}
    settings = config.dispatcher
    hashing = None
    if settings.affinity == "network":
        hashing = Hashing(settings.affinity_netmask, settings.affinity_netmask6)
    pools = build_pools(
        config.pools,
        statuses,
        redirect_status=settings.redirect_status,
        held=previous.pools if previous is not None else None,
        hashing=hashing,
        where=where,
    )
    return Snapshot(
        revision=revision,
        pools=MappingProxyType(pools),
        sites=MappingProxyType(statuses),
        default_pool=pools[settings.default_pool],
        rules=rules,
        where=where,
    )


def locator_for(config: Config) -> Locator | None:
    """The locator (prefix map, IP databases) when a pool's policy reads where clients are,
    else None: nothing is opened or built for pools that would never ask. Built once per
    configuration (a reload builds it afresh); a database file that became unusable since
    validation is a :class:`~dispatcher.errors.ConfigError`."""
    if not any(REGISTRY[pool.policy].locates for pool in config.pools.values()):
        return None
    return config.locator()
