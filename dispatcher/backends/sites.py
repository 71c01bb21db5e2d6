"""What a site is: its validated specification, shared by the config file and the admin API.

There is one validator for each field; both entry points call it, so a value the API
refuses is refused by ``check-config`` with the same words.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from dispatcher.errors import InvalidValue
from dispatcher.placement.topology import check_coordinates, check_country, check_region

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_WEIGHT = 10_000
MAX_URL = 2048  # the database column's size
MAX_EXPECT = 1024
SHOWN = 80  # characters of an offending value quoted in an error
MIN_INTERVAL = 0.1  # seconds between probes: faster is busy polling, not health checking
MIN_TIMEOUT = 0.05
TOPOLOGY_KEYS = frozenset({"region", "country", "coordinates"})
#: The most addresses a site may have (what the DNS front answers for it).
MAX_ADDRESSES = 16
SITE_KEYS = (
    frozenset({"name", "base_url", "pool", "weight", "check", "drained", "addresses"})
    | TOPOLOGY_KEYS
)
CHECK_KEYS = frozenset({"url", "expect", "interval", "timeout", "rise", "fall"})


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """An ldirectord-style health check: GET ``url``; healthy on 2xx with ``expect`` in the body.

    ``rise`` consecutive successes bring a site up, ``fall`` consecutive failures take it
    down; ``timeout`` bounds one probe and is independent of ``interval``.
    """

    url: str = "/"
    expect: str = ""
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "expect": self.expect,
            "interval": self.interval,
            "timeout": self.timeout,
            "rise": self.rise,
            "fall": self.fall,
        }


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """A site clients can be sent to. ``base_url`` never ends with ``/``.

    ``region`` (lower case), ``country`` (ISO 3166-1 alpha-2, upper case) and
    ``coordinates`` (latitude, longitude) say where it is, for the ``nearest`` policy;
    ``None`` when not configured (then located from ``base_url`` where it can be).
    """

    name: str
    base_url: str
    pool: str = "default"
    weight: int = 1
    check: CheckSpec = field(default_factory=CheckSpec)
    drained: bool = False
    position: int = 0
    region: str | None = None
    country: str | None = None
    coordinates: tuple[float, float] | None = None
    addresses: tuple[str, ...] = ()

    @property
    def dns_addresses(self) -> tuple[str, ...]:
        """The addresses the DNS front answers for this site: ``addresses``, or else the base
        URL's host when it is an IP literal (none otherwise)."""
        if self.addresses:
            return self.addresses
        host = urlsplit(self.base_url).hostname or ""
        try:
            return (str(ipaddress.ip_address(host)),)
        except ValueError:
            return ()

    @property
    def check_url(self) -> str:
        """The absolute URL the health probe fetches."""
        if self.check.url.startswith(("http://", "https://")):
            return self.check.url
        return self.base_url + self.check.url

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base_url": self.base_url,
            "pool": self.pool,
            "weight": self.weight,
            "check": self.check.as_dict(),
            "drained": self.drained,
            "region": self.region,
            "country": self.country,
            "coordinates": list(self.coordinates) if self.coordinates is not None else None,
            "addresses": list(self.addresses),
        }


def parse_site(raw: Any, *, position: int = 0) -> SiteSpec:
    """Validate a site table (config ``[[sites]]`` entry or API body) into a :class:`SiteSpec`."""
    if not isinstance(raw, Mapping):
        raise InvalidValue("", "a table/object describing a site")
    _only(raw, SITE_KEYS, "")
    for required in ("name", "base_url"):
        if required not in raw:
            raise InvalidValue(required, "a value (this key is required)")
    return SiteSpec(
        name=check_name(raw["name"], "name"),
        base_url=check_base_url(raw["base_url"], "base_url"),
        pool=check_pool_name(raw.get("pool", "default"), "pool"),
        weight=check_weight(raw.get("weight", 1), "weight"),
        check=parse_check(raw.get("check", {})),
        drained=check_bool(raw.get("drained", False), "drained"),
        position=position,
        **_topology(raw),
        addresses=check_addresses(raw.get("addresses", []), "addresses"),
    )


def update_site(site: SiteSpec, changes: Any) -> SiteSpec:
    """Apply a partial update (an API ``PATCH`` body) to ``site``; the name cannot change."""
    if not isinstance(changes, Mapping):
        raise InvalidValue("", "a JSON object with the fields to change")
    _only(changes, SITE_KEYS - {"name"}, "")
    if "name" in changes and changes["name"] != site.name:
        raise InvalidValue("name", "the site's own name (a site cannot be renamed)")
    new = site
    if "base_url" in changes:
        new = replace(new, base_url=check_base_url(changes["base_url"], "base_url"))
    if "pool" in changes:
        new = replace(new, pool=check_pool_name(changes["pool"], "pool"))
    if "weight" in changes:
        new = replace(new, weight=check_weight(changes["weight"], "weight"))
    if "drained" in changes:
        new = replace(new, drained=check_bool(changes["drained"], "drained"))
    if "addresses" in changes:
        new = replace(new, addresses=check_addresses(changes["addresses"], "addresses"))
    if "check" in changes:
        merged = {**site.check.as_dict(), **_mapping(changes["check"], "check")}
        new = replace(new, check=parse_check(merged))
    return replace(new, **_topology(changes))


