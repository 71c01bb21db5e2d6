"""The hot path: the common query answered from precomputed wire bytes, in one function.

The common query is an A or AAAA question, class IN, for a configured name, with
recursion or not, with or without EDNS (version 0, any options, at most one client
subnet option) and nothing else: no compression pointer in the question, no other
additional record. :func:`fast_answer` recognises it with a few slices and byte reads
and answers it exactly as the general path (:func:`~dispatcher.dns.answer.respond` on a
:func:`~dispatcher.dns.message.decode`\\ d query) would, without building a query object;
anything else, malformed or merely unusual, it declines (``None``) *before* placement is
asked, and the general path answers. Tests hold the two paths to the same bytes.

- The question's name is found with one ``find`` of its root byte: a configured name holds
  no zero byte but its root (its labels are letters, digits, ``-`` and ``_``), so when the
  bytes up to the first zero, lower-cased, are a configured name, they are the question's
  name; otherwise the query is not a common one. The table is keyed by name and type.
- An OPT record is parsed once per distinct record (the same resolver sends the same
  payload size, flags and client subnet again and again) and kept with the OPT record of
  the answer ready, at most :data:`MAX_KEPT` per table.
- The answer's header is the query's ID and one of a few precomputed flag-and-count
  strings.
- Over UDP, a query for a name whose pool is :attr:`~dispatcher.placement.pool.PoolView.
  plain` (its placement reads nothing of the client: no ECS scope to compute) and that is
  answered with one site is *compiled* the first time it is answered: its bytes after the
  ID key a :class:`Compiled` (at most :data:`MAX_COMPILED` per table) that holds, per site
  (:data:`MAX_TAILS` at most), the whole answer after the ID, rendered once. The next such
  query costs a dict lookup, placement's pick (:func:`~dispatcher.placement.engine.
  pick_plain`: the rotation moves exactly as on the general path) and one concatenation
  (:func:`compiled_answer`).
"""

from __future__ import annotations

import struct

from dispatcher.dns.answer import addresses, negative
from dispatcher.dns.message import (
    ECS_OPTION,
    MIN_PAYLOAD,
    NOERROR,
    RECORD,
    TWO,
    A,
    Ecs,
    Query,
    _ecs,
)
from dispatcher.dns.resolve import PLACED, Resolved, _placed, fallback, resolve
from dispatcher.dns.table import DnsTable, Entry
from dispatcher.placement.engine import pick_plain
from dispatcher.placement.model import Candidate, Client
from dispatcher.placement.pool import PoolView

#: OPT records kept per table (each parsed once).
MAX_KEPT = 4096
#: Compiled queries kept per table, and answers kept per compiled query and TTL (one per
#: site placed): at most 1024 x 64 x 2 answers of ~100 bytes (a pool of more sites renders
#: the others each time).
MAX_COMPILED = 1024
MAX_TAILS = 64
#: What an OPT record of a query comes to: the UDP size limit of the answer, the client
#: subnet, and the answer's own OPT record (DO copied, the subnet echoed with scope 0).
Kept = tuple[int, Ecs | None, bytes, int]  # (udp limit, subnet, OPT record, payload)
_HEADS: dict[int, bytes] = {}  # flags, QDCOUNT, ANCOUNT, NSCOUNT, ARCOUNT -> their bytes
_TAIL = struct.Struct("!HHHHH")
_QUERY_COUNTS = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_new = tuple.__new__  # (a NamedTuple without its Python-level __new__)


def fast_answer(
    table: DnsTable, data: bytes, resolver: str, now: float, tcp: bool
) -> tuple[bytes, bytes, int] | None:
    """(the answer, its rate-limiting key, its rcode), or None: not a common query."""
    size = len(data)
    # not QR, an opcode, AA, TC (byte 2: RD only); not RA, Z (byte 3); one question only
    if size < 17 or data[2] & 0xFE or data[3] & 0xC0 or data[4:10] != _QUERY_COUNTS:
        return None
    arcount = data[10] << 8 | data[11]
    end = data.find(b"\x00", 12) + 1  # past the root, if this is a configured name
    key = data[12 : end + 2].lower()  # the name and the type
    entry = table.fast.get(key)  # (A and AAAA only)
    if entry is None or end + 4 > size or data[end + 2] or data[end + 3] != 1 or arcount > 1:
        return None  # (not class IN)
    if arcount:
        kept = table.kept.get(data[end + 4 :])
        if kept is None:
            kept = _keep(table, data, end + 4)
            if kept is None:
                return None
        udp_limit, ecs, extra, payload = kept
    elif end + 4 == size:
        udp_limit, ecs, extra, payload = 512, None, b"", MIN_PAYLOAD
    else:
        return None
    limit = 65_535 if tcp else udp_limit
    qtype = data[end + 1]  # (A or AAAA: the table's key says so)
    resolved = _resolve(table, entry, 0 if qtype == A else 2, ecs, resolver, now)
    records = resolved[0]
    if not records or resolved[2] or resolved[3] != PLACED:  # rare: the general renderer
        answer = _general(table, data, end, payload, ecs, resolved, limit)
        return answer, key, resolved[1]
    question = data[12 : end + 4]
    flags = 0x8400 | ((data[2] & 0x01) << 8) | (data[3] & 0x10)  # QR AA, RD and CD copied
    tail = _tail(flags, question, records, extra, limit)
    if not tcp and entry.pool_view is not None and entry.want[0 if qtype == A else 1] == 1:
        _compile(table, data, Compiled(entry, qtype, flags, question, extra, limit, key))
    return data[:2] + tail, key, NOERROR


