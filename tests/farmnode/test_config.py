"""Node config: one typed, frozen object; every error names file, key path and expectation."""

from __future__ import annotations

import copy
import dataclasses
import os
import pwd
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmnode.__main__ import run as farmnode_run
from farmnode.config import (
    NODE_KEYS,
    REPORT_KEYS,
    NodeConfig,
    NodeSettings,
    load_config,
    parse_config,
)
from farmnode.errors import ConfigError
from farmnode.service_config import CHECK_KEYS, PERSISTENCE_KEYS, REAL_KEYS, SERVICE_KEYS
from farmnode.spec import CheckSpec, PersistenceSpec, RealSpec, ServiceSpec
from farmnode.switch.schedulers import SCHEDULERS
from farmnode.validation import parse_address

DOCS = Path(__file__).resolve().parents[2] / "docs" / "farmnode-configuration.md"

CHECK_EXAMPLE = (
    'check = { kind = "http", url = "/", expect = "OK", interval = 2.0, timeout = 1.0, '
    "rise = 2, fall = 3 }"
)

EXAMPLE = """
[node]
name = "n1"
status_listen = "127.0.0.1:9100"

[[services]]
name = "web"
protocol = "tcp"                   # tcp | udp
listen = "127.0.0.1:8000"
scheduler = "wlc"
persistence = { timeout = 300, netmask = 24 }   # optional
fallback = "127.0.0.1:8099"        # sorry server, used only while every real server is down
@CHECK@
[[services.real]]
address = "127.0.0.1:9001"
weight = 1
[[services.real]]
address = "127.0.0.1:9002"
weight = 2

[report]
url = "http://127.0.0.1:8081/"
site = "eu"
capacity = 500
token = "file-token"
""".replace("@CHECK@", CHECK_EXAMPLE)