def _topology(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The topology fields ``raw`` sets: ``None`` (JSON ``null``) clears one."""
    checks = {"region": check_region, "country": check_country, "coordinates": check_coordinates}
    return {
        key: None if raw[key] is None else checks[key](raw[key], key)
        for key in TOPOLOGY_KEYS
        if key in raw
    }


def parse_check(raw: Any) -> CheckSpec:
    """Validate a ``check`` table; missing keys take the defaults of :class:`CheckSpec`."""
    table = _mapping(raw, "check")
    _only(table, CHECK_KEYS, "check")
    d = CheckSpec()
    url = table.get("url", d.url)
    if not isinstance(url, str) or not (
        url.startswith("/") or url.startswith(("http://", "https://"))
    ):
        raise InvalidValue(
            "check.url", f"a path starting with / or an http(s) URL, got {shown(url)}"
        )
    if url.startswith(("http://", "https://")):
        check_base_url(url, "check.url")
    _no_controls(url, "check.url")
    if len(url) > MAX_URL:
        raise InvalidValue("check.url", f"at most {MAX_URL} characters, got {len(url)}")
    expect = table.get("expect", d.expect)
    if not isinstance(expect, str) or len(expect) > MAX_EXPECT or "\0" in expect:
        raise InvalidValue(
            "check.expect",
            f"a string of at most {MAX_EXPECT} characters, no NUL, got {shown(expect)}",
        )
    return CheckSpec(
        url=url,
        expect=expect,
        interval=_seconds(table.get("interval", d.interval), "check.interval", MIN_INTERVAL),
        timeout=_seconds(table.get("timeout", d.timeout), "check.timeout", MIN_TIMEOUT),
        rise=_count(table.get("rise", d.rise), "check.rise"),
        fall=_count(table.get("fall", d.fall), "check.fall"),
    )


def check_name(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidValue(
            field_name,
            "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
            f", got {shown(value)}",
        )
    return value


def check_pool_name(value: Any, field_name: str) -> str:
    return check_name(value, field_name)


def check_base_url(value: Any, field_name: str) -> str:
    """An absolute http(s) URL with a host, no query, fragment or credentials; no trailing /."""
    expected = "an absolute http:// or https:// URL with a host"
    if not isinstance(value, str):
        raise InvalidValue(field_name, f"{expected}, got {shown(value)}")
    if len(value) > MAX_URL:
        raise InvalidValue(
            field_name, f"{expected} of at most {MAX_URL} characters, got {len(value)}"
        )
    _no_controls(value, field_name)
    if not value.isascii():
        raise InvalidValue(field_name, f"{expected}, in ASCII (punycode for IDN), got {value!r}")
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidValue(field_name, f"{expected} ({exc}), got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValue(field_name, f"{expected}, got {value!r}")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise InvalidValue(field_name, f"{expected} and no query or fragment, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidValue(field_name, f"{expected} and no user:password@, got {value!r}")
    return value.rstrip("/")


def check_weight(value: Any, field_name: str) -> int:
    return check_whole(value, field_name, 0, MAX_WEIGHT)


def check_whole(value: Any, field_name: str, low: int, high: int) -> int:
    """A whole number in ``[low, high]``; ``3.0`` counts (JSON Schema's ``integer`` does)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidValue(field_name, f"a whole number from {low} to {high}, got {shown(value)}")
    return value


def check_addresses(value: Any, field_name: str, limit: int = MAX_ADDRESSES) -> tuple[str, ...]:
    """A list of at most ``limit`` distinct IPv4 or IPv6 addresses (unicast or not: the
    operator knows), each in its canonical text form (``2001:db8::1``)."""
    expected = f"an array of at most {limit} distinct IPv4 or IPv6 addresses"
    if not isinstance(value, list | tuple) or len(value) > limit:
        raise InvalidValue(field_name, f"{expected}, got {shown(value)}")
    found: list[str] = []
    for index, item in enumerate(value):
        try:
            address = str(ipaddress.ip_address(item)) if isinstance(item, str) else None
        except ValueError:
            address = None
        if address is None or "%" in address:
            raise InvalidValue(
                f"{field_name}[{index}]", f"an IPv4 or IPv6 address, got {shown(item)}"
            )
        if address in found:
            raise InvalidValue(f"{field_name}[{index}]", f"{expected} ({address} twice)")
        found.append(address)
    return tuple(found)


def check_bool(value: Any, field_name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(field_name, f"true or false, got {shown(value)}")
    return value


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, cut short: the value may be huge."""
    if isinstance(value, list | dict):
        return f"a JSON {'array' if isinstance(value, list) else 'object'}"
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text)} characters)"


def _seconds(value: Any, field_name: str, minimum: float) -> float:
    """Seconds from ``minimum`` to an hour (NaN and infinities are neither)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not minimum <= value <= 3600
    ):
        raise InvalidValue(
            field_name,
            f"a number of seconds > 0 (at least {minimum:g}) and <= 3600, got {shown(value)}",
        )
    return float(value)


def _count(value: Any, field_name: str) -> int:
    return check_whole(value, field_name, 1, 100)


def _mapping(value: Any, field_name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidValue(field_name, f"a table/object, got {shown(value)}")
    return value


def _only(raw: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise InvalidValue(where, f"no such key (allowed: {', '.join(sorted(allowed))})")


def _no_controls(value: str, field_name: str) -> None:
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise InvalidValue(field_name, f"no spaces or control characters, got {shown(value)}")
