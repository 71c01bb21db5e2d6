"""Config validation: one typed, frozen object; every error names file, key path, expectation."""

from __future__ import annotations

import dataclasses
import math
import os
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


# --- configuration that cannot fail later (issue 12, section 6) ---


def error_of(dispatcher: dict[str, Any], **doc: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_config({"dispatcher": {"admin_tokens": ["t"], **dispatcher}, **doc}, environ={})
    return info.value


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e-300, 0.0, -1.0, 3601.0])
def test_registry_refresh_is_a_finite_period_of_at_least_50_ms(value: float) -> None:
    e = error_of({"registry_refresh": value})
    assert e.path == "dispatcher.registry_refresh"
    assert "from 0.05 to 3600" in e.expected


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, 1e-9, 86_401.0])
def test_load_max_age_is_finite_and_bounded(value: float) -> None:
    assert error_of({"load_max_age": value}).path == "dispatcher.load_max_age"


@pytest.mark.parametrize("value", [-1, 86_401, 2**70, 1.5, True])
def test_retry_after_is_bounded_whole_seconds(value: Any) -> None:
    assert error_of({"retry_after": value}).path == "dispatcher.retry_after"


@pytest.mark.parametrize("key", ["listen", "admin_listen"])
@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:8080",
        "127.0.0.1:8080/",
        ":8080",
        "127.0.0.1 :8080",
        " 127.0.0.1:8080",
        "127.0.0.1:80\x0080",
        "\x00:80",
        "::1:8080",
        "[nope]:8080",
        "127.1:8080",
        "host_name:80",
        "127.0.0.1:-1",
        "127.0.0.1:65536",
        "127.0.0.1:\uff18\uff10",  # fullwidth digits
        "user@127.0.0.1:80",
    ],
)
def test_listeners_are_host_colon_port(key: str, value: str) -> None:
    e = error_of({key: value})
    assert e.path == f"dispatcher.{key}"
    assert "host:port" in e.expected


@pytest.mark.parametrize(
    "value", ["127.0.0.1:0", "[::1]:8080", "[::]:80", "0.0.0.0:8080", "localhost:8080", "a.b:1"]
)
def test_good_listeners_load(value: str) -> None:
    config = build_config({"dispatcher": {"admin_tokens": ["t"], "listen": value}}, environ={})
    assert config.dispatcher.listen == value


@pytest.mark.parametrize(
    "value",
    [
        "nonsense",
        "",
        "mysql://farm@db/farm",
        "postgresql+asyncpg://farm@db/farm",
        "sqlite:///farm\x00.db",
        "postgresql://farm@db/farm\n",
        "http://127.0.0.1:8080/",
    ],
)
def test_database_url_is_a_supported_dialect(value: str) -> None:
    e = error_of({"database_url": value})
    assert e.path == "dispatcher.database_url"
    assert "database URL" in e.expected


def test_database_url_from_the_environment_is_checked_too() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={"FARM_DATABASE_URL": "x"})
    assert info.value.path == "FARM_DATABASE_URL"


@pytest.mark.parametrize(
    "url", ["sqlite://", "postgresql://u@h/db", "postgresql+psycopg://h/db", "postgres://h/d"]
)
def test_supported_database_urls_load(url: str) -> None:
    config = build_config({"dispatcher": {"admin_tokens": ["t"], "database_url": url}}, environ={})
    assert config.dispatcher.database_url == url


def test_a_rules_path_with_a_nul_is_refused() -> None:
    assert error_of({"rules": "rules\x00.conf"}).path == "dispatcher.rules"


def test_pool_names_follow_the_site_name_rule() -> None:
    assert error_of({}, pools={"a b": {}}).path == "pools.a b"


SELF_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "0x7f000001",
    "0X7F000001",
    "2130706433",
    "017700000001",
    "0x7f.1",
    "127.000.000.001",
    "127.0.0.1.",
    "[::ffff:127.0.0.1]",
    "[::ffff:7f00:1]",
    "localhost",
    "localhost.",
    "LOCALHOST",
    "LocalHost.",
    "app.localhost",
    "localhost.localdomain",
    "0",
    "0.0.0.0",
]


