"""Learned latency: what each site's switch measured to each client network, and the view
placement reads it through.

Every farmnode's layer-4 switch reads the kernel's smoothed RTT (``TCP_INFO``) of the client
connections it accepts and reports, with its load, a table of client networks (``/24`` for
IPv4, ``/48`` for IPv6) with the smoothed RTT and a sample count (:class:`RttReport`). The
dispatcher keeps each site's latest table (:class:`LearnedRtt`, shared by every replica
through the database) and builds, off the hot path, an :class:`RttView`: one dict lookup
tells, for a client's network, the RTT of every site that measured it.

**Ageing.** A site's table counts only while it is younger than :data:`RTT_MAX_AGE`
(wall-clock time of the report, so every replica agrees): a site whose switch stopped
reporting is forgotten after ten minutes, not trusted forever. A newer table replaces a
site's older one whole (the switch itself ages its samples: see ``farmnode/rtt.py``).

**Bounds.** A report holds at most :data:`MAX_REPORT_ENTRIES` networks. The view holds at
most :data:`MAX_VIEW_PAIRS` (site, network) pairs: over that, every site keeps its
best-sampled ``MAX_VIEW_PAIRS // sites`` networks.

Pure: no I/O; the clock is the caller's.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import pickle
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from dispatcher.placement.model import RttSample

#: Reports older than this many seconds (by their wall-clock time) are ignored.
RTT_MAX_AGE = 600.0
#: The most networks one site's report may hold.
MAX_REPORT_ENTRIES = 10_000
#: The most (site, network) pairs the view holds over all sites.
MAX_VIEW_PAIRS = 200_000
#: The largest RTT a report may carry, in seconds.
MAX_RTT = 60.0
#: The largest sample count a report may carry.
MAX_SAMPLES = 2**31 - 1
#: Seconds between two builds of the view at least (tables that arrive meanwhile wait).
RTT_REBUILD_EVERY = 10.0

_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_HEXTET = r"(?:0|[1-9a-f][0-9a-f]{0,3})"
_HEXTET_NOT_0 = r"[1-9a-f][0-9a-f]{0,3}"
#: A client network as reports carry it: exactly ``/24`` or ``/48``, in canonical form (what
#: Python's ``ipaddress`` prints: no leading zeros, lower-case hexadecimal, ``::`` for the
#: longest run of zero groups). Also the OpenAPI document's pattern.
NETWORK_PATTERN = (
    rf"^(?:{_OCTET}\.{_OCTET}\.{_OCTET}\.0/24"
    rf"|(?:{_HEXTET}:){{0,2}}{_HEXTET_NOT_0}::/48|::/48)$"
)
_NETWORK = re.compile(NETWORK_PATTERN.removeprefix("^").removesuffix("$"))
#: The IPv4 last octets that count (``"0"`` to ``"255"``, canonical).
_OCTETS = frozenset(str(i) for i in range(256))

#: A view key: ``"192.0.2"`` for ``192.0.2.0/24``, the top 48 bits as an int for a ``/48``.
Key = str | int


class RttEntry(NamedTuple):
    """One client network in a site's report: canonical ``/24`` or ``/48``, the smoothed
    RTT in seconds, and how many samples (decayed, at least 1) it rests on."""

    network: str
    rtt: float
    samples: int


@dataclass(frozen=True, slots=True)
class RttReport:
    """A site's latest RTT table; ``reported_at`` is wall-clock UTC (shared by replicas).

    Every entry's network is valid (:func:`is_network`): the admin API checked it, or
    :func:`entries_from_rows` did.
    """

    site: str
    entries: tuple[RttEntry, ...]
    reported_at: dt.datetime
    _keyed: tuple[tuple[Key, float, int], ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def keyed(self) -> tuple[tuple[Key, float, int], ...]:
        """The entries with their view keys, best-sampled first (worked out once)."""
        if self._keyed is None:
            ordered = sorted(self.entries, key=lambda e: -e.samples)
            keyed = tuple((_key(e.network), e.rtt, e.samples) for e in ordered)
            object.__setattr__(self, "_keyed", keyed)
            return keyed
        return self._keyed


def is_network(text: object) -> bool:
    """Whether ``text`` is a client network as reports carry them (:data:`NETWORK_PATTERN`)."""
    return isinstance(text, str) and len(text) <= 24 and _NETWORK.fullmatch(text) is not None


def network_key(network: str) -> Key:
    """The view's key of a network that :func:`is_network` accepts (``ValueError`` else)."""
    if not is_network(network):
        raise ValueError(f"not a canonical /24 or /48 network: {network!r}")
    return _key(network)


