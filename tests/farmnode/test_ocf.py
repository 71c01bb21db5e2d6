"""The ``ocf`` agent: real OCF scripts, hand-written ones and Debian's ``IPaddr2``.

The hand-written scripts (in ``tmp_path``) check the environment contract, the exit-code
mapping and the timeout; ``IPaddr2`` from the ``resource-agents`` package manages a
floating address inside a network namespace (needs root and the package: skips with the
reason otherwise, fails under CI=true).
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

from farmnode.agents import (
    Action,
    AgentError,
    AgentParamError,
    OcfAgent,
    OcfResult,
    ResourceGroup,
    ScriptAgent,
    run_action,
)
from tests.conftest import skip_or_fail
from tests.farmnode.netns import Lab, Namespace, unavailable_reason

pytestmark = pytest.mark.anyio

IPADDR2 = "/usr/lib/ocf/resource.d/heartbeat/IPaddr2"


def write_script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def recorder(tmp_path: Path) -> str:
    """An OCF script that records its action and environment, and keeps state in a file."""
    state = tmp_path / "running"
    log = tmp_path / "log"
    return write_script(
        tmp_path / "Recorder",
        f"""
echo "$1 $OCF_RESOURCE_INSTANCE $OCF_RESKEY_color $OCF_RESKEY_size $OCF_RESKEY_on \
$OCF_ROOT $OCF_FUNCTIONS_DIR $OCF_RESKEY_CRM_meta_timeout" >> {log}
case "$1" in
  start) touch {state}; exit 0 ;;
  stop) rm -f {state}; exit 0 ;;
  monitor) [ -e {state} ] && exit 0; exit 7 ;;
  meta-data) echo '<resource-agent name="Recorder"/>'; exit 0 ;;
  *) exit 3 ;;
esac
""",
    )


async def test_actions_environment_and_state(recorder: str, tmp_path: Path) -> None:
    params = {"path": recorder, "params": {"color": "blue", "size": 3, "on": True}}
    agent = OcfAgent({**params, "monitor_timeout": 7}, name="rec1")
    assert await agent.monitor() is OcfResult.NOT_RUNNING
    assert await agent.start() is OcfResult.SUCCESS
    assert await agent.monitor() is OcfResult.SUCCESS
    assert await agent.stop() is OcfResult.SUCCESS
    assert await agent.monitor() is OcfResult.NOT_RUNNING
    lines = (tmp_path / "log").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["monitor", "start", "monitor", "stop", "monitor"]
    assert lines[1].split()[1:] == [
        "rec1",
        "blue",
        "3",
        "true",
        "/usr/lib/ocf",
        "/usr/lib/ocf/lib/heartbeat",
        "20000",
    ]
    assert lines[0].split()[-1] == "7000"
    assert ElementTree.fromstring(agent.meta_data()).get("name") == "Recorder"


@pytest.mark.parametrize("code", [1, 2, 3, 4, 5, 6, 7, 42])
async def test_exit_codes_map_to_results(tmp_path: Path, code: int) -> None:
    script = write_script(tmp_path / "Fails", f'echo "reason {code}" >&2; exit {code}\n')
    agent = OcfAgent({"path": script}, name="fails")
    outcome = await run_action(agent, Action.START)
    expected = OcfResult(code) if code <= 7 else OcfResult.ERR_GENERIC
    assert outcome.result is expected
    assert f"exited {code}: reason {code}" in outcome.reason


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (exited or a zombie waiting for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as stat_file:
            return stat_file.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


async def test_timeout_kills_the_script_and_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = write_script(tmp_path / "Slow", f"sleep 30 &\necho $! > {pidfile}\nwait\n")
    agent = OcfAgent({"path": script, "start_timeout": 0.5}, name="slow")
    outcome = await run_action(agent, Action.START)
    assert outcome.result is OcfResult.ERR_GENERIC
    assert outcome.reason == "timed out after 0.5 s"
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not gone(child) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert gone(child)


async def test_missing_script(tmp_path: Path) -> None:
    agent = OcfAgent({"type": "nosuchprovider/Nothing", "ocf_root": str(tmp_path)})
    assert agent.script == str(tmp_path / "resource.d" / "nosuchprovider" / "Nothing")
    assert await agent.start() is OcfResult.ERR_INSTALLED
    assert await agent.stop() is OcfResult.SUCCESS
    assert await agent.monitor() is OcfResult.NOT_RUNNING
    with pytest.raises(AgentError, match="meta-data"):
        agent.meta_data()


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "type"),
        ({"type": "heartbeat/IPaddr2", "path": "/bin/true"}, "type"),
        ({"type": "IPaddr2"}, "type"),
        ({"type": "../../bin/sh"}, "type"),
        ({"path": "relative/script"}, "path"),
        ({"type": "heartbeat/IPaddr2", "params": {"bad-name": 1}}, "params"),
        ({"type": "heartbeat/IPaddr2", "params": {"ip": ["a"]}}, "params"),
        ({"type": "heartbeat/IPaddr2", "params": "ip=1"}, "params"),
        ({"type": "heartbeat/IPaddr2", "stop_timeout": 0}, "stop_timeout"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, object], param: str) -> None:
    with pytest.raises(AgentParamError) as caught:
        OcfAgent(params, name="vip")
    assert caught.value.param == param
    assert caught.value.path == param
    assert "resource vip (agent ocf)" in str(caught.value)


def test_ipaddr2_meta_data() -> None:
    if not os.access(IPADDR2, os.X_OK):
        skip_or_fail(f"{IPADDR2} is missing (Debian package resource-agents)")
    document = ElementTree.fromstring(OcfAgent({"type": "heartbeat/IPaddr2"}).meta_data())
    assert document.get("name") == "IPaddr2"
    names = {p.get("name") for p in document.iter("parameter")}
    assert {"ip", "cidr_netmask", "nic"} <= names


@dataclass
class Site:
    """A LAN (bridge namespace) with nodes n1, n2 and a client; ``dev`` is each one's port."""

    nodes: dict[str, Namespace]
    dev: dict[str, str]


