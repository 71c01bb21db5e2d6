"""Pools for the placement tests, built as snapshots build them (no configuration file)."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.snapshot import SiteStatus
from dispatcher.placement.build import Hashing, build_pools
from dispatcher.placement.pool import NO_WHERE, PoolConfig, PoolView, Where


def spec(name: str, weight: int = 1, *, drained: bool = False, pool: str = "p") -> SiteSpec:
    return SiteSpec(name, f"http://{name}.example", pool=pool, weight=weight, drained=drained)


def pool_of(
    specs: Sequence[SiteSpec],
    *,
    down: Collection[str] = (),
    policy: str = "weighted",
    options: dict[str, Any] | None = None,
    all_down: str = "sorry",
    hashing: Hashing | None = None,
    where: Where = NO_WHERE,
    held: PoolView | None = None,
) -> PoolView:
    """Pool ``p`` of ``specs`` (sites in ``down`` failing their checks), as a snapshot
    would see it; ``held`` is the previous snapshot's view of it."""
    statuses = {
        s.name: SiteStatus(s, Health("down" if s.name in down else "up", None), None) for s in specs
    }
    config = PoolConfig("p", policy=policy, all_down=all_down, options=options or {})
    views = build_pools(
        {"p": config},
        statuses,
        redirect_status=302,
        held={"p": held} if held is not None else None,
        hashing=hashing,
        where=where,
    )
    return views["p"]
