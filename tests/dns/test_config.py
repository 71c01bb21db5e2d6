"""``[dns]`` in the configuration: a full example, each mistake named by its key, hostile
mutants through ``check-config`` (exit 0 or 2, never a traceback), TTL syntax under
hypothesis, and site addresses."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.__main__ import run as dispatcher_run
from dispatcher.backends.sites import SiteSpec, parse_site, update_site
from dispatcher.config import build_config
from dispatcher.dns.config import Ttl, parse_ttl
from dispatcher.dns.names import from_text, to_text
from dispatcher.errors import ConfigError, InvalidValue
from tests.test_check_config_fuzz import FUZZ, Path_, check, mutants, replaced
from tests.tomlwrite import dumps

EXAMPLE = """
[dispatcher]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:8081"
admin_tokens = ["change-me"]

[[sites]]
name = "eu"
base_url = "http://192.0.2.10:8080"
addresses = ["192.0.2.10", "2001:db8::10"]

[[sites]]
name = "us"
base_url = "http://us.example.net"
addresses = ["198.51.100.10"]

[dns]
listen = ["127.0.0.1:5353", "[::1]:5353"]
zones = ["farm.example.", "Other.Example"]
ns = ["ns1.farm.example.", "ns2.elsewhere.example."]
max_udp_payload = 1232
tcp_idle_timeout = 10.0
tcp_max_connections = 1000
tcp_max_queries = 100
tcp_max_message = 4096
rrl_rate = 20
rrl_slip = 2
rrl_table = 100000

[dns.soa]
rname = "hostmaster@farm.example"
serial = "auto"
refresh = 3600
retry = 600
expire = 604800
minimum = 60
ttl = 3600

[[dns.names]]
name = "www.farm.example."
pool = "default"
ttl = "20/5"
answers = 2
all_down = "failsafe"
failsafe = ["192.0.2.99"]

[[dns.names]]
name = "ns1.farm.example."
addresses = ["192.0.2.53"]
ttl = 3600