def _key(network: str) -> Key:
    """:func:`network_key` of a network known to be valid."""
    if network[-3:] == "/24":
        return network[:-5]  # "192.0.2.0/24" -> "192.0.2"
    head = network[:-5]  # "2001:db8::/48" -> "2001:db8"
    value = 0
    groups = head.split(":") if head else []
    for group in groups:
        value = value << 16 | int(group, 16)
    return value << 16 * (3 - len(groups))


_EMPTY: Mapping[str, RttSample] = MappingProxyType({})
_MAPPED = bytes(10) + b"\xff\xff"  # ::ffff:0:0/96


def _v6_key(address: str) -> Key | None:
    """The key of an IPv6 address's ``/48`` (of its IPv4 address's ``/24`` when mapped)."""
    try:
        packed = socket.inet_pton(socket.AF_INET6, address.partition("%")[0])
    except (OSError, ValueError):  # not an address; a NUL or a non-ASCII character
        return None
    if packed[:12] == _MAPPED:
        return f"{packed[12]}.{packed[13]}.{packed[14]}"
    return int.from_bytes(packed[:6], "big")


def address_key(address: str) -> Key | None:
    """The key of a client address's network (``/24``, ``/48``), or ``None`` for a text that
    is no address. IPv4-mapped IPv6 counts as IPv4; a scope (``%eth0``) is dropped."""
    parts = address.split(".")
    if len(parts) == 4 and all(p in _OCTETS for p in parts):
        return f"{parts[0]}.{parts[1]}.{parts[2]}"
    return _v6_key(address) if ":" in address else None


def key_network(key: Key) -> str:
    """The canonical network text of a key (the inverse of :func:`network_key`)."""
    if isinstance(key, str):
        return f"{key}.0/24"
    a, b, c = key >> 32, key >> 16 & 0xFFFF, key & 0xFFFF
    if c:
        return f"{a:x}:{b:x}:{c:x}::/48"
    if b:
        return f"{a:x}:{b:x}::/48"
    return f"{a:x}::/48" if a else "::/48"


def client_network(address: str) -> str | None:
    """The canonical ``/24`` or ``/48`` of a client address, ``None`` if it is no address."""
    key = address_key(address)
    return None if key is None else key_network(key)


