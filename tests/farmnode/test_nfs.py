"""The ``nfsganesha`` agent: NFS-Ganesha (VFS) as a resource, alone and failing over.

- Without a network: the rendered ``ganesha.conf``, the command line, per-instance paths and
  every parameter error (a typed :class:`AgentParamError` naming the parameter), also through
  a node's configuration file; the actions' answers when the server is not installed, the
  export is missing, or a stale pid file names another process.
- The agent alone, for real (root): the server in a namespace of its own, a client namespace
  that writes and reads through Debian's ``libnfs-utils`` (``nfs-cp``, ``nfs-cat``, NFSv4),
  start / monitor / stop and their idempotence, ``kill -9`` of the server, a port taken by
  another program, a bind address and port of its own.
- The issue's acceptance test (root): ``farmnode serve`` on n1 and n2 and a witness w, a
  client, all on a bridge (10.213.71.0/24). The group ``nfs`` is [nfsganesha, ipaddr
  10.213.71.50/24]; export and state directory are one directory of this test, which both
  nodes reach (it stands for the SAN). The client writes through the floating address,
  n1 dies (``kill -9`` of its farmnode and its ganesha), n2 takes the group over, and the
  same client reads the file back through the same address and writes another one. The
  times are printed (``-s``); the one bound asserted is a generous one on the read-back.

Needs root, ``nfs-ganesha``, ``nfs-ganesha-vfs`` and ``libnfs-utils``: without them these
tests skip with the reason (under CI=true that is a failure).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farmnode.agents import AgentParamError, NfsGanesha, OcfResult, build_agent
from farmnode.agents.nfs import find_plugins_dir, holds_listener, process_alive, process_gone
from farmnode.config import parse_config
from farmnode.errors import ConfigError
from tests.conftest import skip_or_fail
from tests.farmnode.netns import Lab, Namespace, unavailable_reason
from tests.farmnode.test_cluster_lab import ClusterLab, Member, _mac, wait

pytestmark = pytest.mark.anyio

GANESHA = "/usr/bin/ganesha.nfsd"
PACKAGES = "nfs-ganesha nfs-ganesha-vfs libnfs-utils"
PREFIX = "10.213.71"
VIP = f"{PREFIX}.50"
HB_PORT = 6940
HOSTS = {"n1": 11, "n2": 12, "w": 13}
PRIORITY = {"n1": 150, "n2": 100}
INTERVAL, DEADTIME, INITDEAD = 0.2, 1.0, 2.0
#: The grace period (and lease) of the failover test: short, so the test stays short.
GRACE = 8
WAIT = 15.0


def _agent(tmp: Path, name: str = "nfs", **extra: object) -> NfsGanesha:
    params: dict[str, object] = {
        "export": str(tmp / "san" / "export"),
        "state_dir": str(tmp / "san" / "state"),
        "run_dir": str(tmp / "run"),
        **extra,
    }
    return NfsGanesha(params, name=name)


def _needs(*programs: str) -> None:
    reason = unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)
    for program in programs:
        if shutil.which(program) is None and not os.access(program, os.X_OK):
            skip_or_fail(f"{program} is missing: apt-get install {PACKAGES}")
    if find_plugins_dir() is None:
        skip_or_fail("the VFS FSAL (libfsalvfs.so) is missing: apt-get install nfs-ganesha-vfs")


def _shared_storage(tmp: Path) -> tuple[Path, Path]:
    """The export and the state directory on "the SAN"; the export writable by anyone, as
    root_squash maps the client's root to nobody."""
    export, state = tmp / "san" / "export", tmp / "san" / "state"
    export.mkdir(parents=True)
    state.mkdir(parents=True)
    export.chmod(0o1777)
    return export, state


# --- configuration, without a network -----------------------------------------------------


