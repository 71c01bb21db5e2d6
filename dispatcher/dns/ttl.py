"""A TTL that follows the state: long while a pool is stable, short while it is not.

A name's ``ttl = "20/5"`` answers with 20 s while its pool is stable and with 5 s while it
is not, so that resolvers come back soon after a change (and, while a site flaps, keep
coming back soon). Precisely, a pool is *unstable* at time ``t`` when

- one of its sites has not been probed yet (health ``unknown``), or
- one of its sites *changed* at a time ``c`` with ``t - c < window``, where a change is a
  site seen with a different health state (up/down), drained flag, weight or DNS
  addresses than before, a site added to the pool or removed from it, and ``window`` is the
  longer of the name's long TTL and the longest ``(rise + fall) x interval`` among the
  pool's sites (one whole down-and-up cycle of the slowest check: a site that flaps keeps
  changing within it, so the TTL stays short for as long as it flaps).

Answers given while a pool has no site to place (failsafe, fail-open) always carry the
short TTL. Changes are what a process observes between consecutive snapshots
(:class:`ChangeTracker`); a worker process also adopts the control process's history with
every state it is sent (:meth:`ChangeTracker.adopt`), so a worker started (or restarted)
just after a change answers with the short TTL too, as the others do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from dispatcher.backends.snapshot import SiteStatus
from dispatcher.snapshot import Snapshot

Key = tuple[str, object]


class ChangeTracker:
    """When each pool's sites last changed (see the module), observed snapshot by snapshot."""

    def __init__(self) -> None:
        self._seen: dict[str, Key] = {}
        self._changed: dict[str, float] = {}
        self._started = False

    def observe(self, snapshot: Snapshot, now: float) -> None:
        """Compare ``snapshot``'s sites with the last one's; note changes at ``now``."""
        seen: dict[str, Key] = {}
        for name, status in snapshot.sites.items():
            key = (status.spec.pool, _state(status))
            seen[name] = key
            old = self._seen.get(name)
            if self._started and old != key:
                self._changed[key[0]] = now
                if old is not None:
                    self._changed[old[0]] = now
        if self._started:
            for name in self._seen.keys() - seen.keys():
                self._changed[self._seen[name][0]] = now
        self._seen = seen
        self._started = True

    def changed_at(self, pool: str) -> float:
        """The monotonic time the pool last changed; -inf if never seen changing."""
        return self._changed.get(pool, -math.inf)

    def history(self) -> dict[str, float]:
        """When each pool last changed (monotonic; the clock is the host's, the same in
        every process): what :meth:`adopt` takes in another process."""
        return dict(self._changed)

    def adopt(self, history: Mapping[str, float]) -> None:
        """Take another observer's :meth:`history` in: a pool's change time becomes the
        later of the two (a value that is not a finite number is ignored)."""
        changed = self._changed
        for pool, when in history.items():
            if (
                isinstance(when, float)
                and math.isfinite(when)
                and when > changed.get(pool, -math.inf)
            ):
                changed[pool] = when


def _state(status: SiteStatus) -> object:
    spec = status.spec
    return (status.health.state, spec.drained, spec.weight, spec.dns_addresses)


def short_until(
    pool: str, high: int, sites: Mapping[str, SiteStatus], tracker: ChangeTracker
) -> float:
    """Until when (monotonic) a name of ``pool`` with long TTL ``high`` answers with its
    short TTL: +inf while a site of the pool is unprobed, else the pool's last change plus
    the window (see the module)."""
    window = float(high)
    for status in sites.values():
        if status.spec.pool != pool:
            continue
        if status.health.state == "unknown":
            return math.inf
        check = status.spec.check
        window = max(window, (check.rise + check.fall) * check.interval)
    return tracker.changed_at(pool) + window
