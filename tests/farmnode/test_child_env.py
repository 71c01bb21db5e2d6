"""No secret reaches a child process: the one environment function (pure), then a real
script that dumps its environment, run through each agent kind's own code path (OCF, LSB
script, the PostgreSQL tools' runner and fence command, the NFS server, nft), with
``FARM_CLUSTER_KEY`` and ``FARMNODE_REPORT_TOKEN`` in farmnode's environment."""

from __future__ import annotations

import asyncio
import os
import pwd
import stat
import time
from pathlib import Path

import pytest

from farmnode.agents.base import OcfResult
from farmnode.agents.nfs import FSAL_VFS, NfsGanesha
from farmnode.agents.ocf import OcfAgent
from farmnode.agents.postgresql import PostgresAgent
from farmnode.agents.script import ScriptAgent
from farmnode.dataplane.nftables import Nft
from farmnode.pg.instance import Instance
from farmnode.process import SECRETS, child_environment, run_process

pytestmark = pytest.mark.anyio

SECRET_VALUES = {
    "FARM_CLUSTER_KEY": "cluster-key-0123456789abcdef",
    "FARMNODE_REPORT_TOKEN": "report-token-0123456789",
    "FARM_ADMIN_TOKENS": "admin-token-0123456789",
    "FARMNODE_STATUS_LISTEN": "127.0.0.1:9",
    "AWS_SECRET_ACCESS_KEY": "not-ours-either",
}


@pytest.fixture
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """farmnode's own environment holds secrets, as it does under systemd."""
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("LC_TIME", "C")


def dumper(tmp_path: Path, name: str) -> tuple[str, Path]:
    """A script that writes its environment to ``<name>.env`` (the path is in its text,
    not in its environment) and prints it; exit 0."""
    out = tmp_path / f"{name}.env"
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\nenv > '{out}'\nenv\nexit 0\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script), out


def parse(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def assert_clean(env: dict[str, str]) -> None:
    assert env, "the child wrote no environment"
    for name, value in SECRET_VALUES.items():
        assert name not in env, name
        assert value not in env.values(), name
    assert not [key for key in env if key.startswith(("FARMNODE_", "AWS_"))]
    assert "PATH" in env


# --- the function (pure) -------------------------------------------------------------------


def test_only_the_allowlist_is_inherited_and_extras_are_added() -> None:
    parent = {
        **SECRET_VALUES,
        "PATH": "/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_CTYPE": "C",
        "PYTHONPATH": "/x",
        "NOTIFY_SOCKET": "/run/systemd/notify",
    }
    env = child_environment({"OCF_ROOT": "/usr/lib/ocf"}, parent=parent)
    assert env == {
        "PATH": "/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "LC_CTYPE": "C",
        "OCF_ROOT": "/usr/lib/ocf",
    }
    assert child_environment(parent={})["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.mark.parametrize("name", [*sorted(SECRETS), "FARMNODE_ANYTHING"])
def test_a_caller_cannot_hand_a_secret_on(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        child_environment({name: "x"}, parent={})


# --- real children, through each agent kind's code path ------------------------------------


@pytest.mark.usefixtures("secrets_in_environment")
async def test_run_process_itself(tmp_path: Path) -> None:
    script, out = dumper(tmp_path, "plain")
    code, _ = await run_process([script], {"EXTRA": "1"})
    env = parse(out.read_text())
    assert code == 0
    assert_clean(env)
    assert (env["EXTRA"], env["LANG"], env["LC_TIME"]) == ("1", "C.UTF-8", "C")


@pytest.mark.usefixtures("secrets_in_environment")
async def test_ocf_agent_actions_and_meta_data(tmp_path: Path) -> None:
    script, out = dumper(tmp_path, "Dump")
    agent = OcfAgent({"path": script, "params": {"color": "blue"}}, name="dump1")
    assert await agent.start() is OcfResult.SUCCESS
    env = parse(out.read_text())
    assert_clean(env)
    assert env["OCF_RESOURCE_INSTANCE"] == "dump1"
    assert env["OCF_RESKEY_color"] == "blue"
    assert_clean(parse(agent.meta_data()))  # the synchronous path (subprocess.run)


@pytest.mark.usefixtures("secrets_in_environment")
async def test_lsb_script_agent(tmp_path: Path) -> None:
    script, out = dumper(tmp_path, "initscript")
    assert await ScriptAgent({"path": script}, name="lsb").start() is OcfResult.SUCCESS
    assert_clean(parse(out.read_text()))


@pytest.mark.usefixtures("secrets_in_environment")
async def test_postgresql_tools_runner_and_fence_command(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dumper(bin_dir, "pg_controldata")
    me = pwd.getpwuid(os.geteuid()).pw_name
    instance = Instance(str(tmp_path / "data"), str(bin_dir), me, 5432, str(tmp_path))
    code, output = await instance.run("pg_controldata", env={"PGPASSWORD": "replication"})
    env = parse(output)
    assert code == 0
    assert_clean(env)
    assert (env["PGPASSWORD"], env["LC_ALL"]) == ("replication", "C")

    fence, out = dumper(tmp_path, "fence")
    agent = PostgresAgent(
        {
            "data_dir": str(tmp_path / "data"),
            "bin_dir": str(bin_dir),
            "port": 5432,
            "listen": "127.0.0.1",
            "socket_dir": str(tmp_path),
            "primary_host": "127.0.0.1",
            "primary_port": 5433,
            "health_listen": "127.0.0.1:0",
        },
        name="pg-dump",
    )
    try:
        assert await agent._run_fence("n1", [fence]) is None
    finally:
        await agent.close()
    env = parse(out.read_text())
    assert_clean(env)
    assert env["FARM_FENCE_NODE"] == "n1"


@pytest.mark.usefixtures("secrets_in_environment")
async def test_nfs_server(tmp_path: Path) -> None:
    ganesha, out = dumper(tmp_path, "ganesha.nfsd")
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / FSAL_VFS).touch()
    for sub in ("export", "state"):
        (tmp_path / sub).mkdir()
    agent = NfsGanesha(
        {
            "export": str(tmp_path / "export"),
            "state_dir": str(tmp_path / "state"),
            "ganesha": ganesha,
            "plugins_dir": str(plugins),
            "run_dir": str(tmp_path / "run"),
        },
        name="nfs-dump",
    )
    result = await asyncio.wait_for(agent.start(), 10)
    assert result is OcfResult.ERR_GENERIC  # the "server" exited at once, as it should here
    deadline = time.monotonic() + 5
    while not out.exists() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    env = parse(out.read_text())
    assert_clean(env)
    assert env["DBUS_SYSTEM_BUS_ADDRESS"].startswith("unix:path=")


@pytest.mark.usefixtures("secrets_in_environment")
def test_nft_data_plane(tmp_path: Path) -> None:
    nft, out = dumper(tmp_path, "nft")
    result = Nft(binary=nft).run(["list", "ruleset"], check=False)
    assert result.returncode == 0
    assert_clean(parse(out.read_text()))
