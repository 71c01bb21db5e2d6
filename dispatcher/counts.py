"""The redirect counters: counted by the hot path in the snapshot, added up off it.

The hot path counts a redirect to a site with one increment of a counter cell that the
site's :class:`~dispatcher.placement.model.Candidate` in the current snapshot owns: one slot
per reason the site was chosen for, indexed by :data:`PLACED`, :data:`AFFINITY` and
:data:`RULES` (``site.placed[PLACED] += 1``; the snapshot maps names to cells in
:attr:`~dispatcher.snapshot.Snapshot.placed`). :class:`RedirectCounts` turns the cells into
totals per site and reason: it follows the snapshot in force, and folds (adds to its
totals and zeroes) the cells of the one it replaces before it lets go of it, and the
current one's whenever it is read. A count is thus taken exactly once, whatever the
snapshot changes in between: a snapshot is replaced between two requests, never during one
(the hot path is synchronous).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

#: Why a redirect went to its site, the slots of a counter cell: the placement engine chose
#: it (``placed``), it was the site the client's affinity stamp remembered (``affinity``),
#: or a rewrite rule's ``${site:POOL}`` chose it (``rules``). Module-level ints: indexing a
#: cell with one costs some 20 instructions more than a literal (docs/performance.md).
PLACED, AFFINITY, RULES = 0, 1, 2
#: The reasons by slot, as the metrics and the workers' reports name them.
REASONS = ("placed", "affinity", "rules")

#: Counts per reason, by slot (:data:`REASONS`).
Split = tuple[int, ...]

_NONE: Mapping[str, list[int]] = {}
_ZERO: Split = (0,) * len(REASONS)


def new_cell() -> list[int]:
    """A counter cell: one slot per reason, all zero."""
    return [0] * len(REASONS)


class RedirectCounts:
    """Redirects per site and reason: the totals folded so far plus the current snapshot's
    cells.

    :meth:`follow` with every snapshot put in force (before the hot path reads it);
    :meth:`get` (per site) and :meth:`split` (per reason) read a site's, :meth:`totals`
    and :meth:`splits` every site's; :meth:`take` reads and starts again from zero (a
    worker's report), :meth:`add` adds counts from elsewhere (the workers' reports, in the
    control process) and :meth:`forget` drops a site's.
    """

    __slots__ = ("_cells", "_totals")

    def __init__(self) -> None:
        self._cells = _NONE
        self._totals: dict[str, list[int]] = {}

    def follow(self, placed: Mapping[str, list[int]]) -> None:
        """Count from ``placed`` (a snapshot's :attr:`~dispatcher.snapshot.Snapshot.placed`)
        from now on, the cells followed until now folded into the totals."""
        self._fold()
        self._cells = placed

    def get(self, name: str) -> int:
        """Redirects to site ``name``, whatever the reason (0 when none was counted)."""
        return sum(self.split(name))

    def split(self, name: str) -> Split:
        """Redirects to site ``name`` per reason, by slot (zeros when none was counted)."""
        total = self._totals.get(name)
        cell = self._cells.get(name)
        if total is None:
            return _ZERO if cell is None else tuple(cell)
        if cell is None:
            return tuple(total)
        return tuple(t + c for t, c in zip(total, cell, strict=True))

    def totals(self) -> dict[str, int]:
        """Redirects per site, whatever the reason (sites with at least one)."""
        return {name: sum(split) for name, split in self.splits().items()}

    def splits(self) -> dict[str, Split]:
        """Redirects per site and reason (sites with at least one)."""
        self._fold()
        return {name: tuple(total) for name, total in self._totals.items() if any(total)}

    def take(self) -> dict[str, Split]:
        """:meth:`splits`, and start again from zero."""
        splits = self.splits()
        self._totals.clear()
        return splits

    def add(self, counts: Mapping[str, Sequence[int]]) -> None:
        """Add counts per site and reason (each a sequence by slot, as :meth:`split`)."""
        totals = self._totals
        for name, split in counts.items():
            total = totals.get(name)
            if total is None:
                total = totals[name] = new_cell()
            for slot, count in enumerate(split):
                total[slot] += count

    def forget(self, name: str) -> None:
        self._fold()
        self._totals.pop(name, None)

    def _fold(self) -> None:
        totals = self._totals
        for name, cell in self._cells.items():
            if any(cell):
                total = totals.get(name)
                if total is None:
                    total = totals[name] = new_cell()
                for slot, count in enumerate(cell):
                    total[slot] += count
                    cell[slot] = 0
