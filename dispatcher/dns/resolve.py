"""Which addresses a name answers with, for one client: placement, then the name's rules.

:func:`_placed` is the one step that asks placement for sites; everything else here turns
its order into records. A name's answer is:

- the address records of the placed sites, in placement order, ``answers`` of them at most
  (a site contributes its addresses of the asked family; a site without one is passed);
- when placement has no site for the client (every site down, drained or weight 0, or none
  registered), the name's ``all_down``: its failsafe addresses, every address of the pool's
  admitted sites (fail-open), or SERVFAIL; these carry the short TTL;
- the ECS scope (RFC 7871): 0 when the pool's policy does not read where the client is
  (the answer holds for everyone); else the prefix length of the network that located the
  client, or, when nothing located it, the query's source prefix.

A query's client is the EDNS client subnet when there is one with a source prefix above 0,
else the resolver's address (a ``/0`` subnet, a resolver keeping its client private, is
answered for the resolver, with scope 0).
"""

from __future__ import annotations

from typing import NamedTuple

from dispatcher.dns.message import NOERROR, SERVFAIL, Ecs
from dispatcher.dns.table import Entry
from dispatcher.placement import engine
from dispatcher.placement.model import Candidate, Client, Placement
from dispatcher.snapshot import Snapshot

#: Placements of one site, kept (by the site object, which the snapshot holds).
_SINGLE: dict[int, tuple[Candidate, Placement]] = {}
MAX_SINGLE = 4096

#: How the records of an answer were found (``explain`` prints it).
PLACED, FIXED, FAILSAFE, FAIL_OPEN, NO_SITE = "placed", "fixed", "failsafe", "fail-open", "servfail"


def _placed(snapshot: Snapshot, pool_name: str, client: Client, count: int) -> Placement:
    """Up to ``count`` sites of ``pool_name`` for ``client``, in placement order: the one
    place the DNS front asks placement (:func:`dispatcher.placement.engine.order`, as the
    redirect's pick and explain do)."""
    pool = snapshot.pools.get(pool_name)
    if pool is None or not pool.candidates:
        return Placement(pool_name, ())
    if count > 1 or pool.policy.locates:
        return engine.order(pool, client, count)
    first = engine.pick(pool, client)
    if first is None:
        return Placement(pool_name, ())
    held = _SINGLE.get(id(first))  # (a placement is immutable: one per site will do)
    if held is not None and held[0] is first and held[1].pool == pool_name:
        return held[1]
    placement = Placement(pool_name, (first,))
    if len(_SINGLE) >= MAX_SINGLE:
        _SINGLE.clear()
    _SINGLE[id(first)] = (first, placement)
    return placement


class Resolved(NamedTuple):
    """An address answer: ``records`` in wire form, the ``rcode`` (NOERROR or SERVFAIL),
    the ECS ``scope``, ``how`` it was found and the ``placement`` (``None`` without)."""

    records: list[bytes]
    rcode: int
    scope: int
    how: str
    placement: Placement | None


def client_of(ecs: Ecs | None, resolver: str, now: float) -> Client:
    if ecs is not None and ecs.source:
        return Client(address=resolver, subnet=ecs.text, now=now)
    return Client(address=resolver, now=now)


def resolve(
    snapshot: Snapshot, entry: Entry, family: int, ecs: Ecs | None, resolver: str, now: float
) -> Resolved:
    """``entry``'s records of ``family`` (0: A, 2: AAAA) for a query from ``resolver`` with
    the client subnet ``ecs`` (or none); see the module."""
    short = 1 if now < entry.short_until else 0
    pool = entry.pool
    if pool is None:
        return Resolved(list(entry.fixed[family]), NOERROR, 0, FIXED, None)
    client = client_of(ecs, resolver, now)
    placement = _placed(snapshot, pool, client, entry.want[family >> 1])
    sites = placement.sites
    if not sites:
        return fallback(entry, family, placement)
    entry.placed[sites[0].name] += 1  # (metrics: the site placed first)
    index = family + short
    answers = entry.answers
    records: list[bytes] = []
    table = entry.records
    for site in sites:
        found = table.get(site.name)
        if found is not None and found[index]:
            records.extend(found[index])
            if len(records) >= answers:
                del records[answers:]
                break
    return Resolved(records, NOERROR, _scope(entry, ecs, placement), PLACED, placement)


def fallback(entry: Entry, family: int, placement: Placement) -> Resolved:
    """What ``entry`` answers when placement has no site: its ``all_down``."""
    records = entry.fallback
    if records is None:
        entry.fallbacks[entry.pool, NO_SITE] += 1  # (metrics)
        return Resolved([], SERVFAIL, 0, NO_SITE, placement)
    how = FAILSAFE if entry.config.all_down == "failsafe" else FAIL_OPEN
    entry.fallbacks[entry.pool, how] += 1  # (metrics)
    return Resolved(list(records[family]), NOERROR, 0, how, placement)


def _scope(entry: Entry, ecs: Ecs | None, placement: Placement) -> int:
    if ecs is None or not entry.locates or not ecs.source:
        return 0
    prefix = placement.located.prefix
    if prefix is None:
        return ecs.source
    _, _, length = prefix.rpartition("/")
    return int(length) if length.isdecimal() else ecs.source
