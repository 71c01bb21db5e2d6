"""``farmnode`` as a user runs it: the installed console script, real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from farmnode import __version__

FARMNODE = str(Path(sys.executable).parent / "farmnode")

NODE_TOML = """
[node]
name = "n1"

[[services]]
name = "web"
protocol = "tcp"
listen = "127.0.0.1:8000"
check = { kind = "http", url = "/health", expect = "OK" }
[[services.real]]
address = "127.0.0.1:9001"
[[services.real]]
address = "127.0.0.1:9002"
weight = 3

[[services]]
name = "dns"
protocol = "udp"
listen = "127.0.0.1:5353"
scheduler = "mh"
check = { kind = "agent", agent_port = 9777 }
[[services.real]]
address = "127.0.0.1:5301"

[report]
url = "http://127.0.0.1:8081"
site = "eu"
capacity = 100
"""


def run_farmnode(
    *args: str, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``farmnode ARGS`` with a clean ``FARMNODE_*`` environment plus ``env`` (30 s max)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FARMNODE_")}
    return subprocess.run(
        [FARMNODE, *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        cwd=cwd,
        timeout=30,
        check=False,
    )


@pytest.fixture
def node_toml(tmp_path: Path) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(NODE_TOML, encoding="utf-8")
    return path


def test_check_config_accepts_a_good_file(node_toml: Path) -> None:
    done = run_farmnode(
        "check-config", "--config", str(node_toml), env={"FARMNODE_REPORT_TOKEN": "t"}
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == (
        f"{node_toml}: ok (node n1, 2 service(s), 3 real server(s), "
        "reporting to http://127.0.0.1:8081 as site eu)\n"
    )


def test_check_config_rejects_with_file_path_and_expectation(node_toml: Path) -> None:
    node_toml.write_text(NODE_TOML.replace("weight = 3", "wieght = 3"), encoding="utf-8")
    done = run_farmnode("check-config", "-c", str(node_toml), env={"FARMNODE_REPORT_TOKEN": "t"})
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"farmnode: invalid configuration: {node_toml}: services[0].real[1].wieght: "
        "unknown key; expected one of address, weight\n"
    )


def test_check_config_needs_no_report_token_and_says_so(node_toml: Path) -> None:
    done = run_farmnode("check-config", "--config", str(node_toml))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        f"{node_toml}: ok (node n1, 2 service(s), 3 real server(s), "
        "reporting to http://127.0.0.1:8081 as site eu)",
        f"{node_toml}: note: report token: not set in this environment "
        "(FARMNODE_REPORT_TOKEN or report.token; needed by serve)",
    ]
    with_token = NODE_TOML.replace("capacity = 100", 'capacity = 100\ntoken = "in-the-file"')
    node_toml.write_text(with_token, encoding="utf-8")
    done = run_farmnode("check-config", "--config", str(node_toml))
    assert (done.returncode, len(done.stdout.splitlines())) == (0, 1)


def test_serve_refuses_to_start_without_the_report_token(node_toml: Path) -> None:
    done = run_farmnode("serve", "--config", str(node_toml))
    assert done.returncode == 2
    assert f"{node_toml}: report.token: " in done.stderr
    assert "FARMNODE_REPORT_TOKEN" in done.stderr


def test_a_bad_report_token_is_still_an_error(node_toml: Path) -> None:
    node_toml.write_text(NODE_TOML.replace("capacity = 100", 'capacity = 100\ntoken = "se cret"'))
    done = run_farmnode("check-config", "--config", str(node_toml))
    assert done.returncode == 2
    assert f"{node_toml}: report.token: " in done.stderr
    assert "se cret" not in done.stderr  # a secret is never echoed


def test_status_needs_no_secret_and_reads_only_the_status_address(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"  # a [report] without a token, a key nobody knows
    path.write_text(
        NODE_TOML.replace('name = "n1"', 'name = "n1"\nstatus_listen = "127.0.0.1:1"')
        + "\n[what]\nis = 'this'\n",
        encoding="utf-8",
    )
    done = run_farmnode("status", "--config", str(path))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(
        "farmnode: node n1 is not running (nothing answers at http://127.0.0.1:1/status"
    )
    done = run_farmnode("status", "--address", "[::1]:1", "--config", str(tmp_path / "none"))
    assert done.returncode == 1
    assert "the node is not running (nothing answers at http://[::1]:1/status" in done.stderr
    done = run_farmnode("status", "--address", "localhost:1")
    assert done.returncode == 2
    assert "<command line>: --address: " in done.stderr
    for bad in ("nan", "-1", "0", "1e9", "soon"):
        done = run_farmnode("status", "--address", "127.0.0.1:1", "--timeout", bad)
        assert done.returncode == 2
        assert "--timeout: seconds > 0 and <= 300" in done.stderr


def test_a_kernel_plane_scheduler_problem_is_reported_at_the_scheduler(node_toml: Path) -> None:
    text = NODE_TOML.replace('protocol = "tcp"', 'protocol = "tcp"\ndataplane = "nftables"')
    node_toml.write_text(text, encoding="utf-8")
    done = run_farmnode(
        "check-config", "--config", str(node_toml), env={"FARMNODE_REPORT_TOKEN": "t"}
    )
    assert done.returncode == 2
    assert f"{node_toml}: services[0].scheduler: scheduler 'wlc' needs connection counts" in (
        done.stderr
    )


def test_a_bad_environment_value_names_the_environment(node_toml: Path) -> None:
    env = {"FARMNODE_REPORT_TOKEN": "t", "FARMNODE_STATUS_LISTEN": "nowhere"}
    done = run_farmnode("check-config", "--config", str(node_toml), env=env)
    assert done.returncode == 2
    assert "invalid configuration: <environment>: FARMNODE_STATUS_LISTEN: " in done.stderr


def test_missing_and_unparsable_files(tmp_path: Path) -> None:
    done = run_farmnode("check-config", "--config", str(tmp_path / "absent.toml"))
    assert done.returncode == 2
    assert f"{tmp_path / 'absent.toml'}: a readable TOML file (no such file)" in done.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[node\n", encoding="utf-8")
    done = run_farmnode("check-config", "--config", str(broken))
    assert done.returncode == 2
    assert f"{broken}: valid TOML" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_config_file_defaults_to_farmnode_config_then_node_toml(
    tmp_path: Path, node_toml: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"FARMNODE_REPORT_TOKEN": "t", "FARMNODE_CONFIG": str(node_toml)}
    done = run_farmnode("check-config", env=env, cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{node_toml}: ok (")
    done = run_farmnode("check-config", env={"FARMNODE_REPORT_TOKEN": "t"}, cwd=tmp_path)
    assert (done.returncode, done.stdout.split(":")[0]) == (0, "node.toml")
    done = run_farmnode("check-config", cwd=elsewhere)
    assert done.returncode == 2
    assert "node.toml: a readable TOML file (no such file)" in done.stderr


def test_usage_errors_and_version() -> None:
    done = run_farmnode()
    assert done.returncode == 2
    assert "COMMAND" in done.stderr
    done = run_farmnode("no-such-command")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr
    done = run_farmnode("--version")
    assert (done.returncode, done.stdout) == (0, f"farmnode {__version__}\n")
    done = run_farmnode("check-config", "--help")
    assert done.returncode == 0
    assert "--config" in done.stdout