[[dns.names]]
name = "other.example."
pool = "default"
"""

DOC = tomllib.loads(EXAMPLE)


def build(doc: dict[str, Any]) -> Any:
    return build_config(doc, environ={})


def test_the_example_builds() -> None:
    config = build(DOC)
    dns = config.dns
    assert dns is not None
    assert dns.listen == ("127.0.0.1:5353", "[::1]:5353")
    assert [to_text(z) for z in dns.zones] == ["farm.example.", "other.example."]
    assert to_text(dns.soa.mname) == "ns1.farm.example."  # default: the first NS
    assert to_text(dns.soa.rname) == "hostmaster.farm.example."
    assert dns.soa.serial is None
    assert dns.soa.negative_ttl == 60
    www = dns.names[0]
    assert (www.ttl, www.answers, www.all_down, www.failsafe) == (
        Ttl(20, 5),
        2,
        "failsafe",
        ("192.0.2.99",),
    )
    assert dns.names[2].ttl == Ttl(20, 20)
    assert dns.names[2].all_down == "fail-open"
    eu, _us = config.sites
    assert eu.addresses == ("192.0.2.10", "2001:db8::10")
    assert build({k: v for k, v in DOC.items() if k != "dns"}).dns is None


def _without(table: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != key}


def _dns(**changes: Any) -> dict[str, Any]:
    return replaced(DOC, ("dns",), {**DOC["dns"], **changes})


def _name(index: int, **changes: Any) -> dict[str, Any]:
    names = [dict(n) for n in DOC["dns"]["names"]]
    names[index].update(changes)
    return _dns(names=names)


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        (_dns(listen=[]), "dns.listen"),
        (_dns(listen=["127.0.0.1:5353", "127.0.0.1:5353"]), "dns.listen[1]"),
        (_dns(listen=["127.0.0.1:8080"]), "dns.listen[0]"),  # the HTTP listener's
        (_dns(listen=["localhost"]), "dns.listen[0]"),
        (_dns(zones=[]), "dns.zones"),
        (_dns(zones=["."]), "dns.zones[0]"),
        (_dns(zones=["farm.example.", "eu.farm.example."]), "dns.zones[1]"),
        (_dns(zones=["bad_zone!"]), "dns.zones[0]"),
        (_dns(zones=["a" * 64 + ".example."]), "dns.zones[0]"),
        (_dns(ns=[]), "dns.ns"),
        (_dns(ns=[f"ns{i}.example." for i in range(14)]), "dns.ns"),
        (_dns(soa={"serial": -1}), "dns.soa.serial"),
        (_dns(soa={"serial": 2**32}), "dns.soa.serial"),
        (_dns(soa={"minimum": "60"}), "dns.soa.minimum"),
        (_dns(soa={"rname": "a.b@farm.example"}), "dns.soa.rname"),
        (_dns(soa={"mnam": "x."}), "dns.soa.mnam"),
        (_dns(max_udp_payload=511), "dns.max_udp_payload"),
        (_dns(tcp_idle_timeout=float("nan")), "dns.tcp_idle_timeout"),
        (_dns(rrl_slip=11), "dns.rrl_slip"),
        (_dns(rrl_ipv4_prefix=33), "dns.rrl_ipv4_prefix"),
        (_dns(bogus=1), "dns.bogus"),
        (_name(0, name="www.example.com."), "dns.names[0].name"),
        (_name(0, pool="nope"), "dns.names[0].pool"),
        (_name(0, ttl="5/20"), "dns.names[0].ttl"),
        (_name(0, ttl="20/"), "dns.names[0].ttl"),
        (_name(0, ttl="-1"), "dns.names[0].ttl"),
        (_name(0, ttl=10**9), "dns.names[0].ttl"),
        (_name(0, answers=0), "dns.names[0].answers"),
        (_name(0, answers=17), "dns.names[0].answers"),
        (_name(0, all_down="sorry"), "dns.names[0].all_down"),
        (_name(0, failsafe=[]), "dns.names[0].failsafe"),
        (_name(0, failsafe=["192.0.2.300"]), "dns.names[0].failsafe[0]"),
        (_name(2, failsafe=["192.0.2.1"]), "dns.names[2].failsafe"),
        (_name(1, pool="default"), "dns.names[1]"),  # both pool and addresses
        (_name(1, addresses=[]), "dns.names[1].addresses"),
        (_name(1, name="www.farm.example."), "dns.names[1].name"),  # twice
        (_name(1, name="WWW.Farm.Example"), "dns.names[1].name"),  # twice, any case
    ],
)
def test_each_mistake_is_named(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(doc)
    assert caught.value.path == key, caught.value


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (["192.0.2.1", "192.0.2.1"], "addresses[1]"),
        (["fe80::1%eth0"], "addresses[0]"),
        (["example.com"], "addresses[0]"),
        ([f"192.0.2.{i}" for i in range(17)], "addresses"),
        ("192.0.2.1", "addresses"),
    ],
)
def test_site_addresses_are_checked(value: Any, key: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        parse_site({"name": "eu", "base_url": "http://eu.example", "addresses": value})
    assert caught.value.field == key


def test_site_addresses_default_to_an_ip_base_url_and_can_be_changed() -> None:
    assert SiteSpec("a", "http://192.0.2.7:8080").dns_addresses == ("192.0.2.7",)
    assert SiteSpec("a", "http://[2001:db8::7]:8080").dns_addresses == ("2001:db8::7",)
    assert SiteSpec("a", "http://eu.example").dns_addresses == ()
    site = parse_site({"name": "a", "base_url": "http://eu.example"})
    changed = update_site(site, {"addresses": ["2001:DB8:0::9"]})
    assert changed.addresses == ("2001:db8::9",)
    assert changed.as_dict()["addresses"] == ["2001:db8::9"]


@given(st.one_of(st.integers(), st.text(max_size=12), st.none(), st.floats(), st.booleans()))
def test_ttl_syntax(value: Any) -> None:
    try:
        ttl = parse_ttl(value, "t")
    except InvalidValue as exc:
        field = exc.field
        assert field == "t"
        return
    assert 0 <= ttl.low <= ttl.high <= 7 * 86_400
    assert parse_ttl(str(ttl), "t") == ttl


@given(st.text(max_size=80))
def test_name_syntax(value: str) -> None:
    try:
        wire = from_text(value, "n")
    except InvalidValue:
        return
    assert len(wire) <= 255
    assert from_text(to_text(wire), "n") == wire


def test_check_config_says_what_dns_serves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "farm.toml"
    config.write_text(EXAMPLE, encoding="utf-8")
    assert dispatcher_run(["check-config", "--config", str(config)]) == 0
    assert "dns: 3 name(s) in 2 zone(s)" in capsys.readouterr().out
    config.write_text(EXAMPLE.replace('ttl = "20/5"', 'ttl = "5/20"'), encoding="utf-8")
    assert dispatcher_run(["check-config", "--config", str(config)]) == 2
    assert "dns.names[0].ttl" in capsys.readouterr().err


@FUZZ
@given(mutant=mutants({"dns": DOC["dns"]}))
def test_check_config_on_dns_mutants(
    mutant: tuple[Path_, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, value = mutant
    check(dispatcher_run, replaced(DOC, path, value), path, tmp_path, capsys)


def test_mutants_are_written_as_toml() -> None:
    assert tomllib.loads(dumps(DOC)) == DOC
