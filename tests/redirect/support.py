"""Helpers shared by the rewrite engine's unit tests."""

from __future__ import annotations

import datetime
import random
from collections.abc import Mapping

from dispatcher.redirect import (
    Outcome,
    RewriteProgram,
    RewriteRequest,
    SiteSelector,
    compile_rules,
)

NOW = datetime.datetime(2024, 3, 5, 14, 7, 9, tzinfo=datetime.UTC)


def request(
    path: str = "/",
    query: str = "",
    *,
    host: str = "www.example.com",
    method: str = "GET",
    scheme: str = "http",
    port: int | None = None,
    headers: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    remote: str = "192.0.2.10",
) -> RewriteRequest:
    """A request for ``scheme://host[:port]path?query`` from ``remote``."""
    default = 443 if scheme == "https" else 80
    server_port = port if port is not None else default
    return RewriteRequest(
        method=method,
        scheme=scheme,
        host=host if port is None else f"{host}:{port}",
        server_name=host,
        server_port=server_port,
        path=path,
        query_string=query,
        remote_addr=remote,
        remote_port=40000,
        headers=dict(headers or {}),
        env=dict(env or {}),
    )


def program(rules: str) -> RewriteProgram:
    """``RewriteEngine on`` plus ``rules``, compiled."""
    return compile_rules("RewriteEngine on\n" + rules)


def run(
    rules: str,
    path: str = "/",
    query: str = "",
    *,
    headers: Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    host: str = "www.example.com",
    scheme: str = "http",
    port: int | None = None,
    method: str = "GET",
    sites: SiteSelector | None = None,
    now: datetime.datetime = NOW,
    rng: random.Random | None = None,
) -> Outcome:
    """Evaluate ``RewriteEngine on`` + ``rules`` on one request."""
    req = request(
        path, query, host=host, scheme=scheme, port=port, method=method, headers=headers, env=env
    )
    return program(rules).evaluate(req, sites=sites, now=now, rng=rng)


def location(rules: str, path: str = "/", query: str = "", **kwargs: str) -> str | None:
    """The ``Location`` a GET of ``path?query`` gets (None if no redirect)."""
    return run(rules, path, query, headers=kwargs or None).location