@pytest.mark.parametrize("host", SELF_SPELLINGS)
@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "0.0.0.0:8080", "[::]:8080"])
def test_a_site_that_is_the_dispatcher_in_any_spelling_is_refused(host: str, listen: str) -> None:
    e = error_of({"listen": listen}, sites=[{"name": "a", "base_url": f"http://{host}:8080"}])
    assert e.path == "sites[0].base_url"
    assert "not the dispatcher itself" in e.expected


@pytest.mark.parametrize("host", ["[::1]", "[0:0::1]", "localhost", "ip6-localhost"])
def test_ipv6_loopback_reaches_a_v6_or_dual_stack_listener(host: str) -> None:
    for listen in ("[::1]:8080", "[::]:8080"):
        e = error_of({"listen": listen}, sites=[{"name": "a", "base_url": f"http://{host}:8080"}])
        assert e.path == "sites[0].base_url"


def test_the_default_port_of_the_scheme_counts() -> None:
    e = error_of({"listen": "0.0.0.0:80"}, sites=[{"name": "a", "base_url": "http://127.1"}])
    assert e.path == "sites[0].base_url"
    e = error_of({"admin_listen": "[::]:443"}, sites=[{"name": "a", "base_url": "https://[::1]"}])
    assert e.path == "sites[0].base_url"


@pytest.mark.parametrize(
    ("listen", "base_url"),
    [
        ("127.0.0.1:8080", "http://127.0.0.2:8080"),  # another loopback address
        ("127.0.0.1:8080", "http://127.0.0.1:8082"),  # another port
        ("127.0.0.1:8080", "http://[::1]:8080"),  # an IPv4-only listener is not reached over v6
        ("0.0.0.0:8080", "http://[::1]:8080"),
        ("127.0.0.1:8080", "https://127.0.0.1"),
        ("0.0.0.0:8080", "http://www.example.com:8080"),  # names are not looked up
        ("127.0.0.1:0", "http://127.0.0.1:8080"),  # a free port picked at start
    ],
)
def test_other_addresses_and_ports_are_not_the_dispatcher(listen: str, base_url: str) -> None:
    config = build_config(
        {
            "dispatcher": {"admin_tokens": ["t"], "listen": listen, "admin_listen": "[::1]:9"},
            "sites": [{"name": "a", "base_url": base_url}],
        },
        environ={},
    )
    assert config.sites[0].base_url == base_url


@pytest.mark.parametrize("host", ["127.1", "[::ffff:127.0.0.1]", "localhost.", "2130706433"])
def test_a_pool_fallback_pointing_at_the_dispatcher_is_a_loop(host: str) -> None:
    e = error_of(
        {"listen": "0.0.0.0:8080"}, pools={"default": {"fallback": f"http://{host}:8080/"}}
    )
    assert e.path == "pools.default.fallback"
    assert "not the dispatcher itself" in e.expected


