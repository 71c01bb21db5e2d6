"""The operator's prefix map (``[[networks]]``): validated entries and longest-prefix match.

An entry names a network (``prefix = "198.51.100.0/24"``) and where its clients are:
``region``, ``country``, ``asn``, ``coordinates`` (at least one). IPv4-mapped IPv6
networks (``::ffff:198.51.100.0/120``) are the IPv4 networks they map. Matching is a dict
per prefix length, longest first: a lookup costs one shift and one dict probe per distinct
length in the map (:class:`PrefixTable`).
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.errors import InvalidValue
from dispatcher.placement.countries import CONTINENT_OF
from dispatcher.placement.topology import (
    check_asn,
    check_coordinates,
    check_country,
    check_region,
)

#: The most ``[[networks]]`` entries a configuration may hold.
MAX_NETWORKS = 100_000
NETWORK_KEYS = frozenset({"prefix", "region", "country", "asn", "coordinates"})
_PREFIX_RE = re.compile(r"[0-9A-Fa-f:.]{2,45}/[0-9]{1,3}")
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True, slots=True)
class Network:
    """One entry of the prefix map. ``prefix`` is the network in canonical text;
    ``version``, ``value`` (the network address as an integer) and ``length`` are what
    matching uses; ``continent`` follows from ``country``."""

    prefix: str
    version: int
    value: int
    length: int
    region: str | None = None
    country: str | None = None
    continent: str | None = None
    asn: int | None = None
    coordinates: tuple[float, float] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # positional, no per-object dict of slots: a 100,000-entry map pickles 3x faster
        return (Network, tuple(getattr(self, name) for name in _FIELDS))

    @property
    def complete(self) -> bool:
        """Everything a database could add is given here already."""
        return None not in (self.country, self.asn, self.coordinates)


_FIELDS = tuple(Network.__dataclass_fields__)


def parse_networks(raw: Any, path: str = "networks") -> tuple[Network, ...]:
    """Validate the ``[[networks]]`` array; errors name ``networks[3].prefix`` and so on.

    A prefix with host bits set (``198.51.100.7/24``) is refused, naming the network it
    would have been; so is a network listed twice, in whatever spelling.
    """
    if not isinstance(raw, list):
        raise InvalidValue(path, "an array of tables ([[networks]])")
    if len(raw) > MAX_NETWORKS:
        raise InvalidValue(path, f"at most {MAX_NETWORKS} entries, got {len(raw)}")
    seen: dict[tuple[int, int, int], int] = {}
    networks: list[Network] = []
    for index, table in enumerate(raw):
        where = f"{path}[{index}]"
        network = parse_network(table, where)
        key = (network.version, network.value, network.length)
        if key in seen:
            raise InvalidValue(
                f"{where}.prefix",
                f"a network listed once ({network.prefix} is {path}[{seen[key]}] too)",
            )
        seen[key] = index
        networks.append(network)
    return tuple(networks)


def parse_network(table: Any, where: str) -> Network:
    """One ``[[networks]]`` entry; ``where`` prefixes the key paths of errors."""
    if not isinstance(table, Mapping):
        raise InvalidValue(where, "a table with prefix and region, country, asn or coordinates")
    for key in table:
        if key not in NETWORK_KEYS:
            allowed = ", ".join(sorted(NETWORK_KEYS))
            raise InvalidValue(f"{where}.{key}", f"no such key (allowed: {allowed})")
    if "prefix" not in table:
        raise InvalidValue(f"{where}.prefix", "a value (this key is required)")
    if len(table) == 1:
        raise InvalidValue(where, "at least one of region, country, asn, coordinates")
    version, value, length = parse_prefix(table["prefix"], f"{where}.prefix")
    country = _optional(table, "country", where, check_country)
    return Network(
        prefix=prefix_text(version, value, length),
        version=version,
        value=value,
        length=length,
        region=_optional(table, "region", where, check_region),
        country=country,
        continent=CONTINENT_OF.get(country) if country else None,
        asn=_optional(table, "asn", where, check_asn),
        coordinates=_optional(table, "coordinates", where, check_coordinates),
    )


def parse_prefix(value: Any, field_name: str) -> tuple[int, int, int]:
    """``(version, network as an integer, length)`` of a ``"net/len"`` string."""
    expected = 'a network such as "198.51.100.0/24" or "2001:db8::/32"'
    if not isinstance(value, str) or not _PREFIX_RE.fullmatch(value):
        raise InvalidValue(field_name, f"{expected}, got {_shown(value)}")
    address, _, bits = value.partition("/")
    version, width = (6, 128) if ":" in address else (4, 32)
    try:  # strict: no leading zeros, no shorthand such as 127.1
        number = int.from_bytes(socket.inet_pton(_FAMILY[version], address))
    except OSError:
        raise InvalidValue(field_name, f"{expected}, got {value!r}") from None
    length = int(bits)
    if length > width:
        raise InvalidValue(field_name, f"{expected} (length at most {width}), got {value!r}")
    host = width - length
    if number & ((1 << host) - 1):
        meant = prefix_text(version, number >> host << host, length)
        raise InvalidValue(
            field_name, f"a network without host bits: {value!r} has some; did you mean {meant}?"
        )
    if version == 6 and length >= 96 and number >> 32 == 0xFFFF:
        return 4, number & 0xFFFFFFFF, length - 96
    return version, number, length


def prefix_text(version: int, value: int, length: int) -> str:
    """The canonical text of a network (``"198.51.100.0/24"``, ``"2001:db8::/32"``)."""
    if version == 4:  # inet_ntop: the same text as ipaddress, in a tenth of the time
        return f"{socket.inet_ntop(socket.AF_INET, value.to_bytes(4))}/{length}"
    return f"{ipaddress.IPv6Address(value)}/{length}"


class PrefixTable:
    """Longest-prefix match over one address family's networks.

    One dict per prefix length, keyed by the network's leading ``length`` bits; a lookup
    probes them longest first. Built once, read only (safe to share between threads).
    """

    __slots__ = ("_bits", "_levels", "_sorted", "lengths")

    def __init__(self, networks: Iterable[Network], bits: int) -> None:
        by_length: dict[int, dict[int, Network]] = {}
        for network in networks:
            by_length.setdefault(network.length, {})[network.value >> (bits - network.length)] = (
                network
            )
        self.lengths = tuple(sorted(by_length, reverse=True))
        self._levels = tuple((bits - length, by_length[length]) for length in self.lengths)
        self._bits = bits
        self._sorted = tuple(
            (length, sorted(n.value for n in by_length[length].values())) for length in self.lengths
        )

    def match(self, value: int) -> Network | None:
        """The longest network that contains the address ``value``, or ``None``."""
        for shift, table in self._levels:
            hit = table.get(value >> shift)
            if hit is not None:
                return hit
        return None

    def extent(self, value: int, length: int) -> int:
        """How far the match of the address ``value`` holds: the shortest prefix length,
        ``length`` at least, whose network around ``value`` holds no longer network that
        leaves ``value`` out (its other addresses would be matched otherwise). With
        ``length`` the matched network's (or, with no match, a client subnet's), this is
        the scope of an answer that depends on the match (RFC 7871, section 7.2.1)."""
        bits = self._bits
        host = bits - length
        first = value >> host << host  # the network value/length
        last = first | ((1 << host) - 1)
        best = length
        for level, values in self._sorted:
            if level <= best:
                break  # (shorter networks cannot raise it)
            at = bisect.bisect_left(values, value)
            for other in values[max(at - 1, 0) : at + 1]:  # the neighbours share most bits
                if not first <= other <= last or (other ^ value) >> (bits - level) == 0:
                    continue  # outside value/length, or holding value
                best = max(best, bits - (other ^ value).bit_length() + 1)
        return best


def _optional(table: Mapping[str, Any], key: str, where: str, check: Any) -> Any:
    return check(table[key], f"{where}.{key}") if key in table else None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:80]}... ({len(text)} characters)"


__all__ = [
    "MAX_NETWORKS",
    "Network",
    "PrefixTable",
    "parse_network",
    "parse_networks",
    "parse_prefix",
    "prefix_text",
]
