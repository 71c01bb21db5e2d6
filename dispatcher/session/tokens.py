"""The farm's two special tokens, each with its own salt: the site-affinity stamp and the
single-use cross-domain hand-off token, and the guard that makes hand-offs single-use.

Both are :class:`~dispatcher.session.codec.StateCodec` tokens; a token of one kind never
verifies as the other, nor as a session cookie or URL state.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dispatcher.errors import InvalidValue
from dispatcher.session.codec import (
    DEFAULT_COMPRESS_OVER,
    MAX_COOKIE_BYTES,
    Clock,
    SecretKeys,
    StateCodec,
    decode_payload,
    encode_payload,
)
from dispatcher.session.cookies import CookieAttributes, set_cookie
from dispatcher.session.errors import BadToken, TokenReplayed, WrongTarget

AFFINITY_COOKIE = "farm_site"
AFFINITY_SALT = "webfarm.affinity"
HANDOFF_PARAM = "farm_handoff"
HANDOFF_SALT = "webfarm.handoff"
MAX_HANDOFF_LIFETIME = 60


@dataclass(frozen=True, slots=True)
class Stamp:
    """A verified affinity stamp: the ``site`` the client was sent to, and when (Unix s)."""

    site: str
    issued_at: int


class AffinityStamp:
    """Encodes and verifies ``farm_site`` stamps that live ``lifetime`` seconds.

    The payload is the site name only; the issue time is the token's own timestamp. The
    dispatcher signs or verifies one on every request, so this class does the least work a
    token allows: each site name is JSON- and base64-encoded once, and signing or verifying
    is one HMAC (:meth:`StateCodec.seal` / :meth:`StateCodec.unseal`). The tokens are the
    codec's own, byte for byte.
    """

    def __init__(
        self, secret_keys: SecretKeys, *, lifetime: int = 3600, clock: Clock = time.time
    ) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self.codec = StateCodec(
            secret_keys, salt=AFFINITY_SALT, max_age=lifetime, compress_over=None, clock=clock
        )
        self._payloads: dict[str, str] = {}  # site name -> payload part
        self._names: dict[str, str] = {}  # payload part -> site name
        self._cookie_tails: dict[tuple[bool, str | None, str], str] = {}

    def encode(self, site: str) -> str:
        """A stamp naming ``site``, issued now."""
        payload = self._payloads.get(site)
        if payload is None:
            if not isinstance(site, str) or not site:
                raise InvalidValue("site", f"a non-empty site name, got {site!r}")
            payload = self._remember(site, encode_payload(site))
        return self.codec.seal(payload, int(self.clock()))

    def decode(self, token: str) -> Stamp:
        """The stamp in ``token``; :class:`BadToken`/:class:`TokenExpired` if it is not one."""
        signed = self.codec.load(token)
        if not isinstance(signed.value, str) or not signed.value:
            raise BadToken(AFFINITY_SALT, "payload is not a site name")
        return Stamp(signed.value, signed.issued_at)

    def check(self, token: str | None) -> tuple[str, int] | None:
        """The hot path's question: ``(site, issued_at)`` of a valid, live stamp, or None
        (absent, forged, expired, not a site name...). Never raises for bad input; the same
        verdict as :meth:`decode`."""
        if not token:
            return None
        sealed = self.codec.unseal(token)
        if sealed is None:
            return None
        payload, issued_at = sealed
        site = self._names.get(payload)
        if site is None:
            try:
                value = decode_payload(AFFINITY_SALT, payload)
            except BadToken:
                return None
            if not isinstance(value, str) or not value:
                return None
            self._remember(value, payload)
            site = value
        return site, issued_at

    def site_of(self, token: str | None) -> str | None:
        """The site a (possibly absent) stamp names, or None when there is no valid, live
        stamp. Never raises for bad input."""
        checked = self.check(token)
        return checked[0] if checked is not None else None

    def cookie(self, site: str, *, secure: bool, domain: str | None = None, path: str = "/") -> str:
        """A ``Set-Cookie`` header value carrying a fresh stamp for ``site``, with
        ``Max-Age`` = the lifetime, ``HttpOnly``, ``SameSite=Lax`` and ``Secure`` if asked."""
        key = (secure, domain, path)
        tail = self._cookie_tails.get(key)
        if tail is None:
            attrs = CookieAttributes(path=path, domain=domain, max_age=self.lifetime)
            tail = set_cookie(AFFINITY_COOKIE, "", attrs, secure=secure)
            tail = self._cookie_tails[key] = tail.removeprefix(f"{AFFINITY_COOKIE}=")
        return f"{AFFINITY_COOKIE}={self.encode(site)}{tail}"

    def _remember(self, site: str, payload: str) -> str:
        if len(self._names) >= _NAMES_MAX:  # site names are few; forged ones never get here
            self._names.clear()
            self._payloads.clear()
        self._names[payload] = site
        self._payloads[site] = payload
        return payload


_NAMES_MAX = 1024


@dataclass(frozen=True, slots=True)
class Handoff:
    """A verified hand-off: its random ``token_id``, the ``target`` site it was issued for,
    the ``session`` it carries and its issue time (Unix seconds)."""

    token_id: str
    target: str
    session: dict[str, Any]
    issued_at: int


class HandoffToken:
    """Encodes and verifies hand-off tokens that live ``lifetime`` (<= 60) seconds.

    The payload is ``{"i": token id, "t": target site, "s": session}``. The token id is 96
    random bits; single use is enforced by a :class:`ReplayGuard` on the receiving side.
    """

    def __init__(
        self,
        secret_keys: SecretKeys,
        *,
        lifetime: int = 30,
        compress_over: int | None = DEFAULT_COMPRESS_OVER,
        max_size: int | None = MAX_COOKIE_BYTES,
        clock: Clock = time.time,
    ) -> None:
        if isinstance(lifetime, bool) or not 1 <= lifetime <= MAX_HANDOFF_LIFETIME:
            raise InvalidValue("handoff_lifetime", f"1 to 60 seconds, got {lifetime!r}")
        self.lifetime = lifetime
        self.codec = StateCodec(
            secret_keys,
            salt=HANDOFF_SALT,
            max_age=lifetime,
            compress_over=compress_over,
            max_size=max_size,
            clock=clock,
        )

    def encode(self, target: str, session: Mapping[str, Any]) -> str:
        """A fresh single-use token that moves ``session`` to the site named ``target``."""
        if not isinstance(target, str) or not target:
            raise InvalidValue("target", f"a non-empty site name, got {target!r}")
        token_id = secrets.token_urlsafe(12)
        return self.codec.dumps({"i": token_id, "t": target, "s": dict(session)})

    def decode(self, token: str, *, target: str) -> Handoff:
        """The hand-off in ``token`` if it is valid, live and issued for ``target``.

        Raises :class:`BadToken`, :class:`TokenExpired` or :class:`WrongTarget`. Does not
        check replay: see :meth:`redeem`.
        """
        signed = self.codec.load(token)
        body = signed.value
        if not (
            isinstance(body, dict)
            and isinstance(body.get("i"), str)
            and isinstance(body.get("t"), str)
            and isinstance(body.get("s"), dict)
        ):
            raise BadToken(HANDOFF_SALT, "malformed hand-off payload")
        if body["t"] != target:
            raise WrongTarget(HANDOFF_SALT, target, body["t"])
        return Handoff(body["i"], body["t"], body["s"], signed.issued_at)

    def redeem(self, token: str, *, target: str, guard: ReplayGuard) -> Handoff:
        """:meth:`decode`, then claim the token id in ``guard`` (:class:`TokenReplayed` if it
        was claimed already). A token that fails verification claims nothing."""
        handoff = self.decode(token, target=target)
        guard.claim(handoff.token_id)
        return handoff

    def retarget(self, token: str, *, via: str, to: str, guard: ReplayGuard) -> str:
        """For a relay (the dispatcher): redeem a token issued for ``via`` and issue a fresh
        one carrying the same session to the site ``to``."""
        return self.encode(to, self.redeem(token, target=via, guard=guard).session)


class ReplayGuard:
    """A bounded, expiring, thread-safe set of claimed token ids.

    An id is remembered ``ttl`` seconds on ``clock`` (monotonic); set ``ttl`` to at least the
    token lifetime plus the codec's leeway plus one (timestamps are whole seconds), which
    :meth:`for_tokens` does. At ``capacity`` the oldest id is forgotten early and counted in
    :attr:`evicted`: replay protection degrades for it rather than hand-offs failing.
    The memory is per process: replicas behind one address do not share it.
    """

    def __init__(
        self,
        *,
        ttl: float,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= 0:
            raise InvalidValue("ttl", f"a number of seconds > 0, got {ttl!r}")
        if capacity < 1:
            raise InvalidValue("replay_capacity", f"at least 1, got {capacity!r}")
        self.ttl = ttl
        self.capacity = capacity
        self.clock = clock
        self.evicted = 0
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def for_tokens(
        cls,
        tokens: HandoffToken,
        *,
        capacity: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> ReplayGuard:
        """A guard that remembers ids as long as ``tokens`` can still verify."""
        ttl = tokens.lifetime + tokens.codec.leeway + 1
        return cls(ttl=ttl, capacity=capacity, clock=clock)

    def claim(self, token_id: str) -> None:
        """Remember ``token_id``; :class:`TokenReplayed` if it is remembered already."""
        with self._lock:
            now = self.clock()
            self._forget_expired(now)
            if token_id in self._seen:
                raise TokenReplayed(HANDOFF_SALT, token_id)
            if len(self._seen) >= self.capacity:
                self._seen.popitem(last=False)
                self.evicted += 1
            self._seen[token_id] = now + self.ttl

    def __len__(self) -> int:
        return len(self._seen)

    def _forget_expired(self, now: float) -> None:
        # Expiry times are in insertion order (constant ttl, monotonic clock).
        while self._seen:
            token_id, expires = next(iter(self._seen.items()))
            if expires > now:
                return
            del self._seen[token_id]