def test_check_config_refuses_special_rule_and_map_files_without_hanging(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.map"
    with big.open("wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)  # sparse: no disk used
    for map_path, says in (
        (fifo, "not a regular file"),
        (Path("/dev/zero"), "not a regular file"),
        (tmp_path, "not a regular file"),
        (big, "larger than"),
    ):
        rules = tmp_path / "rules.conf"
        rules.write_text(f"RewriteEngine on\nRewriteMap m txt:{map_path}\n", encoding="utf-8")
        text = EXAMPLE.replace(
            "redirect_status = 302", 'redirect_status = 302\nrules = "rules.conf"'
        )
        config = write(tmp_path, text)
        assert run(["check-config", "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert "rules.conf:2" in err
        assert says in err
    for rules_path in (fifo, Path("/dev/zero"), tmp_path):
        text = EXAMPLE.replace(
            "redirect_status = 302", f'redirect_status = 302\nrules = "{rules_path}"'
        )
        assert run(["check-config", "--config", str(write(tmp_path, text))]) == 2
        err = capsys.readouterr().err
        assert "dispatcher.rules" in err
        assert "not a regular file" in err
    for config_path in (fifo, Path("/dev/zero"), tmp_path):
        assert run(["check-config", "--config", str(config_path)]) == 2
        assert "not a regular file" in capsys.readouterr().err


def inet_aton_spelling(address: int, parts: int, bases: list[int]) -> str:
    """``address`` written as ``inet_aton`` reads it: 1-4 parts, each decimal, 0octal or 0xhex."""
    widths = {1: [32], 2: [8, 24], 3: [8, 8, 16], 4: [8, 8, 8, 8]}[parts]
    numbers, shift = [], 32
    for width in widths:
        shift -= width
        numbers.append((address >> shift) & ((1 << width) - 1))
    return ".".join(
        {10: str(n), 8: f"0{n:o}", 16: f"0x{n:x}"}[base]
        for n, base in zip(numbers, bases, strict=False)
    )


@given(
    parts=st.integers(1, 4),
    bases=st.lists(st.sampled_from([10, 8, 16]), min_size=4, max_size=4),
    trailing_dot=st.booleans(),
)
def test_every_inet_aton_spelling_of_the_listener_is_caught(
    parts: int, bases: list[int], trailing_dot: bool
) -> None:
    host = inet_aton_spelling(0x7F000001, parts, bases) + ("." if trailing_dot else "")
    e = error_of(
        {"listen": "127.0.0.1:8080"}, sites=[{"name": "a", "base_url": f"http://{host}:8080"}]
    )
    assert e.path == "sites[0].base_url", host


def test_a_wildcard_listener_is_reached_through_this_machines_addresses_only() -> None:
    for host in ("127.0.0.2", "127.255.0.9"):
        e = error_of(
            {"listen": "0.0.0.0:8080"}, sites=[{"name": "a", "base_url": f"http://{host}:8080"}]
        )
        assert e.path == "sites[0].base_url"
    config = build_config(
        {
            "dispatcher": {"admin_tokens": ["t"], "listen": "0.0.0.0:8080"},
            "sites": [{"name": "a", "base_url": "http://192.0.2.1:8080"}],  # TEST-NET-1
        },
        environ={},
    )
    assert config.sites[0].base_url == "http://192.0.2.1:8080"


@pytest.mark.parametrize("value", [0, 400 * 86_400 + 1, 2**63 - 1])
def test_affinity_lifetime_is_bounded(value: int) -> None:
    e = error_of({"affinity_lifetime": value})
    assert e.path == "dispatcher.affinity_lifetime"
    assert "34560000" in e.expected


# --- logs (issue 15) ---


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_every_log_level_loads(level: str) -> None:
    config = build_config({"dispatcher": {"admin_tokens": ["t"], "log_level": level}}, environ={})
    assert config.dispatcher.log_level == level


def test_log_format_comes_from_the_file_or_the_environment() -> None:
    raw = {"dispatcher": {"admin_tokens": ["t"], "log_format": "json"}}
    assert build_config(raw, environ={}).dispatcher.log_format == "json"
    assert build_config(raw, environ={"FARM_LOG_FORMAT": " text "}).dispatcher.log_format == "text"
    assert (
        build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={}).dispatcher.log_format
        == "text"
    )


@pytest.mark.parametrize("value", ["xml", "JSON", "", 1, True])
def test_an_unknown_log_format_is_refused(value: Any) -> None:
    e = error_of({"log_format": value})
    assert e.path == "dispatcher.log_format"
    assert "one of text, json" in e.expected


def test_an_unknown_log_format_in_the_environment_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={"FARM_LOG_FORMAT": "x\n"})
    assert info.value.path == "FARM_LOG_FORMAT"
    assert "\n" not in str(info.value)


def test_log_level_verbose_is_refused() -> None:
    assert "debug, info, warning, error" in error_of({"log_level": "verbose"}).expected
