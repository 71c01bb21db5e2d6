"""Config validation: one typed, frozen object; every error names file, key path, expectation."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.__main__ import run
from dispatcher.config import Config, build_config, load_config
from dispatcher.errors import ConfigError

EXAMPLE = """
[dispatcher]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8081"
database_url = "sqlite:///farm.db"
admin_tokens = ["change-me"]
redirect_status = 302

[pools.default]
policy = "weighted"        # weighted | least-load | failover
fallback = "sorry"         # "sorry" (503 page with Retry-After) or an absolute URL

[[sites]]
name = "eu"
base_url = "http://127.0.0.2:9001"
pool = "default"
weight = 2
check = { url = "/health", expect = "OK", interval = 2.0, timeout = 1.0, rise = 2, fall = 3 }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "farm.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_documented_example_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE), environ={})
    assert config.dispatcher.listen == "127.0.0.1:8080"
    assert [t.token for t in config.dispatcher.admin_tokens] == ["change-me"]
    assert config.dispatcher.database_url == f"sqlite:///{tmp_path / 'farm.db'}"
    assert config.pools["default"].policy == "weighted"
    (eu,) = config.sites
    assert (eu.name, eu.base_url, eu.weight, eu.pool) == (
        "eu",
        "http://127.0.0.2:9001",
        2,
        "default",
    )
    assert (eu.check.interval, eu.check.timeout, eu.check.rise, eu.check.fall) == (2.0, 1.0, 2, 3)
    assert eu.check_url == "http://127.0.0.2:9001/health"


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, EXAMPLE), environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.dispatcher.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_environment_overrides_secrets_and_database(tmp_path: Path) -> None:
    env = {
        "FARM_DATABASE_URL": "postgresql://farm@db/farm",
        "FARM_SECRET_KEYS": "old, new",
        "FARM_ADMIN_TOKENS": "t1,t2",
    }
    config = load_config(write(tmp_path, EXAMPLE), environ=env)
    assert config.dispatcher.database_url == "postgresql://farm@db/farm"
    assert config.dispatcher.secret_keys == ("old", "new")
    assert [t.token for t in config.dispatcher.admin_tokens] == ["t1", "t2"]


def test_tokens_may_come_from_the_environment_only(tmp_path: Path) -> None:
    text = EXAMPLE.replace('admin_tokens = ["change-me"]\n', "")
    with pytest.raises(ConfigError, match="admin_tokens"):
        load_config(write(tmp_path, text), environ={})
    config = load_config(write(tmp_path, text), environ={"FARM_ADMIN_TOKENS": "x"})
    assert [t.token for t in config.dispatcher.admin_tokens] == ["x"]


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        ("interval = 2.0", "interval = -1", "sites[0].check.interval", "seconds > 0"),
        ("interval = 2.0", 'interval = "2"', "sites[0].check.interval", "seconds > 0"),
        ("rise = 2", "rise = 0", "sites[0].check.rise", "from 1 to 100"),
        ("weight = 2", "weight = -3", "sites[0].weight", "from 0 to 10000"),
        ("weight = 2", "weight = true", "sites[0].weight", "whole number"),
        (
            'base_url = "http://127.0.0.2:9001"',
            'base_url = "ftp://x"',
            "sites[0].base_url",
            "absolute http",
        ),
        (
            'base_url = "http://127.0.0.2:9001"',
            'base_url = "/relative"',
            "sites[0].base_url",
            "absolute http",
        ),
        (
            'base_url = "http://127.0.0.2:9001"',
            'base_url = "http://127.0.0.1:8080"',
            "sites[0].base_url",
            "not the dispatcher itself",
        ),
        ('pool = "default"', 'pool = "nope"', "sites[0].pool", "one of the pools"),
        ('name = "eu"', 'name = "has space"', "sites[0].name", "letters, digits"),
        (
            'policy = "weighted" ',
            'policy = "random" ',
            "pools.default.policy",
            "weighted, least-load, failover",
        ),
        (
            'fallback = "sorry" ',
            'fallback = "elsewhere" ',
            "pools.default.fallback",
            "absolute http(s) URL",
        ),
        (
            "redirect_status = 302",
            "redirect_status = 200",
            "dispatcher.redirect_status",
            "301, 302, 303, 307, 308",
        ),
        ('listen = "127.0.0.1:8080"', 'listen = "8080"', "dispatcher.listen", "host:port"),
        ('listen = "127.0.0.1:8080"', 'listen = "h:99999"', "dispatcher.listen", "host:port"),
        (
            "redirect_status = 302",
            "redirect_status = 302\ncolour = 1",
            "dispatcher.colour",
            "no such key",
        ),
        ("weight = 2", "weight = 2\nwieght = 3", "sites[0].wieght", "no such key"),
        ("fall = 3 }", "fall = 3, retries = 1 }", "sites[0].check.retries", "no such key"),
    ],
)
def test_errors_name_file_key_path_and_expectation(
    tmp_path: Path, old: str, new: str, path: str, expected: str
) -> None:
    assert old in EXAMPLE
    file = write(tmp_path, EXAMPLE.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(file, environ={})
    assert info.value.source == str(file)
    assert info.value.path == path
    assert expected in info.value.expected
    assert str(info.value).startswith(f"{file}: {path}: ")


def test_unknown_top_level_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"farm.toml: colours: no such key"):
        load_config(write(tmp_path, EXAMPLE + "\n[colours]\nred = 1\n"), environ={})


