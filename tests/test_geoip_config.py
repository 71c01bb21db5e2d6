"""``geoip_database`` and ``[[networks]]`` in the configuration, and ``check-config`` on
files that are missing, FIFOs or corrupt: a clear error, exit 2, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from dispatcher.config import build_config, load_config
from dispatcher.errors import ConfigError
from dispatcher.wire import HEADER, WorkerState, decode_state, encode_state, for_workers
from tests.conftest import ADMIN_TOKEN, run_cli
from tests.geodata import asn, city, write_mmdb

TOKEN = {"admin_tokens": ["t" * 20]}


def _config(tmp_path: Path, dispatcher: str = "", networks: str = "") -> Path:
    path = tmp_path / "farm.toml"
    path.write_text(
        f'[dispatcher]\nadmin_tokens = ["{ADMIN_TOKEN}"]\n'
        f'database_url = "sqlite:///farm.db"\n{dispatcher}\n{networks}'
    )
    return path


def test_one_database_relative_to_the_config_file(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "city.mmdb", {"192.0.2.0/24": city("FR", "EU")})
    networks = '[[networks]]\nprefix = "127.1.0.0/16"\nregion = "eu"\n'
    config = load_config(_config(tmp_path, 'geoip_database = "city.mmdb"', networks), environ={})
    assert config.dispatcher.geoip_database == (tmp_path / "city.mmdb",)
    locator = config.locator()
    assert locator.locate("192.0.2.1").country == "FR"
    assert locator.locate("127.1.0.1").region == "eu"
    assert "1 prefix-map network(s), IP database: " in locator.describe()
    assert "city.mmdb (GeoLite2-City)" in locator.describe()


def test_a_city_and_an_asn_database_together(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "city.mmdb", {"192.0.2.0/24": city("FR", "EU", 48.9, 2.4)})
    write_mmdb(tmp_path / "asn.mmdb", {"192.0.2.0/23": asn(64500)}, kind="GeoLite2-ASN")
    config = load_config(
        _config(tmp_path, 'geoip_database = ["city.mmdb", "asn.mmdb"]'), environ={}
    )
    where = config.locator().locate("192.0.2.1")
    assert (where.country, where.asn, where.coordinates) == ("FR", 64500, (48.9, 2.4))
    assert where.prefix == "192.0.2.0/24"  # the most specific of the two networks


def test_without_a_database_the_built_in_data(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path), environ={})
    assert config.dispatcher.geoip_database == ()
    assert config.locator().locate("193.0.0.1").country == "NL"


def test_the_environment_wins(tmp_path: Path) -> None:
    city_db = write_mmdb(tmp_path / "city.mmdb", {"192.0.2.0/24": city("FR", "EU")})
    asn_db = write_mmdb(tmp_path / "asn.mmdb", {"192.0.2.0/24": asn(1)}, kind="GeoLite2-ASN")
    path = _config(tmp_path, 'geoip_database = "nowhere.mmdb"')
    env = {"FARM_GEOIP_DATABASE": f"{city_db}{os.pathsep}{asn_db}"}
    assert load_config(path, environ=env).dispatcher.geoip_database == (city_db, asn_db)
    # empty: no file, the built-in data
    assert load_config(path, environ={"FARM_GEOIP_DATABASE": ""}).dispatcher.geoip_database == ()
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"FARM_GEOIP_DATABASE": str(tmp_path / "gone.mmdb")})
    assert info.value.path == "FARM_GEOIP_DATABASE"


def _error(tmp_path: Path, value: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_config(
            {"dispatcher": {**TOKEN, "geoip_database": value}},
            source="farm.toml",
            environ={},
            base_dir=tmp_path,
        )
    assert info.value.path == "dispatcher.geoip_database"
    return info.value


def test_bad_settings(tmp_path: Path) -> None:
    assert "array of at most 4 paths" in _error(tmp_path, ["a"] * 5).expected
    assert "each once" in _error(tmp_path, ["a.mmdb", "a.mmdb"]).expected
    assert "non-empty" in _error(tmp_path, "").expected
    assert "printable" in _error(tmp_path, "a\nb").expected
    assert "MaxMind DB" in _error(tmp_path, 42).expected


def test_files_that_cannot_be_used_name_the_file(tmp_path: Path) -> None:
    missing = _error(tmp_path, "gone.mmdb")
    assert str(missing) == (
        f"farm.toml: dispatcher.geoip_database: a MaxMind DB file (.mmdb):"
        f" {tmp_path / 'gone.mmdb'}: no such file"
    )
    os.mkfifo(tmp_path / "fifo.mmdb")
    assert "fifo.mmdb: not a regular file" in _error(tmp_path, "fifo.mmdb").expected
    (tmp_path / "corrupt.mmdb").write_bytes(b"\xab\xcd\xef" * 1000)
    assert "corrupt.mmdb: not a MaxMind DB file" in _error(tmp_path, "corrupt.mmdb").expected


def test_a_file_broken_after_validation_is_a_config_error_when_opened(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "city.mmdb", {"192.0.2.0/24": city("FR", "EU")})
    config = load_config(_config(tmp_path, 'geoip_database = "city.mmdb"'), environ={})
    (tmp_path / "city.mmdb").unlink()
    with pytest.raises(ConfigError) as info:
        config.locator()
    assert info.value.path == "dispatcher.geoip_database"
    assert info.value.expected.endswith("city.mmdb: no such file")


@pytest.mark.parametrize("kind", ["missing", "fifo", "corrupt", "directory"])
def test_check_config_says_what_is_wrong_without_a_traceback(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "geo.mmdb"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "corrupt":
        good = write_mmdb(tmp_path / "good.mmdb", {"192.0.2.0/24": city("FR", "EU")})
        target.write_bytes(good.read_bytes()[:100])
    elif kind == "directory":
        target.mkdir()
    config = _config(tmp_path, 'geoip_database = "geo.mmdb"')
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert f"dispatcher.geoip_database: a MaxMind DB file (.mmdb): {target}: " in result.stderr
    assert result.stdout == ""


def test_check_config_reports_the_locator(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "city.mmdb", {"192.0.2.0/24": city("FR", "EU")})
    networks = '[[networks]]\nprefix = "2001:db8::/32"\ncountry = "fr"\n'
    config = _config(tmp_path, 'geoip_database = "city.mmdb"', networks)
    result = run_cli("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert "; 1 prefix-map network(s), IP database: " in result.stdout
    assert "city.mmdb (GeoLite2-City))" in result.stdout
    bad = _config(tmp_path, "", '[[networks]]\nprefix = "2001:db8::1/32"\nregion = "x"\n')
    result = run_cli("check-config", "-c", str(bad))
    assert result.returncode == 2
    assert "networks[0].prefix: a network without host bits" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_configuration_travels_to_workers_with_its_map_and_files(tmp_path: Path) -> None:
    """A worker gets the configuration by pickle (dispatcher.wire) and builds the same
    locator from it, opening the database files itself."""
    write_mmdb(tmp_path / "city.mmdb", {"192.0.2.0/24": city("FR", "EU")})
    networks = '[[networks]]\nprefix = "127.1.0.0/16"\nregion = "eu"\n'
    config = load_config(_config(tmp_path, 'geoip_database = "city.mmdb"', networks), environ={})
    state = WorkerState(1, for_workers(config), 1, config.sites, {}, {}, None)
    shipped = decode_state(encode_state(state)[HEADER.size :])
    assert isinstance(shipped, WorkerState)
    assert shipped.config.networks == config.networks
    locator = shipped.config.locator()
    assert locator.locate("192.0.2.1").country == "FR"
    assert locator.locate("127.1.0.1").region == "eu"