def _tail(flags: int, question: bytes, records: list[bytes], extra: bytes, limit: int) -> bytes:
    """An address answer after its ID: the header's rest, the question, the records (none,
    and TC, when they do not fit in ``limit``), the OPT record."""
    count = len(records)
    if 12 + len(question) + sum(map(len, records)) + len(extra) > limit:
        flags |= 0x0200  # TC, and no records
        count = 0
        records = []
    shape = flags | count << 16 | (1 if extra else 0) << 24
    head = _HEADS.get(shape)
    if head is None:
        head = _HEADS[shape] = _TAIL.pack(flags, 1, count, 0, 1 if extra else 0)
    return b"".join((head, question, *records, extra))


class Rendered:
    """A compiled query's answer for one site: ``tail``, the answer after its ID, and
    ``count``, the answers made with it since they were last folded (:meth:`Compiled.fold`):
    the one counter of the compiled path, the site placed first and the question's type
    being the compiled query's."""

    __slots__ = ("count", "tail")

    def __init__(self, tail: bytes) -> None:
        self.tail = tail
        self.count = 0


class Compiled:
    """A common UDP query for a name of a plain pool answered with one site (see the
    module): ``pool`` to ask placement, ``until`` when the short TTL ends, ``key`` the
    rate-limiting key, ``truncated`` whether the answer has TC set, and per site name the
    answer after its ID, :class:`Rendered` when the site is first placed, with the long TTL
    (``long``) and the short (``short``); ``spill`` holds the counts of the sites beyond
    :data:`MAX_TAILS`, whose answers are rendered each time.

    Each answer is counted in its :class:`Rendered` (as placed, and as a NOERROR answer of
    the question's type); :meth:`fold` adds the counts to the entry's tally. The service
    folds before it reads the tally, and a compiled query is folded before it is dropped
    (:func:`_compile`, and the service when it replaces its table)."""

    __slots__ = (
        "entry",
        "extra",
        "flags",
        "index",
        "key",
        "limit",
        "long",
        "pool",
        "question",
        "short",
        "spill",
        "truncated",
        "until",
    )

    def __init__(
        self,
        entry: Entry,
        qtype: int,
        flags: int,
        question: bytes,
        extra: bytes,
        limit: int,
        key: bytes,
    ) -> None:
        self.entry = entry
        pool = entry.pool_view
        assert pool is not None  # (compiled only for a name placed from a plain pool)
        self.pool: PoolView = pool
        self.until = entry.short_until
        self.index = 0 if qtype == A else 2
        self.flags, self.question, self.extra, self.limit = flags, question, extra, limit
        self.key = key
        record = 16 if qtype == A else 28
        self.truncated = 12 + len(question) + record + len(extra) > limit
        self.long: dict[str, Rendered] = {}
        self.short: dict[str, Rendered] = {}
        self.spill: dict[str, Rendered] = {}

    def render(self, site: str, short: bool) -> Rendered:
        """The answer after the ID when ``site`` is placed (kept, for :data:`MAX_TAILS`
        sites; the others' counted in ``spill``)."""
        found = self.entry.records[site][self.index + short]
        tail = _tail(self.flags, self.question, list(found[:1]), self.extra, self.limit)
        kept = self.short if short else self.long
        if len(kept) < MAX_TAILS:
            kept[site] = Rendered(tail)
            return kept[site]
        spilled = self.spill.get(site)
        if spilled is None:
            spilled = self.spill[site] = Rendered(tail)
        spilled.tail = tail  # (this TTL's: the count is the site's, whatever the TTL)
        return spilled

    def fold(self) -> None:
        """Add the answers counted since the last fold to the entry's tally: by the site
        placed first, and as NOERROR answers of the question's type."""
        entry = self.entry
        placed, slot = entry.placed, self.key[-1]  # (the type's low byte: A, AAAA)
        for kept in (self.long, self.short, self.spill):
            for site, rendered in kept.items():
                count = rendered.count
                if count:
                    rendered.count = 0
                    placed[site] += count
                    entry.noerror[slot] += count


