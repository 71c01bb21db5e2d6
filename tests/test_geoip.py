"""IP-location databases: MaxMind DB files built here with mmdb-writer, in every shape a
real one comes in, and hostile ones: a clear error at open, never an exception per lookup."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.errors import GeoDatabaseError
from dispatcher.placement.geoip import (
    MAX_DATABASE_BYTES,
    NOTHING,
    BuiltinCountries,
    Found,
    MmdbDatabase,
    read_record,
)
from tests.geodata import asn, city, write_mmdb


def test_a_city_database(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "city.mmdb",
        {
            "192.0.2.0/24": city("DE", "EU", 52.52, 13.405),
            "198.51.100.0/25": city("JP", "AS"),
            "2001:db8::/32": city("FR", "EU", 48.86, 2.35),
        },
    )
    database = MmdbDatabase(str(path))
    assert (database.kind, database.ipv6) == ("GeoLite2-City", True)
    assert database.lookup("192.0.2.77", 4) == Found("DE", "EU", None, (52.52, 13.405), 24)
    assert database.lookup("198.51.100.1", 4) == Found("JP", "AS", None, None, 25)
    assert database.lookup("2001:db8:1::1", 6) == Found("FR", "EU", None, (48.86, 2.35), 32)
    missing = database.lookup("203.0.113.1", 4)
    assert missing[:4] == NOTHING[:4]
    assert missing.length is not None  # the network the miss holds for
    database.close()


def test_an_asn_database_and_flat_records(tmp_path: Path) -> None:
    path = write_mmdb(
        tmp_path / "asn.mmdb",
        {
            "192.0.2.0/24": asn(64500),
            "198.51.100.0/24": {"country": "nz", "continent": "OC", "asn": "AS64501"},
            "203.0.113.0/24": {"country": "BR", "latitude": -23.5, "longitude": -46.6},
        },
        kind="GeoLite2-ASN",
    )
    database = MmdbDatabase(str(path))
    assert database.lookup("192.0.2.1", 4)[:4] == (None, None, 64500, None)
    assert database.lookup("198.51.100.1", 4)[:4] == ("NZ", "OC", 64501, None)
    assert database.lookup("203.0.113.1", 4)[:4] == ("BR", "SA", None, (-23.5, -46.6))


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"country": {"iso_code": 7}}, (None, None, None, None)),
        ({"country": {"iso_code": "XX"}, "continent": {"code": "ZZ"}}, (None, None, None, None)),
        ({"registered_country": {"iso_code": "CH"}}, ("CH", "EU", None, None)),
        ({"country": {"iso_code": "EU"}}, (None, "EU", None, None)),
        ({"continent": {"code": "af"}}, (None, "AF", None, None)),
        ({"autonomous_system_number": -1}, (None, None, None, None)),
        ({"autonomous_system_number": 2**40}, (None, None, None, None)),
        ({"asn": "AS"}, (None, None, None, None)),
        ({"asn": "AS٣"}, (None, None, None, None)),  # an Arabic-Indic digit
        ({"asn": "AS99999999999"}, (None, None, None, None)),
        ({"asn": True}, (None, None, None, None)),
        ({"location": {"latitude": "52", "longitude": 13}}, (None, None, None, None)),
        ({"location": {"latitude": 91.0, "longitude": 13}}, (None, None, None, None)),
        ({"location": {"latitude": float("nan"), "longitude": 1.0}}, (None, None, None, None)),
        ({"location": [1, 2]}, (None, None, None, None)),
        ({"location": {"latitude": -90, "longitude": 180}}, (None, None, None, (-90.0, 180.0))),
        (["DE"], (None, None, None, None)),
        ("DE", (None, None, None, None)),
        (None, (None, None, None, None)),
    ],
)
def test_records_of_any_shape(record: object, expected: tuple[object, ...]) -> None:
    assert read_record(record, 16)[:4] == expected
    assert read_record(record, 16).length == 16


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["DE", "us", "EU", "AS64500", "iso_code", "location"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "country",
                    "registered_country",
                    "continent",
                    "iso_code",
                    "code",
                    "location",
                    "latitude",
                    "longitude",
                    "asn",
                    "autonomous_system_number",
                ]
            )
            | st.text(max_size=5),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(JSONISH)
def test_read_record_never_raises(record: Any) -> None:
    found = read_record(record, None)
    assert found.country is None or len(found.country) == 2
    assert found.asn is None or 0 <= found.asn < 2**32
    if found.coordinates is not None:
        assert -90 <= found.coordinates[0] <= 90
        assert -180 <= found.coordinates[1] <= 180


# --- hostile files ---


def _error(path: Path | str) -> str:
    with pytest.raises(GeoDatabaseError) as info:
        MmdbDatabase(str(path))
    assert info.value.path == str(path)
    assert "/proc/self" not in str(info.value)
    return info.value.reason


def test_files_that_are_not_databases(tmp_path: Path) -> None:
    assert _error(tmp_path / "missing.mmdb") == "no such file"
    assert "not a regular file" in _error(tmp_path)
    assert "not a regular file" in _error("/dev/zero")
    empty = tmp_path / "empty.mmdb"
    empty.write_bytes(b"")
    assert "not a MaxMind DB file" in _error(empty)
    noise = tmp_path / "noise.mmdb"
    noise.write_bytes(os.urandom(4096))
    assert "not a MaxMind DB file" in _error(noise)
    text = tmp_path / "farm.toml"
    text.write_text("[dispatcher]\n")
    assert "not a MaxMind DB file" in _error(text)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "geo.mmdb"
    os.mkfifo(fifo)
    done: list[str] = []
    worker = threading.Thread(target=lambda: done.append(_error(fifo)), daemon=True)
    worker.start()
    worker.join(5)
    assert done == ["not a regular file (a FIFO, device or directory?)"]


def test_a_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.mmdb"
    with huge.open("wb") as file:
        file.truncate(MAX_DATABASE_BYTES + 1)  # sparse: no disk used
    assert _error(huge) == f"larger than {MAX_DATABASE_BYTES} bytes"


def test_a_truncated_database_fails_at_open(tmp_path: Path) -> None:
    good = write_mmdb(tmp_path / "good.mmdb", {"192.0.2.0/24": city("DE", "EU")})
    cut = tmp_path / "cut.mmdb"
    cut.write_bytes(good.read_bytes()[:-40])  # the metadata is at the end
    assert "not a MaxMind DB file" in _error(cut)


def test_a_corrupt_search_tree_fails_at_open(tmp_path: Path) -> None:
    good = write_mmdb(
        tmp_path / "good.mmdb", {f"{a}.0.0.0/8": city("DE", "EU") for a in (1, 8, 193, 202)}
    )
    meta = MmdbDatabase(str(good)).reader.metadata()
    tree = meta.node_count * meta.record_size // 4
    data = bytearray(good.read_bytes())
    data[:tree] = b"\xff" * tree  # every node points past the tree and the data
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(bytes(data))
    assert "not a readable MaxMind DB file" in _error(bad)


def test_a_corrupt_record_costs_its_lookups_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record whose bytes are broken (found after the checks at open) answers nothing;
    the lookup never raises, the first failure is logged, and others still answer."""
    good = write_mmdb(
        tmp_path / "good.mmdb",
        {
            "192.0.2.0/24": {"country": {"iso_code": "brokenrecord"}},
            "198.51.100.0/24": city("DE", "EU"),
        },
    )
    data = good.read_bytes()
    at = data.index(b"brokenrecord")
    assert data[at - 1] == 0x40 | len("brokenrecord")  # a UTF-8 string's control byte
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(data[: at - 1] + b"\x00" + data[at:])  # an extended type that does not exist
    database = MmdbDatabase(str(bad))
    for _ in range(3):
        assert database.lookup("192.0.2.1", 4) == NOTHING
    assert database.errors == 3
    assert [r.getMessage()[:40] for r in caplog.records] == [
        f"geoip_database {bad}: lookup of 192.0.2.1 failed"[:40]
    ]
    assert database.lookup("198.51.100.9", 4)[:2] == ("DE", "EU")


def test_an_ipv4_only_database_answers_nothing_for_ipv6(tmp_path: Path) -> None:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country")
    writer.insert_network(IPSet(["192.0.2.0/24"]), {"country": {"iso_code": "SE"}})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    database = MmdbDatabase(str(tmp_path / "v4.mmdb"))
    assert database.ipv6 is False
    assert database.lookup("2001:db8::1", 6) == NOTHING
    assert database.lookup("192.0.2.1", 4)[:2] == ("SE", "EU")


def test_the_built_in_data() -> None:
    builtin = BuiltinCountries()
    assert builtin.lookup("193.0.0.1", 4)[:2] == ("NL", "EU")  # RIPE NCC
    assert builtin.lookup("8.8.8.8", 4)[:2] == ("US", "NA")
    assert builtin.lookup("127.0.0.1", 4) == NOTHING
    assert builtin.lookup("2001:db8::1", 6) == NOTHING
    assert builtin.lookup("not an address", 4) == NOTHING
    assert builtin.kind.startswith("iptocc ")
