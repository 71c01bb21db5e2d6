"""The command line as a user runs it: real processes, real ports on loopback."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import FARM_DISPATCHER, farm_toml, run_cli


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def demo_port() -> int:
    """A port P with P, P+1 and P+921..P+923 all free (the demo's layout)."""
    for _ in range(200):
        port = random.randrange(20000, 40000)
        if all(free(p) for p in (port, port + 1, port + 921, port + 922, port + 923)):
            return port
    raise AssertionError("no free port range for the demo")


def test_demo_runs_redirects_and_stops_cleanly_on_ctrl_c() -> None:
    port = demo_port()
    proc = subprocess.Popen(
        [FARM_DISPATCHER, "demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        output = "".join(lines)
        assert "Ctrl-C stops everything" in output, output
        assert f"curl -i 'http://127.0.0.1:{port}/shop/cart?item=42'" in output
        assert "/api/v1/sites/eu/drain" in output
        with httpx.Client(trust_env=False) as client:
            response = client.get(f"http://127.0.0.1:{port}/shop/cart?item=42")
            assert response.status_code == 302
            assert response.headers["location"].endswith("/shop/cart?item=42")
            assert "Hello from site" in client.get(response.headers["location"]).text
            auth = {"authorization": "Bearer demo-token"}
            drained = client.post(
                f"http://127.0.0.1:{port + 1}/api/v1/sites/eu/drain", headers=auth
            )
            assert drained.json()["drained"] is True
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, rest
        assert "webfarm demo stopped." in rest
        assert "Traceback" not in output + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_refuses_a_schema_that_is_behind_and_db_upgrade_fixes_it(tmp_path: Path) -> None:
    config = tmp_path / "farm.toml"
    config.write_text(farm_toml({}, database_url="sqlite:///farm.db"))
    env = {**os.environ, "FARM_CONFIG": str(config)}
    refused = run_cli("serve", env=env)
    assert refused.returncode == 1
    assert "farm-dispatcher db upgrade --config" in refused.stderr
    assert "Traceback" not in refused.stderr

    current = run_cli("db", "current", env=env)
    assert current.returncode == 1
    assert "behind" in current.stdout

    upgraded = run_cli("db", "upgrade", "--config", str(config))
    assert upgraded.returncode == 0, upgraded.stderr
    assert re.search(r"database schema at \d{4}\n", upgraded.stdout)
    assert (tmp_path / "farm.db").exists()  # relative to the config file, not the CWD

    current = run_cli("db", "current", env=env)
    assert current.returncode == 0
    assert "up to date" in current.stdout


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    config = tmp_path / "farm.toml"
    config.write_text(farm_toml({}, database_url="sqlite:///farm.db"))
    run_cli("db", "upgrade", "-c", str(config), check=True)
    proc = subprocess.Popen(
        [FARM_DISPATCHER, "serve", "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        output = ""
        while "dispatching on" not in output and time.monotonic() < deadline:
            output += proc.stdout.readline()
        assert "dispatching on http://127.0.0.1:0" in output
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, output + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_bad_config_exits_2_naming_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "farm.toml"
    config.write_text('[dispatcher]\nlisten = "nowhere"\nadmin_tokens = ["t"]\n')
    result = run_cli("serve", "-c", str(config))
    assert result.returncode == 2
    assert f"{config}: dispatcher.listen: " in result.stderr
    assert '"host:port"' in result.stderr


def test_a_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "farm.toml"
        config.write_text(
            farm_toml({}, database_url="sqlite:///farm.db").replace(
                'listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"', 1
            )
        )
        run_cli("db", "upgrade", "-c", str(config), check=True)
        result = run_cli("serve", "-c", str(config))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
