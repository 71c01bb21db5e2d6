"""The agent contract without the network: parameters, meta-data, packets, runner, groups.

Packets are checked byte by byte and by property (hypothesis); the ``script`` agent and
resource groups run real shell scripts written to ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import stat
import struct
from pathlib import Path
from typing import ClassVar
from xml.etree import ElementTree

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmnode.agents import (
    AGENTS,
    Action,
    Agent,
    AgentParamError,
    IpAddr,
    OcfResult,
    ResourceGroup,
    ScriptAgent,
    build_agent,
    run_action,
)
from farmnode.agents.arp import (
    ARP_REPLY,
    ARP_REQUEST,
    BROADCAST_MAC,
    NA_FLAG_OVERRIDE,
    ZERO_MAC,
    arp_frame,
    arp_frames,
    format_mac,
    neighbor_advert,
    parse_arp_frame,
    parse_mac,
    parse_neighbor_advert,
)
from farmnode.agents.base import Param
from farmnode.agents.script import lsb_status
from farmnode.errors import ConfigError

pytestmark = pytest.mark.anyio

MAC = bytes.fromhex("020000000011")
macs = st.binary(min_size=6, max_size=6)
ipv4s = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
ipv6s = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)


# --- results and parameters ---------------------------------------------------------------


def test_exit_codes() -> None:
    assert [OcfResult.from_exit_code(c) for c in (0, 5, 7)] == [
        OcfResult.SUCCESS,
        OcfResult.ERR_INSTALLED,
        OcfResult.NOT_RUNNING,
    ]
    assert OcfResult.from_exit_code(8) is OcfResult.ERR_GENERIC
    assert OcfResult.from_exit_code(-9) is OcfResult.ERR_GENERIC
    assert [lsb_status(c) for c in (0, 1, 2, 3, 4, 150)] == [
        OcfResult.SUCCESS,
        OcfResult.NOT_RUNNING,
        OcfResult.NOT_RUNNING,
        OcfResult.NOT_RUNNING,
        OcfResult.ERR_GENERIC,
        OcfResult.ERR_GENERIC,
    ]


VIP = {"address": "10.213.0.50/24", "interface": "eth0"}


def test_ipaddr_defaults() -> None:
    agent = IpAddr(VIP, name="vip")
    assert agent.address == ipaddress.ip_interface("10.213.0.50/24")
    assert (agent.values["arp_count"], agent.values["arp_interval"]) == (5, 0.2)
    assert (agent.values["arp_repeat_after"], agent.values["arp_refresh"]) == (5.0, 0.0)
    assert agent.timeouts == {Action.START: 20.0, Action.STOP: 20.0, Action.MONITOR: 20.0}
    assert IpAddr({**VIP, "address": "10.213.0.50"}).address.network.prefixlen == 32
    assert IpAddr({**VIP, "arp_interval": 1}).values["arp_interval"] == 1.0


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"address": None}, "address"),
        ({"interface": None}, "interface"),
        ({"address": "10.213.0.500/24"}, "address"),
        ({"address": 50}, "address"),
        ({"interface": "a-name-that-is-too-long"}, "interface"),
        ({"arp_count": -1}, "arp_count"),
        ({"arp_count": True}, "arp_count"),
        ({"arp_count": 2.5}, "arp_count"),
        ({"arp_interval": 0}, "arp_interval"),
        ({"arp_repeat_after": -1}, "arp_repeat_after"),
        ({"arp_mode": "shout"}, "arp_mode"),
        ({"label": "eth1:vip"}, "label"),
        ({"address": "fd00::50/64", "label": "eth0:vip"}, "label"),
        ({"start_timeout": -1}, "start_timeout"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_params_raise_a_typed_error_naming_the_param(
    change: dict[str, object], param: str
) -> None:
    params = {**VIP, **change}
    params = {key: value for key, value in params.items() if value is not None}
    with pytest.raises(AgentParamError) as caught:
        IpAddr(params, name="front-vip")
    assert isinstance(caught.value, ConfigError)
    assert caught.value.param == param
    assert str(caught.value).startswith(f"resource front-vip (agent ipaddr): {param}: ")


def test_registry_builds_agents_by_name(tmp_path: Path) -> None:
    assert set(AGENTS) == {"ipaddr", "nfsganesha", "ocf", "postgresql", "script", "switch"}
    agent = build_agent({"agent": "ipaddr", "name": "vip", **VIP})
    assert isinstance(agent, IpAddr)
    assert agent.name == "vip"
    with pytest.raises(
        AgentParamError, match="agent: one of ipaddr, nfsganesha, ocf, postgresql, script, switch"
    ):
        build_agent({"agent": "switchd"})
    with pytest.raises(AgentParamError) as missing:
        build_agent({"agent": "switch"})
    assert missing.value.param == "service"
    with pytest.raises(AgentParamError) as caught:
        build_agent({"agent": "script"})
    assert caught.value.param == "path"


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("ipaddr", VIP),
        ("script", {"path": "/etc/init.d/apache2"}),
    ],
)
def test_meta_data_is_ocf_xml(kind: str, params: dict[str, object]) -> None:
    agent = AGENTS[kind](params)
    document = ElementTree.fromstring(agent.meta_data())
    assert document.tag == "resource-agent"
    assert document.get("name") == kind
    parameters = {p.get("name"): p for p in document.iter("parameter")}
    for param in (*agent.params, Param("start_timeout", float, "")):
        assert param.name in parameters
    actions = {a.get("name") for a in document.iter("action")}
    assert actions == {"start", "stop", "monitor", "meta-data"}
    if kind == "ipaddr":
        assert parameters["address"].get("required") == "1"
        content = parameters["arp_count"].find("content")
        assert content is not None
        assert content.get("default") == "5"


# --- packets ------------------------------------------------------------------------------


def test_gratuitous_arp_request_bytes() -> None:
    frame = arp_frame(MAC, ipaddress.IPv4Address("10.213.0.50"))
    assert len(frame) == 60
    assert frame[:6] == BROADCAST_MAC
    assert frame[6:12] == MAC
    assert frame[12:14] == b"\x08\x06"
    assert frame[14:22] == bytes.fromhex("0001 0800 06 04 0001")
    assert frame[22:28] == MAC
    assert frame[28:32] == bytes([10, 213, 0, 50])
    assert frame[32:38] == ZERO_MAC
    assert frame[38:42] == bytes([10, 213, 0, 50])
    assert frame[42:] == bytes(18)


@given(macs, ipv4s, st.sampled_from([ARP_REQUEST, ARP_REPLY]))
def test_arp_frames_parse_back(mac: bytes, address: ipaddress.IPv4Address, op: int) -> None:
    packet = parse_arp_frame(arp_frame(mac, address, op))
    assert packet is not None
    assert packet.gratuitous
    assert (packet.op, packet.sender_mac, packet.sender_ip) == (op, mac, address)
    assert (packet.destination, packet.source) == (BROADCAST_MAC, mac)
    assert packet.target_mac == (ZERO_MAC if op == ARP_REQUEST else mac)


@given(st.binary(max_size=80))
def test_arp_parser_never_raises(data: bytes) -> None:
    packet = parse_arp_frame(data)
    assert packet is None or packet.op == struct.unpack_from("!H", data, 20)[0]


def test_arp_modes() -> None:
    address = ipaddress.IPv4Address("10.213.0.50")
    ops = {
        mode: [f[21] for f in arp_frames(MAC, address, mode)]
        for mode in ("request", "reply", "both")
    }
    assert ops == {"request": [1], "reply": [2], "both": [1, 2]}
    with pytest.raises(ValueError, match="opcode"):
        arp_frame(MAC, address, 3)
    with pytest.raises(ValueError, match="6 bytes"):
        arp_frame(b"\x00", address)


def test_neighbour_advert_bytes() -> None:
    target = ipaddress.IPv6Address("fd00:213::50")
    message = neighbor_advert(MAC, target)
    assert len(message) == 32
    assert message[:4] == bytes([136, 0, 0, 0])
    assert message[4:8] == bytes([0x20, 0, 0, 0])  # override only: not solicited, not router
    assert message[8:24] == target.packed
    assert message[24:] == bytes([2, 1]) + MAC


@given(macs, ipv6s)
def test_neighbour_adverts_parse_back(mac: bytes, address: ipaddress.IPv6Address) -> None:
    advert = parse_neighbor_advert(neighbor_advert(mac, address))
    assert advert is not None
    assert (advert.flags, advert.target, advert.target_mac) == (NA_FLAG_OVERRIDE, address, mac)


@given(st.binary(max_size=64))
def test_neighbour_advert_parser_never_raises(data: bytes) -> None:
    advert = parse_neighbor_advert(data)
    assert advert is None or data[0] == 136


@given(macs)
def test_mac_text_round_trip(mac: bytes) -> None:
    assert parse_mac(format_mac(mac)) == mac


@pytest.mark.parametrize("text", ["", "02:00:00:00:00", "02:00:00:00:00:0g", "0200.0000.0011"])
def test_bad_mac_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_mac(text)


# --- the runner ---------------------------------------------------------------------------


class Sleeper(Agent):
    """A resource whose start takes ``delay`` seconds and whose monitor breaks."""

    kind: ClassVar[str] = "sleeper"
    params: ClassVar[tuple[Param, ...]] = (
        Param("delay", float, "seconds start takes", default=0.0),
    )

    def __init__(self, delay: float, start_timeout: float = 20.0) -> None:
        super().__init__({"delay": delay, "start_timeout": start_timeout}, name="sleeper")
        self.started = False

    async def start(self) -> OcfResult:
        await asyncio.sleep(self.values["delay"])
        self.started = True
        return OcfResult.SUCCESS

    async def stop(self) -> OcfResult:
        self.started = False
        return OcfResult.SUCCESS

    async def monitor(self) -> OcfResult:
        raise RuntimeError("the monitor itself is broken")


async def test_runner_applies_the_timeout() -> None:
    slow = Sleeper(delay=30, start_timeout=0.2)
    outcome = await run_action(slow, Action.START)
    assert (outcome.result, outcome.reason) == (OcfResult.ERR_GENERIC, "timed out after 0.2 s")
    assert not slow.started
    assert (await run_action(Sleeper(delay=0), Action.START)).ok
    short = await run_action(Sleeper(delay=30), Action.START, timeout=0.1)
    assert short.reason == "timed out after 0.1 s"


async def test_runner_turns_exceptions_into_results(caplog: pytest.LogCaptureFixture) -> None:
    outcome = await run_action(Sleeper(delay=0), Action.MONITOR)
    assert outcome.result is OcfResult.ERR_GENERIC
    assert outcome.reason == "RuntimeError: the monitor itself is broken"
    assert "resource sleeper monitor: ERR_GENERIC (1): RuntimeError" in caplog.text


# --- the script agent ---------------------------------------------------------------------


def lsb_script(tmp_path: Path, name: str, log: Path, *, status: int = 0, stop: int = 0) -> str:
    """An LSB script that logs ``NAME ACTION`` and answers status/stop with fixed codes."""
    path = tmp_path / name
    path.write_text(
        f"""#!/bin/sh
