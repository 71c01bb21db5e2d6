"""The redirect counters: counted by the hot path in the snapshot, added up off it.

The hot path counts a redirect to a site with one increment of a counter cell that the
site's :class:`~dispatcher.placement.model.Candidate` in the current snapshot owns
(``site.placed[0] += 1``; the snapshot maps names to cells in
:attr:`~dispatcher.snapshot.Snapshot.placed`). :class:`RedirectCounts` turns the cells into
totals per site: it follows the snapshot in force, and folds (adds to its totals and
zeroes) the cells of the one it replaces before it lets go of it, and the current one's
whenever it is read. A count is thus taken exactly once, whatever the snapshot changes in
between: a snapshot is replaced between two requests, never during one (the hot path is
synchronous).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

_NONE: Mapping[str, list[int]] = {}


class RedirectCounts:
    """Redirects per site: the totals folded so far plus the current snapshot's cells.

    :meth:`follow` with every snapshot put in force (before the hot path reads it);
    :meth:`get` and :meth:`totals` read, :meth:`take` reads and starts again from zero (a
    worker's report), :meth:`add` adds counts from elsewhere (the workers' reports, in the
    control process) and :meth:`forget` drops a site's.
    """

    __slots__ = ("_cells", "_totals")

    def __init__(self) -> None:
        self._cells = _NONE
        self._totals: defaultdict[str, int] = defaultdict(int)

    def follow(self, placed: Mapping[str, list[int]]) -> None:
        """Count from ``placed`` (a snapshot's :attr:`~dispatcher.snapshot.Snapshot.placed`)
        from now on, the cells followed until now folded into the totals."""
        self._fold()
        self._cells = placed

    def get(self, name: str) -> int:
        """Redirects to site ``name`` (0 when none was counted)."""
        cell = self._cells.get(name)
        return self._totals.get(name, 0) + (cell[0] if cell is not None else 0)

    def totals(self) -> dict[str, int]:
        """Redirects per site (sites with at least one)."""
        self._fold()
        return dict(self._totals)

    def take(self) -> dict[str, int]:
        """:meth:`totals`, and start again from zero."""
        totals = self.totals()
        self._totals.clear()
        return totals

    def add(self, counts: Mapping[str, int]) -> None:
        for name, count in counts.items():
            self._totals[name] += count

    def forget(self, name: str) -> None:
        self._fold()
        self._totals.pop(name, None)

    def _fold(self) -> None:
        totals = self._totals
        for name, cell in self._cells.items():
            count = cell[0]
            if count:
                cell[0] = 0
                totals[name] += count