@pytest.fixture
def site() -> Iterator[Site]:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    if not os.access(IPADDR2, os.X_OK):
        skip_or_fail(f"{IPADDR2} is missing (Debian package resource-agents)")
    with Lab() as lab:
        lan = lab.namespace("lan")
        lab.bridge(lan)
        nodes, devs = {}, {}
        for role, host in (("n1", 11), ("n2", 12), ("client", 2)):
            nodes[role] = lab.namespace(role)
            devs[role] = lab.attach(nodes[role], f"10.213.61.{host}/24", lan)
        yield Site(nodes, devs)


def addresses(ns: Namespace, dev: str) -> list[str]:
    info = json.loads(ns.ip("-j", "addr", "show", "dev", dev))
    return [f"{a['local']}/{a['prefixlen']}" for a in info[0]["addr_info"]]


def ipaddr2(site: Site, role: str) -> OcfAgent:
    params = {"ip": "10.213.61.50", "cidr_netmask": 24, "nic": site.dev[role], "arp_count": 2}
    return OcfAgent(
        {"type": "heartbeat/IPaddr2", "params": params, "netns": site.nodes[role].name},
        name=f"vip-{site.nodes[role].name}",
    )


async def test_debian_ipaddr2_in_a_namespace(site: Site) -> None:
    ns, dev = site.nodes["n1"], site.dev["n1"]
    agent = ipaddr2(site, "n1")
    assert (await run_action(agent, Action.MONITOR)).result is OcfResult.NOT_RUNNING
    started = await run_action(agent, Action.START)
    assert started.ok, started.reason
    assert "10.213.61.50/24" in addresses(ns, dev)
    assert (await run_action(agent, Action.MONITOR)).result is OcfResult.SUCCESS
    assert (await run_action(agent, Action.STOP)).ok
    assert "10.213.61.50/24" not in addresses(ns, dev)
    assert (await run_action(agent, Action.MONITOR)).result is OcfResult.NOT_RUNNING
    assert (await run_action(agent, Action.STOP)).ok  # stopped already: still success


async def test_ipaddr2_moves_with_its_group(site: Site, tmp_path: Path) -> None:
    """IPaddr2 plus a service script, as one group, from n1 to n2; the client follows."""
    marker = tmp_path / "service-on"
    service = write_script(
        tmp_path / "service",
        f"""case "$1" in
  start) touch {marker}; exit 0 ;;
  stop) rm -f {marker}; exit 0 ;;
  status) [ -e {marker} ] && exit 0; exit 3 ;;
esac
exit 3
""",
    )
    groups = {
        role: ResourceGroup(
            "front", [ipaddr2(site, role), ScriptAgent({"path": service}, name="service")]
        )
        for role in ("n1", "n2")
    }
    client = site.nodes["client"]
    client.ip(
        "neigh",
        "replace",
        "10.213.61.50",
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        site.dev["client"],
        "nud",
        "stale",
    )
    assert (await groups["n1"].start()).ok
    assert (await groups["n1"].monitor()).ok
    first_mac = mac_of(site, "n1")
    await wait_for_neighbour(site, first_mac)

    stopped = await groups["n1"].stop()
    assert stopped.ok, stopped.reason
    assert [o.resource for o in stopped.outcomes] == ["service", f"vip-{site.nodes['n1'].name}"]
    assert (await groups["n1"].monitor()).result is OcfResult.NOT_RUNNING
    started = await groups["n2"].start()
    assert started.ok, started.reason
    assert "10.213.61.50/24" in addresses(site.nodes["n2"], site.dev["n2"])
    await wait_for_neighbour(site, mac_of(site, "n2"))  # IPaddr2's own send_arp
    assert (await groups["n2"].stop()).ok


def mac_of(site: Site, role: str) -> str:
    links = json.loads(site.nodes[role].ip("-j", "link", "show", "dev", site.dev[role]))
    return str(links[0]["address"])


async def wait_for_neighbour(site: Site, mac: str) -> None:
    client, dev = site.nodes["client"], site.dev["client"]
    deadline = time.monotonic() + 10
    seen: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        seen = json.loads(client.ip("-j", "neigh", "show", "10.213.61.50", "dev", dev))
        if seen and seen[0].get("lladdr") == mac:
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"client's entry for 10.213.61.50 is {seen}, expected {mac}")