class RttView:
    """Client network -> {site: (RTT seconds, samples)}, for the hot path.

    :meth:`lookup` is one dict lookup on the client's masked network; it never raises.
    Immutable once built. Picklable cheaply: the encoded tables are made once per view and
    a process that unpickles the same view again (a worker sent a new state whose tables did
    not change) gets the object it decoded before.
    """

    __slots__ = ("_blob", "_v4", "_v6", "generation", "pairs", "sites", "token")

    def __init__(
        self,
        tables: Iterable[tuple[str, Iterable[tuple[Key, float, int]]]] = (),
        *,
        generation: int = 0,
        token: bytes = b"",
    ) -> None:
        v4: dict[str, dict[str, RttSample]] = {}
        v6: dict[int, dict[str, RttSample]] = {}
        sites: list[str] = []
        pairs = 0
        for site, entries in tables:
            sites.append(site)
            for key, rtt, samples in entries:
                index: dict[Any, dict[str, RttSample]] = v4 if isinstance(key, str) else v6
                index.setdefault(key, {})[site] = (rtt, samples)
                pairs += 1
        self._v4: dict[str, Mapping[str, RttSample]] = {
            k: MappingProxyType(v) for k, v in v4.items()
        }
        self._v6: dict[int, Mapping[str, RttSample]] = {
            k: MappingProxyType(v) for k, v in v6.items()
        }
        self.sites = tuple(sites)
        self.pairs = pairs
        self.generation = generation
        self.token = token or os.urandom(16)
        self._blob: bytes | None = None

    def __len__(self) -> int:
        """How many client networks the view knows."""
        return len(self._v4) + len(self._v6)

    def lookup(self, address: str, subnet: str = "") -> Mapping[str, RttSample]:
        """The sites' RTT to the network of ``address``, or of ``subnet`` (an EDNS client
        subnet, ``"192.0.2.0/24"``) when one is given: its ``/24`` or ``/48`` when it is at
        least that long, else nothing. IPv4-mapped IPv6 counts as IPv4. Empty when unknown
        or when the text is not an address."""
        if subnet:
            return self._subnet(subnet)
        head, dot, tail = address.rpartition(".")
        if dot and ":" not in head:
            found = self._v4.get(head)
            return found if found is not None and tail in _OCTETS else _EMPTY
        key = _v6_key(address) if ":" in address else None
        if key is None:
            return _EMPTY
        if isinstance(key, str):
            return self._v4.get(key, _EMPTY)
        return self._v6.get(key, _EMPTY)

    def _subnet(self, subnet: str) -> Mapping[str, RttSample]:
        text, slash, bits = subnet.partition("/")
        if not slash or not (bits.isascii() and bits.isdigit() and len(bits) <= 3):
            return _EMPTY
        length = int(bits)
        if ":" in text and length <= 128:
            key = _v6_key(text)
            if isinstance(key, str):  # ::ffff:a.b.c.d/N: its IPv4 part is N - 96 bits long
                return self._v4.get(key, _EMPTY) if length >= 96 + 24 else _EMPTY
            if key is not None and length >= 48:
                return self._v6.get(key, _EMPTY)
            return _EMPTY
        if length > 32 or length < 24 or "%" in text:
            return _EMPTY
        key = address_key(text)
        return self._v4.get(key, _EMPTY) if isinstance(key, str) else _EMPTY

    # -- pickling: the tables once, as bytes ----------------------------------------------

    def tables(self) -> list[tuple[str, list[tuple[Key, float, int]]]]:
        """The view's content per site, as it can be built again."""
        per_site: dict[str, list[tuple[Key, float, int]]] = {site: [] for site in self.sites}
        for index in (self._v4, self._v6):
            for key, sites in index.items():
                for site, (rtt, samples) in sites.items():
                    per_site[site].append((key, rtt, samples))
        return list(per_site.items())

    def __reduce__(self) -> tuple[Any, tuple[bytes, int, bytes]]:
        if self._blob is None:
            self._blob = pickle.dumps(self.tables(), protocol=pickle.HIGHEST_PROTOCOL)
        return _restore, (self.token, self.generation, self._blob)

    def __repr__(self) -> str:
        return f"RttView({len(self)} networks, {len(self.sites)} sites, {self.pairs} pairs)"


#: The last view this process unpickled, by its token (see :meth:`RttView.__reduce__`).
_restored: dict[bytes, RttView] = {}


def _restore(token: bytes, generation: int, blob: bytes) -> RttView:
    view = _restored.get(token)
    if view is None:
        tables = pickle.loads(blob)  # noqa: S301 - pickled by our own parent process
        view = RttView(tables, generation=generation, token=token)
        view._blob = blob
        _restored.clear()
        _restored[token] = view
    return view


EMPTY_VIEW = RttView(token=b"empty")


