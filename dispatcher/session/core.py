"""The pure core both middleware shapes share, so they cannot drift apart.

An edge (ASGI or WSGI) turns its request into a :class:`RequestInfo` and asks
:meth:`SessionCore.begin` what to do: answer a :class:`Redirect` itself (a hand-off being
redeemed, or a client being sent to another site), or run the app with the :class:`Loaded`
session. When the app starts its response, :meth:`SessionCore.finish` gives the
``Set-Cookie`` header value to add, if any. No I/O happens here.

HTTPS is whatever the server says it is (ASGI ``scope["scheme"]``, WSGI
``wsgi.url_scheme``); behind a TLS-terminating proxy, let the server apply
``X-Forwarded-Proto`` from trusted addresses (uvicorn ``--proxy-headers``, werkzeug
``ProxyFix``), or set ``https_only``. The middleware never trusts that header itself.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from dispatcher.session.codec import (
    DEFAULT_COMPRESS_OVER,
    MAX_COOKIE_BYTES,
    Clock,
    SecretKeys,
    StateCodec,
    key_list,
)
from dispatcher.session.cookies import (
    CookieAttributes,
    SameSite,
    check_cookie_name,
    cookie_values,
    delete_cookie,
    set_cookie,
)
from dispatcher.session.errors import (
    BadToken,
    TokenExpired,
    TokenReplayed,
    TokenTooLarge,
    UnserializableState,
    WrongTarget,
)
from dispatcher.session.tokens import HANDOFF_PARAM, HandoffToken, ReplayGuard
from dispatcher.session.urls import (
    STATE_PARAM,
    handoff_url,
    query_values,
    url_state_codec,
    without_params,
)
from dispatcher.throttle import Throttle, ThrottledLog

log = logging.getLogger("webfarm.session")

SESSION_SALT = "webfarm.session"
DEFAULT_MAX_AGE = 14 * 24 * 3600
REDIRECT_STATUS = 307
Source = Literal["new", "cookie", "url"]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the core needs of a request. ``path`` and ``query`` are raw (percent-encoded)."""

    method: str
    scheme: str
    host: str
    path: str
    query: str
    cookie: str

    @property
    def secure(self) -> bool:
        return self.scheme in ("https", "wss")

    @property
    def target(self) -> str:
        """The request target as it arrived: path and query."""
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclass(frozen=True, slots=True)
class HandoffTarget:
    """Where ``send_elsewhere`` sends a client: the ``site`` name the hand-off token is
    bound to and its ``base_url`` (``https://us.example.net``)."""

    site: str
    base_url: str


SendElsewhere = Callable[[RequestInfo], HandoffTarget | None]


class SessionOptions(TypedDict, total=False):
    """Every middleware option but ``secret_keys``; see :class:`SessionSettings`."""

    cookie_name: str
    max_age: int | None
    path: str
    domain: str | None
    same_site: SameSite
    https_only: bool
    salt: str
    url_state: bool
    site: str | None
    handoff_lifetime: int
    send_elsewhere: SendElsewhere | None
    replay_capacity: int
    compress_over: int | None
    clock: Clock
    monotonic: Clock


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """The middleware's options, validated when built (:class:`InvalidValue` names the field).

    ``site`` is this site's name as the dispatcher knows it: hand-off tokens bound to it are
    redeemed; without it ``farm_handoff`` is left to the app. ``send_elsewhere`` is asked on
    every request; a target it returns gets the client (and its session) by redirect.
    ``clock`` (wall, token timestamps) and ``monotonic`` (replay memory) are for tests.
    """

    secret_keys: SecretKeys
    cookie_name: str = "farm_session"
    max_age: int | None = DEFAULT_MAX_AGE
    path: str = "/"
    domain: str | None = None
    same_site: SameSite = "lax"
    https_only: bool = False
    salt: str = SESSION_SALT
    url_state: bool = True
    site: str | None = None
    handoff_lifetime: int = 30
    send_elsewhere: SendElsewhere | None = None
    replay_capacity: int = 10_000
    compress_over: int | None = DEFAULT_COMPRESS_OVER
    clock: Clock = time.time
    monotonic: Clock = time.monotonic
    attrs: CookieAttributes = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "secret_keys", key_list(self.secret_keys))
        check_cookie_name(self.cookie_name)
        attrs = CookieAttributes(
            path=self.path,
            domain=self.domain,
            max_age=self.max_age,
            same_site=self.same_site,
            always_secure=self.https_only,
        )
        object.__setattr__(self, "attrs", attrs)


