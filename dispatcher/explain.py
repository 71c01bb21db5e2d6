""" "What would client X get?": the rules' trace plus the dispatcher's final answer.

Shared by ``farm-dispatcher explain`` and ``POST /api/v1/explain``. Explaining never
disturbs the live rotation: each pool answers with a copy of its policy, i.e. the site
the next new client would get right now.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from dispatcher.app import Decision, SiteSelection, decide
from dispatcher.backends.health import Health
from dispatcher.backends.snapshot import Snapshot, build_snapshot
from dispatcher.backends.store import SiteStore
from dispatcher.clientaddr import FORWARDED_HEADERS, TrustedProxies, forwarded_client
from dispatcher.config import Config
from dispatcher.errors import InvalidValue, StoreError
from dispatcher.redirect import (
    Explanation,
    Outcome,
    RewriteProgram,
    RewriteRequest,
    compile_rules,
    load_rules,
)
from dispatcher.redirect.request import DEFAULT_PORTS, split_host


@dataclass(frozen=True, slots=True)
class Explained:
    """The rules' explanation (``None`` without rules) and the dispatcher's answer."""

    request: RewriteRequest
    explanation: Explanation | None
    decision: Decision

    def format(self) -> str:
        lines = [self.explanation.format()] if self.explanation else ["no rewrite rules"]
        lines.append(f"dispatcher answers: {describe(self.decision)}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        outcome = self.explanation.outcome if self.explanation else None
        return {
            "outcome": None
            if outcome is None
            else {
                "action": outcome.action,
                "status": outcome.status,
                "location": outcome.location,
                "path": outcome.path,
                "query_string": outcome.query_string,
                "cookies": list(outcome.cookies),
                "env": dict(outcome.env),
            },
            "answer": {
                "status": self.decision.status,
                "location": None
                if self.decision.location is None
                else self.decision.location.decode("latin-1"),
                "sites": list(self.decision.sites),
                "sorry": self.decision.sorry,
            },
            "text": self.format(),
        }


def describe(decision: Decision) -> str:
    if decision.sorry:
        return "503 sorry page (no site can take the client)"
    if decision.location is not None:
        return f"{decision.status} Location: {decision.location.decode('latin-1')}"
    return str(decision.status)


def request_from_url(
    url: str,
    *,
    method: str = "GET",
    remote_addr: str = "127.0.0.1",
    headers: Iterable[tuple[str, str]] = (),
    trusted: TrustedProxies | None = None,
    forwarded_header: str = FORWARDED_HEADERS[0],
) -> RewriteRequest:
    """The request a client would make for ``url`` (absolute http(s) URL). With
    ``trusted`` proxies (``[dispatcher] trusted_proxies``) and ``remote_addr`` one of them,
    the client is the one its headers name, as the public listener would see it."""
    if not url.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise InvalidValue(
            "url", f"an ASCII URL (%-encoded, punycode) without spaces or controls, got {url!r}"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidValue("url", f"an absolute http:// or https:// URL, got {url!r}")
    joined: dict[str, str] = {}
    for name, value in headers:
        key = name.strip().lower()
        if not key or any(c in key for c in " :\r\n") or any(c in value for c in "\r\n"):
            raise InvalidValue("headers", f"a valid header, got {name!r}: {value!r}")
        joined[key] = f"{joined[key]}, {value}" if key in joined else value
    host = joined.setdefault("host", parts.netloc)
    server_name, server_port = split_host(host, DEFAULT_PORTS[parts.scheme])
    scheme, remote_port = parts.scheme, 0
    if trusted is not None and remote_addr in trusted:
        pairs = [
            (k.encode("latin-1", "replace"), v.encode("latin-1", "replace"))
            for k, v in joined.items()
        ]
        hop = forwarded_client(pairs, trusted, forwarded_header)
        remote_addr, remote_port = hop.address or remote_addr, hop.port if hop.address else 0
        scheme = hop.scheme or scheme
    return RewriteRequest(
        method=method.upper(),
        scheme=scheme,
        host=host,
        server_name=server_name,
        server_port=server_port,
        path=parts.path or "/",
        query_string=parts.query,
        remote_addr=remote_addr,
        remote_port=remote_port,
        headers=joined,
    )


def explain(snapshot: Snapshot, request: RewriteRequest) -> Explained:
    """Run ``request`` through ``snapshot``'s rules and selection, leaving it untouched."""
    dry = _dry(snapshot)
    now, host = time.monotonic(), request.host.lower().encode("latin-1")
    target = request.path.encode("latin-1")
    if request.query_string:
        target += b"?" + request.query_string.encode("latin-1")
    if dry.rules is None:
        outcome = Outcome("none", None, None, request.path, request.query_string, (), {})
        return Explained(request, None, decide(dry, outcome, target, host, now, ()))
    selection = SiteSelection(dry, now, host)
    explanation = dry.rules.explain(request, sites=selection)
    decision = decide(dry, explanation.outcome, target, host, now, selection.chosen)
    return Explained(request, explanation, decision)


def _dry(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` with copies of its policies, so explaining leaves the rotation alone."""
    pools = {
        name: replace(pool, policy=copy.deepcopy(pool.policy))
        for name, pool in snapshot.pools.items()
    }
    default = pools[snapshot.default_pool.config.name]
    return replace(snapshot, pools=pools, default_pool=default)


def offline_snapshot(config: Config, store: SiteStore | None) -> tuple[Snapshot, str]:
    """A snapshot for explaining without a running dispatcher; the string says its sources.

    Sites and rules come from the database when it is usable (what running dispatchers
    use), else from the config file. Every site counts as healthy: no probe runs here.
    """
    sites, stored, source = config.sites, None, f"config file {config.source}"
    if store is not None:
        try:
            store.check_schema()
            sites, stored = store.list_sites(), store.get_rules()
            source = "database"
        except StoreError as exc:
            source = f"config file {config.source} (database not usable: {exc})"
    if stored is not None:
        rules: RewriteProgram | None = compile_rules(
            stored.text,
            filename=stored.origin,
            base_dir=config.rules_base_dir,
            known_pools=config.pools,
        )
        rules_source = (
            f"rules from {stored.origin} (as stored {stored.updated_at:%Y-%m-%d %H:%M} UTC)"
        )
    elif config.dispatcher.rules is not None:
        rules = load_rules(config.dispatcher.rules, known_pools=config.pools)
        rules_source = f"rules from {config.dispatcher.rules}"
    else:
        rules, rules_source = None, "no rules"
    snapshot = build_snapshot(
        config,
        revision=0,
        sites=sites,
        health=lambda name: Health("up", None),
        loads={},
        policies={},
        rules=rules,
    )
    note = f"sites from the {source}, all assumed healthy; {rules_source}"
    return snapshot, note
