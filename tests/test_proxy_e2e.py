"""The client's address end to end, with real processes: a client on its own loopback address
(127.0.0.23) -> ``farmnode serve`` (a userspace switch with ``send_proxy``) -> ``farm-dispatcher
serve`` (two worker processes, ``proxy_protocol = true``), whose rule echoes
``%{REMOTE_ADDR}``: the dispatcher sees the client, not the switch. Then, on the same
dispatcher: X-Forwarded-For from a trusted and an untrusted client, a connection without a
PROXY header, one from a peer not allowed to send it, and hostile headers that never hurt the
other clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.proxyproto import V2_SIGNATURE, encode
from tests.farmnode.test_daemon import FARMNODE
from tests.ports import free_port
from tests.test_serve_processes import Serve, write_config

pytestmark = pytest.mark.anyio

RULES = """RewriteEngine On
RewriteRule ^/whoami$ http://echo.example/%{REMOTE_ADDR}/%{HTTPS} [R=302,L]
"""
WHOAMI = b"GET /whoami HTTP/1.1\r\nHost: www.example.com\r\n\r\n"
SWITCH = "127.0.0.1"  # where the switch connects from: a trusted proxy
TRUSTED_CLIENT, CLIENT = "127.0.0.23", "127.0.0.24"


def ask(port: int, data: bytes, source: str, timeout: float = 5.0) -> bytes:
    """Connect from ``source``, send ``data``, read until the server closes or answers a
    whole head; ``b""`` when closed without an answer."""
    with socket.socket() as sock:
        sock.settimeout(timeout)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        return answer


def location(answer: bytes) -> bytes:
    assert answer.startswith(b"HTTP/1.1 302 "), answer
    for line in answer.split(b"\r\n"):
        if line.lower().startswith(b"location: "):
            return line[10:]
    raise AssertionError(answer)


class Stack:
    """The running dispatcher and switch; ``switch`` is the port clients connect to."""

    def __init__(self, dispatcher: Serve, switch: int) -> None:
        self.dispatcher = dispatcher
        self.switch = switch

    @property
    def public(self) -> int:
        return self.dispatcher.public


def node_toml(switch: int, status: int, real: int, send_proxy: str) -> str:
    return f"""
[node]
name = "edge1"
status_listen = "127.0.0.1:{status}"

