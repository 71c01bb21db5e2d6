"""Site affinity: a returning client goes back to the site it was sent to.

Two ways to recognise a client, chosen with ``[dispatcher] affinity``:

- ``cookie``: a signed ``farm_site`` stamp (site name, issue time) that the dispatcher sets
  with every redirect that places a client, and reads back (this module). Stateless: every
  replica of the dispatcher that shares the keys honours every stamp.
- ``network``: a consistent hash of the client's network (``/24`` for IPv4, ``/64`` for
  IPv6 by default) over each pool's sites, for clients that drop cookies. It needs nothing
  from the request but the client's address, so it lives in the snapshot's pools
  (:mod:`dispatcher.placement.ring`), not here: :func:`make_affinity` returns None for it.

Either way, a remembered site is used only while it can take clients (healthy, not drained,
weight above zero, in the pool being asked); otherwise the pool's policy chooses and the
client is placed anew (:mod:`dispatcher.placement.engine`). This runs on the hot path: no
I/O, no locks, nothing that raises on client input.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from dispatcher.session import AffinityStamp
from dispatcher.session.tokens import AFFINITY_COOKIE

Scope = Mapping[str, Any]
#: What :meth:`Affinity.recall` remembers: the site's name, and when (the stamp's issue
#: time, Unix seconds).
Recalled = tuple[str, float]


class Affinity(ABC):
    """The contract of an affinity the edge keeps with the client (a cookie).

    :meth:`recall` is cheap and never raises: the site this client was placed on (a name,
    not yet checked against any pool) and when, or None. Once placement has chosen,
    :meth:`stamp` gives the ``Set-Cookie`` value to send, if any: :meth:`renew` when the
    client went back to the site it remembered, :meth:`placed` when it was placed anew.
    """

    name = ""

    @abstractmethod
    def recall(self, scope: Scope, now: float) -> Recalled | None: ...

    def stamp(self, scope: Scope, site: str, recalled: Recalled | None, now: float) -> str | None:
        if recalled is not None and recalled[0] == site:
            return self.renew(scope, recalled, now)
        return self.placed(scope, site, now)

    @abstractmethod
    def placed(self, scope: Scope, site: str, now: float) -> str | None:
        """Remember that this client now goes to ``site``; the header to send, if any."""

    @abstractmethod
    def renew(self, scope: Scope, recalled: Recalled, now: float) -> str | None:
        """The client went back to its site as remembered; keep the memory alive."""


class CookieAffinity(Affinity):
    """Signed ``farm_site`` stamps. A stamp is renewed once it is older than half its
    lifetime, so a client that keeps coming back keeps its site, without a new cookie on
    every redirect."""

    name = "cookie"

    def __init__(
        self, stamps: AffinityStamp, *, domain: str | None = None, wall: Callable[[], float]
    ) -> None:
        self.stamps = stamps
        self.domain = domain
        self.wall = wall
        self._renew_after = stamps.lifetime // 2
        self._cookie = AFFINITY_COOKIE.encode("ascii") + b"="

    def recall(self, scope: Scope, now: float) -> Recalled | None:
        for token in _cookie_values(scope, self._cookie):
            checked = self.stamps.check(token)
            if checked is not None:
                return checked
        return None

    def placed(self, scope: Scope, site: str, now: float) -> str | None:
        secure = scope.get("scheme") == "https"
        return self.stamps.cookie(site, secure=secure, domain=self.domain)

    def renew(self, scope: Scope, recalled: Recalled, now: float) -> str | None:
        site, issued = recalled
        if self.wall() - issued < self._renew_after:
            return None
        return self.placed(scope, site, now)


def _cookie_values(scope: Scope, prefix: bytes) -> list[str]:
    """Every value of the cookie whose ``name=`` is ``prefix``, from every Cookie header."""
    found: list[str] = []
    for name, value in scope.get("headers") or ():
        if name == b"cookie" and value.find(prefix) >= 0:  # (find: cheaper than `in`)
            for part in bytes(value).split(b";"):
                pair = part.strip()
                if pair.startswith(prefix):
                    found.append(pair[len(prefix) :].strip(b'"').decode("latin-1"))
    return found


def make_affinity(
    kind: str,
    secret_keys: tuple[str, ...],
    *,
    lifetime: int,
    cookie_domain: str | None,
    wall: Callable[[], float] = time.time,
) -> Affinity | None:
    """The edge's affinity for ``[dispatcher] affinity``: cookie stamps for ``cookie``, None
    for ``off`` and for ``network`` (which the snapshot's pools do by themselves)."""
    if kind != "cookie":
        return None
    stamps = AffinityStamp(secret_keys, lifetime=lifetime, clock=wall)
    return CookieAffinity(stamps, domain=cookie_domain, wall=wall)


AFFINITIES = ("off", "cookie", "network")
