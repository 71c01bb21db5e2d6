"""The public hot path: the decision core that answers every request with a redirect, and
its ASGI wrapper (the workers' own HTTP/1.1 edge, :mod:`dispatcher.http1`, calls the core
directly).

It reads the current snapshot once per request and does no I/O, takes no locks and does
no routing. The target is the chosen site's ``base_url`` followed by the request's path
and query string exactly as they arrived (``raw_path`` and ``query_string``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple, Protocol

from dispatcher.affinity import Affinity, Recalled, make_affinity
from dispatcher.asgi import Receive, Scope, Send
from dispatcher.counts import AFFINITY, PLACED, RULES
from dispatcher.placement.engine import pick, pick_plain
from dispatcher.placement.model import Candidate, Client
from dispatcher.placement.pool import PoolView
from dispatcher.redirect import Outcome, RewriteRequest
from dispatcher.relay import HandoffRelay, split_handoff
from dispatcher.session import HandoffToken
from dispatcher.session.tokens import HANDOFF_PARAM
from dispatcher.snapshot import Snapshot

if TYPE_CHECKING:
    from dispatcher.config import DispatcherSettings

SORRY_BODY = (
    b"<!doctype html>\n<html><head><title>Service temporarily unavailable</title></head>\n"
    b"<body><h1>Service temporarily unavailable</h1>\n"
    b"<p>All of our sites are busy or down for maintenance. Please try again shortly.</p>"
    b"</body></html>\n"
)


class FarmState(Protocol):
    """What the hot path needs: the current snapshot. It counts each redirect in the
    snapshot, in the chosen candidate's cell, in the slot of the reason it was chosen for
    (``site.placed[PLACED] += 1``); the owner adds the cells up
    (:class:`~dispatcher.counts.RedirectCounts`)."""

    snapshot: Snapshot


#: What the decision core answers: status, headers (lower-case names), body.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
#: What it answers an edge that writes HTTP/1.1 itself (:meth:`DispatchCore.answer_wire`):
#: an :data:`Answer`, or, for the plain redirect, the header lines already joined (each
#: ``name: value\r\n``; no ``Date``, no ``Connection``, no blank line) in place of the list.
WireAnswer = tuple[int, list[tuple[bytes, bytes]] | bytes, bytes]

#: The methods the dispatcher answers (``OPTIONS *``'s ``Allow``): it redirects any method.
ALLOW = b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
_BAD_TARGET_BODY = b"Bad request: the request target must be a path starting with /\n"


class DispatchCore:
    """The decision, shared by both edges: a synchronous function of one request.

    :meth:`answer` takes a scope-like mapping (the keys of an ASGI ``http`` scope that it
    reads: ``method``, ``raw_path`` (or ``path``), ``query_string``, ``headers`` with
    lower-case names, ``client``, ``scheme``, ``http_version``, ``server``) and returns the
    status, headers and body. It does no I/O, takes no locks, never awaits, and never
    raises on client input. A request target that is not origin-form (``/...``) is a 400,
    ``OPTIONS *`` a 200 with ``Allow``: both edges agree on that because it is decided here.

    ``affinity`` keeps returning clients on their site (see :mod:`dispatcher.affinity`);
    ``relay`` passes hand-off tokens on to the site chosen (see :mod:`dispatcher.relay`).
    """

    def __init__(
        self,
        farm: FarmState,
        *,
        retry_after: int = 30,
        affinity: Affinity | None = None,
        relay: HandoffRelay | None = None,
    ) -> None:
        self.farm = farm
        self.affinity = affinity
        self.relay = relay
        self._selection = SiteSelection()
        self._sorry_headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(SORRY_BODY)).encode()),
            (b"retry-after", str(retry_after).encode()),
            (b"cache-control", b"no-store"),
        ]

    def answer(self, scope: Scope) -> Answer:
        relay = self.relay
        if relay is not None and scope.get("query_string", b"").find(_PARAM) >= 0:
            return self._relay(relay, scope)
        target = _target(scope)
        if target is None:
            return _not_origin_form(scope)
        return self._answer(scope, target, _host(scope))

    def answer_wire(self, scope: Scope, url: bytes, host: bytes | None) -> WireAnswer:
        """:meth:`answer`, for an edge that has the request target as it came (``url``;
        the scope's ``raw_path`` and ``query_string`` are its parts, split at the first
        ``?``) and the first ``Host`` header's value (``None`` without one): the same
        answer, without joining again what the edge has just split, nor looking for the
        Host header among the headers once more. The plain redirect (no rules, no
        affinity, a ``plain`` default pool: the hot path's common case) comes with its
        header lines already joined (see :data:`WireAnswer`)."""
        relay = self.relay
        if relay is not None and scope["query_string"].find(_PARAM) >= 0:
            return self._relay(relay, scope)
        if not url or url[0] != 47:  # not "/..." (indexing: half the cost of slicing)
            return _not_origin_form(scope)
        if url[-1] == 63 and url.find(b"?") == len(url) - 1:  # "?" and an empty query: dropped
            url = url[:-1]
        if 13 in url or 10 in url:  # CR, LF: as _target does
            url = url.replace(b"\r", b"%0D").replace(b"\n", b"%0A")
        host = b"" if host is None else host.lower()
        snapshot = self.farm.snapshot
        pool = snapshot.default_pool
        if pool.plain and snapshot.rules is None and self.affinity is None:
            site = pick_plain(pool, host)
            if site is None:
                return self._fallback(pool, scope)
            site.placed[PLACED] += 1  # (counted: see FarmState)
            return pool.status, site.redirect_head + url + b"\r\n", b""
        return self._answer(scope, url, host)

    def route(self, scope: Scope, here: str) -> Answer | Passed:
        """:meth:`answer`, for a dispatcher embedded in the site named ``here`` (the ASGI and
        WSGI middleware of :mod:`dispatcher.embed`): the same answer, except that a request
        placement puts on ``here`` is :class:`Passed` on to the app instead of redirected
        there, with the path and query that redirect would have carried (the request's
        own, or the rules' internal rewrite) and its ``Set-Cookie`` headers.

        Placement is the default pool's pick, or a ``${site:POOL}`` lookup that a rule
        redirects to; it may pick ``here`` like any other site (the Host the request came
        to, usually ``here``'s own, is not kept away from as in :meth:`answer`). A pick is
        recognised as the dispatcher counts it: a redirect counted for ``here`` whose
        ``Location`` lies inside ``here``. A rule's redirect to a literal URL is always
        sent. A hand-off token is relayed as :meth:`answer` does; placed on ``here``, the
        fresh token goes on to the app in the query, for its session middleware. Like
        :meth:`answer`, not for concurrent threads: a threaded caller serialises calls.
        """
        cell = self.farm.snapshot.placed.get(here)  # (None: here takes no clients now)
        before = sum(cell) if cell is not None else 0
        relay = self.relay
        if relay is not None and scope.get("query_string", b"").find(_PARAM) >= 0:
            answer = self._relay(relay, scope, b"")
        else:
            target = _target(scope)
            if target is None:
                return _not_origin_form(scope)
            answer = self._answer(scope, target, b"")
        if cell is None or sum(cell) == before:
            return answer
        site = self.farm.snapshot.sites.get(here)
        headers = answer[1]
        name, location = headers[-1]  # (where placement puts it; not so after a relay)
        if name != b"location":
            location = next((v for n, v in headers if n == b"location"), b"")
        if site is None or not location:
            return answer
        base = site.spec.base_url.encode("ascii")
        rest = location[len(base) :]
        if not location.startswith(base) or rest[:1] not in (b"", b"/", b"?"):
            return answer
        return Passed(
            rest if rest[:1] == b"/" else b"/" + rest, [h for h in headers if h[0] == b"set-cookie"]
        )

    def _answer(self, scope: Scope, target: bytes, host: bytes) -> Answer:
        snapshot = self.farm.snapshot
        now = time.monotonic()
        headers: list[tuple[bytes, bytes]] = [(b"content-length", b"0")]
        affinity = self.affinity
        recalled = affinity.recall(scope, now) if affinity is not None else None
        rules = snapshot.rules
        if rules is not None:
            selection = self._selection
            selection.snapshot, selection.scope, selection.now = snapshot, scope, now
            selection.host, selection.recalled, selection.client = host, recalled, None
            outcome = rules.evaluate_scope(scope, selection)
            if outcome.cookies:
                headers.extend((b"set-cookie", c.encode("latin-1")) for c in outcome.cookies)
            if outcome.action != "none":  # the rules answer, or rewrote the path
                decision = decide(snapshot, outcome, target, selection)
                selection.chosen = ()
                return self._decided(decision, scope, now, recalled, headers)
            selection.chosen = ()
        # the common case: a site of the default pool, path and query as they came
        pool = snapshot.default_pool
        if recalled is None and pool.plain:
            site = pick_plain(pool, host)
        else:
            remembered = recalled[0] if recalled is not None else None
            site = pick(pool, Client(_address(scope), "", host, remembered, now))
        if site is None:
            return self._fallback(pool, scope)
        site.placed[PLACED if recalled is None or recalled[0] != site.name else AFFINITY] += 1
        if affinity is not None:
            cookie = affinity.stamp(scope, site.name, recalled, now)
            if cookie is not None:
                headers.append((b"set-cookie", cookie.encode("latin-1")))
        headers.append((b"location", site.location_base + target))
        return pool.status, headers, b""

    def _decided(
        self,
        decision: Decision,
        scope: Scope,
        now: float,
        recalled: Recalled | None,
        headers: list[tuple[bytes, bytes]],
    ) -> Answer:
        """Answer what the rules decided: their redirect or status, or a rewritten path."""
        placed, reason = self.farm.snapshot.placed, decision.reason
        for name in decision.sites:
            placed[name][reason] += 1  # (names of the snapshot's candidates)
        if decision.sorry:
            return self._fallback(self.farm.snapshot.default_pool, scope)
        affinity = self.affinity
        if affinity is not None and len(decision.sites) == 1:
            cookie = affinity.stamp(scope, decision.sites[0], recalled, now)
            if cookie is not None:
                headers.append((b"set-cookie", cookie.encode("latin-1")))
        if decision.location is not None:
            headers.append((b"location", decision.location))
        return decision.status, headers, b""

    def _relay(self, relay: HandoffRelay, scope: Scope, host: bytes | None = None) -> Answer:
        """Place a client that brings a hand-off token, and pass its state on to the site.

        The request is dispatched as if the token were not in its query; when the answer is
        a redirect to a registered site, a fresh token bound to that site is added to the
        ``Location`` and the status keeps the method (307, or 308 for a permanent one).
        ``host`` overrides the Host that placement keeps away from (:meth:`route`).
        """
        token, rest = split_handoff(scope.get("query_string", b""))
        plain = {**scope, "query_string": rest}  # no token left; and not relayed again: a
        target = _target(plain)  # look-alike (``xfarm_handoff=``) stays in the query
        if target is None:
            status, headers, body = _not_origin_form(plain)
        else:
            away = _host(plain) if host is None else host
            status, headers, body = self._answer(plain, target, away)
        location = next((v for n, v in headers if n == b"location"), None)
        site = site_at(self.farm.snapshot, location) if location is not None else None
        if location is not None and site is not None and token:
            fresh = relay.forward(token, site)
            if fresh is not None:
                mark = b"&" if b"?" in location else b"?"
                location = location + mark + _PARAM + fresh.encode("ascii")
                headers = [(n, v) for n, v in headers if n != b"location"]
                headers += [(b"location", location), *_NO_TRACE]
                status = 308 if status in (301, 308) else 307
        return status, headers, body

    def _fallback(self, pool: PoolView, scope: Scope) -> Answer:
        fallback = pool.config.fallback
        if fallback == "sorry":
            body = b"" if scope.get("method") == "HEAD" else SORRY_BODY
            return 503, list(self._sorry_headers), body
        headers = [(b"location", fallback.encode("ascii")), (b"content-length", b"0")]
        return pool.status, headers, b""


class DispatchApp:
    """The decision core as a plain ASGI app, for embedding in any ASGI server.

    Lifespan is answered politely; websockets are refused (a redirect cannot move them).
    """

    def __init__(
        self,
        farm: FarmState,
        *,
        retry_after: int = 30,
        affinity: Affinity | None = None,
        relay: HandoffRelay | None = None,
        core: DispatchCore | None = None,
    ) -> None:
        self.core = core or DispatchCore(
            farm, retry_after=retry_after, affinity=affinity, relay=relay
        )
        self.farm, self.affinity, self.relay = farm, self.core.affinity, self.core.relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _not_http(scope, receive, send)
            return
        status, headers, body = self.core.answer(scope)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _not_origin_form(scope: Scope) -> Answer:
    """``OPTIONS *``: what the server allows; any other target that is not a path: 400."""
    method = scope.get("method")
    if method == "OPTIONS" and (scope.get("raw_path") or b"") == b"*":
        return 200, [(b"allow", ALLOW), (b"content-length", b"0")], b""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_BAD_TARGET_BODY)).encode()),
        (b"cache-control", b"no-store"),
    ]
    return 400, headers, b"" if method == "HEAD" else _BAD_TARGET_BODY


_PARAM = HANDOFF_PARAM.encode("ascii") + b"="
# (On the hot path, ``bytes.find`` and ``int in bytes``: ``bytes in bytes`` costs about
# ten times as much on CPython 3.11, ~150 ns.)
_NO_TRACE = ((b"cache-control", b"no-store"), (b"referrer-policy", b"no-referrer"))


def site_at(snapshot: Snapshot, location: bytes) -> str | None:
    """The registered site a ``Location`` points into, or None."""
    for name, status in snapshot.sites.items():
        base = status.spec.base_url.encode("ascii")
        if location == base or location.startswith((base + b"/", base + b"?")):
            return name
    return None


class Passed(NamedTuple):
    """:meth:`DispatchCore.route`'s "pass": the request stays on this site and goes on to the
    app. ``target`` is the path and query it goes with, as on the wire (%-encoded): the
    request's own unless the rules rewrote it or a hand-off token was relayed. ``headers``
    are the ``Set-Cookie`` headers the redirect would have carried (the affinity stamp, the
    rules' ``CO`` cookies), for the app's response."""

    target: bytes
    headers: list[tuple[bytes, bytes]]


class Decision(NamedTuple):
    """The dispatcher's answer once the rules have run.

    ``location`` is ``None`` for a status without one (403, 410, ...); ``sites`` names the
    sites the answer sends the client to and ``reason`` why (for the redirect counters: a
    slot of :data:`~dispatcher.counts.REASONS`, ``RULES`` when a rule's ``${site:POOL}``
    chose them, else the default pool's placement's); ``sorry`` means the
    default pool's fallback answers because no site can take the client. (A ``NamedTuple``:
    built once per request, it must be cheap to make.)
    """

    status: int
    location: bytes | None
    sites: tuple[str, ...] = ()
    sorry: bool = False
    reason: int = RULES


class SiteSelection:
    """The ``${site:POOL}`` map, and the default pool's placement after the rules: the
    placement step (:func:`~dispatcher.placement.engine.pick`) for this request's client,
    in whichever pool; the sites it placed the client on, in order, in ``chosen``.

    Evaluating the rules is synchronous, so :class:`DispatchCore` keeps one instance and
    serves every request with it in turn: it points it at the request's snapshot, scope,
    time, Host and remembered site just before evaluating (and clears ``client``, built on
    first need) and clears ``chosen`` just after, with no ``await`` between. That saves
    building a selector for each request. ``explain`` builds its own, with a scope that
    holds only the client's address (and the EDNS-style ``subnet``, if any).
    """

    __slots__ = ("chosen", "client", "host", "now", "recalled", "scope", "snapshot", "subnet")

    def __init__(
        self,
        snapshot: Snapshot | None = None,
        now: float = 0.0,
        host: bytes = b"",
        recalled: Recalled | None = None,
        *,
        scope: Scope | None = None,
        subnet: str = "",
    ) -> None:
        self.snapshot = snapshot
        self.scope: Scope = scope if scope is not None else {}
        self.now = now
        self.host = host
        self.recalled = recalled
        self.subnet = subnet
        self.client: Client | None = None
        self.chosen: tuple[str, ...] = ()

    def __call__(self, pool_name: str, request: RewriteRequest) -> str | None:
        snapshot = self.snapshot
        pool = snapshot.pools.get(pool_name) if snapshot is not None else None
        if pool is None:
            return None
        site = self.site(pool)
        if site is None:
            return None
        self.chosen += (site.name,)
        return site.base_url

    def site(self, pool: PoolView) -> Candidate | None:
        """The placement step for this request's client in ``pool``."""
        recalled = self.recalled
        if recalled is None and pool.plain:
            return pick_plain(pool, self.host)
        client = self.client
        if client is None:
            remembered = recalled[0] if recalled is not None else None
            address = _address(self.scope)
            client = Client(address, self.subnet, self.host, remembered, self.now)
            self.client = client
        return pick(pool, client)


def decide(
    snapshot: Snapshot, outcome: Outcome, target: bytes, selection: SiteSelection
) -> Decision:
    """Turn the rules' outcome into the answer (pure but for the pools' rotations).

    A redirect or an error status is the rules' own; anything else (no rule matched, or an
    internal rewrite) is redirected to a site of the default pool, with the rewritten path,
    placed by ``selection`` (the remembered site if the pool can take the client, else the
    policy's pick). ``selection.chosen`` names the sites the rules' ``${site:}`` chose
    (counted as ``RULES``; the default pool's pick as ``AFFINITY`` when it is the
    remembered site, else ``PLACED``).
    """
    if outcome.action == "redirect" and outcome.location is not None and outcome.status:
        return Decision(outcome.status, outcome.location.encode("ascii"), selection.chosen)
    if outcome.action in ("forbidden", "gone", "status") and outcome.status:
        return Decision(outcome.status, None)
    pool = snapshot.default_pool
    site = selection.site(pool)
    if site is None:
        fallback = pool.config.fallback
        if fallback == "sorry":
            return Decision(503, None, sorry=True)
        return Decision(pool.status, fallback.encode("ascii"))
    path = target if outcome.action == "none" else _rewritten(outcome)
    recalled = selection.recalled
    reason = PLACED if recalled is None or recalled[0] != site.name else AFFINITY
    return Decision(pool.status, site.location_base + path, (site.name,), reason=reason)


def _address(scope: Scope) -> str:
    """The client's address as the edge gives it (``""`` when unknown)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


def _rewritten(outcome: Outcome) -> bytes:
    """The path and query the rules rewrote to, as they go on the wire."""
    target = outcome.path.encode("latin-1")
    query = outcome.query_string.encode("latin-1")
    return target + b"?" + query if query else target


def _target(scope: Scope) -> bytes | None:
    """Path and query as the client sent them, byte for byte, or None when the target is
    not origin-form (it must start with ``/``: anything else appended to a site's base
    could change the authority). A raw CR or LF, which no HTTP server passes on, is
    %-encoded rather than put into a header."""
    path: bytes | None = scope.get("raw_path")
    if path is None:
        path = scope["path"].encode("utf-8")
    if path[:1] != b"/":
        return None
    query: bytes = scope.get("query_string", b"")
    target = path + b"?" + query if query else path
    if 13 in target or 10 in target:  # CR, LF: no server sends these; never echo them
        target = target.replace(b"\r", b"%0D").replace(b"\n", b"%0A")
    return target


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


def dispatch_core(farm: FarmState, settings: DispatcherSettings) -> DispatchCore:
    """The decision core as the settings ask: with affinity, and with the hand-off relay
    when there are keys to verify tokens with."""
    affinity = make_affinity(
        settings.affinity,
        settings.secret_keys,
        lifetime=settings.affinity_lifetime,
        cookie_domain=settings.cookie_domain,
    )
    relay = None
    if settings.secret_keys:
        tokens = HandoffToken(settings.secret_keys, lifetime=settings.handoff_lifetime)
        relay = HandoffRelay(tokens, name=settings.handoff_name)
    return DispatchCore(farm, retry_after=settings.retry_after, affinity=affinity, relay=relay)