[[services]]
name = "dispatchers"
protocol = "tcp"
listen = "127.0.0.1:{switch}"
scheduler = "rr"
send_proxy = {send_proxy}
check = {{ kind = "tcp", interval = 0.2, timeout = 0.2, rise = 1, fall = 3 }}
[[services.real]]
address = "127.0.0.1:{real}"
"""


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, send_proxy: str) -> AsyncIterator[Stack]:
    (tmp_path / "rules.conf").write_text(RULES)
    extra = (
        'rules = "rules.conf"\nproxy_protocol = true\nhead_timeout = 1.0\n'
        f'trusted_proxies = ["{SWITCH}/32", "{TRUSTED_CLIENT}/32"]'
    )
    config = await asyncio.to_thread(write_config, tmp_path, {}, extra)
    dispatcher = Serve(config)
    node = None
    try:
        await dispatcher.ready()
        switch = free_port()
        path = tmp_path / "node.toml"
        path.write_text(node_toml(switch, free_port(), dispatcher.public, send_proxy))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FARMNODE_")}
        node = await asyncio.create_subprocess_exec(
            FARMNODE, "serve", "--config", str(path), env=env, stderr=asyncio.subprocess.PIPE
        )
        running = Stack(dispatcher, switch)
        deadline = time.monotonic() + 20
        while True:  # until the switch listens and has found its real server up
            assert node.returncode is None, "farmnode serve exited"
            with contextlib.suppress(OSError):
                answer = await asyncio.to_thread(ask, switch, WHOAMI, TRUSTED_CLIENT, 2.0)
                if answer.startswith(b"HTTP/1.1 302"):
                    break
            assert time.monotonic() < deadline, dispatcher.output
            await asyncio.sleep(0.1)
        yield running
    finally:
        if node is not None and node.returncode is None:
            node.terminate()
            await asyncio.wait_for(node.communicate(), 20)
        dispatcher.close()


@pytest.mark.parametrize("send_proxy", ["true", '"v1"'])
async def test_the_dispatcher_sees_the_client_through_the_switch(
    tmp_path: Path, send_proxy: str
) -> None:
    async with stack(tmp_path, send_proxy) as running:
        for source in (TRUSTED_CLIENT, CLIENT, "127.0.0.25"):
            for _ in range(4):  # (both workers, whichever accepts)
                answer = await asyncio.to_thread(ask, running.switch, WHOAMI, source)
                assert location(answer) == f"http://echo.example/{source}/off".encode()


async def test_forwarded_for_direct_connections_and_hostile_headers(tmp_path: Path) -> None:
    async with stack(tmp_path, "true") as running:
        xff = WHOAMI.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
        # a trusted client (behind the switch) may name the client; an untrusted one may not
        answer = await asyncio.to_thread(ask, running.switch, xff, TRUSTED_CLIENT)
        assert location(answer) == b"http://echo.example/203.0.113.9/off"
        answer = await asyncio.to_thread(ask, running.switch, xff, CLIENT)
        assert location(answer) == f"http://echo.example/{CLIENT}/off".encode()
        # straight to the dispatcher: without a PROXY header, closed with no answer
        assert await asyncio.to_thread(ask, running.public, WHOAMI, SWITCH) == b""
        # a PROXY header from a peer that is not a trusted proxy: closed too
        forged = encode(1, ("203.0.113.9", 1), ("127.0.0.1", 80)) + WHOAMI
        assert await asyncio.to_thread(ask, running.public, forged, CLIENT) == b""
        # the trusted switch's own header is accepted
        answer = await asyncio.to_thread(ask, running.public, forged, SWITCH)
        assert location(answer) == b"http://echo.example/203.0.113.9/off"
        await hostile_headers_never_hurt_other_clients(running)
        await running.dispatcher.wait_for("closed a connection from 127.0.0.24")


async def hostile_headers_never_hurt_other_clients(running: Stack) -> None:
    """A few hostile PROXY headers from the trusted peer (so the decoder reads them), each
    while a client behind the switch is served."""
    corpus: list[bytes] = []

    @settings(
        max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None
    )
    @given(
        st.one_of(
            st.builds(lambda b: b"PROXY " + b, st.binary(max_size=150)),
            st.builds(lambda b: V2_SIGNATURE + b, st.binary(max_size=200)),
            st.binary(min_size=1, max_size=120),
        )
    )
    def collect(data: bytes) -> None:
        corpus.append(data)

    collect()
    assert corpus
    for data in corpus:
        attack = asyncio.create_task(asyncio.to_thread(ask, running.public, data, SWITCH, 3.0))
        started = time.monotonic()
        answer = await asyncio.to_thread(ask, running.switch, WHOAMI, CLIENT)
        assert location(answer) == f"http://echo.example/{CLIENT}/off".encode()
        assert time.monotonic() - started < 1.0
        hostile = await attack
        assert hostile == b"" or hostile.startswith(b"HTTP/1.1 "), hostile
        assert not hostile.startswith(b"HTTP/1.1 500"), hostile
    assert running.dispatcher.proc.poll() is None


async def test_a_reload_changes_trusted_proxies_in_every_worker_but_not_proxy_protocol(
    tmp_path: Path,
) -> None:
    async with stack(tmp_path, "true") as running:
        xff = WHOAMI.replace(b"\r\n\r\n", b"\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n")
        answer = await asyncio.to_thread(ask, running.switch, xff, CLIENT)
        assert location(answer) == f"http://echo.example/{CLIENT}/off".encode()
        config = running.dispatcher.config
        text = config.read_text()
        text = text.replace(f'"{TRUSTED_CLIENT}/32"]', f'"{TRUSTED_CLIENT}/32", "{CLIENT}/32"]')
        config.write_text(text.replace("proxy_protocol = true", "proxy_protocol = false"))
        running.dispatcher.proc.send_signal(signal.SIGHUP)
        await running.dispatcher.wait_for("needs a restart (running values kept): ")
        assert "dispatcher.proxy_protocol" in running.dispatcher.output
        deadline = time.monotonic() + 10
        while True:  # every worker, whichever accepts: eight in a row
            answers = [await asyncio.to_thread(ask, running.switch, xff, CLIENT) for _ in range(8)]
            if all(location(a) == b"http://echo.example/203.0.113.9/off" for a in answers):
                break
            assert time.monotonic() < deadline, running.dispatcher.output
            await asyncio.sleep(0.1)
        # still a PROXY listener until a restart
        assert await asyncio.to_thread(ask, running.public, WHOAMI, SWITCH) == b""
