"""Site affinity: a returning client goes back to the site it was sent to.

Two ways to recognise a client, chosen with ``[dispatcher] affinity``:

- ``cookie``: a signed ``farm_site`` stamp (site name, issue time) that the dispatcher sets
  with every redirect that places a client, and reads back. Stateless: every replica of the
  dispatcher that shares the keys honours every stamp.
- ``network``: IPVS-style persistence templates keyed by the client's network (``/24`` for
  IPv4, ``/64`` for IPv6 by default), for clients that drop cookies. The templates live in
  this process, expire ``lifetime`` seconds after their last use, and are bounded in number.

Either way, a remembered site is used only while it can take clients (healthy, not drained,
weight above zero, in the pool being asked); otherwise the pool's policy chooses again and
the client is placed anew. Both run on the hot path: no I/O, no locks, nothing that raises
on client input.
"""

from __future__ import annotations

import ipaddress
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any

from dispatcher.backends.snapshot import PoolView
from dispatcher.placement.model import Candidate
from dispatcher.session import AffinityStamp
from dispatcher.session.tokens import AFFINITY_COOKIE

Scope = Mapping[str, Any]
#: What :meth:`Affinity.recall` remembers: the site's name, and when (cookie: the stamp's
#: issue time, Unix seconds; network: the template's expiry, monotonic seconds).
Recalled = tuple[str, float]

#: The most network templates kept; past it the expired ones go, then the oldest.
MAX_TEMPLATES = 100_000


class Affinity(ABC):
    """The contract of both kinds.

    :meth:`recall` is cheap and never raises: the site this client was placed on (a name,
    not yet checked against any pool) and when, or None. :meth:`place` picks the site for a
    client of ``pool`` (the remembered one if that pool can take it, else the policy's
    choice) and returns it with the ``Set-Cookie`` value to send, if any. :meth:`placed`
    records a site chosen some other way (a rule's ``${site:}``).
    """

    name = ""

    @abstractmethod
    def recall(self, scope: Scope, now: float) -> Recalled | None: ...

    def place(
        self, scope: Scope, pool: PoolView, now: float, host: bytes, recalled: Recalled | None
    ) -> tuple[Candidate | None, str | None]:
        site = pool.named(recalled[0], host) if recalled is not None else None
        if site is not None and recalled is not None:
            return site, self.renew(scope, recalled, now)
        site = pool.choose(now, host)
        return site, (self.placed(scope, site.name, now) if site is not None else None)

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


class NetworkAffinity(Affinity):
    """IPVS persistence: templates mapping a client network to a site, per process."""

    name = "network"

    def __init__(
        self, *, lifetime: float, netmask: int = 24, netmask6: int = 64, limit: int = MAX_TEMPLATES
    ) -> None:
        self.lifetime = lifetime
        self.netmask = netmask
        self.netmask6 = netmask6
        self.limit = limit
        #: network key -> [site, expiry on the monotonic clock]; insertion-ordered.
        self.templates: dict[str, list[Any]] = {}

    def network(self, scope: Scope) -> str | None:
        """The template key of the client's network, or None if the address is unknown."""
        client = scope.get("client")
        if not client:
            return None
        return client_network(str(client[0]), self.netmask, self.netmask6)

    def recall(self, scope: Scope, now: float) -> Recalled | None:
        key = self.network(scope)
        entry = self.templates.get(key) if key is not None else None
        if entry is None or entry[1] <= now:
            return None
        return entry[0], entry[1]

    def placed(self, scope: Scope, site: str, now: float) -> str | None:
        key = self.network(scope)
        if key is None:
            return None
        templates = self.templates
        templates.pop(key, None)  # re-inserted last: the dict stays in expiry order
        if len(templates) >= self.limit:
            self._make_room(now)
        templates[key] = [site, now + self.lifetime]
        return None

    def renew(self, scope: Scope, recalled: Recalled, now: float) -> str | None:
        return self.placed(scope, recalled[0], now)

    def _make_room(self, now: float) -> None:
        templates = self.templates
        for key in list(templates):
            if templates[key][1] > now and len(templates) < self.limit:
                break
            del templates[key]  # expired, or the oldest while still full


def client_network(address: str, netmask: int, netmask6: int) -> str | None:
    """``address`` masked to its network (``192.0.2.0/24``), or None if it is not an IP."""
    if netmask == 24 and address.count(".") == 3 and address.replace(".", "").isdigit():
        return address.rpartition(".")[0] + ".0/24"  # the common case, without ipaddress
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    prefix = netmask if ip.version == 4 else netmask6
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


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
    netmask: int,
    netmask6: int,
    wall: Callable[[], float] = time.time,
) -> Affinity | None:
    """The affinity ``[dispatcher] affinity`` names (None for ``off``); settings validated."""
    if kind == "off":
        return None
    if kind == "cookie":
        stamps = AffinityStamp(secret_keys, lifetime=lifetime, clock=wall)
        return CookieAffinity(stamps, domain=cookie_domain, wall=wall)
    return NetworkAffinity(lifetime=lifetime, netmask=netmask, netmask6=netmask6)


AFFINITIES = ("off", "cookie", "network")