MINIMAL = """
[node]
name = "n1"

[[services]]
name = "web"
protocol = "tcp"
listen = "127.0.0.1:8000"
[[services.real]]
address = "127.0.0.1:9001"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> NodeConfig:
    return load_config(write(tmp_path, text), environ=env or {})


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    return info.value


def test_the_issue_example_loads_into_spec_objects(tmp_path: Path) -> None:
    config = load_text(tmp_path, EXAMPLE)
    assert config.node == NodeSettings("n1", "127.0.0.1:9100", "info")
    assert config.services == (
        ServiceSpec(
            name="web",
            protocol="tcp",
            host="127.0.0.1",
            port=8000,
            scheduler="wlc",
            real=(RealSpec("127.0.0.1", 9001, 1), RealSpec("127.0.0.1", 9002, 2)),
            persistence=PersistenceSpec(timeout=300.0, netmask=24, netmask6=128),
            fallback=RealSpec("127.0.0.1", 8099),
            check=CheckSpec("http", "/", "OK", 2.0, 1.0, 2, 3, None),
        ),
    )
    assert config.real_server_count == 2
    assert config.service("web") is config.services[0]
    assert config.source == str(tmp_path / "node.toml")
    report = config.report
    assert report is not None
    assert (report.url, report.site, report.capacity, report.interval) == (
        "http://127.0.0.1:8081",
        "eu",
        500,
        5.0,
    )
    assert report.load_url == "http://127.0.0.1:8081/api/v1/sites/eu/load"
    assert "file-token" not in repr(config)


def test_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL)
    assert config.node == NodeSettings("n1")
    assert config.report is None
    (web,) = config.services
    assert web == ServiceSpec("web", "tcp", "127.0.0.1", 8000, real=(RealSpec("127.0.0.1", 9001),))
    assert web.check == CheckSpec()
    assert (web.scheduler, web.dataplane, web.persistence, web.fallback) == (
        "wlc",
        "userspace",
        None,
        None,
    )
    with pytest.raises(KeyError):
        config.service("nope")


def test_a_node_without_services_is_valid() -> None:
    config = parse_config({"node": {"name": "n1"}}, environ={})
    assert config.services == ()
    assert config.real_server_count == 0


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_text(tmp_path, EXAMPLE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.services[0].real[0].weight = 9  # type: ignore[misc]


def test_the_documented_example_loads_and_every_key_is_documented() -> None:
    text = DOCS.read_text(encoding="utf-8")
    (example,) = re.findall(r"## Example\n\n```toml\n(.*?)```", text, flags=re.DOTALL)
    config = load_config_from_text(example)
    assert [s.name for s in config.services] == ["web", "dns"]
    assert config.services[1].check.agent_port == 9777
    summary = "2 service(s), 3 real server(s), reporting to http://127.0.0.1:8081 as site eu"
    assert summary in text
    for key in NODE_KEYS | SERVICE_KEYS | REAL_KEYS | PERSISTENCE_KEYS | CHECK_KEYS | REPORT_KEYS:
        assert f"| `{key}` |" in text, key
    for name in SCHEDULERS:
        assert f"`{name}`" in text, name
    variables = ("FARMNODE_CONFIG", "FARMNODE_STATUS_LISTEN", "FARMNODE_REPORT_TOKEN")
    for var in (*variables, "FARMNODE_LOG_FORMAT"):
        assert f"| `{var}` |" in text, var


def load_config_from_text(text: str) -> NodeConfig:
    return parse_config(tomllib.loads(text), "docs", environ={})


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_runs_on_the_userspace_plane(tmp_path: Path, name: str) -> None:
    text = MINIMAL.replace(
        'listen = "127.0.0.1:8000"', f'listen = "127.0.0.1:8000"\nscheduler = "{name}"'
    )
    assert load_text(tmp_path, text).services[0].scheduler == name


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_the_kernel_plane_refuses_what_it_cannot_do_at_the_scheduler(
    tmp_path: Path, name: str
) -> None:
    text = MINIMAL.replace(
        'listen = "127.0.0.1:8000"',
        f'listen = "127.0.0.1:8000"\nscheduler = "{name}"\ndataplane = "nftables"',
    )
    if name in ("rr", "wrr", "sh", "mh", "fo"):
        assert load_text(tmp_path, text).services[0].dataplane == "nftables"
        return
    error = error_of(tmp_path, text)
    assert error.path == "services[0].scheduler"
    assert f"scheduler {name!r}" in error.expected
    assert "rr, wrr, sh, mh" in error.expected


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ('scheduler = "sh"\npersistence = { timeout = 60 }', "persistence"),
        ('scheduler = "rr"\nlisten = "[::1]:8000"', "IPv4"),
        ('scheduler = "rr"\nlisten = "0.0.0.0:8000"', "0.0.0.0"),
    ],
)
def test_the_kernel_plane_refuses_the_rest_at_the_dataplane(
    tmp_path: Path, change: str, reason: str
) -> None:
    text = MINIMAL.replace('listen = "127.0.0.1:8000"', f'dataplane = "nftables"\n{change}')
    if "listen" not in change:
        text = text.replace(
            'dataplane = "nftables"', 'dataplane = "nftables"\nlisten = "127.0.0.1:8000"'
        )
    error = error_of(tmp_path, text)
    assert error.path == "services[0].dataplane"
    assert reason in error.expected


STATELESS = 'dataplane = "nftables"\nnat = "stateless"\nlisten = "10.0.0.1:80"\n'


def test_stateless_nat_is_read_for_the_hash_schedulers(tmp_path: Path) -> None:
    for scheduler in ("sh", "mh", "fo"):
        text = MINIMAL.replace(
            'listen = "127.0.0.1:8000"\n', f'{STATELESS}scheduler = "{scheduler}"\n'
        )
        assert load_text(tmp_path, text).services[0].nat == "stateless"
    assert load_text(tmp_path, MINIMAL).services[0].nat == "stateful"


@pytest.mark.parametrize(
    ("change", "path", "says"),
    [
        ('nat = "stateless"\nscheduler = "sh"', "services[0].nat", "mode of"),
        (f'{STATELESS}scheduler = "rr"', "services[0].scheduler", "sh, mh, fo"),
        (f'{STATELESS}scheduler = "wrr"', "services[0].scheduler", "client address"),
        (
            STATELESS.replace("stateless", "none") + 'scheduler = "sh"',
            "services[0].nat",
            "stateful",
        ),
    ],
)
def test_stateless_nat_errors(tmp_path: Path, change: str, path: str, says: str) -> None:
    text = MINIMAL.replace('listen = "127.0.0.1:8000"\n', change + "\n")
    if "listen" not in change:
        text = text.replace("[[services.real]]", 'listen = "127.0.0.1:8000"\n[[services.real]]')
    error = error_of(tmp_path, text)
    assert error.path == path
    assert says in error.expected


@pytest.mark.parametrize(
    ("value", "version"), [("true", 2), ("false", None), ('"v1"', 1), ('"v2"', 2)]
)
def test_send_proxy_versions(tmp_path: Path, value: str, version: int | None) -> None:
    """``true`` is version 2, as HAProxy's ``send-proxy-v2`` (binary: cheaper to parse)."""
    text = MINIMAL.replace(
        'listen = "127.0.0.1:8000"\n', f'listen = "127.0.0.1:8000"\nsend_proxy = {value}\n'
    )
    assert load_text(tmp_path, text).services[0].send_proxy == version
    assert load_text(tmp_path, MINIMAL).services[0].send_proxy is None


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ('send_proxy = "v3"', 'true, false, "v1" or "v2", got \'v3\''),
        ("send_proxy = 1", 'true, false, "v1" or "v2", got 1'),
        ('send_proxy = true\ndataplane = "nftables"', "the nftables plane forwards packets"),
        ('send_proxy = "v1"\nprotocol = "udp"\ncheck = { kind = "none" }', "TCP connections only"),
    ],
)
def test_send_proxy_errors(tmp_path: Path, change: str, says: str) -> None:
    text = MINIMAL.replace('protocol = "tcp"\n', "")
    if "protocol" not in change:
        change += '\nprotocol = "tcp"'
    text = text.replace('listen = "127.0.0.1:8000"\n', f'listen = "127.0.0.1:8000"\n{change}\n')
    error = error_of(tmp_path, text)
    assert error.path == "services[0].send_proxy"
    assert says in error.expected


