"""IP-location databases: the operator's MaxMind DB files, and the data that ships with us.

:class:`MmdbDatabase` reads a MaxMind DB (``.mmdb``) file: GeoLite2/GeoIP2 City, Country
or ASN, DB-IP's and IPinfo's files in that format, or one the operator built. It is opened
once, off the hot path, through :func:`dispatcher.files.open_regular_file` (a regular file
of at most :data:`MAX_DATABASE_BYTES`, so a FIFO never blocks and a device is never
mapped) and memory-mapped by libmaxminddb. A file that is not a usable database raises
:class:`~dispatcher.errors.GeoDatabaseError` at open; a lookup never raises (a corrupt
record counts as no data).

:class:`BuiltinCountries` is the default when no database is configured: the ``iptocc``
package's country data (the five Regional Internet Registries' delegation files, embedded
in the package: no file, no download).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import iptocc
import maxminddb

from dispatcher.errors import GeoDatabaseError
from dispatcher.files import open_regular_file
from dispatcher.placement.countries import CONTINENTS, country_and_continent
from dispatcher.placement.topology import MAX_ASN

log = logging.getLogger("dispatcher.placement")

#: The largest database file opened (GeoLite2-City is about 60 MiB).
MAX_DATABASE_BYTES = 1 << 30
#: Addresses looked up once at open, so that a corrupt file fails there and not later.
PROBES = ("1.1.1.1", "8.8.8.8", "193.0.14.129", "202.12.27.33", "2001:500:2f::f", "2a00::1")


_CONTINENTS = {code: code for code in CONTINENTS}  # one string object per continent


class Found(NamedTuple):
    """What a database knows of an address. ``length`` is the prefix length of the
    database's network the address is in (``None`` when unknown): the answer holds for every
    address of that network, found or not."""

    country: str | None
    continent: str | None
    asn: int | None
    coordinates: tuple[float, float] | None
    length: int | None


NOTHING = Found(None, None, None, None, None)


class MmdbDatabase:
    """One MaxMind DB file, open for lookups. ``path`` as configured; ``kind`` the file's
    ``database_type`` (``GeoLite2-City``...)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.reader = _open(path)
        try:
            meta = self.reader.metadata()
            self.ipv6 = meta.ip_version == 6
            self.kind = str(meta.database_type)[:80]
            for address in PROBES if self.ipv6 else PROBES[:4]:
                self.reader.get_with_prefix_len(address)
        except Exception as exc:  # noqa: BLE001 - libmaxminddb raises several kinds on bad data
            self.close()
            raise GeoDatabaseError(path, f"not a readable MaxMind DB file ({exc})") from None
        self.errors = 0

    def lookup(self, address: str, version: int) -> Found:
        """What the file says of ``address`` (canonical text of an IP ``version`` address).

        Never raises: a lookup the file cannot answer (corrupt data) is :data:`NOTHING`,
        counted in :attr:`errors` and logged once."""
        if version == 6 and not self.ipv6:
            return NOTHING
        try:
            record, length = self.reader.get_with_prefix_len(address)
        except Exception as exc:  # noqa: BLE001 - the file is not trusted
            self.errors += 1
            if self.errors == 1:
                log.warning("geoip_database %s: lookup of %s failed: %s", self.path, address, exc)
            return NOTHING
        return read_record(record, length)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.reader.close()


def _open(path: str) -> Any:
    """The reader of ``path``, checked first: the file libmaxminddb maps is the one checked
    (opened again through ``/proc/self/fd``), so it cannot be swapped for a FIFO between."""
    try:
        fd = open_regular_file(path, MAX_DATABASE_BYTES)
    except FileNotFoundError:
        raise GeoDatabaseError(path, "no such file") from None
    except OSError as exc:
        raise GeoDatabaseError(path, exc.strerror or str(exc)) from None
    checked = f"/proc/self/fd/{fd}"
    target = checked if os.path.exists(checked) else path
    try:
        return maxminddb.open_database(target, maxminddb.MODE_AUTO)
    except Exception as exc:  # noqa: BLE001 - InvalidDatabaseError, ValueError, OSError...
        detail = str(exc).replace(target, path)[:300]
        raise GeoDatabaseError(path, f"not a MaxMind DB file ({detail})") from None
    finally:
        os.close(fd)


def read_record(record: object, length: int | None) -> Found:
    """The fields of one database record, whatever shape it has (never raises).

    GeoIP2 style: ``country.iso_code`` (else ``registered_country.iso_code``),
    ``continent.code``, ``location.latitude``/``longitude``, ``autonomous_system_number``.
    Flat style (IPinfo, some DB-IP files): ``country``, ``continent`` as codes, ``asn`` as
    ``"AS64500"`` or a number, ``latitude``/``longitude``. Anything else is ignored.
    """
    if not isinstance(record, dict):
        return Found(None, None, None, None, length)
    country, continent = country_and_continent(
        _code(record.get("country")) or _code(record.get("registered_country"))
    )
    stated = _code(record.get("continent"))
    if isinstance(stated, str):
        continent = _CONTINENTS.get(stated.upper(), continent)
    asn = _asn(record.get("autonomous_system_number", record.get("asn")))
    location = record.get("location")
    coordinates = _coordinates(location if isinstance(location, dict) else record)
    return Found(country, continent, asn, coordinates, length)


def _code(value: object) -> object:
    if isinstance(value, dict):
        return value.get("iso_code", value.get("code"))
    return value


def _asn(value: object) -> int | None:
    if isinstance(value, str) and value[:2].upper() == "AS":
        digits = value[2:]
        ok = 0 < len(digits) <= 10 and digits.isascii() and digits.isdigit()
        value = int(digits) if ok else None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ASN:
        return None
    return value


def _coordinates(table: dict[Any, Any]) -> tuple[float, float] | None:
    latitude, longitude = table.get("latitude"), table.get("longitude")
    for number, limit in ((latitude, 90), (longitude, 180)):
        if isinstance(number, bool) or not isinstance(number, int | float):
            return None
        if not -limit <= number <= limit:  # NaN and the infinities fail this too
            return None
    return float(latitude), float(longitude)  # type: ignore[arg-type]


class BuiltinCountries:
    """Country only, from the registries' delegation data the ``iptocc`` package embeds
    (code MIT OR Apache-2.0; data from AFRINIC, APNIC, ARIN, LACNIC and RIPE NCC)."""

    path = "<built-in>"
    kind = f"iptocc {importlib.metadata.version('iptocc')}"

    def lookup(self, address: str, version: int) -> Found:
        try:
            code = iptocc.country_code(address)
        except Exception:  # noqa: BLE001 - never let a lookup fail a request
            return NOTHING
        country, continent = country_and_continent(code)
        if country is None and continent is None:
            return NOTHING
        return Found(country, continent, None, None, None)

    def close(self) -> None:
        pass


def open_databases(paths: tuple[str, ...]) -> tuple[MmdbDatabase, ...]:
    """Open every file of ``paths`` (all or none: an error closes those already open)."""
    opened: list[MmdbDatabase] = []
    try:
        for path in paths:
            opened.append(MmdbDatabase(path))
    except GeoDatabaseError:
        for database in opened:
            database.close()
        raise
    return tuple(opened)


def check_database(path: Path | str) -> str:
    """Open ``path`` as :class:`MmdbDatabase` would and close it again; its kind."""
    database = MmdbDatabase(str(path))
    database.close()
    return database.kind


__all__ = [
    "MAX_DATABASE_BYTES",
    "NOTHING",
    "BuiltinCountries",
    "Found",
    "MmdbDatabase",
    "check_database",
    "open_databases",
    "read_record",
]
