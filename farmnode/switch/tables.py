"""Hash tables for the hashing schedulers, and the stable client hash they use.

Pure functions, deterministic across processes and restarts (no ``hash()``): the nftables
data plane renders these tables into the kernel, so a restart must give the same table.
Maglev and the client hash live in :mod:`dispatcher.maglev`, shared with the dispatcher's
network affinity; this module raises farmnode's :class:`SchedulerError` for them.
"""

from __future__ import annotations

from collections.abc import Sequence

from dispatcher import maglev
from dispatcher.maglev import MH_DEFAULT_SIZE, client_hash, is_prime
from farmnode.errors import SchedulerError

#: Source-hash bucket count when none is given (a prime, so ``hash % size`` spreads evenly).
SH_DEFAULT_SIZE = 4093


def check_entries(entries: Sequence[tuple[str, int]], size: int, what: str) -> None:
    """:func:`dispatcher.maglev.check_entries`, raising :class:`SchedulerError`."""
    try:
        maglev.check_entries(entries, size, what)
    except ValueError as exc:
        raise SchedulerError(str(exc)) from None


def maglev_table(entries: Sequence[tuple[str, int]], size: int = MH_DEFAULT_SIZE) -> list[int]:
    """The Maglev lookup table (:func:`dispatcher.maglev.maglev_table`, shared with the
    dispatcher's network affinity), raising :class:`SchedulerError` where it raises
    :class:`ValueError`."""
    check_entries(entries, size, "maglev")
    return maglev.maglev_table(entries, size)


def sh_table(entries: Sequence[tuple[str, int]], size: int = SH_DEFAULT_SIZE) -> list[int]:
    """The source-hash bucket table: ``size`` indices into ``entries``, IPVS ``sh`` style.

    Buckets are dealt out in order, each server taking as many consecutive buckets as its
    gcd-reduced weight before the next one's turn, cycling until the table is full. Same
    preconditions and errors as :func:`maglev_table`; ``[]`` for no entries.
    """
    check_entries(entries, size, "sh")
    if not entries:
        return []
    turns = maglev.turns([w for _, w in entries], size)
    table: list[int] = []
    while len(table) < size:
        for i, t in enumerate(turns):
            table.extend([i] * t)
    return table[:size]


__all__ = [
    "MH_DEFAULT_SIZE",
    "SH_DEFAULT_SIZE",
    "check_entries",
    "client_hash",
    "is_prime",
    "maglev_table",
    "sh_table",
]