def test_a_stateless_service_owns_its_real_servers(tmp_path: Path) -> None:
    """Its replies are recognised by server address and port alone: no other kernel-plane
    service of the protocol may use the same server (a userspace one may: the proxy's
    connections come from the switch itself)."""
    other = """
[[services]]
name = "other"
protocol = "tcp"
listen = "10.0.0.2:80"
scheduler = "rr"
dataplane = "@PLANE@"
[[services.real]]
address = "127.0.0.1:9001"
"""
    text = MINIMAL.replace('listen = "127.0.0.1:8000"\n', f'{STATELESS}scheduler = "sh"\n')
    error = error_of(tmp_path, text + other.replace("@PLANE@", "nftables"))
    assert error.path == "services[1].real"
    assert "127.0.0.1:9001 also serves services[0] 'web'" in error.expected
    assert load_text(tmp_path, text + other.replace("@PLANE@", "userspace")).services


def test_a_check_may_probe_another_port(tmp_path: Path) -> None:
    check = '\ncheck = { kind = "http", url = "/primary", port = 8008 }\n[[services.real]]'
    text = MINIMAL.replace("\n[[services.real]]", check)
    assert load_text(tmp_path, text).services[0].check.port == 8008
    for bad, says in (
        ('{ kind = "agent", agent_port = 9, port = 8008 }', 'no port unless kind is "http"'),
        ('{ kind = "tcp", port = 0 }', "1"),
    ):
        error = error_of(
            tmp_path, MINIMAL.replace("\n[[services.real]]", f"\ncheck = {bad}\n[[services.real]]")
        )
        assert error.path == "services[0].check.port"
        assert says in error.expected


def test_environment_overrides(tmp_path: Path) -> None:
    env = {"FARMNODE_STATUS_LISTEN": "[::1]:0", "FARMNODE_REPORT_TOKEN": " env-token "}
    config = load_text(tmp_path, EXAMPLE, env)
    assert config.node.status_listen == "[::1]:0"
    assert config.node.status_address == ("::1", 0)
    assert config.report is not None
    assert config.report.token == "env-token"


def test_the_report_token_may_come_from_the_environment_only(tmp_path: Path) -> None:
    text = EXAMPLE.replace('token = "file-token"\n', "")
    error = error_of(tmp_path, text)
    assert (error.path, error.source) == ("report.token", str(tmp_path / "node.toml"))
    assert "FARMNODE_REPORT_TOKEN" in error.expected
    config = load_text(tmp_path, text, {"FARMNODE_REPORT_TOKEN": "t"})
    assert config.report is not None
    assert config.report.token == "t"


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({"FARMNODE_REPORT_TOKEN": "  "}, "FARMNODE_REPORT_TOKEN"),
        ({"FARMNODE_REPORT_TOKEN": "a b"}, "FARMNODE_REPORT_TOKEN"),
        ({"FARMNODE_STATUS_LISTEN": "localhost:9100"}, "FARMNODE_STATUS_LISTEN"),
        ({"FARMNODE_STATUS_LISTEN": ""}, "FARMNODE_STATUS_LISTEN"),
        ({"FARMNODE_LOG_FORMAT": "xml"}, "FARMNODE_LOG_FORMAT"),
    ],
)
def test_bad_environment_values_name_the_environment(
    tmp_path: Path, env: dict[str, str], path: str
) -> None:
    error = error_of(tmp_path, EXAMPLE, env)
    assert (error.source, error.path) == ("<environment>", path)
    assert str(error).startswith(f"<environment>: {path}: ")


