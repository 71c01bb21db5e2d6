"""The per-request state one evaluation works on (Apache's ``request_rec`` and ``rewrite_ctx``).

Created once per ``evaluate()``; everything derived from the request that not every rule
needs (headers as octets, the time) is computed on first use, and the containers only some
rules fill (``E`` variables, cookies, site answers) are created on first use too.
"""

from __future__ import annotations

import datetime
import random
import re
from collections.abc import Callable, Mapping

from dispatcher.redirect.escape import octets
from dispatcher.redirect.request import RewriteRequest

#: (pool name, request) -> the base URL of the site to use (``http://host:port``, no
#: trailing slash), or None when the pool has no healthy site.
SiteSelector = Callable[[str, RewriteRequest], str | None]


class NotApplicable(Exception):
    """A ``${site:POOL}`` without a usable default found no site: the rule does not apply."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        super().__init__(pool)


class EvalState:
    """Mutable state of one evaluation; see the module docstring."""

    __slots__ = (
        "_env",
        "_now",
        "args",
        "cond_match",
        "cookies",
        "env_set",
        "original_args",
        "request",
        "request_uri",
        "rng",
        "rule_match",
        "site_cache",
        "sites",
        "status",
        "uri",
    )

    def __init__(
        self,
        request: RewriteRequest,
        request_uri: str,
        sites: SiteSelector | None,
        now: datetime.datetime | None,
        rng: random.Random | None,
    ) -> None:
        # (positional arguments: one is built per request, and keywords cost more)
        self.request = request
        self.request_uri = request_uri
        self.uri = request_uri
        query = request.query_string
        self.args: str | None = (query if query.isascii() else octets(query)) or None
        self.original_args = self.args
        self.rule_match: re.Match[str] | None = None
        self.cond_match: re.Match[str] | None = None
        self._env: dict[str, tuple[str, str]] | None = None
        #: ``E`` flags' variables by lower-case name; None until the first one.
        self.env_set: dict[str, tuple[str, str]] | None = None
        #: ``Set-Cookie`` values by cookie name (the first one set wins); None until one.
        self.cookies: dict[str, str] | None = None
        self.status = 302
        self.sites = sites
        self.site_cache: dict[str, str | None] | None = None
        self._now: datetime.datetime | None = now
        self.rng = rng

    @property
    def now(self) -> datetime.datetime:
        """The evaluation's clock: the ``now`` given, else the local time, read once."""
        if self._now is None:
            self._now = datetime.datetime.now().astimezone()
        return self._now

    def header(self, name: str) -> str:
        """A request header (lower-case ``name``) as octets; ``""`` when absent.

        ``host`` is the request's ``host`` field, falling back to a ``host`` header.
        """
        request = self.request
        if name == "host" and request.host:
            return octets(request.host)
        return octets(request.headers.get(name, ""))

    def site(self, pool: str) -> str | None:
        """The selector's base URL for ``pool``, asked once per pool per evaluation."""
        cache = self.site_cache
        if cache is None:
            cache = self.site_cache = {}
        if pool not in cache:
            answer = self.sites(pool, self.request) if self.sites is not None else None
            cache[pool] = octets(answer.rstrip("/")) if answer else None
        return cache[pool]

    @property
    def env(self) -> dict[str, tuple[str, str]]:
        """Environment variables by lower-case name: the request's, then ``E`` flags'."""
        if self._env is None:
            self._env = _env(self.request.env)
        return self._env

    def set_env(self, name: str, value: str | None) -> None:
        """``E=name:value`` (``value`` None unsets); names compare case-insensitively."""
        key = name.lower()
        env_set = self.env_set
        if env_set is None:
            env_set = self.env_set = {}
        if value is None:
            self.env.pop(key, None)
            env_set.pop(key, None)
        else:
            self.env[key] = env_set[key] = (name, value)


def _env(given: Mapping[str, str]) -> dict[str, tuple[str, str]]:
    return {name.lower(): (name, octets(value)) for name, value in given.items()}
