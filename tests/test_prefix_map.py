"""The operator's prefix map: validation with exact key paths, and longest-prefix match
against a brute-force reference (hypothesis), IPv4 and IPv6."""

from __future__ import annotations

import ipaddress
import pickle
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.config import build_config
from dispatcher.errors import ConfigError, InvalidValue
from dispatcher.placement.prefixes import (
    MAX_NETWORKS,
    Network,
    PrefixTable,
    parse_networks,
)

TOKEN = {"admin_tokens": ["t" * 20]}


def test_entries_are_parsed_and_normalised() -> None:
    (eu, mapped, doc6) = parse_networks(
        [
            {"prefix": "198.51.100.0/24", "region": "EU", "country": "de", "asn": 64500},
            {"prefix": "::FFFF:203.0.113.0/120", "coordinates": [1, 2.5]},
            {"prefix": "2001:0DB8::/32", "region": "lab"},
        ]
    )
    assert eu == Network(
        "198.51.100.0/24", 4, 0xC6336400, 24, region="eu", country="DE", continent="EU", asn=64500
    )
    assert (mapped.prefix, mapped.version, mapped.length) == ("203.0.113.0/24", 4, 24)
    assert mapped.coordinates == (1.0, 2.5)
    assert (doc6.prefix, doc6.version, doc6.region, doc6.country) == (
        "2001:db8::/32",
        6,
        "lab",
        None,
    )
    assert parse_networks([]) == ()


@pytest.mark.parametrize(
    ("entries", "field", "words"),
    [
        ({"networks": {"prefix": "10.0.0.0/8"}}, "networks", "an array of tables"),
        ([{"region": "eu"}], "networks[0].prefix", "required"),
        ([{"prefix": "10.0.0.0/8"}], "networks[0]", "at least one of region"),
        (
            [{"prefix": "10.0.0.0/8", "region": "eu", "colour": "red"}],
            "networks[0].colour",
            "no such key",
        ),
        ([{"prefix": "10.0.0.0", "region": "eu"}], "networks[0].prefix", "a network such as"),
        ([{"prefix": "10.0.0.0/33", "region": "eu"}], "networks[0].prefix", "a network such as"),
        ([{"prefix": "10.0.0.0/255.0.0.0", "region": "eu"}], "networks[0].prefix", "a network"),
        ([{"prefix": "010.0.0.0/8", "region": "eu"}], "networks[0].prefix", "a network such as"),
        ([{"prefix": "fe80::%eth0/64", "region": "eu"}], "networks[0].prefix", "a network"),
        ([{"prefix": "example.com/8", "region": "eu"}], "networks[0].prefix", "a network"),
        ([{"prefix": 10, "region": "eu"}], "networks[0].prefix", "a network such as"),
        (
            [{"prefix": "10.1.2.3/8", "region": "eu"}],
            "networks[0].prefix",
            "did you mean 10.0.0.0/8",
        ),
        ([{"prefix": "2001:db8::1/32", "region": "eu"}], "networks[0].prefix", "2001:db8::/32"),
        ([{"prefix": "10.0.0.0/8", "region": "e u"}], "networks[0].region", "a region name"),
        ([{"prefix": "10.0.0.0/8", "country": "XX"}], "networks[0].country", "ISO 3166-1"),
        ([{"prefix": "10.0.0.0/8", "asn": -5}], "networks[0].asn", "AS number"),
        (
            [{"prefix": "10.0.0.0/8", "coordinates": [0, 200]}],
            "networks[0].coordinates",
            "longitude",
        ),
        ([{"prefix": "10.0.0.0/8", "region": "a"}, 7], "networks[1]", "a table"),
    ],
)
def test_bad_entries_are_refused_naming_the_key(entries: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidValue) as info:
        parse_networks(entries)
    assert info.value.field == field
    assert words in info.value.message


@pytest.mark.parametrize(
    ("first", "again"),
    [
        ("198.51.100.0/24", "198.51.100.0/24"),
        ("2001:db8::/32", "2001:0db8:0::/32"),
        ("198.51.100.0/24", "::ffff:198.51.100.0/120"),  # the same network, mapped
    ],
)
def test_a_network_listed_twice_is_refused(first: str, again: str) -> None:
    entries = [
        {"prefix": first, "region": "a"},
        {"prefix": "10.0.0.0/8", "region": "b"},
        {"prefix": again, "region": "c"},
    ]
    with pytest.raises(InvalidValue) as info:
        parse_networks(entries)
    assert info.value.field == "networks[2].prefix"
    assert "networks[0] too" in info.value.message


def test_the_number_of_entries_is_bounded() -> None:
    entries = [{"prefix": "10.0.0.0/8", "region": "eu"}] * (MAX_NETWORKS + 1)
    with pytest.raises(InvalidValue) as info:
        parse_networks(entries)
    assert (info.value.field, info.value.message) == (
        "networks",
        "at most 100000 entries, got 100001",
    )


def test_the_configuration_reads_networks_and_names_the_key() -> None:
    raw: dict[str, Any] = {
        "dispatcher": TOKEN,
        "networks": [
            {"prefix": "127.0.0.0/8", "region": "local"},
            {"prefix": "127.1.0.0/16", "region": "eu", "country": "DE"},
            {"prefix": "::1/128", "region": "local"},
            {"prefix": "127.2.0.1/16", "region": "us"},
        ],
    }
    with pytest.raises(ConfigError) as info:
        build_config(raw, source="farm.toml", environ={})
    assert str(info.value) == (
        "farm.toml: networks[3].prefix: a network without host bits: '127.2.0.1/16' has some;"
        " did you mean 127.2.0.0/16?"
    )
    raw["networks"].pop()
    config = build_config(raw, source="farm.toml", environ={})
    assert [n.prefix for n in config.networks] == ["127.0.0.0/8", "127.1.0.0/16", "::1/128"]
    assert build_config({"dispatcher": TOKEN}, environ={}).networks == ()