def test_log_level_and_format_from_the_file_or_the_environment(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'name = "n1"', 'name = "n1"\nlog_level = "error"\nlog_format = "json"', 1
    )
    config = load_text(tmp_path, text)
    assert (config.node.log_level, config.node.log_format) == ("error", "json")
    assert load_text(tmp_path, text, {"FARMNODE_LOG_FORMAT": "text"}).node.log_format == "text"
    assert load_text(tmp_path, MINIMAL).node.log_format == "text"
    bad = error_of(tmp_path, MINIMAL.replace('name = "n1"', 'name = "n1"\nlog_format = "xml"', 1))
    assert bad.path == "node.log_format"


def test_the_token_is_not_needed_without_a_report_table(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL, {"FARMNODE_REPORT_TOKEN": "unused"})
    assert config.report is None


def test_addresses_are_normalised_and_ipv6_is_bracketed() -> None:
    assert parse_address("[0:0::1]:80") == ("::1", 80)
    assert parse_address("127.0.0.1:0080") == ("127.0.0.1", 80)
    assert parse_address("10.0.0.1:65535") == ("10.0.0.1", 65535)
    assert parse_address("127.0.0.1:0", allow_port_zero=True) == ("127.0.0.1", 0)
    for bad, why in [
        ("::1:80", "brackets"),
        ("[127.0.0.1]:80", "brackets only"),
        ("[::1]80", "[v6]:port"),
        ("host.example:80", "not a host name"),
        ("127.000.0.1:80", "not a host name"),
        ("127.0.0.1", "host:port"),
        (":80", "host:port"),
        ("127.0.0.1:0", "1 to 65535"),
        ("127.0.0.1:65536", "1 to 65535"),
        ("127.0.0.1:\uff18\uff10", "a port number"),
        ("127.0.0.1:000000080", "a port number"),
    ]:
        with pytest.raises(ValueError, match=re.escape(why)):
            parse_address(bad)


def test_ipv6_services(tmp_path: Path) -> None:
    text = MINIMAL.replace("127.0.0.1:8000", "[::1]:8000").replace("127.0.0.1:9001", "[::1]:9001")
    (web,) = load_text(tmp_path, text).services
    assert (web.host, web.listen, web.real[0].key) == ("::1", "[::1]:8000", "[::1]:9001")


UDP_TWIN = """
[[services]]
name = "web-udp"
protocol = "udp"
listen = "127.0.0.1:8000"
check = { kind = "none" }
[[services.real]]
address = "127.0.0.1:9001"
"""


def test_tcp_and_udp_may_share_a_listen_address(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL + UDP_TWIN)
    assert [(s.protocol, s.listen) for s in config.services] == [
        ("tcp", "127.0.0.1:8000"),
        ("udp", "127.0.0.1:8000"),
    ]


@pytest.mark.parametrize("listen", ["127.0.0.1:8000", "0.0.0.0:8000"])
def test_two_tcp_services_cannot_share_an_address(tmp_path: Path, listen: str) -> None:
    twin = UDP_TWIN.replace('"udp"', '"tcp"').replace(
        'listen = "127.0.0.1:8000"', f'listen = "{listen}"'
    )
    error = error_of(tmp_path, MINIMAL + twin)
    assert error.path == "services[1].listen"
    assert "no other tcp service listens on (services[0] 'web' listens on 127.0.0.1:8000)" in (
        error.expected
    )


def test_a_wildcard_and_an_address_of_the_other_family_do_not_clash(tmp_path: Path) -> None:
    twin = UDP_TWIN.replace('"udp"', '"tcp"').replace('"127.0.0.1:8000"', '"[::]:8000"')
    assert len(load_text(tmp_path, MINIMAL + twin).services) == 2


def test_service_names_are_unique(tmp_path: Path) -> None:
    twin = UDP_TWIN.replace('name = "web-udp"', 'name = "web"')
    error = error_of(tmp_path, MINIMAL + twin)
    assert (error.path, error.expected) == (
        "services[1].name",
        "a unique service name ('web' is services[0]'s)",
    )


@pytest.mark.parametrize(
    ("listen", "real"),
    [
        ("127.0.0.1:8000", "127.0.0.1:8000"),
        ("0.0.0.0:8000", "127.0.0.1:8000"),
        ("[::]:8000", "[::1]:8000"),
    ],
)
def test_a_real_server_may_not_be_the_service_itself(
    tmp_path: Path, listen: str, real: str
) -> None:
    text = MINIMAL.replace('"127.0.0.1:8000"', f'"{listen}"').replace(
        '"127.0.0.1:9001"', f'"{real}"'
    )
    error = error_of(tmp_path, text)
    assert error.path == "services[0].real[0].address"
    assert "(a loop)" in error.expected


