"""The public hot path: a plain ASGI callable that answers every request with a redirect.

It reads the current snapshot once per request and does no I/O, takes no locks and does
no routing. The target is the chosen site's ``base_url`` followed by the request's path
and query string exactly as they arrived (``raw_path`` and ``query_string``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from dispatcher.backends.snapshot import PoolView, Snapshot

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SORRY_BODY = (
    b"<!doctype html>\n<html><head><title>Service temporarily unavailable</title></head>\n"
    b"<body><h1>Service temporarily unavailable</h1>\n"
    b"<p>All of our sites are busy or down for maintenance. Please try again shortly.</p>"
    b"</body></html>\n"
)


class FarmState(Protocol):
    """What the hot path needs: the current snapshot and the redirect counters."""

    snapshot: Snapshot
    redirects: defaultdict[str, int]


class DispatchApp:
    """Redirects each client to a site of the default pool, or answers with its fallback."""

    def __init__(self, farm: FarmState, *, retry_after: int = 30) -> None:
        self.farm = farm
        self._sorry_headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(SORRY_BODY)).encode()),
            (b"retry-after", str(retry_after).encode()),
            (b"cache-control", b"no-store"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _not_http(scope, receive, send)
            return
        farm = self.farm
        pool = farm.snapshot.default_pool
        site = pool.choose(time.monotonic(), _host(scope))
        if site is None:
            await self._fallback(pool, scope, send)
            return
        farm.redirects[site.name] += 1
        location = site.location_base + _target(scope)
        await send(
            {
                "type": "http.response.start",
                "status": pool.status,
                "headers": [(b"location", location), (b"content-length", b"0")],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _fallback(self, pool: PoolView, scope: Scope, send: Send) -> None:
        fallback = pool.config.fallback
        if fallback == "sorry":
            status, headers, body = 503, self._sorry_headers, SORRY_BODY
            if scope["method"] == "HEAD":
                body = b""
        else:
            status, body = pool.status, b""
            headers = [(b"location", fallback.encode("ascii")), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _target(scope: Scope) -> bytes:
    """Path and query as the client sent them, byte for byte."""
    path: bytes | None = scope.get("raw_path")
    if path is None:
        path = scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    return path + b"?" + query if query else path


def _host(scope: Scope) -> bytes:
    for name, value in scope["headers"]:
        if name == b"host":
            return bytes(value).lower()
    return b""


async def _not_http(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer lifespan politely; refuse websockets (a redirect cannot move them)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close", "code": 1013})
