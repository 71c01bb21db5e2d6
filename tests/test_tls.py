"""TLS on the dispatcher's public and admin listeners, with real clients (curl, httpx) and a
test CA made by openssl: https scheme, client certificates required on admin, the
handshake bounded by head_timeout, certificates reloaded in place, bad files refused."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from dispatcher.config import build_config
from dispatcher.errors import ConfigError
from dispatcher.reload import plan_reload
from tests.conftest import ADMIN_TOKEN, LoopbackSite, RunningDispatcher, farm_toml
from tests.tlsca import ScratchCa

pytestmark = pytest.mark.anyio


@pytest.fixture
def ca(tmp_path: Path) -> ScratchCa:
    return ScratchCa(tmp_path)


@pytest.fixture
async def farm(
    sites: dict[str, LoopbackSite], tmp_path: Path, ca: ScratchCa
) -> AsyncIterator[tuple[RunningDispatcher, ScratchCa]]:
    cert, key = ca.issue("server")
    shutil.copy(cert, tmp_path / "live.pem")
    shutil.copy(key, tmp_path / "live.key")
    extra = (
        'tls_certificate = "live.pem"\ntls_key = "live.key"\nhead_timeout = 0.5\n'
        'admin_tls_certificate = "live.pem"\nadmin_tls_key = "live.key"\n'
        'admin_tls_client_ca = "ca.pem"\n'
    )
    config = tmp_path / "farm.toml"
    config.write_text(
        farm_toml(
            {"eu": (sites["eu"], 1)}, database_url=f"sqlite:///{tmp_path / 'f.db'}", extra=extra
        )
    )
    running = RunningDispatcher(await RunningDispatcher.start_runner(config))
    try:
        yield running, ca
    finally:
        await running.close()


async def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    """curl, in a thread: the dispatcher answers on this test's event loop."""
    return await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=20, check=False
    )


def _client(ca: ScratchCa, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cert))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    return context


def _served_cn(port: int, ca: ScratchCa) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        _client(ca).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        peer: Any = tls.getpeercert()
    return str(dict(x[0] for x in peer["subject"])["commonName"])


async def test_public_listener_speaks_https_to_curl_and_httpx(
    farm: tuple[RunningDispatcher, ScratchCa],
) -> None:
    running, ca = farm
    port = running.runner.public_port
    async with httpx.AsyncClient(verify=_client(ca), trust_env=False) as client:
        answer = await client.get(f"https://127.0.0.1:{port}/x")
    assert answer.status_code in (302, 503)
    curl = await _run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{scheme}", "--cacert", str(ca.cert),
         f"https://127.0.0.1:{port}/x"],
    )  # fmt: skip
    assert curl.returncode == 0, curl.stderr
    assert curl.stdout.split()[0] in ("302", "503")
    plain = await _run(
        ["curl", "-sS", "-m", "5", f"http://127.0.0.1:{port}/x"],
    )  # fmt: skip
    assert plain.returncode != 0  # plain HTTP on a TLS listener gets no answer


async def test_admin_requires_a_client_certificate(
    farm: tuple[RunningDispatcher, ScratchCa],
) -> None:
    running, ca = farm
    assert running.runner.admin is not None
    url = f"https://127.0.0.1:{running.runner.admin.port}/api/v1/status"
    auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(verify=_client(ca), trust_env=False) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(url, headers=auth)
    good = _client(ca, ca.issue("operator", server=False))
    async with httpx.AsyncClient(verify=good, trust_env=False) as client:
        assert (await client.get(url, headers=auth)).status_code == 200
    cert, key = ca.dir / "operator.pem", ca.dir / "operator.key"
    curl = await _run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(ca.cert),
         "--cert", str(cert), "--key", str(key), "-H", f"authorization: Bearer {ADMIN_TOKEN}", url],
    )  # fmt: skip
    assert curl.stdout == "200", curl.stderr
    refused = await _run(
        ["curl", "-sS", "--cacert", str(ca.cert), url],
    )  # fmt: skip
    assert refused.returncode != 0


