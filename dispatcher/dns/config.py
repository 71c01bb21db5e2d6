"""The ``[dns]`` table: the authoritative DNS front's listeners, zones, records and limits.

Validated whole when the configuration is built (:func:`parse_dns`); every problem is an
:class:`~dispatcher.errors.InvalidValue` naming its key (``dns.names[2].ttl``). Names are
kept in lower-cased wire form (:mod:`dispatcher.dns.names`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.addresses import parse_address, points_at
from dispatcher.backends.sites import check_addresses, shown
from dispatcher.dns.names import ROOT, from_text, is_within, to_text
from dispatcher.errors import InvalidValue

ALL_DOWN = ("fail-open", "failsafe", "servfail")
MAX_LISTEN = 16
MAX_ZONES = 100
MAX_NS = 13  # what fits a 512-byte referral, as the root servers' count
MAX_NAMES = 10_000
MAX_ANSWERS = 16
MAX_TTL = 86_400 * 7
MAX_SERIAL = 2**32 - 1
DNS_KEYS = frozenset(
    {
        "listen",
        "zones",
        "ns",
        "soa",
        "names",
        "max_udp_payload",
        "tcp_idle_timeout",
        "tcp_max_connections",
        "tcp_max_queries",
        "tcp_max_message",
        "tcp_write_buffer",
        "rrl_rate",
        "rrl_slip",
        "rrl_table",
        "rrl_ipv4_prefix",
        "rrl_ipv6_prefix",
    }
)
SOA_KEYS = frozenset({"mname", "rname", "serial", "refresh", "retry", "expire", "minimum", "ttl"})
NAME_KEYS = frozenset({"name", "pool", "addresses", "ttl", "answers", "all_down", "failsafe"})


@dataclass(frozen=True, slots=True)
class Ttl:
    """A record's TTL: ``high`` while the pool is stable, ``low`` while it is not (a site
    changed state lately, see :mod:`dispatcher.dns.ttl`). ``"20"`` is ``Ttl(20, 20)``."""

    high: int
    low: int

    def __str__(self) -> str:
        return str(self.high) if self.high == self.low else f"{self.high}/{self.low}"


@dataclass(frozen=True, slots=True)
class Soa:
    """The zones' SOA fields (one set for every zone); ``serial`` ``None`` is "auto": the
    registry's revision, the same in every worker and every replica sharing the database.
    ``ttl`` is the TTL of the SOA and NS records themselves."""

    mname: bytes
    rname: bytes
    serial: int | None = None
    refresh: int = 3600
    retry: int = 600
    expire: int = 604_800
    minimum: int = 60
    ttl: int = 3600

    @property
    def negative_ttl(self) -> int:
        """How long a resolver may cache "no such name / no such data" (RFC 2308)."""
        return min(self.ttl, self.minimum)


@dataclass(frozen=True, slots=True)
class DnsName:
    """One ``[[dns.names]]`` entry: the A/AAAA records of ``name``, from the sites of
    ``pool`` in placement order (``answers`` addresses at most), or the fixed
    ``addresses`` (a name such as the zone's own name servers). ``all_down`` says what to
    answer when placement has no site: the ``failsafe`` addresses, every address of the
    pool's sites that are not drained (``fail-open``), or SERVFAIL."""

    name: bytes
    pool: str | None
    ttl: Ttl
    answers: int = 1
    all_down: str = "fail-open"
    failsafe: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return to_text(self.name)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """The whole ``[dns]`` table. ``rrl_rate`` 0 turns response rate limiting off."""

    listen: tuple[str, ...]
    zones: tuple[bytes, ...]
    ns: tuple[bytes, ...]
    soa: Soa
    names: tuple[DnsName, ...]
    max_udp_payload: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    tcp_max_queries: int = 100
    tcp_max_message: int = 4096
    tcp_write_buffer: int = 256 * 1024
    rrl_rate: int = 0
    rrl_slip: int = 2
    rrl_table: int = 100_000
    rrl_ipv4_prefix: int = 24
    rrl_ipv6_prefix: int = 56

    def zone_of(self, name: bytes) -> bytes | None:
        """The zone ``name`` (lower-cased wire) is in, if any."""
        for zone in self.zones:
            if is_within(name, zone):
                return zone
        return None


def parse_dns(
    raw: Any, pools: Collection[str], taken: Collection[str] = (), *, where: str = "dns"
) -> DnsConfig:
    """Validate the ``[dns]`` table. ``pools`` are the configured pool names; ``taken`` the
    dispatcher's own TCP listeners (a DNS listener may not be one of them)."""
    if not isinstance(raw, Mapping):
        raise InvalidValue(where, "a table")
    _only(raw, DNS_KEYS, where)
    listen = _listen(raw.get("listen"), f"{where}.listen", taken)
    zones = _zones(raw.get("zones"), f"{where}.zones")
    ns = _names_list(raw.get("ns"), f"{where}.ns", 1, MAX_NS)
    d = DnsConfig((), (), (), Soa(b"", b""), ())
    config = DnsConfig(
        listen=listen,
        zones=zones,
        ns=ns,
        soa=_soa(raw.get("soa", {}), f"{where}.soa", ns, zones),
        names=(),
        max_udp_payload=_whole(raw, where, "max_udp_payload", d.max_udp_payload, 512, 4096),
        tcp_idle_timeout=_seconds(raw, where, "tcp_idle_timeout", d.tcp_idle_timeout),
        tcp_max_connections=_whole(
            raw, where, "tcp_max_connections", d.tcp_max_connections, 1, 1_000_000
        ),
        tcp_max_queries=_whole(raw, where, "tcp_max_queries", d.tcp_max_queries, 1, 1_000_000),
        tcp_max_message=_whole(raw, where, "tcp_max_message", d.tcp_max_message, 512, 65_535),
        tcp_write_buffer=_whole(
            raw, where, "tcp_write_buffer", d.tcp_write_buffer, 4096, 64 * 1024 * 1024
        ),
        rrl_rate=_whole(raw, where, "rrl_rate", d.rrl_rate, 0, 1_000_000),
        rrl_slip=_whole(raw, where, "rrl_slip", d.rrl_slip, 0, 10),
        rrl_table=_whole(raw, where, "rrl_table", d.rrl_table, 1, 10_000_000),
        rrl_ipv4_prefix=_whole(raw, where, "rrl_ipv4_prefix", d.rrl_ipv4_prefix, 8, 32),
        rrl_ipv6_prefix=_whole(raw, where, "rrl_ipv6_prefix", d.rrl_ipv6_prefix, 16, 128),
    )
    names = _records(raw.get("names", []), f"{where}.names", config, pools)
    return DnsConfig(**{**_fields(config), "names": names})


def _fields(config: DnsConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in DnsConfig.__slots__}


def parse_ttl(value: Any, where: str) -> Ttl:
    """``20``, ``"20"`` or ``"20/5"`` (at most 20 s, at least 5 s) -> :class:`Ttl`."""
    expected = f'seconds from 0 to {MAX_TTL}: 20, "20", or "20/5" (at most 20, at least 5)'
    if isinstance(value, int) and not isinstance(value, bool):
        high, low = value, value
    elif isinstance(value, str) and value.count("/") <= 1 and len(value) <= 20:
        first, _, second = value.partition("/")
        if not first.isdecimal() or (second and not second.isdecimal()) or value.endswith("/"):
            raise InvalidValue(where, f"{expected}, got {shown(value)}")
        high = int(first)
        low = int(second) if second else high
    else:
        raise InvalidValue(where, f"{expected}, got {shown(value)}")
    if not 0 <= high <= MAX_TTL or not 0 <= low <= MAX_TTL:
        raise InvalidValue(where, f"{expected}, got {shown(value)}")
    if low > high:
        raise InvalidValue(where, f"{expected}: the first number is the longer TTL, got {value!r}")
    return Ttl(high, low)


def _listen(value: Any, where: str, taken: Collection[str]) -> tuple[str, ...]:
    expected = f'an array of 1 to {MAX_LISTEN} "host:port" addresses (UDP and TCP on each)'
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LISTEN:
        raise InvalidValue(where, f"{expected}, got {shown(value)}")
    seen: set[tuple[str, int]] = set()
    for index, item in enumerate(value):
        at = f"{where}[{index}]"
        if not isinstance(item, str):
            raise InvalidValue(at, f'"host:port", got {shown(item)}')
        try:
            host, port = parse_address(item)
        except ValueError as exc:
            raise InvalidValue(at, f'"host:port" ({exc}), got {item!r}') from None
        if (host, port) in seen and port:
            raise InvalidValue(at, f"{expected}: {item!r} is listed twice")
        other = points_at(host, port, taken) if port else None
        if other is not None:
            raise InvalidValue(at, f"an address no other listener uses ({other} does)")
        seen.add((host, port))
    return tuple(value)


def _zones(value: Any, where: str) -> tuple[bytes, ...]:
    zones = _names_list(value, where, 1, MAX_ZONES)
    for index, zone in enumerate(zones):
        if zone == ROOT:
            raise InvalidValue(f"{where}[{index}]", "a zone below the root, got '.'")
        for other in zones[:index]:
            if is_within(zone, other) or is_within(other, zone):
                raise InvalidValue(
                    f"{where}[{index}]",
                    f"zones that do not nest ({to_text(zone)} and {to_text(other)})",
                )
    return zones


def _names_list(value: Any, where: str, low: int, high: int) -> tuple[bytes, ...]:
    if not isinstance(value, list) or not low <= len(value) <= high:
        raise InvalidValue(
            where, f"an array of {low} to {high} absolute domain names, got {shown(value)}"
        )
    names: list[bytes] = []
    for index, item in enumerate(value):
        name = from_text(item, f"{where}[{index}]")
        if name in names:
            raise InvalidValue(f"{where}[{index}]", f"a name not listed before, got {item!r}")
        names.append(name)
    return tuple(names)


def _soa(raw: Any, where: str, ns: tuple[bytes, ...], zones: tuple[bytes, ...]) -> Soa:
    if not isinstance(raw, Mapping):
        raise InvalidValue(where, "a table")
    _only(raw, SOA_KEYS, where)
    mname = from_text(raw["mname"], f"{where}.mname") if "mname" in raw else ns[0]
    rname = _rname(raw.get("rname"), f"{where}.rname", zones[0])
    serial = raw.get("serial", "auto")
    if serial != "auto" and (
        isinstance(serial, bool) or not isinstance(serial, int) or not 0 <= serial <= MAX_SERIAL
    ):
        raise InvalidValue(
            f"{where}.serial",
            f'"auto" (the registry\'s revision) or a whole number from 0 to {MAX_SERIAL},'
            f" got {shown(serial)}",
        )
    d = Soa(b"", b"")
    return Soa(
        mname=mname,
        rname=rname,
        serial=None if serial == "auto" else serial,
        refresh=_whole(raw, where, "refresh", d.refresh, 1, MAX_SERIAL >> 1),
        retry=_whole(raw, where, "retry", d.retry, 1, MAX_SERIAL >> 1),
        expire=_whole(raw, where, "expire", d.expire, 1, MAX_SERIAL >> 1),
        minimum=_whole(raw, where, "minimum", d.minimum, 0, MAX_TTL),
        ttl=_whole(raw, where, "ttl", d.ttl, 0, MAX_TTL),
    )


def _rname(value: Any, where: str, zone: bytes) -> bytes:
    """The zone's contact: a name (``hostmaster.farm.example.``) or a mail address whose
    local part has no dot (``hostmaster@farm.example``); default ``hostmaster.`` + zone."""
    if value is None:
        return b"\x0ahostmaster" + zone
    if isinstance(value, str) and "@" in value:
        local, _, domain = value.partition("@")
        if "." in local or "@" in domain:
            raise InvalidValue(
                where, f"a mail address whose local part has no dot, or a name, got {value!r}"
            )
        return from_text(f"{local}.{domain}", where)
    return from_text(value, where)


def _records(
    raw: Any, where: str, config: DnsConfig, pools: Collection[str]
) -> tuple[DnsName, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_NAMES:
        raise InvalidValue(where, f"an array of at most {MAX_NAMES} tables ([[dns.names]])")
    seen: dict[bytes, int] = {}
    records: list[DnsName] = []
    for index, table in enumerate(raw):
        at = f"{where}[{index}]"
        record = _record(table, at, config, pools)
        if record.name in seen:
            raise InvalidValue(
                f"{at}.name", f"a name not configured before ({where}[{seen[record.name]}])"
            )
        seen[record.name] = index
        records.append(record)
    return tuple(records)


def _record(raw: Any, where: str, config: DnsConfig, pools: Collection[str]) -> DnsName:
    if not isinstance(raw, Mapping):
        raise InvalidValue(where, "a table")
    _only(raw, NAME_KEYS, where)
    if "name" not in raw:
        raise InvalidValue(f"{where}.name", "a value (this key is required)")
    name = from_text(raw["name"], f"{where}.name")
    if config.zone_of(name) is None:
        zones = ", ".join(to_text(z) for z in config.zones)
        raise InvalidValue(
            f"{where}.name", f"a name in one of dns.zones ({zones}), got {raw['name']!r}"
        )
    if ("pool" in raw) == ("addresses" in raw):
        raise InvalidValue(where, "either pool (answers placed by it) or addresses (fixed)")
    pool = None
    addresses: tuple[str, ...] = ()
    if "pool" in raw:
        pool = raw["pool"]
        if not isinstance(pool, str) or pool not in pools:
            raise InvalidValue(
                f"{where}.pool", f"one of the pools {sorted(pools)}, got {shown(pool)}"
            )
    else:
        addresses = check_addresses(raw["addresses"], f"{where}.addresses")
        if not addresses:
            raise InvalidValue(f"{where}.addresses", "at least one address")
    all_down = raw.get("all_down", "fail-open")
    if all_down not in ALL_DOWN:
        raise InvalidValue(
            f"{where}.all_down", f"one of {', '.join(ALL_DOWN)}, got {shown(all_down)}"
        )
    failsafe = check_addresses(raw.get("failsafe", []), f"{where}.failsafe")
    if (all_down == "failsafe") != bool(failsafe):
        raise InvalidValue(
            f"{where}.failsafe",
            'addresses when (and only when) all_down = "failsafe"',
        )
    return DnsName(
        name=name,
        pool=pool,
        ttl=parse_ttl(raw.get("ttl", 20), f"{where}.ttl"),
        answers=_whole(raw, where, "answers", 1, 1, MAX_ANSWERS),
        all_down=all_down,
        failsafe=failsafe,
        addresses=addresses,
    )


# --- small typed readers ----------------------------------------------------------------


def _only(raw: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise InvalidValue(
                f"{where}.{key}", f"no such key (allowed: {', '.join(sorted(allowed))})"
            )


def _whole(raw: Mapping[str, Any], where: str, key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidValue(
            f"{where}.{key}", f"a whole number from {low} to {high}, got {shown(value)}"
        )
    return value


def _seconds(raw: Mapping[str, Any], where: str, key: str, default: float) -> float:
    value = raw.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0.1 <= value <= 3600
    ):
        raise InvalidValue(
            f"{where}.{key}", f"a number of seconds from 0.1 to 3600, got {shown(value)}"
        )
    return float(value)
