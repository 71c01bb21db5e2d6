"""Locating clients: the prefix map first, then the IP database, with a test-built .mmdb;
the cache never changes an answer; any string is a Location; pickling reopens the file."""

from __future__ import annotations

import ipaddress
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.backends.sites import SiteSpec
from dispatcher.errors import GeoDatabaseError
from dispatcher.placement.locate import Locator, Topology, site_topology
from dispatcher.placement.model import NOWHERE, Location
from dispatcher.placement.prefixes import parse_networks
from tests.geodata import asn, city, write_mmdb

NETWORKS = parse_networks(
    [
        {"prefix": "127.1.0.0/16", "region": "eu"},
        {"prefix": "127.1.2.0/28", "region": "us-east", "country": "US"},
        {"prefix": "127.2.0.0/16", "region": "asia", "country": "JP", "coordinates": [35.7, 139.7]},
        {"prefix": "::1/128", "region": "local"},
        {"prefix": "2001:db8:e0::/48", "region": "eu", "asn": 64496},
        {
            "prefix": "198.51.100.0/24",
            "region": "eu",
            "country": "DE",
            "asn": 1,
            "coordinates": [0, 0],
        },
    ]
)


@pytest.fixture(scope="module")
def city_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmdb(
        tmp_path_factory.mktemp("geo") / "city.mmdb",
        {
            "127.0.0.0/8": city("NL", "EU", 52.37, 4.90),
            "127.3.0.0/26": city("BR", "SA", -23.5, -46.6),  # longer than the cache's /24
            "192.0.2.0/24": city("FR", "EU", 48.86, 2.35),
            "2001:db8::/32": city("AU", "OC", -33.87, 151.21),
        },
    )


@pytest.fixture(scope="module")
def asn_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmdb(
        tmp_path_factory.mktemp("geo") / "asn.mmdb",
        {"127.0.0.0/8": asn(64500), "2001:db8::/32": asn(64501)},
        kind="GeoLite2-ASN",
    )


@pytest.fixture
def locator(city_db: Path, asn_db: Path) -> Locator:
    return Locator(NETWORKS, [str(city_db), str(asn_db)])


def test_the_prefix_map_wins_and_the_database_fills_in(locator: Locator) -> None:
    assert locator.locate("127.1.9.9") == Location(
        source="prefix-map",
        prefix="127.1.0.0/16",
        region="eu",
        asn=64500,
        country="NL",
        continent="EU",
        coordinates=(52.37, 4.90),
    )
    # the longest entry; its own country wins, with the continent that goes with it
    longest = locator.locate("127.1.2.3")
    assert (longest.prefix, longest.region, longest.country, longest.continent) == (
        "127.1.2.0/28",
        "us-east",
        "US",
        "NA",
    )
    assert locator.locate("127.1.2.16").prefix == "127.1.0.0/16"  # just past the /28
    assert locator.locate("127.2.0.1").coordinates == (35.7, 139.7)
    assert locator.locate("::ffff:127.1.2.3") == longest  # IPv4-mapped is IPv4
    assert locator.locate("::1").region == "local"
    assert locator.locate("::1").asn is None  # ::1 is in no database network
    assert locator.locate("::2") is NOWHERE


def test_the_database_alone(locator: Locator) -> None:
    # the /26 splits 127.0.0.0/8 in the file's tree: the network is the tree's
    assert locator.locate("127.200.0.1") == Location(
        source="database",
        prefix="127.128.0.0/9",
        asn=64500,
        country="NL",
        continent="EU",
        coordinates=(52.37, 4.90),
    )
    brazil = locator.locate("127.3.0.5")
    assert (brazil.prefix, brazil.country, brazil.asn) == ("127.3.0.0/26", "BR", 64500)
    assert locator.locate("127.3.0.77").country == "NL"  # same /24, another network
    assert locator.locate("2001:db8:1::1").country == "AU"
    documentation = locator.locate("2001:db8:e0::5")
    assert (documentation.source, documentation.region, documentation.asn) == (
        "prefix-map",
        "eu",
        64496,
    )
    assert (documentation.country, documentation.prefix) == ("AU", "2001:db8:e0::/48")
    assert locator.locate("203.0.113.1") is NOWHERE


@pytest.mark.parametrize(
    ("subnet", "country"),
    [
        ("192.0.2.0/24", "FR"),  # located by the subnet, not the resolver
        ("192.0.2.77/24", "FR"),  # host bits are cleared
        ("::ffff:192.0.2.0/120", "FR"),
        ("2001:db8:5::/56", "AU"),
        ("0.0.0.0/0", "NL"),  # /0: the client asked not to be located by it
        ("192.0.2.0/33", "NL"),
        ("192.0.2.0", "NL"),
        ("garbage/24", "NL"),
        ("192.0.2.0/-1", "NL"),
        ("192.0.2.0/٢٤", "NL"),
    ],
)
def test_a_client_subnet(locator: Locator, subnet: str, country: str) -> None:
    assert locator.locate("127.9.9.9", subnet).country == country


def test_without_any_database_the_built_in_countries() -> None:
    locator = Locator(NETWORKS)
    ripe = locator.locate("193.0.0.1")
    assert (ripe.source, ripe.country, ripe.continent, ripe.prefix) == (
        "database",
        "NL",
        "EU",
        None,
    )
    assert locator.locate("127.1.9.9").country is None
    assert "<built-in> (iptocc" in locator.describe()
    assert Locator(NETWORKS, builtin=False).locate("193.0.0.1") is NOWHERE
    assert Locator(builtin=False).locate("127.1.9.9") is NOWHERE


