"""Which rules could match a URL-path at all, found without trying each rule's regex.

Most rules are anchored at a literal prefix (``^/shop/...``). A rule whose prefix the path
does not start with cannot match, and a rule that does not match and is not chained (``C``)
does nothing at all, so the evaluator may skip it: the outcome is the same, only faster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dispatcher.redirect.compiler import Rule

#: Prefixes grouped by their first two characters: (their lengths, prefix -> rules).
_Group = tuple[tuple[int, ...], dict[str, tuple[int, ...]]]


@dataclass(frozen=True, slots=True)
class RuleIndex:
    """The rules by literal prefix; rules without one (or chained) are always candidates.

    One-character prefixes are looked up directly; longer ones by their first two
    characters, then by each length the group has.
    """

    always: tuple[int, ...]
    short: dict[str, tuple[int, ...]]
    groups: dict[str, _Group]
    #: Per one-character prefix: its rules and ``always`` merged in order, for URLs whose
    #: first two characters start no longer prefix (worked out once, not per request).
    merged: dict[str, tuple[int, ...]]

    @classmethod
    def build(cls, rules: Sequence[Rule]) -> RuleIndex:
        """Index ``rules`` (positions in that sequence)."""
        always: list[int] = []
        short: dict[str, list[int]] = {}
        grouped: dict[str, dict[str, list[int]]] = {}
        for position, rule in enumerate(rules):
            prefix = rule.prefix
            if prefix is None or rule.flags.chain:
                always.append(position)
            elif len(prefix) == 1:
                short.setdefault(prefix, []).append(position)
            else:
                grouped.setdefault(prefix[:2], {}).setdefault(prefix, []).append(position)
        groups = {
            head: (tuple(sorted({len(p) for p in table})), {p: tuple(r) for p, r in table.items()})
            for head, table in grouped.items()
        }
        merged = {p: tuple(sorted({*always, *r})) for p, r in short.items()}
        return cls(tuple(always), {p: tuple(r) for p, r in short.items()}, groups, merged)

    def candidates(self, uri: str) -> tuple[int, ...] | list[int]:
        """Positions of the rules that may match ``uri``, in order."""
        group = self.groups.get(uri[:2])
        if group is None:
            return self.merged.get(uri[:1], self.always)
        hit = self.short.get(uri[:1])
        found = list(self.always)
        if hit is not None:
            found.extend(hit)
        size = len(uri)
        lengths, table = group
        for length in lengths:
            if length > size:
                break
            hit = table.get(uri[:length])
            if hit is not None:
                found.extend(hit)
        found.sort()
        return found