def _compile(table: DnsTable, data: bytes, compiled: Compiled) -> None:
    kept = table.compiled
    if len(kept) >= MAX_COMPILED:
        for dropped in kept.values():
            dropped.fold()
        kept.clear()
    kept[data[2:]] = compiled


def compiled_answer(compiled: Compiled, data: bytes, now: float) -> bytes:
    """The answer to ``data``, a query compiled as ``compiled``: placement asked, the
    answer after the ID found (or rendered once), the query's ID put before it."""
    site = pick_plain(compiled.pool, b"")
    assert site is not None  # (compiled only while the pool has candidates)
    name = site.name
    if now < compiled.until:
        rendered = compiled.short.get(name) or compiled.render(name, True)
    else:
        rendered = compiled.long.get(name) or compiled.render(name, False)
    rendered.count += 1  # (metrics: see Compiled)
    return data[:2] + rendered.tail


def _resolve(
    table: DnsTable, entry: Entry, family: int, ecs: Ecs | None, resolver: str, now: float
) -> Resolved:
    """:func:`~dispatcher.dns.resolve.resolve`, its common case's steps inline."""
    pool = entry.pool
    if pool is None or entry.locates:
        return resolve(table.snapshot, entry, family, ecs, resolver, now)
    subnet = ecs.text if ecs is not None and ecs.source else ""
    client = _new(Client, (resolver, subnet, b"", None, now))
    placement = _placed(table.snapshot, pool, client, entry.want[family >> 1])
    sites = placement.sites
    if not sites:
        return fallback(entry, family, placement)
    entry.placed[sites[0].name] += 1  # (metrics: the site placed first)
    index = family + (now < entry.short_until)
    found = entry.records.get(sites[0].name)
    answers = entry.answers
    if found is not None and len(found[index]) >= answers:
        records = list(found[index][:answers])
    else:
        records = _gather(entry, sites, index)
    return _new(Resolved, (records, NOERROR, 0, PLACED, placement))


def _gather(entry: Entry, sites: tuple[Candidate, ...], index: int) -> list[bytes]:
    """The records of ``sites`` in order, ``entry.answers`` at most (as resolve does)."""
    records: list[bytes] = []
    for site in sites:
        found = entry.records.get(site.name)
        if found is not None and found[index]:
            records.extend(found[index])
            if len(records) >= entry.answers:
                return records[: entry.answers]
    return records


def _keep(table: DnsTable, data: bytes, position: int) -> Kept | None:
    """Parse the OPT record that ends the message and keep what it comes to; None when it
    is not a common one."""
    size = len(data)
    if size < position + 11 or data[position]:
        return None
    rtype, payload, ttl, rdlength = RECORD.unpack_from(data, position + 1)
    if rtype != 41 or ttl & 0x00FF0000 or position + 11 + rdlength != size:
        return None
    ecs: Ecs | None = None
    i = position + 11
    while i < size:
        if i + 4 > size:
            return None
        code, length = TWO.unpack_from(data, i)
        i += 4
        if i + length > size:
            return None
        if code == ECS_OPTION:
            if ecs is not None:
                return None
            ecs = _ecs(data[i : i + length])
            if ecs is None:
                return None
        i += length
    max_udp = table.config.max_udp_payload
    option = ecs.echo if ecs is not None else b""
    extra = b"\x00" + RECORD.pack(41, max_udp, ttl & 0x8000, len(option)) + option
    payload = max(payload, MIN_PAYLOAD)
    kept = table.kept
    if len(kept) >= MAX_KEPT:
        kept.clear()
    found = kept[data[position:]] = (min(payload, max_udp), ecs, extra, payload)
    return found


def _general(
    table: DnsTable,
    data: bytes,
    end: int,
    payload: int,
    ecs: Ecs | None,
    resolved: Resolved,
    limit: int,
) -> bytes:
    """NODATA, SERVFAIL, failsafe and fail-open answers, and a scope other than 0: rendered
    by the general path's renderers (from the placement already made)."""
    ident, flags = TWO.unpack_from(data)
    query = Query(ident, flags)
    query.question = data[12 : end + 4]
    query.qname = data[12:end].lower()
    query.qtype, query.qclass = TWO.unpack_from(data, end)
    query.edns = len(data) > end + 4
    if query.edns:
        query.payload, query.ecs = payload, ecs
        query.do = bool(data[end + 4 + 7] & 0x80)  # the OPT record's TTL: DO
    max_udp = table.config.max_udp_payload
    if not resolved.records and resolved.rcode == NOERROR:
        entry = table.names[query.qname]
        return negative(query, entry.zone, NOERROR, max_udp, limit)
    return addresses(query, resolved, max_udp, limit)
