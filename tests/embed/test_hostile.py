"""Hostile requests at an embedding site, over raw sockets: a forged or broken ``Cookie``,
a strange ``Host``, a bogus hand-off token. The server may refuse a request (400: its
business), the middleware may answer or pass it; it never fails (no 500, nothing logged as
an error by the middleware)."""

from __future__ import annotations

import logging
import socket
from urllib.parse import urlsplit

import anyio
import pytest

from tests.embed.conftest import SHAPES, Start

pytestmark = pytest.mark.anyio

FINE = {200, 301, 302, 307, 400, 403, 404, 431}
COOKIES = [
    b"farm_site=",
    b"farm_site",
    b"farm_site=" + b"A" * 3000,
    b"farm_site=\xff\xfe\x00x",
    b"farm_site=eyJ6eiJ9.AAAA.BBBB",  # the shape of a stamp, forged
    b'; ;; farm_site==; =; farm_site="quoted"',
    b"; ".join(b"farm_site=%d" % n for n in range(200)),
    b"seen=1; farm_site=%00%0d%0a",
]
HOSTS = [
    b"",
    b"a@evil.example",
    b"evil.example/x",
    b"evil.example\\.good",
    b"[::1",
    b"eu.example.com:99999",
    b"eu.example.com:notaport",
    b"\xff\xfe",
    b"h" * 4000,
    b"127.0.0.1, evil.example",
]
TARGETS = [
    b"/page?farm_handoff=forged",
    b"/page?farm_handoff=" + b"x" * 4000,
    b"/page?farm_handoff=%ff&farm_handoff=",
    b"/legacy/%ff%00?%%",
    b"//double//slash",
    b"/%2e%2e/%2e%2e/etc/passwd",
]


def request(host: bytes | None, cookie: bytes | None, target: bytes = b"/page") -> bytes:
    lines = [b"GET " + target + b" HTTP/1.1"]
    if host is not None:
        lines.append(b"Host: " + host)
    if cookie is not None:
        lines.append(b"Cookie: " + cookie)
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def status_of(url: str, raw: bytes) -> int:
    """Send ``raw`` to the server at ``url``; the status it answers (0: none, closed)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as conn:
        conn.sendall(raw)
        head = b""
        while b"\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return 0
            head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize("shape", SHAPES)
async def test_hostile_cookies_hosts_and_tokens_never_fail_the_site(
    start: Start, shape: str, caplog: pytest.LogCaptureFixture
) -> None:
    farm = await start(shape, standalone=False)
    caplog.set_level(logging.WARNING)
    url = farm.served.url
    cases = [request(b"www.example.com", cookie) for cookie in COOKIES]
    cases += [request(host, None) for host in HOSTS]
    cases += [request(b"www.example.com", None, target) for target in TARGETS]
    cases.append(request(None, None).replace(b"HTTP/1.1", b"HTTP/1.0"))  # no Host at all
    for raw in cases:
        status = await anyio.to_thread.run_sync(status_of, url, raw)
        assert status in FINE, raw[:120]
    failed = [r for r in caplog.records if r.name == "webfarm.embed" and r.levelno >= logging.ERROR]
    assert not failed, failed[0].getMessage()
    assert (await farm.get("/page")).headers["location"] == f"{farm.us.url}/page"
