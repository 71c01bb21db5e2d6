"""The public hot path: a plain ASGI callable that answers every request with a redirect.

It reads the current snapshot once per request and does no I/O, takes no locks and does
no routing. The target is the chosen site's ``base_url`` followed by the request's path
and query string exactly as they arrived (``raw_path`` and ``query_string``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any, NamedTuple, Protocol

from dispatcher.backends.snapshot import PoolView, Snapshot
from dispatcher.redirect import Outcome, RewriteRequest

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
        self._selection = _Selection()
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
        snapshot = self.farm.snapshot
        now, host = time.monotonic(), _host(scope)
        headers: list[tuple[bytes, bytes]] = [(b"content-length", b"0")]
        rules = snapshot.rules
        if rules is not None:
            selection = self._selection
            selection.snapshot, selection.now, selection.host = snapshot, now, host
            outcome = rules.evaluate_scope(scope, selection)
            chosen, selection.chosen = selection.chosen, ()
            if outcome.cookies:
                headers.extend((b"set-cookie", c.encode("latin-1")) for c in outcome.cookies)
            if outcome.action != "none":  # the rules answer, or rewrote the path
                await self._decided(snapshot, outcome, scope, send, now, host, chosen, headers)
                return
        # the common case: a site of the default pool, path and query as they came
        pool = snapshot.default_pool
        site = pool.choose(now, host)
        if site is None:
            await self._fallback(pool, scope, send)
            return
        self.farm.redirects[site.name] += 1
        headers.append((b"location", site.location_base + _target(scope)))
        await send({"type": "http.response.start", "status": pool.status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    async def _decided(
        self,
        snapshot: Snapshot,
        outcome: Outcome,
        scope: Scope,
        send: Send,
        now: float,
        host: bytes,
        chosen: Sequence[str],
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        """Answer what the rules decided: their redirect or status, or a rewritten path."""
        decision = decide(snapshot, outcome, _target(scope), host, now, chosen)
        for name in decision.sites:
            self.farm.redirects[name] += 1
        if decision.sorry:
            await self._fallback(snapshot.default_pool, scope, send)
            return
        if decision.location is not None:
            headers.append((b"location", decision.location))
        await send({"type": "http.response.start", "status": decision.status, "headers": headers})
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


class Decision(NamedTuple):
    """The dispatcher's answer once the rules have run.

    ``location`` is ``None`` for a status without one (403, 410, ...); ``sites`` names the
    sites the answer sends the client to (for the redirect counters); ``sorry`` means the
    default pool's fallback answers because no site can take the client. (A ``NamedTuple``:
    built once per request, it must be cheap to make.)
    """

    status: int
    location: bytes | None
    sites: tuple[str, ...] = ()
    sorry: bool = False


class _Selection:
    """The ``${site:POOL}`` map of :class:`DispatchApp`: :func:`site_selector`, kept.

    Evaluating the rules is synchronous, so one instance per app serves every request in
    turn: the app points it at the request's snapshot, time and Host just before evaluating
    and takes ``chosen`` (the sites picked, in order) just after, with no ``await`` between.
    That saves building a closure and a list for each request.
    """

    __slots__ = ("chosen", "host", "now", "snapshot")

    def __init__(self) -> None:
        self.snapshot: Snapshot | None = None
        self.now = 0.0
        self.host = b""
        self.chosen: tuple[str, ...] = ()

    def __call__(self, pool_name: str, request: RewriteRequest) -> str | None:
        snapshot = self.snapshot
        pool = snapshot.pools.get(pool_name) if snapshot is not None else None
        site = pool.choose(self.now, self.host) if pool is not None else None
        if site is None:
            return None
        self.chosen += (site.name,)
        return site.base_url


def site_selector(
    snapshot: Snapshot, now: float, host: bytes, chosen: list[str]
) -> Callable[[str, RewriteRequest], str | None]:
    """The ``${site:POOL}`` map: the pool's pick for this client, remembered in ``chosen``."""

    def select(pool_name: str, request: RewriteRequest) -> str | None:
        pool = snapshot.pools.get(pool_name)
        site = pool.choose(now, host) if pool is not None else None
        if site is None:
            return None
        chosen.append(site.name)
        return site.base_url

    return select


def decide(
    snapshot: Snapshot,
    outcome: Outcome,
    target: bytes,
    host: bytes,
    now: float,
    chosen: Sequence[str],
) -> Decision:
    """Turn the rules' outcome into the answer (pure but for the pool's rotation).

    A redirect or an error status is the rules' own; anything else (no rule matched, or an
    internal rewrite) is redirected to a site of the default pool, with the rewritten path.
    """
    if outcome.action == "redirect" and outcome.location is not None and outcome.status:
        return Decision(outcome.status, outcome.location.encode("ascii"), tuple(chosen))
    if outcome.action in ("forbidden", "gone", "status") and outcome.status:
        return Decision(outcome.status, None)
    pool = snapshot.default_pool
    site = pool.choose(now, host)
    if site is None:
        fallback = pool.config.fallback
        if fallback == "sorry":
            return Decision(503, None, sorry=True)
        return Decision(pool.status, fallback.encode("ascii"))
    path = target if outcome.action == "none" else _rewritten(outcome)
    return Decision(pool.status, site.location_base + path, (site.name,))


def _rewritten(outcome: Outcome) -> bytes:
    """The path and query the rules rewrote to, as they go on the wire."""
    target = outcome.path.encode("latin-1")
    query = outcome.query_string.encode("latin-1")
    return target + b"?" + query if query else target


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