@pytest.mark.parametrize("listener", ["public", "admin"])
async def test_a_stalled_handshake_is_dropped_within_head_timeout(
    farm: tuple[RunningDispatcher, ScratchCa], listener: str
) -> None:
    running, _ = farm
    admin = running.runner.admin
    assert admin is not None
    port = running.runner.public_port if listener == "public" else admin.port
    stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
    stalled[1][1].write(b"\x16\x03\x01\x00")  # a ClientHello's first bytes, then nothing
    started = time.monotonic()
    try:
        async with asyncio.timeout(5):
            for reader, _ in stalled:
                assert await reader.read() == b""  # closed by the listener
        assert time.monotonic() - started < 3  # (head_timeout is 0.5 s here)
    finally:
        for _, writer in stalled:
            writer.close()


async def test_certificates_are_reloaded_under_load_without_a_failed_request(
    farm: tuple[RunningDispatcher, ScratchCa], tmp_path: Path
) -> None:
    running, ca = farm
    port = running.runner.public_port
    assert await asyncio.to_thread(_served_cn, port, ca) == "server"
    failures: list[str] = []
    done = threading.Event()
    count = 0

    def load() -> None:
        nonlocal count
        with httpx.Client(verify=_client(ca), trust_env=False) as client:
            while not done.is_set() and count < 2000:
                try:
                    status = client.get(f"https://127.0.0.1:{port}/x").status_code
                    if status not in (302, 503):
                        failures.append(str(status))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                count += 1

    thread = threading.Thread(target=load)
    thread.start()
    await asyncio.sleep(0.3)
    cert, key = ca.issue("renewed")
    shutil.copy(key, tmp_path / "live.key")
    shutil.copy(cert, tmp_path / "live.pem")
    assert await running.runner.reload()
    await asyncio.sleep(0.3)
    done.set()
    await asyncio.to_thread(thread.join, 30)
    assert failures == []
    assert count > 10
    assert await asyncio.to_thread(_served_cn, port, ca) == "renewed"
    assert running.runner.admin is not None
    # a bad new certificate: ERROR, the running one stays
    (tmp_path / "live.pem").write_text("not a certificate")
    await running.runner.reload()
    assert await asyncio.to_thread(_served_cn, port, ca) == "renewed"


@pytest.mark.parametrize(
    ("files", "field"),
    [
        ({"tls_certificate": "missing.pem", "tls_key": "server.key"}, "dispatcher.tls_certificate"),
        ({"tls_certificate": "server.pem"}, "dispatcher.tls_key"),
        ({"tls_certificate": "server.pem", "tls_key": "other.key"}, "dispatcher.tls_"),
        ({"tls_certificate": "server.key", "tls_key": "server.key"}, "dispatcher.tls_"),
        (
            {"admin_tls_certificate": ".", "admin_tls_key": "server.key"},
            "dispatcher.admin_tls_certificate",
        ),
        ({"admin_tls_client_ca": "ca.pem"}, "dispatcher.admin_tls_client_ca"),
    ],
)
def test_bad_tls_files_are_refused_at_load_naming_the_key(
    ca: ScratchCa, tmp_path: Path, files: dict[str, str], field: str
) -> None:
    ca.issue("server")
    ca.issue("other")
    raw = {"dispatcher": {"admin_tokens": ["t"], **files}}
    with pytest.raises(ConfigError) as info:
        build_config(raw, environ={}, base_dir=tmp_path)
    assert info.value.path.startswith(field)


