"""Which addresses a name answers with, for one client: placement, then the name's rules.

:func:`_placed` is the one step that asks placement for sites; everything else here turns
its order into records. A name's answer is:

- the address records of the placed sites, in placement order, ``answers`` of them at most
  (a site contributes its addresses of the asked family; a site without one is passed);
- when placement has no site for the client (every site down, drained or weight 0, or none
  registered), the name's ``all_down``: its failsafe addresses, every address of the pool's
  admitted sites (fail-open), or SERVFAIL; these carry the short TTL;
- the ECS scope (RFC 7871, section 7.2.1: how many leading bits of the client subnet the
  answer holds for): 0 when the pool's policy does not read where the client is (the
  answer holds for everyone); else the prefix length of the network that located the
  client, or, when nothing located it, the query's source prefix; raised past every
  longer prefix-map network inside it that would locate some of its addresses elsewhere
  (a ``/8`` query with a ``/16`` of the map inside is answered with scope 16 at least,
  longer than its source: RFC 7871 asks the resolver to ask again with that many bits);
  24 (IPv6: 48) at least when learned RTT for the client's network took part, and the
  network affinity's ``/netmask`` (``/netmask6``) at least when the pool has it (each
  client network then sticks to its site: a resolver must not give one network's answer
  to another).

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

#: The client networks learned RTT is kept for, by ECS family (1: IPv4, 2: IPv6).
RTT_NETWORK = {1: 24, 2: 48}

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
    scope = _scope(snapshot, entry, ecs, placement)
    return Resolved(records, NOERROR, scope, PLACED, placement)


def fallback(entry: Entry, family: int, placement: Placement) -> Resolved:
    """What ``entry`` answers when placement has no site: its ``all_down``."""
    records = entry.fallback
    if records is None:
        entry.fallbacks[entry.pool, NO_SITE] += 1  # (metrics)
        return Resolved([], SERVFAIL, 0, NO_SITE, placement)
    how = FAILSAFE if entry.config.all_down == "failsafe" else FAIL_OPEN
    entry.fallbacks[entry.pool, how] += 1  # (metrics)
    return Resolved(list(records[family]), NOERROR, 0, how, placement)


def _scope(snapshot: Snapshot, entry: Entry, ecs: Ecs | None, placement: Placement) -> int:
    """The ECS scope of a placed answer (RFC 7871, section 7.2.1: how many leading bits of
    the client subnet the answer holds for): see the module."""
    if ecs is None or not entry.locates or not ecs.source:
        return 0
    located = placement.located
    length = ecs.source
    if located.prefix is not None:
        _, _, text = located.prefix.rpartition("/")
        length = int(text) if text.isdecimal() else length
    pool = snapshot.pools.get(placement.pool)
    if pool is not None:
        length = pool.where.extent(ecs.text, length)
    if located.rtt:  # learned per client /24 (/48): the answer holds for that network at most
        length = max(length, RTT_NETWORK[ecs.family])
    ring = pool.ring if pool is not None else None
    if ring is not None:  # network affinity: one site per client network
        length = max(length, ring.netmask if ecs.family == 1 else ring.netmask6)
    return length
