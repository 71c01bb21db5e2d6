"""TLS through a real ``farm-dispatcher serve`` with two worker processes: a certificate
renewed at the same paths (renamed into place) and a SIGHUP, under a bounded load of new
TLS connections: no request fails, and every worker serves the new certificate after."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
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

from tests.conftest import LoopbackSite
from tests.test_nearest_e2e import connection_owners
from tests.test_serve_processes import Serve, two_sites, write_config
from tests.tlsca import ScratchCa

__all__ = ["two_sites"]  # (a fixture, used by name)

pytestmark = pytest.mark.anyio

LENIENT = "interval = 0.5, timeout = 2.0, rise = 1, fall = 3"
TLS = 'tls_certificate = "live.pem"\ntls_key = "live.key"\n'
CONNECTIONS = 16  # held open at once, so both workers' sockets take some of them


def serial_of(cert: Path) -> str:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-serial"],
        capture_output=True, text=True, check=True, timeout=20,
    ).stdout  # fmt: skip
    return out.strip().split("=", 1)[1].upper()


def install(cert: Path, key: Path, directory: Path) -> None:
    """Put a certificate and key in place the way a renewal tool does: written beside,
    then renamed over the live files (the key first)."""
    for source, live in ((key, "live.key"), (cert, "live.pem")):
        staged = directory / f".{live}.new"
        shutil.copy(source, staged)
        os.replace(staged, directory / live)


def client_context(ca: ScratchCa) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca.cert))


def served_serials(port: int, ca: ScratchCa, workers: set[int]) -> dict[int, set[str]]:
    """Open :data:`CONNECTIONS` TLS connections at once: the serials each worker served."""
    context = client_context(ca)
    held: list[ssl.SSLSocket] = []
    try:
        for _ in range(CONNECTIONS):
            raw = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.append(context.wrap_socket(raw, server_hostname="localhost"))
        owners = connection_owners(port, workers)
        by_worker: dict[int, set[str]] = {}
        for tls in held:
            peer: Any = tls.getpeercert()
            pid = owners[tls.getsockname()[:2]]
            by_worker.setdefault(pid, set()).add(str(peer["serialNumber"]).upper())
        return by_worker
    finally:
        for tls in held:
            tls.close()


@pytest.fixture
async def serving(
    tmp_path: Path, two_sites: dict[str, LoopbackSite]
) -> AsyncIterator[tuple[Serve, ScratchCa, Path]]:
    ca = await asyncio.to_thread(ScratchCa, tmp_path)
    cert, key = await asyncio.to_thread(ca.issue, "first")
    install(cert, key, tmp_path)
    config = await asyncio.to_thread(write_config, tmp_path, two_sites, TLS, LENIENT)
    running = Serve(config)
    try:
        await running.ready()
        yield running, ca, tmp_path
    finally:
        running.close()


async def test_a_renewed_certificate_reaches_every_worker_on_sighup_under_load(
    serving: tuple[Serve, ScratchCa, Path],
) -> None:
    running, ca, directory = serving
    assert "dispatching on https://" in running.output
    workers = running.workers()
    assert len(workers) == 2
    first = await asyncio.to_thread(serial_of, directory / "first.pem")
    before = await asyncio.to_thread(served_serials, running.public, ca, workers)
    assert set(before) == workers
    assert all(serials == {first} for serials in before.values()), before

    failures: list[str] = []
    done = threading.Event()
    count = 0

    def load() -> None:  # a new connection (a handshake) for every request, bounded
        nonlocal count
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(verify=client_context(ca), trust_env=False, limits=no_reuse) as client:
            while not done.is_set() and count < 5000:
                try:
                    status = client.get(f"https://127.0.0.1:{running.public}/x").status_code
                    if status != 302:
                        failures.append(str(status))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                count += 1

    thread = threading.Thread(target=load)
    thread.start()
    try:
        await asyncio.sleep(0.5)
        cert, key = await asyncio.to_thread(ca.issue, "renewed")
        renewed = await asyncio.to_thread(serial_of, cert)
        assert renewed != first
        install(cert, key, directory)
        running.proc.send_signal(signal.SIGHUP)
        await running.wait_for("reloaded ")
        deadline = time.monotonic() + 10
        while True:  # the workers apply the state the reload announced
            after = await asyncio.to_thread(served_serials, running.public, ca, workers)
            if all(serials == {renewed} for serials in after.values()) and set(after) == workers:
                break
            assert time.monotonic() < deadline, (after, running.output)
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        done.set()
        await asyncio.to_thread(thread.join, 30)
    print(f"{count} requests, each on a new TLS connection, across the renewal")
    assert failures == [], failures[:5]
    assert count > 20
    assert running.workers() == workers  # reloaded in place: no worker was replaced
