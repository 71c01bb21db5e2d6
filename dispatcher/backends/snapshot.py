"""The sites as a snapshot sees them: their registration, health and last load report.

Plain data the backends produce (probes, load reports, the registry) and placement reads
(:mod:`dispatcher.placement.build`); the snapshot itself is :mod:`dispatcher.snapshot`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec


@dataclass(frozen=True, slots=True)
class LoadReport:
    """A site's latest load report; ``reported_at`` is wall-clock UTC (shared by replicas)."""

    site: str
    load: float
    connections: int | None
    reported_at: dt.datetime


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
