"""The built-in policies: ``weighted``, ``least-load`` and ``failover``.

Each is a registered :class:`~dispatcher.placement.policy.Policy` (importing this module
registers them) and follows its contract: pure, no I/O, a little rotation state kept
between calls, as IPVS schedulers do. None of them locates the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from dispatcher.placement import swrr
from dispatcher.placement.model import Candidate, Client, Location
from dispatcher.placement.options import seconds
from dispatcher.placement.policy import Option, Policy, register

#: The longest period (sum of weights) the weighted policy precomputes (a schedule of that
#: many picks, built in a few milliseconds at most: :func:`swrr.advance`).
CYCLE_MAX = 4096


@register
class Weighted(Policy):
    """Smooth weighted round-robin (as nginx does it): exact shares, well interleaved.

    Over any window of ``sum(weights)`` picks every site gets exactly its weight's share,
    and a heavy site's turns are spread out rather than bunched together.
    """

    name = "weighted"
    reads_client = False

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._current: dict[str, int] = {}
        # The hot path's shortcut: over a full period (``sum(weights)`` picks) smooth
        # round-robin comes back to the state it started from, so for one candidate tuple
        # (a snapshot's) the period's picks are computed once and then read in turn (about
        # a quarter of the loop's cost). ``_current`` stays the state at the period's start;
        # ``_materialise`` brings it up to date before any other call, so the picks are
        # exactly the loop's.
        self._bound: Sequence[Candidate] | None = None
        self._seen: Sequence[Candidate] | None = None
        self._schedule: list[Candidate] = []
        self._pos = 0
        self._last = 0
        self._retry = 0

    def choose(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> Candidate | None:
        if candidates is self._bound:
            pos = self._pos
            self._pos = pos + 1 if pos < self._last else 0
            return self._schedule[pos]
        if self._bound is not None:
            self._materialise()
        if candidates is self._seen and self._bind(candidates):
            return self.choose(candidates, client, located)
        # (a tuple, since a list may change; met twice in a row, so a caller that builds a
        # new tuple for each call does not pay for a schedule each time)
        self._seen = candidates if candidates.__class__ is tuple else None
        return self._step(candidates)

    def _step(self, candidates: Sequence[Candidate]) -> Candidate | None:
        return swrr.step(self._current, candidates)

    def _bind(self, candidates: Sequence[Candidate]) -> bool:
        """Compute the period's picks from the current state, if the state comes back after
        one period (it may not just after the candidates changed: then retry later)."""
        if self._retry > 0:
            self._retry -= 1
            return False
        period = sum(site.weight for site in candidates)
        if not 0 < period <= CYCLE_MAX:
            self._retry = CYCLE_MAX
            return False
        start = dict(self._current)
        picks = swrr.advance(self._current, candidates, period)
        names = [site.name for site in candidates]
        current = self._current  # (the trial's first step pruned as the loop's would)
        back = [current.get(n) for n in names] == [start.get(n, 0) for n in names]
        for name in names:  # as before the trial
            if name in start:
                current[name] = start[name]
            else:
                del current[name]
        if not back:
            self._retry = 4 * period
            return False
        self._schedule = [site for site in picks if site is not None]
        self._bound, self._pos, self._last = candidates, 0, period - 1
        return True

    def _materialise(self) -> None:
        """Bring ``_current`` up to the picks made from the schedule, and unbind."""
        bound, pos = self._bound, self._pos
        self._bound = None
        if bound is not None:
            swrr.advance(self._current, bound, pos)


@register
class LeastLoad(Policy):
    """The site with the lowest reported load relative to its weight.

    Only reports younger than ``load_max_age`` seconds (at the client's time) count. Sites
    without a fresh report are used only when no site has one; ties (and that case) are
    broken by smooth weighted round-robin, so equal sites share clients instead of one
    taking them all.
    """

    name = "least-load"
    options: ClassVar[Mapping[str, Option]] = {
        "load_max_age": Option(
            seconds(0.1, 86_400.0),
            30.0,
            "seconds (0.1-86400) after which a site's load report no longer counts; "
            "defaults to `[dispatcher] load_max_age`",
        ),
    }

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.max_age = float(self.settings.get("load_max_age", 30.0))
        self._tiebreak = Weighted()

    def choose(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> Candidate | None:
        oldest = client.now - self.max_age
        best_score = float("inf")
        best: list[Candidate] = []
        for site in candidates:
            if site.load is None or site.load_at is None or site.load_at < oldest:
                continue
            score = site.load / site.weight
            if score < best_score:
                best_score, best = score, [site]
            elif score == best_score:
                best.append(site)
        return self._tiebreak.choose(best or candidates, client, located)


@register
class Failover(Policy):
    """The first site in configured order; the others are hot standbys."""

    name = "failover"
    reads_client = False

    def choose(
        self, candidates: Sequence[Candidate], client: Client, located: Location
    ) -> Candidate | None:
        return candidates[0] if candidates else None