def test_the_fallback_may_not_be_the_service_itself(tmp_path: Path) -> None:
    text = MINIMAL.replace('protocol = "tcp"', 'protocol = "tcp"\nfallback = "127.0.0.1:8000"')
    assert error_of(tmp_path, text).path == "services[0].fallback"


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        ('name = "n1"', 'name = "N1"', "node.name", "lowercase letters"),
        ('name = "n1"', 'name = "-n1"', "node.name", "starting and ending"),
        ('name = "n1"', 'nom = "n1"', "node.nom", "expected one of log_format, log_level, name"),
        (
            'status_listen = "127.0.0.1:9100"',
            'status_listen = "localhost:9100"',
            "node.status_listen",
            "not a host name",
        ),
        (
            'status_listen = "127.0.0.1:9100"',
            'log_level = "loud"',
            "node.log_level",
            "debug, info, warning",
        ),
        ('name = "web"', 'name = "web_1"', "services[0].name", "lowercase letters"),
        (
            'protocol = "tcp"',
            'protocol = "sctp"',
            "services[0].protocol",
            "one of tcp, udp, got 'sctp'",
        ),
        ('protocol = "tcp"', "", "services[0].protocol", "this key is required"),
        ('listen = "127.0.0.1:8000"', 'listen = "127.0.0.1:0"', "services[0].listen", "1 to 65535"),
        ('listen = "127.0.0.1:8000"', "listen = 8000", "services[0].listen", "host:port"),
        ('scheduler = "wlc"', 'scheduler = "random"', "services[0].scheduler", "one of rr, wrr"),
        ("netmask = 24", "netmask = 33", "services[0].persistence.netmask", "from 0 to 32"),
        ("netmask = 24", "netmask6 = 129", "services[0].persistence.netmask6", "from 0 to 128"),
        ("timeout = 300,", "timeout = 0,", "services[0].persistence.timeout", "seconds >= 1"),
        ("timeout = 300,", "timeout = inf,", "services[0].persistence.timeout", "<= 604800"),
        ("netmask = 24", "netmask = 24, mask = 1", "services[0].persistence.mask", "unknown key"),
        (
            "persistence = { timeout = 300, netmask = 24 }",
            "persistence = true",
            "services[0].persistence",
            "a table",
        ),
        (
            'fallback = "127.0.0.1:8099"',
            'fallback = "0.0.0.0:8099"',
            "services[0].fallback",
            "not the wildcard",
        ),
        ('kind = "http"', 'kind = "ping"', "services[0].check.kind", "http, tcp, agent, none"),
        (
            'kind = "http"',
            'kind = "tcp"',
            "services[0].check.url",
            'no url unless kind = "http" (kind is "tcp")',
        ),
        ('url = "/"', 'url = "health"', "services[0].check.url", "a path starting with /"),
        ('url = "/"', 'url = "/a b"', "services[0].check.url", "no spaces"),
        ('expect = "OK"', "expect = 1", "services[0].check.expect", "a string"),
        ("interval = 2.0", "interval = -1", "services[0].check.interval", "seconds >= 0.05"),
        ("interval = 2.0", "interval = nan", "services[0].check.interval", "seconds >= 0.05"),
        ("interval = 2.0", "interval = 1e-9", "services[0].check.interval", "seconds >= 0.05"),
        ("interval = 2.0", "interval = inf", "services[0].check.interval", "<= 3600"),
        (
            "timeout = 1.0",
            "timeout = 2.5",
            "services[0].check.timeout",
            "seconds <= interval (2), got 2.5",
        ),
        ("rise = 2", "rise = 0", "services[0].check.rise", "from 1 to 100"),
        ("fall = 3", "fall = true", "services[0].check.fall", "from 1 to 100, got True"),
        ("fall = 3 }", "fall = 3, retries = 1 }", "services[0].check.retries", "unknown key"),
        ("weight = 2", "weight = 65536", "services[0].real[1].weight", "from 0 to 65535"),
        ("weight = 2", "weight = -1", "services[0].real[1].weight", "from 0 to 65535"),
        ("weight = 2", "weight = true", "services[0].real[1].weight", "whole number"),
        ("weight = 2", "weight = 1.5", "services[0].real[1].weight", "whole number"),
        (
            "weight = 2",
            "wieght = 2",
            "services[0].real[1].wieght",
            "unknown key; expected one of address, weight",
        ),
        (
            'address = "127.0.0.1:9002"',
            'address = "127.0.0.1:9001"',
            "services[0].real[1].address",
            "not already used by services[0].real[0]",
        ),
        (
            'address = "127.0.0.1:9002"',
            'address = "0.0.0.0:9002"',
            "services[0].real[1].address",
            "not the wildcard",
        ),
        (
            'address = "127.0.0.1:9002"',
            'address = "web2:9002"',
            "services[0].real[1].address",
            "not a host name",
        ),
        (
            'scheduler = "wlc"',
            'dataplane = "kernel"',
            "services[0].dataplane",
            "userspace, nftables",
        ),
        ('scheduler = "wlc"', 'quiescent = "yes"', "services[0].quiescent", "true or false"),
        (
            'scheduler = "wlc"',
            "expire_quiescent = 1",
            "services[0].expire_quiescent",
            "true or false",
        ),
        ('scheduler = "wlc"', "udp_idle = 0", "services[0].udp_idle", "<= 86400"),
        ('scheduler = "wlc"', "connect_timeout = 3601", "services[0].connect_timeout", "<= 3600"),
        ('scheduler = "wlc"', "colour = 1", "services[0].colour", "unknown key"),
        (
            'url = "http://127.0.0.1:8081/"',
            'url = "ftp://x"',
            "report.url",
            "the dispatcher's admin API: an absolute http",
        ),
        ('url = "http://127.0.0.1:8081/"', 'url = "http://h/?q=1"', "report.url", "no query"),
        ('site = "eu"', 'site = "e u"', "report.site", "the site's name at the dispatcher"),
        ('site = "eu"', "", "report.site", "this key is required"),
        ("capacity = 500", "capacity = 0", "report.capacity", "from 1 to 1000000000"),
        ("capacity = 500", "capacity = 1.5", "report.capacity", "whole number"),
        ("capacity = 500", "capacity = 500\ninterval = 0", "report.interval", "seconds >= 0.1"),
        ('token = "file-token"', 'token = "two words"', "report.token", "no spaces"),
        ('token = "file-token"', "token = 7", "report.token", "a bearer token"),
        (
            'token = "file-token"',
            'token = "x"\ncolour = 1',
            "report.colour",
            "unknown key; expected one of capacity, interval, site, token, url",
        ),
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


