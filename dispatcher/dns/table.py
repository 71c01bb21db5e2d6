"""What the answer path reads: the zones and names of ``[dns]`` against one snapshot, with
every record precomputed in wire form. Built off the answer path whenever the snapshot
changes (:func:`build_table`); never changed after.

Address records are kept per site, per family and per TTL (long, short), each already in
wire form with its owner as a compression pointer to the question's name (``c00c``): an
answer is the header, the question as sent, and records joined, with no encoding per query.
"""

from __future__ import annotations

import ipaddress
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dispatcher.dns.config import DnsConfig, DnsName
from dispatcher.dns.message import AAAA, IN, SOA, A, Ecs
from dispatcher.dns.names import ROOT, is_within, parents
from dispatcher.dns.tally import AnswerTally
from dispatcher.dns.ttl import ChangeTracker, short_until
from dispatcher.placement.pool import PoolView
from dispatcher.snapshot import Snapshot

if TYPE_CHECKING:
    from dispatcher.dns.fastpath import Compiled

RR = struct.Struct("!HHIH")  # type, class, TTL, data length: a record after its owner
POINTER_TO_QUESTION = b"\xc0\x0c"
#: The most records a fail-open answer carries (every address of the pool's sites).
MAX_OPEN_ANSWERS = 32

#: A site's address records: IPv4 long TTL, IPv4 short, IPv6 long, IPv6 short.
SiteRecords = tuple[tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...], tuple[bytes, ...]]
NO_RECORDS: SiteRecords = ((), (), (), ())


def address_record(address: str, ttl: int) -> tuple[int, bytes]:
    """(0 for IPv4 or 2 for IPv6, the A/AAAA record owned by the question's name)."""
    packed = ipaddress.ip_address(address).packed
    rtype = A if len(packed) == 4 else AAAA
    return (0 if rtype == A else 2), POINTER_TO_QUESTION + RR.pack(
        rtype, IN, ttl, len(packed)
    ) + packed


def site_records(addresses: Iterable[str], high: int, low: int) -> SiteRecords:
    v4_long: list[bytes] = []
    v4_short: list[bytes] = []
    v6_long: list[bytes] = []
    v6_short: list[bytes] = []
    for address in addresses:
        family, long_record = address_record(address, high)
        _, short_record = address_record(address, low)
        (v4_long if family == 0 else v6_long).append(long_record)
        (v4_short if family == 0 else v6_short).append(short_record)
    return tuple(v4_long), tuple(v4_short), tuple(v6_long), tuple(v6_short)


@dataclass(frozen=True, slots=True)
class Zone:
    """A zone's apex and its SOA: ``soa_tail`` is the SOA record after its owner name (type,
    class, TTL, data) with the record's own TTL, ``negative_tail`` the same with the
    negative TTL, for the authority section of NXDOMAIN and NODATA answers (RFC 2308)."""

    apex: bytes
    serial: int
    soa_tail: bytes
    negative_tail: bytes


class Entry:
    """One configured name against the snapshot.

    ``records`` maps a site's name to its :data:`SiteRecords`; ``fixed`` holds the records
    of a name with fixed addresses (and no pool). ``fallback`` is what the name answers
    when placement has no site (failsafe or fail-open records with the short TTL, in the
    :data:`SiteRecords` layout), ``None`` for SERVFAIL. ``want`` is how many sites to ask
    placement for, per family: ``answers``, or every site when some lack that family.
    ``short_until`` is when the short TTL ends (:mod:`dispatcher.dns.ttl`); ``locates``
    whether the answer depends on where the client is (the pool's policy locates it, or
    network affinity hashes its network): the ECS scope depends on it.
    ``pool_view`` is the snapshot's pool when its placement reads nothing of the client
    (:attr:`~dispatcher.placement.pool.PoolView.plain`), it has candidates and the name is
    answered with one address (the fast path then compiles its queries), else ``None``.
    ``placed``, ``fallbacks`` and ``noerror`` are the
    :class:`~dispatcher.dns.tally.AnswerTally`'s counters (shared by the entries of every
    table one service builds).
    """

    __slots__ = (
        "answers",
        "config",
        "fallback",
        "fallbacks",
        "fixed",
        "locates",
        "name",
        "noerror",
        "placed",
        "pool",
        "pool_view",
        "records",
        "short_until",
        "want",
        "zone",
    )

    def __init__(self, config: DnsName, zone: Zone, tally: AnswerTally | None = None) -> None:
        tally = tally or AnswerTally()
        self.placed = tally.placed
        self.fallbacks = tally.fallbacks
        self.noerror = tally.noerror
        self.config = config
        self.name = config.name
        self.zone = zone
        self.pool = config.pool
        self.answers = config.answers
        self.records: dict[str, SiteRecords] = {}
        self.fixed: SiteRecords = NO_RECORDS
        self.fallback: SiteRecords | None = None
        self.want = (config.answers, config.answers)
        self.short_until = -math.inf
        self.locates = False
        self.pool_view: PoolView | None = None