# --- longest-prefix match against brute force ---


def _reference(networks: list[Network], value: int) -> Network | None:
    """Every network that contains ``value``; the longest wins."""
    best: Network | None = None
    for network in networks:
        bits = 32 if network.version == 4 else 128
        shift = bits - network.length
        if value >> shift == network.value >> shift and (
            best is None or network.length > best.length
        ):
            best = network
    return best


def _networks(bits: int, version: int) -> st.SearchStrategy[list[Network]]:
    def build(pairs: list[tuple[int, int]]) -> list[Network]:
        unique: dict[tuple[int, int], Network] = {}
        for value, length in pairs:
            masked = value >> (bits - length) << (bits - length)
            unique[(masked, length)] = Network(f"n{len(unique)}", version, masked, length)
        return list(unique.values())

    # values crowded near a few bases so that networks nest and overlap
    bases = st.sampled_from([0, 1 << (bits - 1), 0xC0A80000 << (bits - 32), (1 << bits) - 1])
    value = st.builds(
        lambda base, noise: (base ^ noise) % (1 << bits), bases, st.integers(0, (1 << 20) - 1)
    )
    return st.lists(st.tuples(value, st.integers(0, bits)), max_size=40).map(build)


@pytest.mark.parametrize(("bits", "version"), [(32, 4), (128, 6)])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_longest_prefix_match_is_the_brute_force_answer(
    bits: int, version: int, data: st.DataObject
) -> None:
    networks = data.draw(_networks(bits, version))
    table = PrefixTable(networks, bits)
    probes = [n.value for n in networks] + [
        n.value | ((1 << (bits - n.length)) - 1) for n in networks
    ]
    probes += data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=20))
    for value in probes:
        assert table.match(value) == _reference(networks, value), hex(value)


def _extent_reference(networks: list[Network], bits: int, value: int, length: int) -> int:
    """The shortest prefix length L >= ``length`` whose network around ``value`` contains
    no network longer than ``length`` that leaves ``value`` out, by trying every L."""

    def common(a: int, b: int) -> int:
        return bits - (a ^ b).bit_length()

    others = [
        n
        for n in networks
        if n.length > length and common(n.value, value) < n.length  # (not holding value)
    ]
    for candidate in range(length, bits + 1):
        if all(not (common(n.value, value) >= candidate) for n in others):
            return candidate
    return bits


@pytest.mark.parametrize(("bits", "version"), [(32, 4), (128, 6)])
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_extent_is_the_brute_force_answer(bits: int, version: int, data: st.DataObject) -> None:
    """How far a match holds (the ECS scope of a DNS answer placed by it)."""
    networks = data.draw(_networks(bits, version))
    table = PrefixTable(networks, bits)
    probes = [n.value for n in networks] + [n.value ^ 1 for n in networks]
    probes += data.draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=20))
    for value in probes:
        match = table.match(value)
        length = match.length if match is not None else data.draw(st.integers(0, bits))
        assert table.extent(value, length) == _extent_reference(networks, bits, value, length)


def test_extent_in_words() -> None:
    networks = parse_networks(
        [
            {"prefix": "10.1.0.0/16", "region": "a"},
            {"prefix": "10.1.5.0/24", "region": "c"},
            {"prefix": "10.2.0.0/16", "region": "b"},
        ]
    )
    table = PrefixTable(networks, 32)

    def at(text: str) -> int:
        return int(ipaddress.IPv4Address(text))

    assert table.extent(at("10.2.3.0"), 16) == 16  # nothing inside 10.2/16
    assert table.extent(at("10.1.2.0"), 16) == 22  # 10.1.0.0/22 leaves 10.1.5.0/24 out
    assert table.extent(at("10.0.0.0"), 8) == 16  # a /8 query: 10.0.0.0/16 is not located
    assert table.extent(at("10.9.0.0"), 24) == 24  # nothing inside the source /24


def test_match_against_the_standard_library() -> None:
    networks = parse_networks(
        [
            {"prefix": "0.0.0.0/0", "region": "world"},
            {"prefix": "127.0.0.0/8", "region": "loop"},
            {"prefix": "127.0.0.0/9", "region": "loop-low"},
            {"prefix": "127.1.2.3/32", "region": "host"},
        ]
    )
    table = PrefixTable(networks, 32)
    for text in ("8.8.8.8", "127.0.0.1", "127.200.0.1", "127.1.2.3", "127.1.2.4"):
        address = ipaddress.IPv4Address(text)
        expected = max(
            (n for n in networks if address in ipaddress.ip_network(n.prefix)),
            key=lambda n: n.length,
        )
        assert table.match(int(address)) == expected


def test_the_map_pickles_to_equal_entries() -> None:
    networks = parse_networks(
        [
            {"prefix": "10.0.0.0/8", "region": "a", "coordinates": [1, 2]},
            {"prefix": "2001:db8::/32", "country": "NZ", "asn": 7},
        ]
    )
    assert pickle.loads(pickle.dumps(networks)) == networks