def test_tokens_are_never_echoed_in_errors(tmp_path: Path) -> None:
    error = error_of(tmp_path, EXAMPLE.replace('"file-token"', '"secret value"'))
    assert "secret" not in str(error)


@pytest.mark.parametrize(
    ("check", "path", "expected"),
    [
        ('{ kind = "agent" }', "services[0].check.agent_port", "this key is required"),
        ('{ kind = "agent", agent_port = 0 }', "services[0].check.agent_port", "from 1 to 65535"),
        (
            '{ kind = "tcp", agent_port = 9 }',
            "services[0].check.agent_port",
            'unless kind = "agent"',
        ),
        ('{ kind = "none", expect = "OK" }', "services[0].check.expect", 'unless kind = "http"'),
        ('"tcp"', "services[0].check", "a table"),
    ],
)
def test_check_keys_belong_to_their_kind(
    tmp_path: Path, check: str, path: str, expected: str
) -> None:
    error = error_of(tmp_path, EXAMPLE.replace(CHECK_EXAMPLE, f"check = {check}"))
    assert error.path == path
    assert expected in error.expected


@pytest.mark.parametrize(
    ("check", "spec"),
    [
        ('{ kind = "agent", agent_port = 9777 }', CheckSpec(kind="agent", agent_port=9777)),
        ('{ kind = "tcp", interval = 1, timeout = 1 }', CheckSpec(interval=1.0, timeout=1.0)),
        ('{ kind = "none" }', CheckSpec(kind="none")),
        ("{}", CheckSpec()),
    ],
)
def test_checks(tmp_path: Path, check: str, spec: CheckSpec) -> None:
    config = load_text(tmp_path, EXAMPLE.replace(CHECK_EXAMPLE, f"check = {check}"))
    assert config.services[0].check == spec


HEAD = '[node]\nname = "n"\n[[services]]\nname = "w"\nprotocol = "tcp"\nlisten = "127.0.0.1:1"\n'


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("", "node", "a [node] table"),
        ("node = 1", "node", "a table ([node])"),
        (
            '[node]\nname = "n"\n[colours]\nred = 1',
            "colours",
            "unknown key; expected one of cluster, groups, node, report, services",
        ),
        ('[node]\nname = "n"\n[services]\nname = "x"', "services", "an array of tables"),
        ('services = [1]\n[node]\nname = "n"', "services[0]", "a table ([[services]])"),
        (
            HEAD + "real = []",
            "services[0].real",
            "at least one real server",
        ),
        (
            HEAD + "real = [1]",
            "services[0].real[0]",
            "a table",
        ),
        (
            HEAD + "[[services.real]]\nweight = 1",
            "services[0].real[0].address",
            "this key is required",
        ),
        ('report = 1\n[node]\nname = "n"', "report", "a table ([report])"),
    ],
)
def test_document_shape_errors(tmp_path: Path, text: str, path: str, expected: str) -> None:
    error = error_of(tmp_path, text)
    assert error.path == path
    assert expected in error.expected


