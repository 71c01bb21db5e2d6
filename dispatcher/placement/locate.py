"""Where a client is: the operator's prefix map first, then the IP-location database.

:class:`Locator` answers :meth:`~Locator.locate` for any string (garbage is
:data:`~dispatcher.placement.model.NOWHERE`, never an exception). It is built off the hot
path, holds the prefix map as :class:`~dispatcher.placement.prefixes.PrefixTable` per
family and the databases open, and keeps a bounded cache per client /24 (IPv4) or /48
(IPv6): a hit costs parsing the address and one dict probe. An answer is cached only when
it holds for the whole /24 or /48 (no prefix-map entry inside it is longer, and the
database's network is not longer), so the cache never changes an answer.

It pickles as its configuration (the prefix map and the database paths) and reopens the
databases where it is unpickled (a worker process), never as open readers.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from dispatcher.errors import GeoDatabaseError
from dispatcher.placement.countries import CONTINENT_OF
from dispatcher.placement.geoip import NOTHING, BuiltinCountries, Found, MmdbDatabase
from dispatcher.placement.model import (
    LOCATED_BY_DATABASE,
    LOCATED_BY_PREFIX_MAP,
    NOWHERE,
    Location,
)
from dispatcher.placement.prefixes import Network, PrefixTable, prefix_text

if TYPE_CHECKING:
    from dispatcher.backends.sites import SiteSpec

log = logging.getLogger("dispatcher.placement")

#: Client networks whose location is kept (each entry is a few hundred bytes).
DEFAULT_CACHE_SIZE = 65_536
BUCKET = {4: 24, 6: 48}  # the cache's network per family: its key is the packed address's
# first 3 (IPv4) or 6 (IPv6) bytes
_MAX_TEXT = 64  # longer is no IP address (the longest IPv6 text is 45 characters)
_MAPPED = b"\0" * 10 + b"\xff\xff"  # ::ffff:0:0/96, IPv4-mapped IPv6 addresses
_pton, _ntop, _AF4, _AF6 = socket.inet_pton, socket.inet_ntop, socket.AF_INET, socket.AF_INET6
_from_bytes = int.from_bytes
#: Marks a /24 (/48) in the cache whose addresses are cached one by one.
_FINER = Location(source="finer")


class Locates(Protocol):
    """Anything that locates an address as :meth:`Locator.locate` does."""

    def locate(self, address: str, subnet: str = "") -> Location: ...


class Topology(NamedTuple):
    """Where a site is: what :class:`~dispatcher.placement.model.Candidate` carries."""

    region: str | None = None
    country: str | None = None
    continent: str | None = None
    asn: int | None = None
    coordinates: tuple[float, float] | None = None


class Locator:
    """Locates clients by ``networks`` (the prefix map) and ``databases`` (``.mmdb`` paths,
    opened here: :class:`~dispatcher.errors.GeoDatabaseError` when one is unusable).

    With no database, ``builtin`` (the default) uses the country data shipped in the
    ``iptocc`` package. When several databases are given, each field comes from the first
    that has it (a City file and an ASN file together, say). A prefix-map entry's fields win;
    the fields it leaves out come from the databases.
    """

    def __init__(
        self,
        networks: Iterable[Network] = (),
        databases: Sequence[str] = (),
        *,
        builtin: bool = True,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self.networks = tuple(networks)
        self.paths = tuple(str(path) for path in databases)
        self.builtin = builtin
        self.cache_size = max(1, cache_size)
        opened: list[MmdbDatabase] = []
        try:
            opened.extend(MmdbDatabase(path) for path in self.paths)
        except GeoDatabaseError:
            for database in opened:
                database.close()
            raise
        self._setup(opened)

    def _setup(self, opened: Sequence[MmdbDatabase]) -> None:
        sources: list[MmdbDatabase | BuiltinCountries] = list(opened)
        if not self.paths and self.builtin:
            sources.append(BuiltinCountries())
        self.databases: tuple[MmdbDatabase | BuiltinCountries, ...] = tuple(sources)
        self._v4 = PrefixTable((n for n in self.networks if n.version == 4), 32)
        self._v6 = PrefixTable((n for n in self.networks if n.version == 6), 128)
        self._fine = frozenset(
            _packed(n.version, n.value)[: BUCKET[n.version] // 8]
            for n in self.networks
            if n.length > BUCKET[n.version]
        )
        self._cache: dict[bytes, Location] = {}
        self._shared: dict[tuple[Any, ...], Location] = {}  # one object per distinct answer
        self._idle = not self.networks and not self.databases

    # --- the hot path ---

    def locate(self, address: str, subnet: str = "") -> Location:
        """Where the client at ``address`` is; with ``subnet`` (an EDNS client subnet such as
        ``"192.0.2.0/24"``), where that subnet's network address is (a ``/0`` subnet or one
        that does not parse leaves ``address``). Never raises; unknown is ``NOWHERE``."""
        if self._idle:
            return NOWHERE
        if subnet or ":" in address:
            packed = (_subnet(subnet) or _pack(address)) if subnet else _pack(address)
            if packed is None:
                return NOWHERE
        else:  # IPv4, the common case, inline
            try:
                packed = _pton(_AF4, address)
            except (OSError, ValueError, TypeError):
                return NOWHERE
        key = packed[:3] if len(packed) == 4 else packed[:6]
        hit = self._cache.get(key)
        if hit is not None and hit is not _FINER:
            return hit
        return self._miss(packed, key)

    def extent(self, subnet: str, length: int) -> int:
        """How far a location of the client subnet ``subnet`` (``"net/len"``) holds, as a
        prefix length: ``length`` (the located network's, or the subnet's own when nothing
        located it), raised past every prefix-map network inside that would locate some of
        its addresses otherwise (:meth:`PrefixTable.extent`): the ECS scope of a DNS answer
        placed by where the client is. A subnet that does not parse: ``length``."""
        address, _, _ = subnet.partition("/")
        packed = _subnet(subnet)
        if packed is None or (len(packed) == 4 and ":" in address):  # (IPv4-mapped: as is)
            return length
        table = self._v4 if len(packed) == 4 else self._v6
        return table.extent(_from_bytes(packed), length)

    # --- a client network seen for the first time ---

    def _miss(self, packed: bytes, key: bytes) -> Location:
        """Locate ``packed`` and keep the answer: under its /24 (/48) ``key`` when it holds
        for the whole network, else under the address itself, ``key`` marked :data:`_FINER`
        (a prefix-map entry or a database network inside it is longer)."""
        cache = self._cache
        finer = key in self._fine or cache.get(key) is _FINER
        if finer and (exact := cache.get(packed)) is not None:
            return exact
        version, value = (4 if len(packed) == 4 else 6), _from_bytes(packed)
        entry = (self._v4 if version == 4 else self._v6).match(value)
        found = NOTHING
        if entry is None or not entry.complete:
            found = self._look_up(version, value)
        location = _combine(entry, found, version, value)
        if len(cache) >= self.cache_size:
            cache.clear()
            self._shared.clear()
        location = self._shared.setdefault(_fields(location), location)
        if finer or (found.length is not None and found.length > BUCKET[version]):
            cache[key] = _FINER
            cache[packed] = location
        else:
            cache[key] = location
        return location

    def _look_up(self, version: int, value: int) -> Found:
        """Each field from the first database that has it; ``length`` the longest network."""
        if not self.databases:
            return NOTHING
        text = _text(version, value)
        answers = [database.lookup(text, version) for database in self.databases]
        if len(answers) == 1:
            return answers[0]
        lengths = [a.length for a in answers if a.length is not None]
        return Found(
            country=next((a.country for a in answers if a.country is not None), None),
            continent=next((a.continent for a in answers if a.continent is not None), None),
            asn=next((a.asn for a in answers if a.asn is not None), None),
            coordinates=next((a.coordinates for a in answers if a.coordinates), None),
            length=max(lengths) if lengths else None,
        )

    # --- pickling: the configuration, reopened where it lands ---

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopened, (self.networks, self.paths, self.builtin, self.cache_size))

    def describe(self) -> str:
        """One line for ``check-config`` and the logs."""
        sources = ", ".join(f"{d.path} ({d.kind})" for d in self.databases) or "none"
        return f"{len(self.networks)} prefix-map network(s), IP database: {sources}"

    def close(self) -> None:
        for database in self.databases:
            database.close()


def _reopened(
    networks: tuple[Network, ...], paths: tuple[str, ...], builtin: bool, cache_size: int
) -> Locator:
    """A pickled :class:`Locator` in its new process: the databases opened again. One that
    cannot be (removed or replaced by a broken file since) is logged and left out: a worker
    must come up, locating by what it still has."""
    locator = Locator.__new__(Locator)
    locator.networks, locator.paths = networks, paths
    locator.builtin, locator.cache_size = builtin, cache_size
    opened = []
    for path in paths:
        try:
            opened.append(MmdbDatabase(path))
        except GeoDatabaseError as exc:
            log.error("geoip_database %s cannot be opened again, locating without it", exc)  # noqa: TRY400 - the reason is in the message, a traceback adds nothing
    locator._setup(opened)
    return locator


def _combine(entry: Network | None, found: Found, version: int, value: int) -> Location:
    if entry is None:
        if found[:4] == NOTHING[:4]:
            return NOWHERE
        prefix = None
        if found.length is not None:
            prefix = prefix_text(version, _masked(version, value, found.length), found.length)
        return Location(
            source=LOCATED_BY_DATABASE,
            prefix=prefix,
            asn=found.asn,
            country=found.country,
            continent=found.continent,
            coordinates=found.coordinates,
        )
    country, continent = entry.country, entry.continent
    if country is None:
        country, continent = found.country, found.continent
    return Location(
        source=LOCATED_BY_PREFIX_MAP,
        prefix=entry.prefix,
        region=entry.region,
        asn=entry.asn if entry.asn is not None else found.asn,
        country=country,
        continent=continent,
        coordinates=entry.coordinates or found.coordinates,
    )


def _fields(location: Location) -> tuple[Any, ...]:
    return (
        location.source,
        location.prefix,
        location.region,
        location.asn,
        location.country,
        location.continent,
        location.coordinates,
    )


# --- addresses as integers ---


def _pack(text: str) -> bytes | None:
    """An IP address in text as 4 or 16 bytes (an IPv4-mapped IPv6 address is its IPv4
    address; a zone ``%eth0`` is dropped), ``None`` for anything else."""
    try:
        if ":" not in text:
            return _pton(_AF4, text)
        if len(text) > _MAX_TEXT:
            return None
        zone = text.find("%")
        packed = _pton(_AF6, text[:zone] if zone >= 0 else text)
    except (OSError, ValueError, TypeError):
        return None
    return packed[12:] if packed[:12] == _MAPPED else packed


def _subnet(text: str) -> bytes | None:
    """The network address of ``"net/len"`` (host bits cleared), packed; ``None`` for a
    subnet that does not parse or has length 0 (RFC 7871: do not locate by it)."""
    address, slash, length = text.partition("/")
    if not slash or not (0 < len(length) <= 3 and length.isascii() and length.isdigit()):
        return None
    packed = _pack(address)
    if packed is None:
        return None
    bits = int(length) - (96 if len(packed) == 4 and ":" in address else 0)
    version = 4 if len(packed) == 4 else 6
    if not 0 < bits <= len(packed) * 8:
        return None
    return _packed(version, _masked(version, _from_bytes(packed), bits))


def _masked(version: int, value: int, length: int) -> int:
    host = (32 if version == 4 else 128) - length
    return value >> host << host


def _packed(version: int, value: int) -> bytes:
    return value.to_bytes(4 if version == 4 else 16)


def _text(version: int, value: int) -> str:
    return _ntop(_AF4 if version == 4 else _AF6, _packed(version, value))


# --- sites ---


def site_topology(spec: SiteSpec, locator: Locates | None) -> Topology:
    """Where a site is: its configured ``region``, ``country`` and ``coordinates`` win; what
    it leaves out (and its ASN) comes from locating its base URL's host when that is an IP
    address (the prefix map may give a region too); a host name is not resolved."""
    located = NOWHERE
    host = urlsplit(spec.base_url).hostname or ""
    if locator is not None and _pack(host) is not None:
        located = locator.locate(host)
    country, continent = spec.country, CONTINENT_OF.get(spec.country or "")
    if country is None:
        country, continent = located.country, located.continent
    return Topology(
        region=spec.region if spec.region is not None else located.region,
        country=country,
        continent=continent,
        asn=located.asn,
        coordinates=spec.coordinates if spec.coordinates is not None else located.coordinates,
    )


__all__ = ["DEFAULT_CACHE_SIZE", "Locator", "Topology", "site_topology"]