def test_a_reload_reads_new_tls_files_but_turning_tls_on_or_off_needs_a_restart(
    ca: ScratchCa, tmp_path: Path
) -> None:
    ca.issue("one")
    ca.issue("two")

    def cfg(**files: str) -> Any:
        raw = {"dispatcher": {"admin_tokens": ["t"], **files}}
        return build_config(raw, environ={}, base_dir=tmp_path)

    plain = cfg()
    one = cfg(tls_certificate="one.pem", tls_key="one.key")
    two = cfg(tls_certificate="two.pem", tls_key="two.key")
    turned_on = plan_reload(plain, one)
    assert turned_on.needs_restart == ("dispatcher.tls_certificate", "dispatcher.tls_key")
    assert turned_on.config.dispatcher.tls_certificate is None  # still plain until a restart
    turned_off = plan_reload(one, plain)
    assert turned_off.needs_restart == ("dispatcher.tls_certificate", "dispatcher.tls_key")
    assert turned_off.config.dispatcher.tls_certificate == tmp_path / "one.pem"
    moved = plan_reload(one, two)
    assert moved.needs_restart == ()
    assert moved.applied == ("dispatcher.tls_certificate", "dispatcher.tls_key")
    assert moved.config.dispatcher.tls_key == tmp_path / "two.key"
    assert plan_reload(one, one).summary() == "applied: nothing changed"  # (files read again)
    admin = {"admin_tls_certificate": "one.pem", "admin_tls_key": "one.key"}
    with_ca = plan_reload(cfg(**admin), cfg(**admin, admin_tls_client_ca="ca.pem"))
    assert with_ca.needs_restart == ("dispatcher.admin_tls_client_ca",)
    admin_moved = plan_reload(
        cfg(**admin), cfg(admin_tls_certificate="two.pem", admin_tls_key="two.key")
    )
    assert admin_moved.applied == ("dispatcher.admin_tls_certificate", "dispatcher.admin_tls_key")


async def test_new_paths_are_served_after_a_reload_and_tls_stays_on_until_a_restart(
    farm: tuple[RunningDispatcher, ScratchCa], tmp_path: Path
) -> None:
    running, ca = farm
    port = running.runner.public_port
    config = tmp_path / "farm.toml"
    text = config.read_text()
    ca.issue("elsewhere")
    config.write_text(
        text.replace('"live.pem"', '"elsewhere.pem"').replace('"live.key"', '"elsewhere.key"')
    )
    assert await running.runner.reload()
    assert await asyncio.to_thread(_served_cn, port, ca) == "elsewhere"
    admin = running.runner.admin
    assert admin is not None
    assert admin.tls is not None
    assert admin.tls.files.certificate == tmp_path / "elsewhere.pem"
    plain = "\n".join(line for line in text.splitlines() if "tls_" not in line)
    config.write_text(plain)
    assert await running.runner.reload()
    assert running.runner.config.dispatcher.tls_certificate == tmp_path / "elsewhere.pem"
    assert await asyncio.to_thread(_served_cn, port, ca) == "elsewhere"  # HTTPS until a restart


RULES = """\
RewriteEngine on
RewriteCond %{HTTPS} =on
RewriteRule ^/where$ https://secure.example/%{HTTPS} [R=302,L]
RewriteRule ^/where$ http://plain.example/%{HTTPS} [R=302,L]
"""


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
async def test_https_in_rules_and_the_affinity_cookies_secure_follow_the_listener(
    sites: dict[str, LoopbackSite], tmp_path: Path, ca: ScratchCa, tls: bool
) -> None:
    cert, key = ca.issue("server")
    (tmp_path / "rules.conf").write_text(RULES)
    extra = 'rules = "rules.conf"\naffinity = "cookie"\nsecret_keys = ["k' + "x" * 40 + '"]\n'
    if tls:
        extra += f'tls_certificate = "{cert.name}"\ntls_key = "{key.name}"\n'
    config = tmp_path / "farm.toml"
    config.write_text(
        farm_toml(
            {"eu": (sites["eu"], 1)}, database_url=f"sqlite:///{tmp_path / 'f.db'}", extra=extra
        )
    )
    running = RunningDispatcher(await RunningDispatcher.start_runner(config))
    scheme = "https" if tls else "http"
    try:
        base = f"{scheme}://127.0.0.1:{running.runner.public_port}"
        async with httpx.AsyncClient(verify=_client(ca), trust_env=False) as client:
            where = await client.get(f"{base}/where")
            deadline = time.monotonic() + 10
            while (placed := await client.get(f"{base}/page")).status_code != 302:
                assert time.monotonic() < deadline, placed  # until the site is up
                await asyncio.sleep(0.1)
    finally:
        await running.close()
    assert where.status_code == 302
    expected = "https://secure.example/on" if tls else "http://plain.example/off"
    assert where.headers["location"] == expected
    assert placed.headers["location"].startswith(sites["eu"].url)
    cookie = placed.headers["set-cookie"]
    assert cookie.startswith("farm_site=")
    attributes = [part.strip().lower() for part in cookie.split(";")[1:]]
    assert ("secure" in attributes) is tls, cookie