def test_rendered_config_defaults(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    text = agent.ganesha_config("/usr/lib/x86_64-linux-gnu/ganesha").render()
    expected = [
        "Protocols = 4;",
        "NFS_Port = 2049;",
        "Enable_UDP = false;",
        "Enable_NLM = false;",
        "Enable_RQUOTA = false;",
        'Plugins_Dir = "/usr/lib/x86_64-linux-gnu/ganesha";',
        f'CCacheDir = "{tmp_path / "run"}";',
        "Grace_Period = 90;",
        "Lease_Lifetime = 60;",
        "RecoveryBackend = fs;",
        f'RecoveryRoot = "{tmp_path / "san" / "state"}";',
        'Server_Scope = "farmnode-nfs";',
        f'Path = "{tmp_path / "san" / "export"}";',
        'Pseudo = "/export";',
        "Transports = TCP;",
        "SecType = sys;",
        "Access_Type = RW;",
        "Squash = Root_Squash;",
        "Name = VFS;",
        "Default_Log_Level = EVENT;",
    ]
    lines = [line.strip() for line in text.splitlines()]
    for line in expected:
        assert line in lines, line
    assert "Bind_Addr" not in text  # every address
    assert "CLIENT" not in text
    assert text.count("{") == text.count("}") == 6


def test_rendered_config_with_every_option(tmp_path: Path) -> None:
    agent = _agent(
        tmp_path,
        port=20490,
        bind="10.213.71.10",
        grace=20,
        lease=10,
        pseudo="/srv/web",
        access="ro",
        squash="no_root_squash",
        clients="10.213.71.0/24, web1.example",
        server_scope="site-eu",
        log_level="DEBUG",
    )
    text = agent.ganesha_config("/p").render()
    lines = [line.strip() for line in text.splitlines()]
    for line in (
        "NFS_Port = 20490;",
        "Bind_Addr = 10.213.71.10;",
        "Grace_Period = 20;",
        "Lease_Lifetime = 10;",
        'Pseudo = "/srv/web";',
        "Access_Type = None;",  # the export's default; the CLIENT block grants
        "Clients = 10.213.71.0/24, web1.example;",
        "Access_Type = RO;",
        "Squash = No_Root_Squash;",
        'Server_Scope = "site-eu";',
        "Default_Log_Level = DEBUG;",
    ):
        assert line in lines, line
    assert agent.probe_address == ("10.213.71.10", 20490)
    assert _agent(tmp_path, bind="0.0.0.0").probe_address == ("127.0.0.1", 2049)
    assert "Bind_Addr" not in _agent(tmp_path, bind="::").ganesha_config("/p").render()


def test_every_path_is_per_instance(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    run = tmp_path / "run"
    assert agent.argv() == [
        GANESHA,
        "-F",
        "-f",
        str(run / "ganesha.conf"),
        "-L",
        str(run / "ganesha.log"),
        "-p",
        str(run / "ganesha.pid"),
        "-N",
        "NIV_EVENT",
    ]
    assert _agent(tmp_path, netns="lab-n1").argv()[:4] == ["ip", "netns", "exec", "lab-n1"]
    one = NfsGanesha({"export": "/san/export", "state_dir": "/san/state"}, name="nfs-a")
    two = NfsGanesha({"export": "/san/export", "state_dir": "/san/state"}, name="nfs-b")
    assert one.run_dir == Path("/run/farmnode/nfsganesha/nfs-a")
    assert {one.pid_file, one.config_file, one.log_file}.isdisjoint(
        {two.pid_file, two.config_file, two.log_file}
    )
    assert one.kill_after == 10.0
    short = NfsGanesha({"export": "/e", "state_dir": "/s", "stop_timeout": 4}, name="x")
    assert short.kill_after == 2.0


BAD_PARAMS = [
    ({}, "export", "required"),
    ({"export": "relative/dir"}, "export", "absolute path"),
    ({"export": '/san/"quoted"'}, "export", "without quotes"),
    ({"state_dir": "/san/export/state"}, "state_dir", "outside the export"),
    ({"state_dir": "/san/export"}, "state_dir", "outside the export"),
    ({"pseudo": "/"}, "pseudo", "pseudo path"),
    ({"pseudo": "export"}, "pseudo", "pseudo path"),
    ({"port": 0}, "port", "1 to 65535"),
    ({"port": 70000}, "port", "1 to 65535"),
    ({"port": "2049"}, "port", "an integer"),
    ({"bind": "nfs.example"}, "bind", "an IP address"),
    ({"grace": 0}, "grace", "1 to 180"),
    ({"grace": 181}, "grace", "1 to 180"),
    ({"lease": 121}, "lease", "1 to 120"),
    ({"grace": 30, "lease": 60}, "grace", ">= lease (60)"),
    ({"grace": 10.5}, "grace", "an integer"),
    ({"access": "readwrite"}, "access", "rw, ro"),
    ({"squash": "root"}, "squash", "root_squash"),
    ({"clients": "10.0.0.0/8; evil"}, "clients", "comma-separated"),
    ({"server_scope": "two words"}, "server_scope", "letters"),
    ({"log_level": "LOUD"}, "log_level", "EVENT"),
    ({"ganesha": "ganesha.nfsd"}, "ganesha", "absolute path"),
    ({"kill_after": 0}, "kill_after", "> 0"),
    ({"kill_after": 25}, "kill_after", "< stop_timeout (20)"),
    ({"protocols": "3,4"}, "protocols", "a known parameter"),
]


@pytest.mark.parametrize(("change", "param", "expected"), BAD_PARAMS)
def test_bad_params_raise_a_typed_error_naming_the_param(
    change: dict[str, object], param: str, expected: str
) -> None:
    params: dict[str, object] = {"export": "/san/export", "state_dir": "/san/state"}
    params.update(change)
    if not change:
        params = {}
    with pytest.raises(AgentParamError) as caught:
        NfsGanesha(params, name="nfs")
    assert caught.value.param == param
    assert str(caught.value).startswith(f"resource nfs (agent nfsganesha): {param}: ")
    assert expected in str(caught.value)


segments = st.text(st.characters(codec="utf-8"), min_size=1)
paths = st.lists(segments.filter(lambda x: "/" not in x), min_size=1, max_size=4).map(
    lambda parts: "/" + "/".join(parts)
)


@given(export=paths, state=paths, lease=st.integers(1, 120), extra=st.integers(0, 60))
def test_any_accepted_path_renders_as_one_quoted_value(
    export: str, state: str, lease: int, extra: int
) -> None:
    """Whatever the parameter checks let through cannot break out of its quoted string;
    what they refuse names the parameter."""
    params = {
        "export": export,
        "state_dir": state,
        "lease": lease,
        "grace": min(180, lease + extra),
    }
    unsafe = [
        p for p in ("export", "state_dir") if re.search(r'["\\\x00-\x1f\x7f]', str(params[p]))
    ]
    inner, outer = os.path.normpath(state), os.path.normpath(export)
    if unsafe or inner == outer or inner.startswith(outer.rstrip("/") + "/"):
        with pytest.raises(AgentParamError) as caught:
            NfsGanesha(params, name="nfs")
        assert caught.value.param == (unsafe[0] if unsafe else "state_dir")
        return
    agent = NfsGanesha(params, name="nfs")
    text = agent.ganesha_config("/p").render()
    assert f'Path = "{agent.export}";' in text
    assert f'RecoveryRoot = "{agent.state_dir}";' in text
    assert text.count('"') == 2 * 6  # six quoted values, each closed where it should be
    bare = re.sub(r'"[^"]*"', '""', text)  # (a brace inside a quoted path is the path's)
    assert bare.count("{") == bare.count("}") == 6


def test_a_resource_name_that_is_no_directory_needs_a_run_dir() -> None:
    with pytest.raises(AgentParamError) as caught:
        NfsGanesha({"export": "/e", "state_dir": "/s"}, name="a/b")
    assert caught.value.param == "run_dir"
    agent = NfsGanesha({"export": "/e", "state_dir": "/s", "run_dir": "/run/x"}, name="a/b")
    assert agent.run_dir == Path("/run/x")


def _node_config(resources: str) -> str:
    return f"""
[node]
name = "n1"
[cluster]
name = "lab"
key = "lab-cluster-key-0123456789"
priority = 100
[[cluster.transports]]
kind = "udp"
bind = "127.0.0.1:6940"
[[cluster.peers]]
name = "n2"
addresses = ["127.0.0.1:6941"]
[[groups]]
name = "nfs"
{resources}
[[groups.resources]]
agent = "ipaddr"
address = "10.0.0.50/24"
interface = "eth0"
"""


def test_the_node_config_builds_the_group_and_checks_the_params() -> None:
    good = """
[[groups.resources]]
agent = "nfsganesha"
name = "ganesha"
export = "/san/export"
state_dir = "/san/state"
grace = 30
lease = 30
"""
    config = parse_config(tomllib.loads(_node_config(good)), "n1.toml", environ={})
    assert config.cluster is not None
    [group] = config.cluster.groups
    assert [r.agent for r in group.resources] == ["nfsganesha", "ipaddr"]
    agent = build_agent(group.resources[0].agent_table(), name="ganesha")
    assert isinstance(agent, NfsGanesha)
    assert (agent.export, agent.values["grace"]) == ("/san/export", 30)
    with pytest.raises(ConfigError) as missing:
        parse_config(
            tomllib.loads(_node_config(good.replace('state_dir = "/san/state"\n', ""))),
            "n1.toml",
            environ={},
        )
    assert missing.value.path == "groups[0].resources[0].state_dir"
    with pytest.raises(ConfigError) as bad:
        parse_config(
            tomllib.loads(_node_config(good.replace("grace = 30", "grace = 5"))),
            "n1.toml",
            environ={},
        )
    assert (bad.value.source, bad.value.path) == ("n1.toml", "groups[0].resources[0].grace")
    assert ">= lease (30)" in str(bad.value)


def test_meta_data_lists_the_parameters(tmp_path: Path) -> None:
    xml = _agent(tmp_path).meta_data()
    for name in ("export", "state_dir", "pseudo", "port", "bind", "grace", "lease", "ganesha"):
        assert f'<parameter name="{name}"' in xml
    assert '<resource-agent name="nfsganesha"' in xml


# --- actions that need no server ------------------------------------------------------------


async def test_missing_server_or_storage_are_install_and_config_errors(tmp_path: Path) -> None:
    missing = _agent(tmp_path, ganesha=str(tmp_path / "no-ganesha"))
    assert await missing.start() is OcfResult.ERR_INSTALLED
    assert "no-ganesha is missing or not executable" in missing.reason
    no_fsal = _agent(tmp_path, ganesha="/bin/true", plugins_dir=str(tmp_path))
    assert await no_fsal.start() is OcfResult.ERR_INSTALLED
    assert "nfs-ganesha-vfs" in no_fsal.reason
    if find_plugins_dir() is None:
        skip_or_fail("the VFS FSAL (libfsalvfs.so) is missing: apt-get install nfs-ganesha-vfs")
    no_export = _agent(tmp_path, ganesha="/bin/true")
    assert await no_export.start() is OcfResult.ERR_CONFIGURED
    assert "export" in no_export.reason
    (tmp_path / "san" / "export").mkdir(parents=True)
    assert await no_export.start() is OcfResult.ERR_CONFIGURED
    assert "state_dir" in no_export.reason
    assert not (tmp_path / "run").exists()  # nothing was written, nothing started


async def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    if not os.access(GANESHA, os.X_OK) or find_plugins_dir() is None:
        skip_or_fail(f"nfs-ganesha is missing: apt-get install {PACKAGES}")
    _shared_storage(tmp_path)
    agent = _agent(tmp_path, netns=f"wf-no-such-netns-{os.getpid()}")
    assert await agent.start() is OcfResult.ERR_GENERIC
    assert agent.reason.startswith("ganesha exited at start (exit code 255): "), agent.reason
    assert "wf-no-such-netns" in agent.reason
    assert not agent.pid_file.exists()
    assert await agent.monitor() is OcfResult.NOT_RUNNING


async def test_stop_and_monitor_with_nothing_running(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    assert await agent.stop() is OcfResult.SUCCESS  # never started, no run directory
    assert await agent.monitor() is OcfResult.NOT_RUNNING
    # a stale pid file naming a live process that is not this instance's ganesha (this test)
    (tmp_path / "run").mkdir()
    agent.pid_file.write_text(f"{os.getpid()}\n")
    assert not process_alive(os.getpid(), str(agent.config_file))
    assert await agent.monitor() is OcfResult.NOT_RUNNING
    assert await agent.stop() is OcfResult.SUCCESS  # and this process is still alive
    assert not agent.pid_file.exists()


# --- the agent alone, for real ----------------------------------------------------------------


def _client_lab(lab: Lab) -> tuple[Namespace, Namespace]:
    server, client = lab.namespace("srv"), lab.namespace("cli")
    lab.link(server, f"{PREFIX}.10/24", client, f"{PREFIX}.2/24")
    return server, client


def _nfs(client: Namespace, *argv: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        client.exec_argv(argv), capture_output=True, text=True, timeout=timeout, check=False
    )


def _url(host: str, path: str, port: int | None = None) -> str:
    query = "version=4" + (f"&nfsport={port}" if port else "")
    return f"nfs://{host}/export/{path}?{query}"


def _kill_leftovers(*run_dirs: Path) -> list[int]:
    """Kill every ganesha a failed test left running: any process whose command line names
    one of these run directories' config (also when its pid file is gone). Their pids."""
    configs = {str(run / "ganesha.conf").encode() for run in run_dirs}
    killed = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            args = set(Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"))
            if args & configs:
                os.kill(int(entry), signal.SIGKILL)
                killed.append(int(entry))
    return killed


async def test_the_agent_alone_serves_nfsv4_and_keeps_the_contract(tmp_path: Path) -> None:
    _needs(GANESHA, "nfs-cp", "nfs-cat")
    export, _ = _shared_storage(tmp_path)
    figures: dict[str, float] = {}
    with Lab() as lab:
        server, client = _client_lab(lab)
        agent = _agent(tmp_path, netns=server.name, grace=5, lease=5)
        try:
            assert await agent.monitor() is OcfResult.NOT_RUNNING
            began = time.monotonic()
            assert await agent.start() is OcfResult.SUCCESS, agent.reason
            figures["start (s)"] = time.monotonic() - began
            pid = int(agent.pid_file.read_text())
            assert holds_listener(pid, 2049)
            assert await agent.monitor() is OcfResult.SUCCESS, agent.reason
            assert await agent.start() is OcfResult.SUCCESS  # started already: same server
            assert int(agent.pid_file.read_text()) == pid

            source = tmp_path / "hello.txt"
            source.write_text("hello over NFSv4\n")
            wrote = _nfs(client, "nfs-cp", str(source), _url(f"{PREFIX}.10", "hello.txt"))
            assert wrote.returncode == 0, wrote.stderr
            assert (export / "hello.txt").read_text() == "hello over NFSv4\n"
            read = _nfs(client, "nfs-cat", _url(f"{PREFIX}.10", "hello.txt"))
            assert (read.returncode, read.stdout) == (0, "hello over NFSv4\n"), read.stderr

            began = time.monotonic()
            assert await agent.stop() is OcfResult.SUCCESS, agent.reason
            figures["stop (SIGTERM) (s)"] = time.monotonic() - began
            assert process_gone(pid)  # every thread, so the port is free
            assert not agent.pid_file.exists()
            refused = _nfs(client, "nfs-cat", _url(f"{PREFIX}.10", "hello.txt"))
            assert refused.returncode != 0
            assert await agent.stop() is OcfResult.SUCCESS  # stopped already
            assert await agent.monitor() is OcfResult.NOT_RUNNING

            # kill -9: monitor says dead (pid file left), stop cleans up, start works again
            assert await agent.start() is OcfResult.SUCCESS, agent.reason
            pid = int(agent.pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + WAIT
            while not process_gone(pid) and time.monotonic() < deadline:  # every thread
                time.sleep(0.05)
            assert await agent.monitor() is OcfResult.NOT_RUNNING
            assert f"ganesha (pid {pid}) is dead" in agent.reason
            assert await agent.stop() is OcfResult.SUCCESS
            assert not agent.pid_file.exists()

            # the port taken by another program: the start fails and says why
            squatter = server.listen(("0.0.0.0", 2049))
            with squatter:
                assert await agent.start() is OcfResult.ERR_GENERIC
                assert "Error binding" in agent.reason, agent.reason
                print(f"port taken: {agent.reason}")
                assert not agent.pid_file.exists()
                assert await agent.monitor() is OcfResult.NOT_RUNNING
        finally:
            await agent.stop()
            leftovers = _kill_leftovers(tmp_path / "run")
    assert leftovers == []  # the agent's stop left no server behind
    for what, seconds in figures.items():
        print(f"nfsganesha alone: {what}: {seconds:.3f}")


async def test_bind_address_and_port(tmp_path: Path) -> None:
    _needs(GANESHA, "nfs-cat")
    export, _ = _shared_storage(tmp_path)
    (export / "page.html").write_text("<p>eu</p>\n")
    with Lab() as lab:
        server, client = _client_lab(lab)
        agent = _agent(tmp_path, netns=server.name, bind=f"{PREFIX}.10", port=20490)
        try:
            assert await agent.start() is OcfResult.SUCCESS, agent.reason
            sockets = server.run("ss", "-Hltn")
            assert f"[::ffff:{PREFIX}.10]:20490" in sockets, sockets  # v4-mapped, one socket
            assert ":2049 " not in sockets
            read = _nfs(client, "nfs-cat", _url(f"{PREFIX}.10", "page.html", 20490))
            assert (read.returncode, read.stdout) == (0, "<p>eu</p>\n"), read.stderr
            assert await agent.monitor() is OcfResult.SUCCESS, agent.reason
        finally:
            stopped = await agent.stop()
            leftovers = _kill_leftovers(tmp_path / "run")
    assert (stopped, leftovers) == (OcfResult.SUCCESS, [])


# --- the acceptance test: failover of the group nfs ----------------------------------------


def _config(name: str, dev: str, san: Path, run: Path) -> str:
    peers = "".join(
        f'[[cluster.peers]]\nname = "{peer}"\naddresses = ["{PREFIX}.{host}:{HB_PORT}"]\n'
        for peer, host in HOSTS.items()
        if peer != name
    )
    role = 'role = "witness"' if name == "w" else f"priority = {PRIORITY[name]}"
    text = f"""
[node]
name = "{name}"
status_listen = "127.0.0.1:9100"
[cluster]
name = "nfslab"
key = "nfs-lab-cluster-key-0123456789"
interval = {INTERVAL}
deadtime = {DEADTIME}
initdead = {INITDEAD}
{role}
[[cluster.transports]]
kind = "udp"
bind = "{PREFIX}.{HOSTS[name]}:{HB_PORT}"
{peers}"""
    if name == "w":
        return text
    return (
        text
        + f"""
[[groups]]
name = "nfs"
[[groups.resources]]
agent = "nfsganesha"
name = "ganesha"
export = "{san / "export"}"
state_dir = "{san / "state"}"
run_dir = "{run}"
grace = {GRACE}
lease = {GRACE}
monitor_interval = 1.0
[[groups.resources]]
agent = "ipaddr"
name = "vip"
address = "{VIP}/24"
interface = "{dev}"
"""
    )


@contextlib.contextmanager
def _nfs_lab(tmp: Path) -> Iterator[ClusterLab]:
    _needs(GANESHA, "nfs-cp", "nfs-cat")
    _shared_storage(tmp)
    runs = [tmp / f"run-{name}" for name in ("n1", "n2")]
    with Lab() as lab:
        lan = lab.namespace("lan")
        lab.bridge(lan)
        members = {}
        for name, host in HOSTS.items():
            ns = lab.namespace(name)
            dev = lab.attach(ns, f"{PREFIX}.{host}/24", lan)
            path = tmp / f"{name}.toml"
            path.write_text(_config(name, dev, tmp / "san", tmp / f"run-{name}"))
            members[name] = Member(name, ns, dev, _mac(ns, dev), path, tmp / f"{name}.log")
        client = lab.namespace("client")
        lab.attach(client, f"{PREFIX}.2/24", lan)
        built = ClusterLab(lab, client, members, tmp)
        try:
            yield built
        finally:
            lab.close()  # the farmnode processes first (a clean stop stops ganesha)
            _kill_leftovers(*runs)
            for member in members.values():
                for out in member.logs:
                    out.close()


def _holders(lab: ClusterLab) -> set[str]:
    held = set()
    for name, member in lab.members.items():
        info = json.loads(member.ns.ip("-j", "addr", "show", "dev", member.dev))
        if any(a.get("local") == VIP for a in info[0]["addr_info"]):
            held.add(name)
    return held


def _ganesha_pid(tmp: Path, node: str) -> int | None:
    run = tmp / f"run-{node}"
    with contextlib.suppress(OSError, ValueError):
        pid = int((run / "ganesha.pid").read_text())
        if process_alive(pid, str(run / "ganesha.conf")):
            return pid
    return None


def _neighbour(client: Namespace) -> str | None:
    entries = json.loads(client.ip("-j", "neigh", "show", VIP))
    return str(entries[0]["lladdr"]) if entries and "lladdr" in entries[0] else None


def test_the_nfs_group_fails_over_and_the_client_reads_back_its_file(tmp_path: Path) -> None:
    figures: dict[str, float] = {}
    with _nfs_lab(tmp_path) as lab:
        export = tmp_path / "san" / "export"
        first, second = tmp_path / "first.txt", tmp_path / "second.txt"
        first.write_text("written through n1\n")
        second.write_text("written after the takeover\n")
        began = time.monotonic()
        for name in HOSTS:
            lab.start(name)

        def one_owner() -> bool:
            held = _holders(lab)
            assert len(held) <= 1, f"two owners: {held}\n{lab.logs()}"
            return len(held) == 1

        wait("one node holds the floating address", one_owner, lab)
        figures["start-up: floating address up (s)"] = time.monotonic() - began
        assert _holders(lab) == {"n1"}
        n1_ganesha = _ganesha_pid(tmp_path, "n1")
        assert n1_ganesha is not None, lab.logs()
        assert _ganesha_pid(tmp_path, "n2") is None  # the standby runs no server

        wrote = _nfs(lab.client, "nfs-cp", str(first), _url(VIP, "first.txt"))
        assert wrote.returncode == 0, f"{wrote.stderr}\n{lab.logs()}"
        assert (export / "first.txt").read_text() == "written through n1\n"
        figures["start-up: first write through the floating address (s)"] = time.monotonic() - began

        # n1 dies as a machine dies: its farmnode and its ganesha, kill -9, nothing released
        owner = lab.members["n1"]
        assert owner.process is not None
        killed = time.monotonic()
        os.killpg(owner.process.pid, signal.SIGKILL)
        os.kill(n1_ganesha, signal.SIGKILL)
        owner.process.wait(timeout=WAIT)

        wait("n2 holds the floating address", lambda: "n2" in _holders(lab), lab)
        figures["kill -9: n2 holds the floating address (s)"] = time.monotonic() - killed
        n2_ganesha = _ganesha_pid(tmp_path, "n2")
        assert n2_ganesha is not None, lab.logs()
        assert _ganesha_pid(tmp_path, "n1") is None

        attempts, last = 0, ""
        deadline = killed + DEADTIME + GRACE + 30.0  # generous: the machine is shared
        while True:
            attempts += 1
            read = _nfs(lab.client, "nfs-cat", _url(VIP, "first.txt"))
            if read.returncode == 0:
                break
            last = " | ".join((read.stderr or read.stdout).strip().splitlines()[-2:])
            assert time.monotonic() < deadline, f"no read-back: {last}\n{lab.logs()}"
            time.sleep(0.2)
        figures["kill -9: client reads its file back through the address (s)"] = (
            time.monotonic() - killed
        )
        assert read.stdout == "written through n1\n"
        assert _neighbour(lab.client) == lab.members["n2"].mac  # it came from n2

        wrote = _nfs(lab.client, "nfs-cp", str(second), _url(VIP, "second.txt"))
        assert wrote.returncode == 0, wrote.stderr
        figures["kill -9: client's second file written (s)"] = time.monotonic() - killed
        assert (export / "second.txt").read_text() == "written after the takeover\n"
        status = lab.status("n2")["cluster"]["groups"]["nfs"]
        assert status["owner"] == "n2"

        # the new owner found the old owner's client on the shared state and held its grace
        log = (tmp_path / "run-n2" / "ganesha.log").read_text()
        counts = [int(n) for n in re.findall(r"clid count\((\d+)\)", log)]
        assert counts, log[-2000:]
        assert counts[0] >= 1, log[-2000:]
        assert f"IN GRACE, duration {GRACE}" in log
        print(
            f"read-back: {attempts} nfs-cat attempts; the failing ones said {last}; "
            f"n2's ganesha found {counts[0]} client record(s) of n1's on the shared state"
        )

        # n1 comes back: its start-up stop clears the dead server's pid file; n2 keeps serving
        assert (tmp_path / "run-n1" / "ganesha.pid").exists()  # left by the kill -9
        lab.start("n1")

        def n1_active() -> bool:
            answered = (subprocess.SubprocessError, RuntimeError, ValueError, TypeError, KeyError)
            with contextlib.suppress(*answered):  # not up yet, or its cluster not started
                return bool(lab.status("n1")["cluster"]["state"] == "active")
            return False

        wait("n1 is an active candidate again", n1_active, lab)
        assert not (tmp_path / "run-n1" / "ganesha.pid").exists()
        assert _ganesha_pid(tmp_path, "n1") is None
        assert _holders(lab) == {"n2"}  # no failback
        assert _ganesha_pid(tmp_path, "n2") == n2_ganesha
        again = _nfs(lab.client, "nfs-cat", _url(VIP, "second.txt"))
        assert (again.returncode, again.stdout) == (0, "written after the takeover\n")
    for what, seconds in figures.items():
        print(f"nfs failover: {what}: {seconds:.3f}")
