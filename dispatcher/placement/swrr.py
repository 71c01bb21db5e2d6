"""Smooth weighted round-robin (nginx's), stepped one pick at a time or many at once.

:func:`step` is the definition: every site's current value grows by its weight, the
highest value (the first in order on a tie) is picked and loses the sum of the weights.
:func:`advance` makes the same picks ``count`` times over in O(count x (G + log N)) for N
sites of G distinct weights instead of O(count x N), so a pool of a thousand sites can have
its whole period precomputed: between picks a site's value grows by its weight, so within a
group of equal weights the order of the values only changes where a pick lowers one (a heap
per weight), and the groups' leaders are compared directly.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from dispatcher.placement.model import Candidate


def step(current: dict[str, int], candidates: Sequence[Candidate]) -> Candidate | None:
    """One pick; ``current`` (site name -> value) is updated, and names of departed sites
    are forgotten once they outnumber the candidates four to one (plus 16)."""
    best: Candidate | None = None
    best_value = 0
    total = 0
    for site in candidates:
        value = current.get(site.name, 0) + site.weight
        current[site.name] = value
        total += site.weight
        if best is None or value > best_value:
            best, best_value = site, value
    if best is not None:
        current[best.name] = best_value - total
    if len(current) > 4 * len(candidates) + 16:
        names = {site.name for site in candidates}
        for name in [name for name in current if name not in names]:
            del current[name]
    return best


def advance(
    current: dict[str, int], candidates: Sequence[Candidate], count: int
) -> list[Candidate | None]:
    """``count`` picks, exactly those of ``count`` calls of :func:`step`."""
    if count <= 0:
        return []
    picks = [step(current, candidates)]  # (adds new names and forgets departed ones)
    names = [site.name for site in candidates]
    if count == 1 or not candidates or len(set(names)) != len(names):
        picks.extend(step(current, candidates) for _ in range(count - 1))
        return picks
    weights = [site.weight for site in candidates]
    total = sum(weights)
    # value of site i before pick t (t = 1, 2, ...): base[i] + t * weights[i]
    base = [current[name] for name in names]
    groups: dict[int, list[tuple[int, int]]] = {}
    for i, weight in enumerate(weights):
        groups.setdefault(weight, []).append((-base[i], i))
    heaps = list(groups.items())
    for _, heap in heaps:
        heapq.heapify(heap)
    for t in range(1, count):
        best_i, best_value, best_heap = -1, 0, heaps[0][1]
        for weight, heap in heaps:
            negative, i = heap[0]
            value = t * weight - negative
            if best_i < 0 or value > best_value or (value == best_value and i < best_i):
                best_i, best_value, best_heap = i, value, heap
        base[best_i] -= total
        heapq.heapreplace(best_heap, (-base[best_i], best_i))
        picks.append(candidates[best_i])
    steps = count - 1
    for i, name in enumerate(names):
        current[name] = base[i] + steps * weights[i]
    return picks
