"""TLS on farmnode's status listener, with real clients (httpx, curl) and a test CA: HTTPS
only, a renewed certificate taken on reload without a restart, a stalled handshake dropped,
bad files refused at load naming the key, TLS turned off on reload kept until a restart;
``farmnode status`` reading it, the certificate verified (against the system trust store by
default, the CA from ``--cacert``, ``FARMNODE_STATUS_TLS_CA`` or ``node.status_tls_ca``,
the name from ``--server-name``), or not (``--insecure``)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from farmnode.__main__ import run as farmnode_cli
from farmnode.config import load_config
from farmnode.errors import ConfigError
from farmnode.status import HANDSHAKE_TIMEOUT
from tests.farmnode.test_daemon import running_node
from tests.ports import free_port
from tests.tlsca import ScratchCa

pytestmark = pytest.mark.anyio

TLS = 'status_tls_certificate = "live.pem"\nstatus_tls_key = "live.key"\n'


def node_file(directory: Path, extra: str = TLS) -> Path:
    path = directory / "node.toml"
    path.write_text(f'[node]\nname = "n1"\nstatus_listen = "127.0.0.1:0"\n{extra}')
    return path


def install(cert: Path, key: Path, directory: Path) -> None:
    """As a renewal tool does: written beside the live files, renamed over them."""
    for source, live in ((key, "live.key"), (cert, "live.pem")):
        shutil.copy(source, directory / f".{live}.new")
        os.replace(directory / f".{live}.new", directory / live)


def served_cn(port: int, ca: ScratchCa) -> str:
    context = ssl.create_default_context(cafile=str(ca.cert))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        peer: Any = tls.getpeercert()
    return str(dict(x[0] for x in peer["subject"])["commonName"])


async def test_the_status_listener_speaks_https_and_takes_a_renewed_certificate(
    tmp_path: Path,
) -> None:
    ca = ScratchCa(tmp_path)
    install(*ca.issue("first"), tmp_path)
    path = node_file(tmp_path)
    async with running_node(load_config(path, environ={})) as node:
        assert node.listener is not None
        assert node.listener.url.startswith("https://")
        port = node.status_port
        verify = ssl.create_default_context(cafile=str(ca.cert))
        async with httpx.AsyncClient(verify=verify, trust_env=False) as client:
            answer = await client.get(f"https://127.0.0.1:{port}/status")
            assert answer.status_code == 200
            assert answer.json()["node"] == "n1"
            assert (await client.get(f"https://127.0.0.1:{port}/livez")).status_code == 200
        curl = await asyncio.to_thread(
            subprocess.run,
            ["curl", "-sS", "--cacert", str(ca.cert), f"https://127.0.0.1:{port}/readyz"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert curl.returncode == 0, curl.stderr
        plain = await asyncio.to_thread(
            subprocess.run,
            ["curl", "-sS", "-m", "5", f"http://127.0.0.1:{port}/status"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        assert plain.returncode != 0  # no answer to plain HTTP
        assert await asyncio.to_thread(served_cn, port, ca) == "first"

        install(*ca.issue("renewed"), tmp_path)
        await node.reload(load_config(path, environ={}))
        assert await asyncio.to_thread(served_cn, port, ca) == "renewed"

        node_file(tmp_path, extra="")  # TLS off: needs a restart, the listener stays HTTPS
        await node.reload(load_config(path, environ={}))
        assert node.status_port == port
        assert await asyncio.to_thread(served_cn, port, ca) == "renewed"

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT + 5):
                assert await reader.read() == b""  # no handshake sent: dropped
        finally:
            writer.close()
        assert time.monotonic() - started < HANDSHAKE_TIMEOUT + 2


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('status_tls_certificate = "one.pem"\n', "node.status_tls_key"),
        ('status_tls_key = "one.key"\n', "node.status_tls_certificate"),
        (
            'status_tls_certificate = "gone.pem"\nstatus_tls_key = "one.key"\n',
            "node.status_tls_certificate",
        ),
        ('status_tls_certificate = "one.pem"\nstatus_tls_key = "two.key"\n', "node.status_tls_"),
        ("status_tls_certificate = 5\n", "node.status_tls_certificate"),
    ],
)
def test_bad_status_tls_files_are_refused_at_load_naming_the_key(
    tmp_path: Path, extra: str, field: str
) -> None:
    ca = ScratchCa(tmp_path)
    ca.issue("one")
    ca.issue("two")
    with pytest.raises(ConfigError) as info:
        load_config(node_file(tmp_path, extra), environ={})
    assert info.value.path.startswith(field), info.value
    assert info.value.source == str(tmp_path / "node.toml")


# --- `farmnode status` over TLS -------------------------------------------------------------


async def status_cli(
    capsys: pytest.CaptureFixture[str], *args: str, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``farmnode status ARGS`` in a thread (the node runs on this loop), with ``env`` as the
    environment it reads; exit status, stdout, stderr."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update({k: v for k, v in saved.items() if not k.startswith("FARMNODE_")})
    os.environ.update(env or {})
    try:
        code = await asyncio.to_thread(farmnode_cli, ["status", *args])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out, err = capsys.readouterr()
    return code, out, err


async def test_farmnode_status_reads_a_tls_listener_and_verifies_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = ScratchCa(tmp_path)
    install(*ca.issue("node"), tmp_path)
    stranger = ScratchCa(tmp_path, "stranger")  # a CA that did not issue the node's certificate
    port = free_port()
    path = tmp_path / "node.toml"
    path.write_text(f'[node]\nname = "n1"\nstatus_listen = "127.0.0.1:{port}"\n{TLS}')
    url = f"https://127.0.0.1:{port}/status"
    async with running_node(load_config(path, environ={})):
        code, out, err = await status_cli(capsys, "-c", str(path))  # the system trust store
        assert (code, out) == (1, "")
        assert err.startswith(f"farmnode: node n1's certificate at {url} is not trusted (")
        assert "CA: the system trust store): trust its CA with --cacert FILE" in err
        assert "--insecure" in err

        code, out, err = await status_cli(capsys, "-c", str(path), "--cacert", str(ca.cert))
        assert (code, err) == (0, "")
        assert out.startswith("node n1: up ")
        env = {"FARMNODE_STATUS_TLS_CA": str(ca.cert)}
        assert (await status_cli(capsys, "-c", str(path), "--json", env=env))[:1] == (0,)
        code, _, err = await status_cli(
            capsys, "-c", str(path), "--cacert", str(stranger.cert), env=env
        )  # --cacert wins over the environment
        assert code == 1
        assert "is not trusted (" in err
        assert f"CA: {stranger.cert})" in err

        # the CA named in the file (relative to it), checked by check-config too
        path.write_text(path.read_text() + 'status_tls_ca = "ca.pem"\n')
        load_config(path, environ={})
        code, out, err = await status_cli(capsys, "-c", str(path))
        assert (code, err) == (0, "")
        assert out.startswith("node n1: up ")

        # --address: https:// says TLS; plain is told what it met
        https = f"https://127.0.0.1:{port}"
        code, out, err = await status_cli(capsys, "--address", https, "--cacert", str(ca.cert))
        assert (code, err) == (0, "")
        code, _, err = await status_cli(capsys, "--address", f"127.0.0.1:{port}")
        assert code == 1
        assert "closed the connection without answering HTTP: a TLS status listener? " in err
        assert f"--address {https}" in err

        # the name checked: the address asked, or --server-name
        args = ("--address", https, "--cacert", str(ca.cert))
        assert (await status_cli(capsys, *args, "--server-name", "localhost"))[0] == 0
        code, _, err = await status_cli(capsys, *args, "--server-name", "db.example")
        assert code == 1
        assert "(Hostname mismatch, certificate is not valid for 'db.example'; CA: " in err

        code, out, err = await status_cli(capsys, "--address", https, "--insecure")
        assert code == 0
        assert out.startswith("node n1: up ")
        assert err == f"farmnode: --insecure: the certificate at {url} is not verified\n"

        bad = tmp_path / "bad.pem"
        bad.write_text("not a certificate\n")
        code, _, err = await status_cli(capsys, *args[:2], "--cacert", str(bad))
        assert code == 2
        assert err.startswith("farmnode: invalid configuration: <command line>: --cacert: ")
        code, _, err = await status_cli(capsys, *args[:2], env={"FARMNODE_STATUS_TLS_CA": "/no"})
        assert code == 2
        assert "<environment>: FARMNODE_STATUS_TLS_CA: a readable PEM file" in err

    plain = free_port()  # a plain listener asked over TLS
    plain_file = tmp_path / "plain.toml"
    plain_file.write_text(f'[node]\nname = "n2"\nstatus_listen = "127.0.0.1:{plain}"\n')
    async with running_node(load_config(plain_file, environ={})):
        code, _, err = await status_cli(capsys, "--address", f"https://127.0.0.1:{plain}")
        assert code == 1
        assert err.startswith(f"farmnode: no TLS at https://127.0.0.1:{plain}/status (")
        assert f"(ask with --address 127.0.0.1:{plain})" in err
        assert (await status_cli(capsys, "-c", str(plain_file)))[0] == 0