class DnsTable:
    """The zones (by lower-cased wire apex), the names (by lower-cased wire name), the names
    that exist without records of their own (apexes and empty non-terminals), the snapshot
    and configuration it was built from; ``kept`` and ``compiled`` are the fast path's
    caches of parsed OPT records and compiled queries (:mod:`dispatcher.dns.fastpath`),
    the one thing that changes."""

    __slots__ = (
        "compiled",
        "config",
        "existing",
        "fast",
        "kept",
        "names",
        "snapshot",
        "zones",
    )

    def __init__(
        self,
        config: DnsConfig,
        snapshot: Snapshot,
        zones: Mapping[bytes, Zone],
        names: Mapping[bytes, Entry],
        existing: frozenset[bytes],
    ) -> None:
        self.config = config
        self.snapshot = snapshot
        self.zones = zones
        self.names = names
        self.existing = existing
        # the fast path's: the names by name and type (A and AAAA), and the OPT records
        # of queries, parsed (dispatcher.dns.fastpath)
        self.fast = {name + t: e for name, e in names.items() for t in (b"\0\1", b"\0\x1c")}
        self.kept: dict[bytes, tuple[int, Ecs | None, bytes, int]] = {}
        self.compiled: dict[bytes, Compiled] = {}

    def zone_of(self, name: bytes) -> Zone | None:
        """The zone ``name`` (lower-cased wire) is in, or None (not ours: REFUSED)."""
        zones = self.zones
        zone = zones.get(name)
        if zone is not None:
            return zone
        for parent in parents(name):
            zone = zones.get(parent)
            if zone is not None:
                return zone
        return None


def build_table(
    config: DnsConfig,
    snapshot: Snapshot,
    tracker: ChangeTracker | None = None,
    tally: AnswerTally | None = None,
) -> DnsTable:
    """Precompute every record ``config`` can answer with, against ``snapshot``; the answers
    made from it are counted in ``tally`` (a new one if not given)."""
    tally = tally or AnswerTally()
    tracker = tracker or ChangeTracker()
    serial = config.soa.serial
    if serial is None:
        serial = max(0, snapshot.revision) & 0xFFFFFFFF
    zones = {apex: _zone(config, apex, serial) for apex in config.zones}
    names: dict[bytes, Entry] = {}
    existing: set[bytes] = set(zones)
    for record in config.names:
        zone = next(z for apex, z in zones.items() if is_within(record.name, apex))
        names[record.name] = _entry(record, zone, snapshot, tracker, tally)
        existing.update(p for p in parents(record.name) if is_within(p, zone.apex))
    return DnsTable(config, snapshot, zones, names, frozenset(existing))


def _zone(config: DnsConfig, apex: bytes, serial: int) -> Zone:
    soa = config.soa
    data = (
        soa.mname
        + soa.rname
        + struct.pack("!IIIII", serial, soa.refresh, soa.retry, soa.expire, soa.minimum)
    )
    return Zone(
        apex=apex,
        serial=serial,
        soa_tail=RR.pack(SOA, IN, soa.ttl, len(data)) + data,
        negative_tail=RR.pack(SOA, IN, soa.negative_ttl, len(data)) + data,
    )


def _entry(
    record: DnsName, zone: Zone, snapshot: Snapshot, tracker: ChangeTracker, tally: AnswerTally
) -> Entry:
    entry = Entry(record, zone, tally)
    ttl = record.ttl
    if record.pool is None:
        entry.fixed = site_records(record.addresses, ttl.high, ttl.low)
        return entry
    members = [s for s in snapshot.sites.values() if s.spec.pool == record.pool]
    for status in members:
        entry.records[status.spec.name] = site_records(status.spec.dns_addresses, ttl.high, ttl.low)
    every = list(entry.records.values())
    entry.want = (
        record.answers if all(r[0] for r in every) else max(len(every), 1),
        record.answers if all(r[2] for r in every) else max(len(every), 1),
    )
    if record.all_down == "failsafe":
        entry.fallback = site_records(record.failsafe, ttl.low, ttl.low)
    elif record.all_down == "fail-open":
        admitted = [a for s in members if s.admitted for a in s.spec.dns_addresses]
        entry.fallback = _capped(site_records(admitted, ttl.low, ttl.low))
    pool = snapshot.pools.get(record.pool)
    # the answer depends on where the client is: its policy locates it, or network
    # affinity hashes its network (either way the ECS scope is not 0)
    if pool is not None:
        entry.locates = bool(getattr(pool.policy, "locates", False)) or pool.ring is not None
    if pool is not None and pool.plain and pool.candidates and record.answers == 1:
        entry.pool_view = pool
    entry.short_until = short_until(record.pool, ttl.high, snapshot.sites, tracker)
    return entry


def _capped(records: SiteRecords) -> SiteRecords:
    v4_long, v4_short, v6_long, v6_short = records
    cap = MAX_OPEN_ANSWERS
    return v4_long[:cap], v4_short[:cap], v6_long[:cap], v6_short[:cap]


__all__ = ["NO_RECORDS", "ROOT", "DnsTable", "Entry", "Zone", "build_table", "site_records"]
