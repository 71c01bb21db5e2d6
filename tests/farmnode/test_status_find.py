"""Where ``farmnode status`` asks (:func:`farmnode.status.find_status`): only the status
address (and whether it speaks TLS, with the CA to trust) is read, so a file a reload
refused, or one without secrets, still works."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farmnode.errors import ConfigError
from farmnode.status import DEFAULT_STATUS_LISTEN, StatusTarget, find_status


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_only_node_status_listen_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[node]\nname = "n7"\nstatus_listen = "[::1]:9200"\n[report]\nurl = 3\n[bogus]\n',
    )
    assert find_status(path, {}) == StatusTarget("::1", 9200, str(path), "n7")
    target = find_status(path, {}, None)
    assert target.url == "http://[::1]:9200/status"


def test_the_default_address_and_a_wildcard(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "n1"\n')
    assert (find_status(path, {}).host, find_status(path, {}).port) == ("127.0.0.1", 9100)
    assert DEFAULT_STATUS_LISTEN == "127.0.0.1:9100"
    path = write(tmp_path, '[node]\nname = "n1"\nstatus_listen = "0.0.0.0:9300"\n')
    assert find_status(path, {}).url == "http://127.0.0.1:9300/status"


def test_address_then_environment_then_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "n1"\nstatus_listen = "127.0.0.1:9001"\n')
    env = {"FARMNODE_STATUS_LISTEN": " 127.0.0.2:9002 "}
    assert find_status(path, env).origin == "FARMNODE_STATUS_LISTEN"
    assert find_status(path, env).port == 9002
    target = find_status(tmp_path / "absent.toml", env, "127.0.0.3:9003")
    assert (target.host, target.port, target.origin, target.node) == (
        "127.0.0.3",
        9003,
        "--address",
        None,
    )


def test_a_file_that_is_not_toml_is_scanned_for_its_node_table(tmp_path: Path) -> None:
    text = (
        "# a reload refused this\n"
        '[node]\nname = "n1"  # the node\n  status_listen = "127.0.0.1:9400"   # here\n'
        '[[services]\nname = "web"\nstatus_listen = "127.0.0.1:1"\n'
    )
    path = write(tmp_path, text)
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)
    assert find_status(path, {}) == StatusTarget("127.0.0.1", 9400, str(path), "n1")
    path = write(tmp_path, "[node\n")
    with pytest.raises(ConfigError) as caught:
        find_status(path, {})
    assert caught.value.path == "node"
    assert "not valid TOML" in caught.value.expected
    assert "--address" in caught.value.expected


def test_tls_and_the_ca_come_from_the_file_the_environment_or_the_address(
    tmp_path: Path,
) -> None:
    tls = (
        '[node]\nname = "n1"\nstatus_listen = "127.0.0.1:9001"\nstatus_tls_certificate = "c.pem"\n'
    )
    path = write(tmp_path, tls)
    target = find_status(path, {})
    assert (target.tls, target.ca, target.url) == (True, None, "https://127.0.0.1:9001/status")
    path = write(tmp_path, tls + 'status_tls_ca = "ca.pem"\n')
    target = find_status(path, {})
    assert (target.ca, target.ca_source, target.ca_field) == (
        tmp_path / "ca.pem",
        str(path),
        "node.status_tls_ca",
    )
    env = {"FARMNODE_STATUS_TLS_CA": "/etc/ca.pem", "FARMNODE_STATUS_LISTEN": "127.0.0.2:9"}
    target = find_status(path, env)  # the address from the environment, TLS from the file
    assert (target.url, target.ca, target.ca_field) == (
        "https://127.0.0.2:9/status",
        Path("/etc/ca.pem"),
        "FARMNODE_STATUS_TLS_CA",
    )
    assert not find_status(tmp_path / "absent.toml", env).tls  # no file: plain
    broken = write(tmp_path, tls + 'status_tls_ca = "ca.pem"\n[[services]\n')  # scanned
    assert find_status(broken, {}).tls
    assert find_status(broken, {}).ca == tmp_path / "ca.pem"
    for address, wanted in (
        ("https://[::1]:9", "https://[::1]:9/status"),
        ("HTTPS://127.0.0.1:9/", "https://127.0.0.1:9/status"),
        ("http://127.0.0.1:9", "http://127.0.0.1:9/status"),
        ("127.0.0.1:9", "http://127.0.0.1:9/status"),
    ):
        assert find_status(path, {}, address).url == wanted  # the file is not read
    with pytest.raises(ConfigError) as caught:
        find_status(write(tmp_path, tls + "status_tls_ca = 5\n"), {})
    assert caught.value.path == "node.status_tls_ca"
    with pytest.raises(ConfigError) as caught:
        find_status(path, {}, "ftp://127.0.0.1:9")
    assert caught.value.path == "--address"


@pytest.mark.parametrize(
    ("text", "env", "where"),
    [
        ('[node]\nstatus_listen = "localhost:9100"\n', {}, "node.status_listen"),
        ("[node]\nstatus_listen = 9100\n", {}, "node.status_listen"),
        ('node = "n1"\n', {}, "node"),
        ('[other]\nname = "n1"\n', {}, "node"),
        ('[node]\nname = "n1"\n', {"FARMNODE_STATUS_LISTEN": "nowhere"}, "FARMNODE_STATUS_LISTEN"),
    ],
)
def test_what_cannot_be_used_is_named(
    tmp_path: Path, text: str, env: dict[str, str], where: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        find_status(path, env)
    assert caught.value.path == where


def test_files_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        find_status(tmp_path / "absent.toml", {})
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file"):
        find_status(fifo, {})  # never blocks on a FIFO
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[node]\nname = "n\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        find_status(path, {})


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=300))
def test_any_file_gives_an_address_or_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    error: ConfigError | None = None
    try:
        target = find_status(path, {})
    except ConfigError as exc:
        error = exc
    if error is not None:
        assert error.path in ("", "node", "node.status_listen", "node.status_tls_ca")
    else:
        assert 0 <= target.port <= 65535


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.from_regex(r"127\.0\.0\.[1-9]|\[::1\]", fullmatch=True),
    st.integers(1, 65535),
    st.sampled_from(["", "\n[[services]\n", "\nx = \n", "\n[node.sub\n"]),
)
def test_the_scan_finds_what_toml_would(tmp_path: Path, host: str, port: int, junk: str) -> None:
    text = f'[node]\nname = "n1"\nstatus_listen = "{host}:{port}"\n{junk}'
    path = tmp_path / "scan.toml"
    path.write_text(text, encoding="utf-8")
    target = find_status(path, {})
    assert (target.port, target.node) == (port, "n1")