def test_syntax_errors_and_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node\.toml: valid TOML"):
        load_text(tmp_path, "[node\n")
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", environ={})
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[node]\nname = "\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8 text"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="a readable TOML file"):
        load_config(tmp_path, environ={})  # a directory


def test_the_process_environment_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARMNODE_STATUS_LISTEN", "127.0.0.2:9200")
    assert load_config(write(tmp_path, MINIMAL)).node.status_listen == "127.0.0.2:9200"


# --- property: no document makes the builder raise anything but ConfigError ---

scalars = st.one_of(st.integers(-(2**40), 2**40), st.floats(), st.booleans(), st.text(max_size=20))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
ADDRESSES = ["127.0.0.1:8000", "127.0.0.1:9001", "127.0.0.2:80", "0.0.0.0:8000", "[::1]:9", "h:1"]
SECONDS = [0.5, 1, 2.0, 3, 0, float("inf"), float("nan")]
PLAUSIBLE: dict[str, list[Any]] = {
    "name": ["n1", "web", "dns", "db", "Web"],
    "status_listen": ["127.0.0.1:0", "[::1]:9100", "127.0.0.1:9100", "localhost:1"],
    "log_level": ["info", "debug", "warning", "error", "loud"],
    "log_format": ["text", "json", "xml"],
    "status_tls_certificate": ["/nonexistent/cert.pem", "", 5],
    "status_tls_key": ["/nonexistent/key.pem", None],
    "status_tls_ca": ["/nonexistent/ca.pem", "", 5],
    "protocol": ["tcp", "udp", "tcp", "sctp"],
    "listen": ADDRESSES,
    "scheduler": [*sorted(SCHEDULERS), "random"],
    "dataplane": ["userspace", "nftables", "userspace", "kernel"],
    "nat": ["stateful", "stateless", "none"],
    "send_proxy": [True, False, "v1", "v2", "v3", 1],
    "quiescent": [True, False, 1],
    "expire_quiescent": [True, False, "yes"],
    "udp_idle": SECONDS,
    "connect_timeout": SECONDS,
    "fallback": ADDRESSES,
    "kind": ["http", "tcp", "agent", "none", "ping"],
    "url": ["/", "/health", "health", "http://127.0.0.1:8081", "https://d.example/", "ftp://x"],
    "expect": ["OK", "", 1],
    "interval": SECONDS,
    "timeout": SECONDS,
    "rise": [1, 2, 3, 0, True],
    "fall": [1, 3, 5, 101],
    "agent_port": [9777, 1, 0, 70000],
    "port": [8008, 1, 0, 70000],
    "netmask": [24, 32, 0, 33],
    "netmask6": [64, 128, 129],
    "address": ADDRESSES,
    "weight": [0, 1, 2, 65535, 65536, True, -1],
    "site": ["eu", "us", "e u"],
    "token": ["t", "secret", "a b", ""],
    "capacity": [1, 500, 1000, 0, 1.5],
}


