"""MaxMind DB files for tests, built with ``mmdb-writer`` (no real GeoIP data is needed).

:func:`write_mmdb` writes one IPv6 database (IPv4 networks live in its IPv4 subtree, as in
MaxMind's own files) from ``{"192.0.2.0/24": record, ...}``. :func:`city`, :func:`asn`
give records shaped as GeoLite2-City and GeoLite2-ASN records are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

NAMES = {lang: f"name-{lang}" for lang in ("de", "en", "es", "fr", "ja", "pt-BR", "ru", "zh-CN")}


def write_mmdb(
    path: Path, networks: Mapping[str, Mapping[str, Any]], kind: str = "GeoLite2-City"
) -> Path:
    writer = MMDBWriter(ip_version=6, database_type=kind, ipv4_compatible=True)
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), dict(record))
    writer.to_db_file(str(path))
    return path


def city(
    country: str, continent: str, latitude: float | None = None, longitude: float | None = None
) -> dict[str, Any]:
    """A record as GeoLite2-City has them (names in eight languages and all)."""
    record: dict[str, Any] = {
        "continent": {"code": continent, "geoname_id": 1, "names": NAMES},
        "country": {"iso_code": country, "geoname_id": 2, "names": NAMES},
        "registered_country": {"iso_code": country, "geoname_id": 2, "names": NAMES},
        "city": {"geoname_id": 3, "names": NAMES},
        "subdivisions": [{"iso_code": "XX", "names": NAMES}],
    }
    if latitude is not None and longitude is not None:
        record["location"] = {
            "latitude": latitude,
            "longitude": longitude,
            "accuracy_radius": 100,
            "time_zone": "Etc/UTC",
        }
    return record


def asn(number: int, organisation: str = "Example Networks") -> dict[str, Any]:
    """A record as GeoLite2-ASN has them."""
    return {"autonomous_system_number": number, "autonomous_system_organization": organisation}
