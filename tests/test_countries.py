"""Countries and continents: the table is the real ISO 3166-1 list, and every code the
built-in data (iptocc) can answer maps to a continent."""

from __future__ import annotations

import ipaddress

import iptocc
import pycountry
import pytest

from dispatcher.errors import InvalidValue
from dispatcher.placement import countries
from dispatcher.placement.countries import (
    CONTINENT_OF,
    CONTINENTS,
    COUNTRIES,
    REGION_CODES,
    country_and_continent,
)
from dispatcher.placement.topology import (
    check_asn,
    check_coordinates,
    check_country,
    check_region,
)


def test_the_table_is_exactly_the_iso_3166_1_list() -> None:
    listed = [code for codes in countries._BY_CONTINENT.values() for code in codes.split()]
    assert len(listed) == len(set(listed)), "a country listed under two continents"
    assert set(listed) == {country.alpha_2 for country in pycountry.countries}
    assert len(COUNTRIES) == 249
    assert set(CONTINENT_OF.values()) == CONTINENTS


@pytest.mark.parametrize(
    ("code", "continent"),
    [
        ("DE", "EU"),
        ("RU", "EU"),
        ("TR", "AS"),
        ("US", "NA"),
        ("MX", "NA"),
        ("PA", "NA"),
        ("BR", "SA"),
        ("AU", "OC"),
        ("EG", "AF"),
        ("AQ", "AN"),
        ("JP", "AS"),
        ("GL", "NA"),
    ],
)
def test_well_known_continents(code: str, continent: str) -> None:
    assert CONTINENT_OF[code] == continent


def _sweep() -> set[str | None]:
    """The codes iptocc answers for one address in every IPv4 /19 and in
    every IPv6 /20 of 2000::/4 (where the registries delegate)."""
    v4 = [f"{a}.{b}.{c}.1" for a in range(1, 224) for b in range(256) for c in range(0, 256, 32)]
    v6 = [str(ipaddress.IPv6Address((0x2000 + i) << 112)) for i in range(0x1000)]
    v6 += [str(ipaddress.IPv6Address((0x2000 + i) << 112 | 1 << 100)) for i in range(0x1000)]
    return set(iptocc.country_code(v4)) | set(iptocc.country_code(v6))


def test_every_code_the_built_in_data_answers_has_a_continent() -> None:
    codes = {code for code in _sweep() if code is not None}
    assert len(codes) > 200  # the sweep did reach the registries' data
    for code in codes:
        country, continent = country_and_continent(code)
        assert continent in CONTINENTS, code
        assert country == code or (country is None and code in REGION_CODES), code


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("de", ("DE", "EU")),
        ("EU", (None, "EU")),
        ("AP", (None, "AS")),
        ("ZZ", (None, None)),
        ("", (None, None)),
        ("DEU", (None, None)),
        (None, (None, None)),
        (49, (None, None)),
        ({"iso_code": "DE"}, (None, None)),
    ],
)
def test_codes_from_an_untrusted_database(code: object, expected: tuple[object, object]) -> None:
    assert country_and_continent(code) == expected


def test_validators_accept_and_normalise() -> None:
    assert check_region("EU-West.1", "region") == "eu-west.1"
    assert check_country("de", "country") == "DE"
    assert check_asn(0, "asn") == 0
    assert check_asn(2**32 - 1, "asn") == 2**32 - 1
    assert check_coordinates([-90, 180], "c") == (-90.0, 180.0)
    assert check_coordinates((52.52, 13.405), "c") == (52.52, 13.405)


@pytest.mark.parametrize(
    ("check", "value", "words"),
    [
        (check_region, "", "a region name"),
        (check_region, "-eu", "a region name"),
        (check_region, "e u", "a region name"),
        (check_region, "x" * 64, "a region name"),
        (check_region, 7, "a region name"),
        (check_country, "XX", "ISO 3166-1 alpha-2"),
        (check_country, "EU", "ISO 3166-1 alpha-2"),  # a registry's region, not a country
        (check_country, "DEU", "ISO 3166-1 alpha-2"),
        (check_country, "ß", "ISO 3166-1 alpha-2"),  # upper-cases to "SS"
        (check_asn, -1, "AS number"),
        (check_asn, 2**32, "AS number"),
        (check_asn, True, "AS number"),
        (check_asn, "AS64500", "AS number"),
        (check_coordinates, [91, 0], "latitude -90 to 90"),
        (check_coordinates, [0, -180.5], "longitude -180 to 180"),
        (check_coordinates, [float("nan"), 0], "latitude"),
        (check_coordinates, [0, float("inf")], "latitude"),
        (check_coordinates, [10**400, 0], "latitude"),
        (check_coordinates, [1, 2, 3], "latitude"),
        (check_coordinates, [True, 2], "latitude"),
        (check_coordinates, "52.5,13.4", "latitude"),
        (check_coordinates, {"lat": 1}, "latitude"),
    ],
)
def test_validators_refuse_with_the_field_name(check: object, value: object, words: str) -> None:
    with pytest.raises(InvalidValue) as info:
        check(value, "sites[2].where")  # type: ignore[operator]
    assert info.value.field == "sites[2].where"
    assert words in info.value.message