def build_view(
    reports: Iterable[RttReport], generation: int = 0, max_pairs: int = MAX_VIEW_PAIRS
) -> RttView:
    """The view of these reports; over ``max_pairs`` pairs, each site keeps its
    ``max_pairs // sites`` best-sampled networks. Slow for big tables (about a microsecond
    per pair): run it off the event loop."""
    reports = [r for r in reports if r.entries]
    quota = max_pairs // len(reports) if reports else 0
    tables = [(report.site, report.keyed()[:quota]) for report in reports]
    return RttView(tables, generation=generation)


class LearnedRtt:
    """Every site's latest RTT report, kept while younger than ``max_age`` seconds.

    :meth:`adopt` takes a report this dispatcher received; :meth:`wanted` and :meth:`merge`
    bring in what other replicas stored (the store's report times first, then the tables
    that are newer than those held). ``generation`` grows with every change, so that a view
    built from an older state never replaces a newer one.
    """

    def __init__(self, max_age: float = RTT_MAX_AGE) -> None:
        self.max_age = max_age
        self.reports: dict[str, RttReport] = {}
        self.generation = 0

    def _fresh(self, reported_at: dt.datetime, now: dt.datetime) -> bool:
        return (now - reported_at).total_seconds() <= self.max_age

    def adopt(self, report: RttReport, now: dt.datetime) -> bool:
        """Keep ``report`` if it is newer than the site's and not too old; ``True`` if kept."""
        held = self.reports.get(report.site)
        if held is not None and held.reported_at >= report.reported_at:
            return False
        if not self._fresh(report.reported_at, now):
            return False
        self.reports[report.site] = report
        self.generation += 1
        return True

    def wanted(self, stamps: Mapping[str, dt.datetime], now: dt.datetime) -> list[str]:
        """The sites whose stored report (``stamps``: site -> report time) is worth reading."""
        return [
            site
            for site, at in stamps.items()
            if self._fresh(at, now)
            and (site not in self.reports or self.reports[site].reported_at < at)
        ]

    def merge(
        self, stamps: Mapping[str, dt.datetime], fetched: Iterable[RttReport], now: dt.datetime
    ) -> bool:
        """Adopt ``fetched``; forget the reports that are too old, and those the store no
        longer has (their site was deleted) unless they arrived after ``now``, when the
        stamps were read. ``True`` when anything changed."""
        changed = False
        for report in fetched:
            changed |= self.adopt(report, now)
        for site, report in list(self.reports.items()):
            gone = site not in stamps and report.reported_at < now
            if gone or not self._fresh(report.reported_at, now):
                del self.reports[site]
                changed = True
        if changed:
            self.generation += 1
        return changed

    def current(self) -> tuple[int, tuple[RttReport, ...]]:
        """The generation and the reports, to build a view from (off the event loop)."""
        return self.generation, tuple(self.reports.values())


def entries_from_rows(raw: object) -> tuple[RttEntry, ...]:
    """Entries from their stored form (``[[network, rtt, samples], ...]``); what does not
    fit is skipped, never raised on."""
    if not isinstance(raw, list):
        return ()
    entries = []
    for row in itertools.islice(raw, MAX_REPORT_ENTRIES):
        if not (isinstance(row, list | tuple) and len(row) == 3):
            continue
        network, rtt, samples = row
        if (
            is_network(network)
            and isinstance(rtt, int | float)
            and not isinstance(rtt, bool)
            and 0.0 <= rtt <= MAX_RTT
            and isinstance(samples, int)
            and not isinstance(samples, bool)
            and 1 <= samples <= MAX_SAMPLES
        ):
            entries.append(RttEntry(network, float(rtt), samples))
    return tuple(entries)


__all__ = [
    "EMPTY_VIEW",
    "MAX_REPORT_ENTRIES",
    "MAX_RTT",
    "MAX_SAMPLES",
    "MAX_VIEW_PAIRS",
    "NETWORK_PATTERN",
    "RTT_MAX_AGE",
    "RTT_REBUILD_EVERY",
    "LearnedRtt",
    "RttEntry",
    "RttReport",
    "RttView",
    "address_key",
    "build_view",
    "client_network",
    "entries_from_rows",
    "is_network",
    "key_network",
    "network_key",
]