def test_opening_a_bad_database_fails_and_closes_the_others(tmp_path: Path, city_db: Path) -> None:
    with pytest.raises(GeoDatabaseError) as info:
        Locator(NETWORKS, [str(city_db), str(tmp_path / "gone.mmdb")])
    assert info.value.path == str(tmp_path / "gone.mmdb")


# --- the cache ---


ADDRESSES = st.one_of(
    st.builds("127.{}.{}.{}".format, st.integers(0, 3), st.integers(0, 3), st.integers(0, 255)),
    st.builds("192.0.2.{}".format, st.integers(0, 255)),
    st.builds(
        lambda n: str(ipaddress.IPv6Address((0x20010DB800E0 << 80) + n)), st.integers(0, 2**81)
    ),
    st.sampled_from(["::1", "::2", "::ffff:127.1.2.3", "203.0.113.9"]),
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(addresses=st.lists(ADDRESSES, min_size=1, max_size=30), size=st.integers(1, 6))
def test_the_cache_never_changes_an_answer(
    city_db: Path, asn_db: Path, addresses: list[str], size: int
) -> None:
    cached = Locator(NETWORKS, [str(city_db), str(asn_db)], cache_size=size)
    for address in addresses + addresses:
        fresh = Locator(NETWORKS, [str(city_db), str(asn_db)])
        assert cached.locate(address) == fresh.locate(address), address
        assert len(cached._cache) <= size + 1  # a finer /24 keeps its mark beside its address


# --- never an exception ---


@settings(
    max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    address=st.text(max_size=80) | ADDRESSES | st.from_regex(r"[0-9a-f:.%/]{0,50}", fullmatch=True),
    subnet=st.text(max_size=60) | st.from_regex(r"[0-9a-f:.]{0,45}/[0-9]{0,4}", fullmatch=True),
)
def test_any_string_is_a_location(locator: Locator, address: str, subnet: str) -> None:
    assert isinstance(locator.locate(address), Location)
    assert isinstance(locator.locate(address, subnet), Location)


@pytest.mark.parametrize(
    "address",
    [
        "",
        " 127.1.2.3",
        "127.1.2.3\x00",
        "127.1.2.3 ",
        "127.1",
        "0x7f.1.2.3",
        "�",
        "%",
        "fe80::1%eth0" * 20,
        "1" * 10000,
        "127.1.2.3/24",
        "[::1]",
        "::ffff:999.1.1.1",
    ],
)
def test_garbage_is_nowhere(locator: Locator, address: str) -> None:
    assert locator.locate(address) is NOWHERE


def test_a_zone_is_ignored(locator: Locator) -> None:
    assert locator.locate("::1%lo").region == "local"


# --- pickling ---


def test_it_pickles_as_its_configuration(locator: Locator, city_db: Path) -> None:
    locator.locate("127.1.9.9")
    data = pickle.dumps(locator, protocol=pickle.HIGHEST_PROTOCOL)
    assert b"Reader" not in data
    assert str(city_db).encode() in data
    assert len(data) < 2000
    copy = pickle.loads(data)
    assert copy is not locator
    assert copy.databases[0] is not locator.databases[0]
    assert copy._cache == {}
    for address in ("127.1.9.9", "127.1.2.3", "127.3.0.5", "2001:db8::1", "::1", "nope"):
        assert copy.locate(address) == locator.locate(address)


def test_another_process_reopens_the_database(locator: Locator) -> None:
    data = pickle.dumps(locator, protocol=pickle.HIGHEST_PROTOCOL)
    script = (
        "import pickle, sys\n"
        "locator = pickle.loads(sys.stdin.buffer.read())\n"
        "where = locator.locate('127.3.0.5')\n"
        "print(where.source, where.country, where.asn, where.prefix)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], input=data, capture_output=True, timeout=60, check=True
    )
    assert result.stdout.decode().split() == ["database", "BR", "64500", "127.3.0.0/26"]


def test_a_database_gone_before_unpickling_is_left_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_mmdb(tmp_path / "city.mmdb", {"127.0.0.0/8": city("NL", "EU")})
    data = pickle.dumps(Locator(NETWORKS, [str(path)]))
    path.write_bytes(b"not any more")
    copy = pickle.loads(data)
    assert copy.databases == ()
    assert copy.locate("127.1.9.9").region == "eu"
    assert copy.locate("127.9.9.9") is NOWHERE
    assert "cannot be opened again" in caplog.text


# --- sites ---


def test_site_topology(locator: Locator) -> None:
    configured = SiteSpec(
        "a", "http://127.2.0.9:8080", region="eu", country="FR", coordinates=(1.0, 2.0)
    )
    assert site_topology(configured, locator) == Topology("eu", "FR", "EU", 64500, (1.0, 2.0))
    # nothing configured: all located from the base URL's IP address
    assert site_topology(SiteSpec("b", "http://127.2.0.9"), locator) == Topology(
        "asia", "JP", "AS", 64500, (35.7, 139.7)
    )
    assert site_topology(SiteSpec("c", "https://[2001:db8::5]:8443"), locator) == Topology(
        None, "AU", "OC", 64501, (-33.87, 151.21)
    )
    # a host name is not resolved: only what is configured
    assert site_topology(SiteSpec("d", "http://localhost:80", country="US"), locator) == Topology(
        None, "US", "NA", None, None
    )
    assert site_topology(SiteSpec("e", "http://example.com"), locator) == Topology()