def mostly(good: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` four times in five, else ``wild`` (one_of alone would pick half and half)."""
    return st.integers(0, 4).flatmap(lambda i: wild if i == 0 else good)


def value_for(key: str) -> st.SearchStrategy[Any]:
    return mostly(st.sampled_from(PLAUSIBLE[key]), values)


def table(
    keys: frozenset[str], required: frozenset[str] = frozenset()
) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly plausible tables of ``keys``, sometimes with a stray key or a wild value."""
    base = st.fixed_dictionaries(
        {k: value_for(k) for k in sorted(required)},
        optional={k: value_for(k) for k in sorted(keys - required)},
    )
    stray = st.dictionaries(st.text(max_size=8), values, max_size=1)
    return st.tuples(base, mostly(st.just({}), stray)).map(lambda pair: {**pair[0], **pair[1]})


service_tables = st.tuples(
    table(
        SERVICE_KEYS - {"real", "check", "persistence"}, frozenset({"name", "protocol", "listen"})
    ),
    st.fixed_dictionaries(
        {
            "real": st.one_of(
                *[st.lists(table(REAL_KEYS, frozenset({"address"})), max_size=3)] * 4, values
            )
        },
        optional={"check": table(CHECK_KEYS), "persistence": table(PERSISTENCE_KEYS)},
    ),
).map(lambda pair: {**pair[0], **pair[1]})
documents = st.fixed_dictionaries(
    {"node": mostly(table(NODE_KEYS, frozenset({"name"})), values)},
    optional={
        "services": mostly(st.lists(service_tables, max_size=3), values),
        "report": st.one_of(
            *[table(REPORT_KEYS, frozenset({"url", "site", "capacity"}))] * 4, values
        ),
    },
)


def tables_in(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every table in ``doc`` (keys and list indexes), the root included."""
    found: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        found.append(path)
        for key, value in doc.items():
            found += tables_in(value, (*path, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found += tables_in(value, (*path, index))
    return found


VALID = [
    tomllib.loads(EXAMPLE),
    tomllib.loads(
        re.findall(r"## Example\n\n```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), re.DOTALL)[
            0
        ]
    ),
]
DELETE = object()
mutations = st.lists(
    st.tuples(
        st.integers(0, 10**6),  # which table (modulo the number of tables)
        st.sampled_from([*sorted(PLAUSIBLE), "node", "services", "report", "check", "real"]),
        st.one_of(
            st.just(DELETE), values, st.sampled_from([v for vs in PLAUSIBLE.values() for v in vs])
        ),
    ),
    min_size=1,
    max_size=3,
)


@st.composite
def mutated_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with one to three keys set, replaced or deleted somewhere inside."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(VALID)))
    for which, key, value in draw(mutations):
        paths = tables_in(doc)
        table = doc
        for step in paths[which % len(paths)]:
            table = table[step]
        if value is DELETE:
            table.pop(key, None)
        else:
            table[key] = value
    return doc


def test_the_mutated_documents_start_valid() -> None:
    for doc in VALID:
        assert parse_config(doc, "doc.toml", environ={}).services


@settings(max_examples=600)
@given(
    st.one_of(documents, mutated_documents()),
    st.dictionaries(
        st.sampled_from(["FARMNODE_REPORT_TOKEN", "FARMNODE_STATUS_LISTEN"]), st.text(max_size=12)
    ),
)
def test_any_document_yields_a_config_or_a_config_error(
    doc: dict[str, Any], env: dict[str, str]
) -> None:
    try:
        config: NodeConfig | ConfigError = parse_config(doc, "doc.toml", environ=env)
    except ConfigError as exc:
        config = exc
    if isinstance(config, ConfigError):
        assert config.expected
        assert config.source in ("doc.toml", "<environment>")
        assert str(config).startswith(f"{config.source}: ")
    else:
        assert all(isinstance(s, ServiceSpec) and s.real for s in config.services)


UDP_SERVICE = """
[node]
name = "n1"

[[services]]
name = "dns"
protocol = "udp"
listen = "127.0.0.1:5353"
{check}
[[services.real]]
address = "127.0.0.1:5301"
"""


@pytest.mark.parametrize("check", ["", "check = { interval = 2.0 }"])
def test_a_udp_service_without_a_check_kind_is_refused(tmp_path: Path, check: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, UDP_SERVICE.format(check=check))
    assert caught.value.path == "services[0].check.kind"
    assert '"agent"' in caught.value.expected
    assert '"none"' in caught.value.expected


@pytest.mark.parametrize(
    ("check", "kind"),
    [
        ('check = { kind = "none" }', "none"),
        ('check = { kind = "agent", agent_port = 9777 }', "agent"),
        ('check = { kind = "tcp", port = 53 }', "tcp"),
    ],
)
def test_a_udp_service_with_a_chosen_check_kind_loads(
    tmp_path: Path, check: str, kind: str
) -> None:
    (dns,) = load_text(tmp_path, UDP_SERVICE.format(check=check)).services
    assert (dns.protocol, dns.check.kind) == ("udp", kind)


def test_check_config_does_not_hang_on_a_fifo_as_pg_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "pgdata"
    data.mkdir()
    os.mkfifo(data / "PG_VERSION")
    config = tmp_path / "node.toml"
    config.write_text(
        f"""
[node]
name = "n1"
[cluster]
name = "c"
key = "fifo-test-cluster-key-0123456789"
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:6940"
[[groups]]
name = "db"
[[groups.resources]]
agent = "postgresql"
data_dir = "{data}"
primary_host = "10.0.0.1"
user = "{pwd.getpwuid(os.getuid()).pw_name}"
""",
        encoding="utf-8",
    )
    assert farmnode_run(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "groups[0].resources[0].data_dir" in err
    assert "PG_VERSION" in err
