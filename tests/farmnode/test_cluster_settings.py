"""``[cluster]`` and ``[[groups]]``: one frozen ClusterSettings; every error names source, key path
and expectation, and the key is never echoed."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmnode.cluster.election import Planner
from farmnode.cluster.settings import (
    CLUSTER_KEYS,
    KEY_ENV,
    ClusterSettings,
    TransportSettings,
    parse_cluster,
)
from farmnode.errors import ConfigError

KEY = "0123456789abcdef-secret"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cluster.md"

EXAMPLE = f"""
[cluster]
name = "eu-front"
priority = 150
interval = 0.2
deadtime = 1.0
auto_failback = false
key = "{KEY}"
[[cluster.transports]]
kind = "udp"
bind = "10.213.0.11:6940"
[[cluster.transports]]
kind = "serial"
device = "/dev/ttyS1"
[[cluster.peers]]
name = "n2"
addresses = ["10.213.0.12:6940"]
[[groups]]
name = "front"
[[groups.resources]]
agent = "ipaddr"
address = "10.213.0.50/24"
interface = "eth0"
"""

FULL = f"""
[cluster]
name = "eu-front"
priority = 200
role = "member"
interval = 0.1
deadtime = 0.5
warntime = 0.3
initdead = 4.0
auto_failback = true
preempt_delay = 5
key = "{KEY}"
notify = ["/usr/local/bin/notify", "--mail"]
[[cluster.transports]]
kind = "udp"
bind = "[fd00::11]:6940"
[[cluster.transports]]
kind = "multicast"
group = "239.0.0.69"
port = 6941
interface = "eth1"
ttl = 2
[[cluster.transports]]
kind = "serial"
device = "/dev/ttyS1"
baudrate = 115200
[[cluster.peers]]
name = "n2"
addresses = ["[fd00::12]:6940", "10.213.0.12:6940"]
[[cluster.peers]]
name = "w"
addresses = ["10.213.0.13:6940"]
[[groups]]
name = "front"
failures_before_move = 3
failure_timeout = 120
[[groups.resources]]
agent = "ipaddr"
address = "fd00::50/64"
interface = "eth0"
arp_count = 5
[[groups.resources]]
agent = "switch"
service = "web"
start_timeout = 5
[[groups]]
name = "db"
[[groups.resources]]
name = "vip"
agent = "ocf"
type = "heartbeat/IPaddr2"
params = {{ ip = "10.213.0.51", cidr_netmask = 24, lvs_support = false }}
monitor_interval = 5
monitor_timeout = 2.5
[[groups.resources]]
agent = "script"
path = "/etc/init.d/postgresql"
"""


def parse(text: str, env: dict[str, str] | None = None, **kw: Any) -> ClusterSettings | None:
    doc = tomllib.loads(text)
    return parse_cluster(doc.get("cluster"), doc.get("groups", []), "node.toml", env or {}, **kw)


def doc_of(text: str = EXAMPLE) -> dict[str, Any]:
    return tomllib.loads(text)


def error(doc: dict[str, Any], env: dict[str, str] | None = None, **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_cluster(doc.get("cluster"), doc.get("groups", []), "node.toml", env or {}, **kw)
    return info.value


def test_the_issue_example_parses_with_defaults() -> None:
    c = parse(EXAMPLE, node_name="n1")
    assert c is not None
    assert (c.name, c.priority, c.role, c.key) == ("eu-front", 150, "member", KEY.encode())
    assert (c.interval, c.deadtime, c.warntime, c.initdead) == (0.2, 1.0, 0.5, 2.0)
    assert (c.auto_failback, c.preempt_delay, c.notify) == (False, 0.0, ())
    assert c.transports == (
        TransportSettings("udp", bind=("10.213.0.11", 6940)),
        TransportSettings("serial", device="/dev/ttyS1"),
    )
    assert [t.label for t in c.transports] == ["udp:10.213.0.11:6940", "serial:/dev/ttyS1"]
    assert c.peers[0].addresses == (("10.213.0.12", 6940),)
    (resource,) = c.group("front").resources
    assert (resource.agent, resource.name) == ("ipaddr", "ipaddr0")
    assert dict(resource.params) == {"address": "10.213.0.50/24", "interface": "eth0"}
    assert c.voters == 2
    assert any("two-node cluster without a witness" in w for w in c.warnings)
    assert KEY not in repr(c)


def test_every_key_parses() -> None:
    c = parse(FULL, {}, node_name="n1", service_names={"web"})
    assert c is not None
    assert (c.interval, c.deadtime, c.warntime, c.initdead) == (0.1, 0.5, 0.3, 4.0)
    assert (c.auto_failback, c.preempt_delay) == (True, 5.0)
    assert c.notify == ("/usr/local/bin/notify", "--mail")
    assert c.transports[1] == TransportSettings(
        "multicast", group="239.0.0.69", port=6941, interface="eth1", ttl=2
    )
    assert c.transports[2].baudrate == 115200
    assert c.peers[0].addresses == (("fd00::12", 6940), ("10.213.0.12", 6940))
    assert c.voters == 3
    assert c.warnings == ()
    front, db = c.groups
    assert (front.failures_before_move, front.failure_timeout) == (3, 120.0)
    assert front.resources[0].params["arp_count"] == 5  # kept verbatim for the agent
    assert front.resources[1].start_timeout == 5.0
    vip = db.resources[0]
    assert (vip.name, vip.params["type"]) == ("vip", "heartbeat/IPaddr2")
    assert vip.params["params"] == {"ip": "10.213.0.51", "cidr_netmask": 24, "lvs_support": False}
    assert vip.agent_table() == {
        "agent": "ocf",
        "type": "heartbeat/IPaddr2",
        "params": vip.params["params"],
        "start_timeout": 20.0,
        "stop_timeout": 20.0,
        "monitor_timeout": 2.5,
    }
    assert (vip.monitor_interval, vip.monitor_timeout) == (5.0, 2.5)
    assert db.resources[1].params["path"] == "/etc/init.d/postgresql"
    planner = Planner.from_settings("n1", c, incarnation=7)
    assert planner.settle == pytest.approx(0.4)
    assert dataclasses.is_dataclass(c)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.name = "x"  # type: ignore[misc]


def test_no_cluster_and_no_groups_is_none_and_groups_need_a_cluster() -> None:
    assert parse_cluster(None, [], "node.toml", {}) is None
    doc = doc_of()
    del doc["cluster"]
    assert error(doc).path == "cluster"


def test_the_environment_key_wins_and_is_checked_without_echo() -> None:
    c = parse(EXAMPLE, {KEY_ENV: "0123456789abcdef"})
    assert c is not None
    assert c.key == b"0123456789abcdef"
    doc = doc_of()
    del doc["cluster"]["key"]
    e = error(doc)
    assert (e.path, e.source) == ("cluster.key", "node.toml")
    assert KEY_ENV in e.expected
    e = error(doc_of(), {KEY_ENV: "short"})
    assert (e.source, e.path) == ("<environment>", KEY_ENV)
    assert "short" not in str(e)
    doc = doc_of()
    doc["cluster"]["key"] = "fifteen-bytes.."
    e = error(doc)
    assert e.path == "cluster.key"
    assert "fifteen" not in str(e)


@pytest.mark.parametrize(
    ("where", "value", "path", "says"),
    [
        (("cluster", "name"), "EU", "cluster.name", "lowercase"),
        (("cluster", "priority"), 256, "cluster.priority", "0 to 255"),
        (("cluster", "priority"), True, "cluster.priority", "whole number"),
        (("cluster", "role"), "arbiter", "cluster.role", "member, witness"),
        (("cluster", "interval"), 0, "cluster.interval", ">= 0.05"),
        (("cluster", "interval"), 1e-300, "cluster.interval", ">= 0.05"),
        (("cluster", "interval"), float("nan"), "cluster.interval", ">= 0.05"),
        (("cluster", "deadtime"), float("inf"), "cluster.deadtime", "<= 3600"),
        (("cluster", "deadtime"), 0.5, "cluster.deadtime", ">= 3 x interval (0.6)"),
        (("cluster", "warntime"), 1.0, "cluster.warntime", "< deadtime"),
        (("cluster", "warntime"), 0.1, "cluster.warntime", ">= interval"),
        (("cluster", "initdead"), 0.9, "cluster.initdead", ">= deadtime"),
        (("cluster", "auto_failback"), "yes", "cluster.auto_failback", "true or false"),
        (("cluster", "preempt_delay"), 5, "cluster.preempt_delay", "auto_failback = true"),
        (("cluster", "notify"), "notify.sh", "cluster.notify", "absolute path"),
        (("cluster", "notify"), [], "cluster.notify", "argv"),
        (("cluster", "heartbeat"), 1, "cluster.heartbeat", "unknown key"),
        (("cluster", "transports"), [], "cluster.transports", "at least one transport"),
        (("cluster", "peers"), {}, "cluster.peers", "array of tables"),
    ],
)
def test_cluster_values_are_checked(
    where: tuple[str, str], value: Any, path: str, says: str
) -> None:
    doc = doc_of()
    doc[where[0]][where[1]] = value
    e = error(doc)
    assert (e.source, e.path) == ("node.toml", path)
    assert says in e.expected


TRANSPORT_CASES = [
    ({"kind": "tcp"}, "cluster.transports[0].kind", "udp, multicast, serial"),
    ({"kind": "udp"}, "cluster.transports[0].bind", "required"),
    ({"kind": "udp", "bind": "eth0:6940"}, "cluster.transports[0].bind", "IP address"),
    (
        {"kind": "udp", "bind": "10.0.0.1:1", "device": "/dev/x"},
        "cluster.transports[0].device",
        "unknown key",
    ),
    (
        {"kind": "multicast", "group": "10.0.0.1", "interface": "eth0"},
        "cluster.transports[0].group",
        "multicast",
    ),
    ({"kind": "multicast", "group": "239.1.1.1"}, "cluster.transports[0].interface", "required"),
    (
        {"kind": "multicast", "group": "ff02::69", "interface": "e/th0"},
        "cluster.transports[0].interface",
        "interface name",
    ),
    (
        {"kind": "multicast", "group": "239.1.1.1", "interface": "eth0", "ttl": 0},
        "cluster.transports[0].ttl",
        "1 to 255",
    ),
    ({"kind": "serial", "device": "ttyS1"}, "cluster.transports[0].device", "/dev/ttyS1"),
    (
        {"kind": "serial", "device": "/dev/ttyS1", "baudrate": 1200},
        "cluster.transports[0].baudrate",
        "19200",
    ),
]


@pytest.mark.parametrize(("table", "path", "says"), TRANSPORT_CASES)
def test_transports_are_checked(table: dict[str, Any], path: str, says: str) -> None:
    doc = doc_of()
    doc["cluster"]["transports"][0] = table
    e = error(doc)
    assert e.path == path
    assert says in e.expected


def test_a_transport_listed_twice_and_peers_are_checked() -> None:
    doc = doc_of()
    doc["cluster"]["transports"].append({"kind": "serial", "device": "/dev/ttyS1"})
    assert error(doc).path == "cluster.transports[2]"
    doc = doc_of()
    doc["cluster"]["peers"].append({"name": "n2", "addresses": ["10.0.0.9:1"]})
    assert "listed twice" in error(doc).expected
    doc = doc_of()
    assert error(doc, node_name="n2").path == "cluster.peers[0].name"
    doc["cluster"]["peers"][0]["addresses"] = []
    assert error(doc).path == "cluster.peers[0].addresses"
    doc["cluster"]["peers"][0]["addresses"] = ["10.0.0.1:1", "10.0.0.1:1"]
    assert "listed twice" in error(doc).expected
    doc["cluster"]["peers"][0]["addresses"] = ["10.0.0.1:1", "nope"]
    assert error(doc).path == "cluster.peers[0].addresses[1]"
    doc = doc_of()
    doc["cluster"]["transports"] = [{"kind": "serial", "device": "/dev/ttyS1"}]
    assert "without a udp transport" in error(doc).expected
    del doc["cluster"]["peers"][0]["addresses"]
    assert parse_cluster(doc["cluster"], doc["groups"], "f", {}) is not None


def test_three_voters_need_deadtime_of_five_intervals() -> None:
    doc = doc_of()
    doc["cluster"]["peers"].append({"name": "w", "addresses": ["10.213.0.13:6940"]})
    doc["cluster"]["deadtime"] = 0.8
    e = error(doc)
    assert e.path == "cluster.deadtime"
    assert "three or more voters" in e.expected
    doc["cluster"]["deadtime"] = 1.0
    c = parse_cluster(doc["cluster"], doc["groups"], "f", {})
    assert c is not None
    assert c.voters == 3


def test_a_witness_owns_no_groups() -> None:
    doc = doc_of()
    doc["cluster"]["role"] = "witness"
    e = error(doc)
    assert e.path == "groups"
    del doc["groups"]
    c = parse_cluster(doc["cluster"], [], "f", {})
    assert c is not None
    assert c.role == "witness"


RESOURCE_CASES = [
    ({"agent": "vip"}, "groups[0].resources[0].agent", "ipaddr, switch, ocf, script"),
    ({"interface": "eth0"}, "groups[0].resources[0].agent", "required"),
    ({"agent": "ipaddr", "interface": "eth0"}, "groups[0].resources[0].address", "needs address"),
    (
        {"agent": "ipaddr", "address": "10.0.0.5", "interface": "eth0"},
        "groups[0].resources[0].address",
        "prefix length",
    ),
    (
        {"agent": "ipaddr", "address": "10.0.0.0/24", "interface": "eth0"},
        "groups[0].resources[0].address",
        "unicast",
    ),
    (
        {"agent": "ipaddr", "address": "224.0.0.5/24", "interface": "eth0"},
        "groups[0].resources[0].address",
        "unicast",
    ),
    (
        {"agent": "ipaddr", "address": "10.0.0.300/24", "interface": "eth0"},
        "groups[0].resources[0].address",
        "prefix length",
    ),
    (
        {"agent": "ipaddr", "address": "10.0.0.5/24", "interface": "a-very-long-interface"},
        "groups[0].resources[0].interface",
        "interface name",
    ),
    (
        {"agent": "ipaddr", "address": "10.0.0.5/24", "interface": "eth0", "arp": True},
        "groups[0].resources[0].arp",
        "a known parameter (address, arp_count",
    ),
    (
        {"agent": "ipaddr", "address": "10.0.0.5/24", "interface": "eth0", "arp_count": "5"},
        "groups[0].resources[0].arp_count",
        "an integer",
    ),
    (
        {"agent": "ipaddr", "address": "10.0.0.5/24", "interface": "eth0", "x": [1]},
        "groups[0].resources[0].x",
        "a string without NUL, a number or true/false",
    ),
    ({"agent": "switch"}, "groups[0].resources[0].service", "needs service"),
    ({"agent": "switch", "service": "Web"}, "groups[0].resources[0].service", "lowercase"),
    ({"agent": "switch", "service": "dns"}, "groups[0].resources[0].service", "[[services]] (web)"),
    ({"agent": "ocf"}, "groups[0].resources[0].type", "exactly one of type"),
    ({"agent": "ocf", "type": "IPaddr2"}, "groups[0].resources[0].type", "heartbeat/IPaddr2"),
    ({"agent": "ocf", "type": "../../x/y"}, "groups[0].resources[0].type", "heartbeat/IPaddr2"),
    (
        {"agent": "ocf", "type": "heartbeat/IPaddr2", "params": {"ip": {}}},
        "groups[0].resources[0].params.ip",
        "a string without NUL, a number or true/false",
    ),
    (
        {"agent": "ocf", "type": "heartbeat/IPaddr2", "params": "ip=1"},
        "groups[0].resources[0].params",
        "a table",
    ),
    ({"agent": "script", "path": "init.d/x"}, "groups[0].resources[0].path", "absolute path"),
    (
        {"agent": "script", "path": "/x", "start_timeout": 0},
        "groups[0].resources[0].start_timeout",
        ">= 0.1",
    ),
    (
        {"agent": "script", "path": "/x", "monitor_interval": 1, "monitor_timeout": 2},
        "groups[0].resources[0].monitor_timeout",
        "<= monitor_interval (1)",
    ),
    (
        {"agent": "script", "path": "/x", "name": "Bad Name"},
        "groups[0].resources[0].name",
        "lowercase",
    ),
]


@pytest.mark.parametrize(("table", "path", "says"), RESOURCE_CASES)
def test_resources_are_checked(table: dict[str, Any], path: str, says: str) -> None:
    doc = doc_of()
    doc["groups"][0]["resources"][0] = table
    e = error(doc, service_names={"web"})
    assert e.path == path
    assert says in e.expected


def test_groups_are_checked() -> None:
    doc = doc_of()
    doc["groups"].append(copy.deepcopy(doc["groups"][0]))
    assert error(doc).path == "groups[1].name"
    doc["groups"][1]["name"] = "other"
    e = error(doc)  # the same floating address in two groups
    assert e.path == "groups[1].resources[0].address"
    assert "groups[0].resources[0]" in e.expected
    doc = doc_of()
    first = doc["groups"][0]["resources"][0]
    first["name"] = "vip"
    doc["groups"][0]["resources"].append(dict(first, address="10.0.0.9/8"))
    assert error(doc).path == "groups[0].resources[1].name"
    for key, value, path in [
        ("resources", [], "groups[0].resources"),
        ("failures_before_move", 0, "groups[0].failures_before_move"),
        ("failure_timeout", -1, "groups[0].failure_timeout"),
        ("owner", "n1", "groups[0].owner"),
    ]:
        doc = doc_of()
        doc["groups"][0][key] = value
        assert error(doc).path == path
    assert error({"cluster": doc_of()["cluster"], "groups": {"name": "x"}}).path == "groups"


def test_every_cluster_key_is_documented_and_the_docs_example_is_valid() -> None:
    docs = DOCS.read_text("utf-8")
    for key in sorted(CLUSTER_KEYS):
        assert f"`{key}`" in docs, key
    example = docs.split("```toml\n", 1)[1].split("```", 1)[0]
    c = parse(
        example, {KEY_ENV: "docs-example-key-0123456789"}, node_name="n1", service_names={"web"}
    )
    assert c is not None
    assert (c.voters, c.warnings, [g.name for g in c.groups]) == (3, (), ["front", "db"])


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(
    section=st.sampled_from(["cluster", "transport", "peer", "group", "resource"]),
    key=st.sampled_from(
        ["name", "kind", "bind", "agent", "address", "interval", "deadtime", "addresses", "x"]
    ),
    value=JSONISH,
    env_key=st.one_of(st.none(), st.text(max_size=20)),
)
def test_any_document_gives_settings_or_a_config_error(
    section: str, key: str, value: Any, env_key: str | None
) -> None:
    doc = doc_of(FULL)
    target = {
        "cluster": doc["cluster"],
        "transport": doc["cluster"]["transports"][0],
        "peer": doc["cluster"]["peers"][0],
        "group": doc["groups"][0],
        "resource": doc["groups"][0]["resources"][0],
    }[section]
    target[key] = value
    env = {} if env_key is None else {KEY_ENV: env_key}
    c: ClusterSettings | None = None
    problem: ConfigError | None = None
    try:
        c = parse_cluster(doc["cluster"], doc["groups"], "f", env)
    except ConfigError as e:
        problem = e
    if problem is not None:
        assert problem.source in ("f", "<environment>")
        assert problem.path
        assert KEY not in str(problem)
    else:
        assert c is not None
        assert c.deadtime >= 3 * c.interval - 1e-9
        assert c.interval <= c.warntime < c.deadtime <= c.initdead


@pytest.mark.parametrize(
    "key", [" " * 16, " " * 40, "\t" * 20, "a" * 32, "abab" * 8, "  0123456789abcd  "]
)
def test_a_blank_short_or_repetitive_key_is_refused_without_echo(key: str) -> None:
    doc = doc_of()
    doc["cluster"]["key"] = key
    e = error(doc)
    assert e.path == "cluster.key"
    assert "white space" in e.expected
    e = error(doc_of(), {KEY_ENV: key})
    assert (e.source, e.path) == ("<environment>", KEY_ENV)
    assert not key.strip() or key.strip() not in str(e)


def test_an_agent_parameter_with_a_nul_is_refused() -> None:
    doc = doc_of()
    doc["groups"][0]["resources"][0]["interface"] = "eth\x000"
    e = error(doc)
    assert e.path == "groups[0].resources[0].interface"
    assert "\x00" not in str(e)