@dataclass(slots=True)
class Loaded:
    """A request's session: the dict the app sees, where it came from, and what the client's
    cookie holds (``baseline``: its snapshot; None when there was a bad cookie)."""

    session: dict[str, Any]
    source: Source
    baseline: str | None
    had_cookie: bool
    secure: bool


@dataclass(frozen=True, slots=True)
class Redirect:
    """A response the edge sends without calling the app."""

    status: int
    location: str
    set_cookie: str | None

    def headers(self) -> list[tuple[str, str]]:
        out = [
            ("location", self.location),
            ("cache-control", "no-store"),
            ("referrer-policy", "no-referrer"),
            ("content-length", "0"),
        ]
        if self.set_cookie is not None:
            out.append(("set-cookie", self.set_cookie))
        return out


def snapshot(session: dict[str, Any]) -> str:
    """A canonical text of ``session``: equal iff the sessions are equal as JSON (nested
    values included), so comparing snapshots detects any change."""
    try:
        return json.dumps(session, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnserializableState(str(exc)) from None


_EMPTY = snapshot({})
_REJECTIONS: dict[type[BadToken], str] = {
    TokenReplayed: "handoff_replayed",
    WrongTarget: "handoff_wrong_target",
    TokenExpired: "handoff_expired",
}


class SessionCore:
    """The decisions of the session middleware; one per middleware instance.

    ``stats`` counts: ``bad_cookie``, ``bad_url_state``, ``url_state``, ``handoff_accepted``,
    ``handoff_rejected`` (and one of ``handoff_replayed``, ``handoff_wrong_target``,
    ``handoff_expired``, ``handoff_bad``), ``sent_elsewhere``.
    """

    def __init__(self, settings: SessionSettings) -> None:
        self.settings = settings
        self.stats: Counter[str] = Counter()
        s = settings
        self.codec = StateCodec(
            s.secret_keys, salt=s.salt, max_age=s.max_age, compress_over=s.compress_over,
            max_size=None, clock=s.clock,
        )  # fmt: skip
        self.url_codec = url_state_codec(s.secret_keys, max_age=s.max_age, clock=s.clock)
        self.handoff = HandoffToken(
            s.secret_keys, lifetime=s.handoff_lifetime, compress_over=s.compress_over,
            clock=s.clock,
        )  # fmt: skip
        self.guard = ReplayGuard.for_tokens(
            self.handoff, capacity=s.replay_capacity, clock=s.monotonic
        )
        # any client can send bad cookies and tokens: one line per cause per 10 s
        self.warnings = ThrottledLog(log, Throttle(clock=s.monotonic))

    def begin(self, request: RequestInfo) -> Redirect | Loaded:
        """Redeem a hand-off, send the client elsewhere, or load its session."""
        site = self.settings.site
        if site is not None and HANDOFF_PARAM in request.query:
            tokens = query_values(request.query, HANDOFF_PARAM)
            if tokens:
                return self._redeem(request, tokens[0], site)
        loaded = self.load(request)
        chooser = self.settings.send_elsewhere
        target = chooser(request) if chooser is not None else None
        if target is not None:
            return self._send(request, target, loaded.session)
        return loaded

    def load(self, request: RequestInfo) -> Loaded:
        """The session from the cookie, else from ``farm_state``, else a new empty one.

        A cookie that does not verify gives an empty session, a warning and a count; it
        will be deleted (or overwritten) by :meth:`finish`.
        """
        values = cookie_values(request.cookie, self.settings.cookie_name)
        session = self._from_cookie(values) if values else None
        if session is not None:
            return Loaded(session, "cookie", snapshot(session), True, request.secure)
        baseline = None if values else _EMPTY
        from_url = self._from_url(request) if self.settings.url_state else None
        if from_url is not None:
            return Loaded(from_url, "url", baseline, bool(values), request.secure)
        return Loaded({}, "new", baseline, bool(values), request.secure)

    def finish(self, loaded: Loaded) -> str | None:
        """The ``Set-Cookie`` value that makes the cookie hold ``loaded.session``, or None
        when it holds it already. Raises :class:`TokenTooLarge` rather than cut anything."""
        current = snapshot(loaded.session)
        if current == loaded.baseline:
            return None
        if not loaded.session:
            return self._deletion(loaded.secure) if loaded.had_cookie else None
        return self.cookie(loaded.session, secure=loaded.secure)

    def cookie(self, session: dict[str, Any], *, secure: bool) -> str:
        """The ``Set-Cookie`` value storing ``session``; at most 4,093 bytes, whole header
        value (name, token and attributes) counted, else :class:`TokenTooLarge`."""
        s = self.settings
        header = set_cookie(s.cookie_name, self.codec.dumps(session), s.attrs, secure=secure)
        if len(header) > MAX_COOKIE_BYTES:
            raise TokenTooLarge(f"session cookie {s.cookie_name!r}", len(header), MAX_COOKIE_BYTES)
        return header

    def _deletion(self, secure: bool) -> str:
        s = self.settings
        return delete_cookie(s.cookie_name, s.attrs, secure=secure)

    def _from_cookie(self, values: list[str]) -> dict[str, Any] | None:
        reason = ""
        for value in values:
            try:
                session = self.codec.loads(value)
            except BadToken as exc:
                reason = exc.reason
                continue
            if isinstance(session, dict):
                return session
            reason = "payload is not an object"
        self.stats["bad_cookie"] += 1
        self.warnings.report(
            "bad_cookie", "ignoring bad session cookie %r: %s", self.settings.cookie_name, reason
        )
        return None

    def _from_url(self, request: RequestInfo) -> dict[str, Any] | None:
        if STATE_PARAM not in request.query:
            return None
        values = query_values(request.query, STATE_PARAM)
        if not values:
            return None
        try:
            session = self.url_codec.loads(values[0])
        except BadToken as exc:
            session, reason = None, exc.reason
        else:
            reason = "payload is not an object"
        if isinstance(session, dict):
            self.stats["url_state"] += 1
            return session
        self.stats["bad_url_state"] += 1
        self.warnings.report("bad_url_state", "ignoring bad %s parameter: %s", STATE_PARAM, reason)
        return None

    def _redeem(self, request: RequestInfo, token: str, site: str) -> Redirect:
        """Install a hand-off's session as our cookie (replacing any) and redirect to the
        clean URL; a bad token installs nothing (the client keeps what it had) and is
        redirected all the same, so no token lingers in the address bar."""
        location = without_params(request.target, HANDOFF_PARAM)
        try:
            handoff = self.handoff.redeem(token, target=site, guard=self.guard)
        except BadToken as exc:
            self.stats["handoff_rejected"] += 1
            self.stats[_REJECTIONS.get(type(exc), "handoff_bad")] += 1
            self.warnings.report(
                f"handoff:{type(exc).__name__}", "rejecting hand-off token: %s", exc
            )
            return Redirect(REDIRECT_STATUS, location, None)
        self.stats["handoff_accepted"] += 1
        if handoff.session:
            header = self.cookie(handoff.session, secure=request.secure)
        else:
            header = self._deletion(request.secure)
        return Redirect(REDIRECT_STATUS, location, header)

    def _send(
        self, request: RequestInfo, target: HandoffTarget, session: dict[str, Any]
    ) -> Redirect:
        """Redirect to the same request target on ``target``, the session in a token."""
        self.stats["sent_elsewhere"] += 1
        path = without_params(request.target, HANDOFF_PARAM, STATE_PARAM)
        if not session:
            return Redirect(REDIRECT_STATUS, target.base_url.rstrip("/") + path, None)
        location = handoff_url(
            target.base_url, path, session, tokens=self.handoff, target=target.site
        )
        return Redirect(REDIRECT_STATUS, location, None)