def test_duplicate_site_names_are_an_error(tmp_path: Path) -> None:
    text = EXAMPLE + '\n[[sites]]\nname = "eu"\nbase_url = "http://127.0.0.3:9001"\n'
    with pytest.raises(ConfigError, match=r"sites\[1\]\.name: a unique site name"):
        load_config(write(tmp_path, text), environ={})


def test_syntax_errors_and_missing_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid TOML"):
        load_config(write(tmp_path, "[dispatcher\n"), environ={})
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_empty_environment_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FARM_ADMIN_TOKENS"):
        load_config(write(tmp_path, EXAMPLE), environ={"FARM_ADMIN_TOKENS": " , "})


def test_default_pool_exists_without_being_declared() -> None:
    config = build_config(
        {
            "dispatcher": {"admin_tokens": ["t"]},
            "sites": [{"name": "a", "base_url": "https://a.example"}],
        },
        environ={},
    )
    assert list(config.pools) == ["default"]
    assert config.sites[0].base_url == "https://a.example"


def test_per_pool_redirect_status() -> None:
    config = build_config(
        {
            "dispatcher": {"admin_tokens": ["t"], "redirect_status": 301},
            "pools": {"default": {"redirect_status": 307}, "other": {}},
        },
        environ={},
    )
    assert config.pool_status("default") == 307
    assert config.pool_status("other") == 301


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, EXAMPLE)
    assert run(["check-config", "--config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    bad = write(tmp_path, EXAMPLE.replace("interval = 2.0", "interval = 0"))
    assert run(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err
    assert "sites[0].check.interval" in err
    assert "a number of seconds > 0" in err


# --- property: no input makes the builder raise anything but ConfigError ---

toml_scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.booleans(), st.text(max_size=20)
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
known_keys = st.sampled_from(
    [
        "listen",
        "admin_listen",
        "database_url",
        "admin_tokens",
        "redirect_status",
        "policy",
        "fallback",
        "name",
        "base_url",
        "pool",
        "weight",
        "check",
        "interval",
        "timeout",
        "rise",
        "fall",
        "url",
        "expect",
        "retry_after",
        "load_max_age",
    ]
)
tables = st.dictionaries(st.one_of(known_keys, st.text(max_size=8)), toml_values, max_size=6)
documents = st.fixed_dictionaries(
    {},
    optional={
        "dispatcher": tables,
        "pools": st.dictionaries(st.text(max_size=8), tables, max_size=3),
        "sites": st.one_of(st.lists(tables, max_size=3), toml_values),
    },
)


@given(documents)
def test_any_document_yields_a_config_or_a_config_error(doc: dict[str, Any]) -> None:
    try:
        config = build_config(doc, environ={"FARM_ADMIN_TOKENS": "t"})
    except ConfigError as exc:
        error: ConfigError | None = exc
    else:
        error = None
        assert isinstance(config, Config)
    assert error is None or error.expected