echo "{name} $1" >> {log}
case "$1" in
  start) [ -e {tmp_path}/fail-{name} ] && {{ echo "cannot start {name}"; exit 1; }}; exit 0 ;;
  stop) exit {stop} ;;
  status) [ -e {tmp_path}/sick-{name} ] && exit 4; exit {status} ;;
esac
exit 3
"""
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.mark.parametrize(
    ("code", "result"),
    [
        (0, OcfResult.SUCCESS),
        (1, OcfResult.NOT_RUNNING),
        (3, OcfResult.NOT_RUNNING),
        (4, OcfResult.ERR_GENERIC),
    ],
)
async def test_script_status_codes(tmp_path: Path, code: int, result: OcfResult) -> None:
    agent = ScriptAgent({"path": lsb_script(tmp_path, "svc", tmp_path / "log", status=code)})
    assert await agent.monitor() is result


async def test_script_stop_is_idempotent_through_status(tmp_path: Path) -> None:
    log = tmp_path / "log"
    stopped = ScriptAgent({"path": lsb_script(tmp_path, "done", log, status=3, stop=1)})
    assert await stopped.stop() is OcfResult.SUCCESS
    assert log.read_text().split("\n")[:2] == ["done stop", "done status"]
    stuck = ScriptAgent({"path": lsb_script(tmp_path, "stuck", log, status=0, stop=1)})
    assert await stuck.stop() is OcfResult.ERR_GENERIC
    assert "stop exited 1" in stuck.reason


async def test_script_missing(tmp_path: Path) -> None:
    agent = ScriptAgent({"path": str(tmp_path / "absent")})
    assert await agent.start() is OcfResult.ERR_INSTALLED
    assert await agent.stop() is OcfResult.SUCCESS
    assert await agent.monitor() is OcfResult.NOT_RUNNING


# --- groups -------------------------------------------------------------------------------


def group_of(tmp_path: Path, names: list[str]) -> tuple[ResourceGroup, Path]:
    log = tmp_path / "log"
    agents = [ScriptAgent({"path": lsb_script(tmp_path, n, log)}, name=n) for n in names]
    return ResourceGroup("front", agents), log


def calls(log: Path) -> list[str]:
    lines = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return lines


async def test_group_starts_in_order_and_stops_in_reverse(tmp_path: Path) -> None:
    group, log = group_of(tmp_path, ["vip", "switch", "web"])
    started = await group.start()
    assert started.ok
    assert calls(log) == ["vip start", "switch start", "web start"]
    assert (await group.monitor()).ok
    assert calls(log) == ["vip status", "switch status", "web status"]
    stopped = await group.stop()
    assert stopped.ok
    assert [o.resource for o in stopped.outcomes] == ["web", "switch", "vip"]
    assert calls(log) == ["web stop", "switch stop", "vip stop"]


async def test_failed_start_rolls_back_in_reverse(tmp_path: Path) -> None:
    group, log = group_of(tmp_path, ["vip", "switch", "web", "extra"])
    (tmp_path / "fail-web").touch()
    started = await group.start()
    assert started.result is OcfResult.ERR_GENERIC
    assert started.failed is not None
    assert started.failed.resource == "web"
    assert started.reason.startswith("web start: ")
    assert "cannot start web" in started.reason
    assert calls(log) == [
        "vip start",
        "switch start",
        "web start",
        "web stop",  # a failed start may have done half its work
        "switch stop",
        "vip stop",
    ]
    assert [o.action for o in started.outcomes][-3:] == [Action.STOP] * 3


async def test_stop_goes_on_past_failures(tmp_path: Path) -> None:
    log = tmp_path / "log"
    agents = [
        ScriptAgent({"path": lsb_script(tmp_path, "vip", log)}, name="vip"),
        ScriptAgent({"path": lsb_script(tmp_path, "db", log, stop=1)}, name="db"),
        ScriptAgent({"path": lsb_script(tmp_path, "web", log)}, name="web"),
    ]
    stopped = await ResourceGroup("front", agents).stop()
    assert stopped.result is OcfResult.ERR_GENERIC
    assert stopped.failed is not None
    assert stopped.failed.resource == "db"
    assert calls(log) == ["web stop", "db stop", "db status", "vip stop"]


async def test_monitor_reports_the_first_failure(tmp_path: Path) -> None:
    group, log = group_of(tmp_path, ["vip", "switch", "web"])
    (tmp_path / "sick-switch").touch()
    monitored = await group.monitor()
    assert monitored.result is OcfResult.ERR_GENERIC
    assert monitored.failed is not None
    assert monitored.failed.resource == "switch"
    assert calls(log) == ["vip status", "switch status"]


def test_group_names_must_be_unique(tmp_path: Path) -> None:
    agent = ScriptAgent({"path": "/bin/true"}, name="same")
    with pytest.raises(ValueError, match="same"):
        ResourceGroup("front", [agent, ScriptAgent({"path": "/bin/true"}, name="same")])


async def test_script_that_leaves_a_daemon_returns_at_exit(tmp_path: Path) -> None:
    """A start that backgrounds a daemon holding its stdout returns when the script exits."""
    pidfile = tmp_path / "daemon.pid"
    path = tmp_path / "daemonic"
    path.write_text(f"#!/bin/sh\nsleep 30 &\necho $! > {pidfile}\necho started\nexit 0\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    agent = ScriptAgent({"path": str(path), "start_timeout": 10})
    try:
        outcome = await run_action(agent, Action.START)
        assert outcome.ok, outcome.reason  # not "timed out after 10 s"
    finally:
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
