"""Validators for where things are: a region name, a country, an ASN, coordinates.

One validator per field, shared by the sites (``[[sites]]``, the admin API) and the
operator's prefix map (``[[networks]]``), so both refuse a value with the same words.
Each raises :class:`~dispatcher.errors.InvalidValue` naming ``field_name``.
"""

from __future__ import annotations

import re
from typing import Any

from dispatcher.errors import InvalidValue
from dispatcher.placement.countries import COUNTRIES

#: A region: as a site or pool name (1-63 letters, digits, ``.``, ``_``, ``-``).
REGION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
MAX_ASN = 2**32 - 1
SHOWN = 80


def check_region(value: Any, field_name: str) -> str:
    """A region name, compared without case: returned in lower case."""
    if not isinstance(value, str) or not REGION_RE.fullmatch(value):
        raise InvalidValue(
            field_name,
            "a region name: 1-63 letters, digits, '.', '_' or '-', starting with a letter"
            f" or digit, got {_shown(value)}",
        )
    return value.lower()


def check_country(value: Any, field_name: str) -> str:
    """An officially assigned ISO 3166-1 alpha-2 code (either case): returned upper-cased."""
    if isinstance(value, str) and value.upper() in COUNTRIES and len(value) == 2:
        return value.upper()
    raise InvalidValue(
        field_name, f'an ISO 3166-1 alpha-2 country code such as "DE", got {_shown(value)}'
    )


def check_asn(value: Any, field_name: str) -> int:
    """An autonomous system number, 0 to 4294967295."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_ASN:
        raise InvalidValue(field_name, f"an AS number from 0 to {MAX_ASN}, got {_shown(value)}")
    return value


def check_coordinates(value: Any, field_name: str) -> tuple[float, float]:
    """``[latitude, longitude]`` in degrees: latitude -90..90, longitude -180..180, finite."""
    expected = "[latitude, longitude] in degrees (latitude -90 to 90, longitude -180 to 180)"
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise InvalidValue(field_name, f"{expected}, got {_shown(value)}")
    latitude, longitude = value
    for number, limit in ((latitude, 90.0), (longitude, 180.0)):
        # NaN and the infinities fail the comparison; a huge integer compares exactly
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise InvalidValue(field_name, f"{expected}, got {_shown(value)}")
        if not -limit <= number <= limit:
            raise InvalidValue(field_name, f"{expected}, got {_shown(value)}")
    return float(latitude), float(longitude)


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return "a table/object"
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN]}... ({len(text)} characters)"


__all__ = ["MAX_ASN", "check_asn", "check_coordinates", "check_country", "check_region"]
