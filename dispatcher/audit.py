"""What the admin API did and who asked: the audit log and the admin access log.

Two loggers, both always on (whatever ``access_log`` says, which is the public listener's):

- ``webfarm.audit``: one INFO line per change, naming the token (never its value) and what
  changed, before and after. Sites: created, modified (changed fields only), deleted,
  drained, undrained. Rules: origin, rule count and a short SHA-256 digest of the text
  before and after (never the text). Load reports arrive every few seconds per site, so
  they are logged at DEBUG.
- ``webfarm.admin.access``: one INFO line per admin request (client, method, path, status,
  duration, token name), written by :class:`AccessLog`, which wraps the admin app. It is
  our own, not uvicorn's ``uvicorn.access`` logger, which both listeners would share.
  Requests without a valid token (401) are logged through a throttle: one line per 10 s,
  then the count of the others, so that no stranger can fill the log.

Values are quoted as JSON so that nothing a client sends can forge a line.

The same changes are stored in the database (the audit trail, ``GET /api/v1/audit``) by
the hooks made here (:func:`site_hook`, :func:`rules_hook`), which the store runs inside
the transaction of the change. Reloads from the file are recorded with the token ``-``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from dispatcher.access import AdminToken
from dispatcher.asgi import Message, Receive, Scope, Send
from dispatcher.backends.auditstore import AuditHook, AuditNote
from dispatcher.backends.sites import SiteSpec
from dispatcher.throttle import Throttle, ThrottledLog

log = logging.getLogger("webfarm.audit")
access_log = logging.getLogger("webfarm.admin.access")

#: Where :class:`~dispatcher.admin.BearerAuth` leaves the token a request presented.
TOKEN_KEY = "webfarm.token"  # noqa: S105 - a scope key, not a secret


def who(scope: Mapping[str, Any]) -> str:
    """The name of the token the request presented, or ``-``."""
    token = scope.get(TOKEN_KEY)
    return token.name if isinstance(token, AdminToken) else "-"


def quoted(value: Any) -> str:
    """``value`` as compact JSON: control characters and quotes escaped."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)


def digest(text: str | None) -> str:
    """The first 12 hex digits of the SHA-256 of ``text``; ``none`` for no rules."""
    return "none" if text is None else hashlib.sha256(text.encode()).hexdigest()[:12]


def changes(before: SiteSpec, after: SiteSpec) -> dict[str, list[Any]]:
    """The fields that differ, flattened (``check.interval``): ``{field: [before, after]}``."""
    old, new = _flat(before.as_dict()), _flat(after.as_dict())
    return {
        key: [old.get(key), new.get(key)]
        for key in sorted(old | new)
        if old.get(key) != new.get(key)
    }


def _flat(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def site_created(scope: Mapping[str, Any], site: SiteSpec) -> None:
    log.info("%s created site %s: %s", who(scope), site.name, quoted(site.as_dict()))


def site_deleted(scope: Mapping[str, Any], name: str, before: SiteSpec | None) -> None:
    was = quoted(before.as_dict()) if before is not None else "(not in this replica's view)"
    log.info("%s deleted site %s, which was %s", who(scope), name, was)


def site_modified(
    scope: Mapping[str, Any], action: str, before: SiteSpec | None, after: SiteSpec
) -> None:
    """``action`` is ``modified``, ``drained`` or ``undrained``."""
    diff = changes(before, after) if before is not None else {"site": [None, after.as_dict()]}
    what = quoted(diff) if diff else "nothing changed"
    log.info("%s %s site %s: %s", who(scope), action, after.name, what)


def rules_replaced(
    scope: Mapping[str, Any],
    before: tuple[str, str] | None,
    after_text: str,
    rule_count: int,
) -> None:
    """``before`` is the ``(text, origin)`` of the rules that were in force, if any."""
    text, origin = before if before is not None else (None, "none")
    log.info(
        "%s replaced the rewrite rules: %s -> %d rule(s), digest %s -> %s (was from %s)",
        who(scope),
        "none" if text is None else "rules",
        rule_count,
        digest(text),
        digest(after_text),
        quoted(origin),
    )


#: The token name of changes no token made: reloads, the rule file's adoption.
NO_TOKEN = "-"  # noqa: S105 - a token name shown in records, not a secret


def site_hook(scope: Mapping[str, Any], action: str) -> AuditHook:
    """The audit record of a site change (``created``, ``modified``, ``deleted``,
    ``drained``, ``undrained``): the site as stored before and after."""
    token = who(scope)

    def note(before: SiteSpec | None, after: SiteSpec | None) -> AuditNote:
        site = after if after is not None else before
        return AuditNote(
            token,
            action,
            f"site:{site.name if site is not None else '?'}",
            None if before is None else before.as_dict(),
            None if after is None else after.as_dict(),
        )

    return note


def rules_hook(token: str, action: str, counts: Mapping[str, int]) -> AuditHook:
    """The audit record of a rules change: origin, full SHA-256 and rule count (when
    ``counts``, keyed by digest, knows it) of the rules before and after, never the text."""

    def describe(rules: Any) -> dict[str, Any] | None:
        if rules is None:
            return None
        full = hashlib.sha256(rules.text.encode()).hexdigest()
        return {"origin": rules.origin, "digest": full, "rules": counts.get(full)}

    def note(before: Any, after: Any) -> AuditNote:
        return AuditNote(token, action, "rules", describe(before), describe(after))

    return note


def full_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def load_reported(
    scope: Mapping[str, Any], site: str, load: float, connections: int | None
) -> None:
    log.debug(
        "%s reported load %s (%s connections) for site %s", who(scope), load, connections, site
    )


class Recorded:
    """A site change that remembers the site it was applied to (the stored one, as the
    store's transaction saw it): the "before" of the audit line."""

    def __init__(self, change: Callable[[SiteSpec], SiteSpec]) -> None:
        self.change = change
        self.before: SiteSpec | None = None

    def __call__(self, site: SiteSpec) -> SiteSpec:
        self.before = site
        return self.change(site)


class AccessLog:
    """Plain ASGI middleware: one ``webfarm.admin.access`` INFO line per HTTP request.

    ``127.0.0.1:50312 "PATCH /api/v1/sites/eu" 200 4.1ms token=ops``: written when the
    response has been sent (or the request failed), with the token's name once
    :class:`~dispatcher.admin.BearerAuth` has found it.
    """

    def __init__(
        self,
        app: Any,
        clock: Callable[[], float] = time.perf_counter,
        throttle: Throttle | None = None,
    ) -> None:
        self.app = app
        self.clock = clock
        self.refused = ThrottledLog(access_log, throttle, level=logging.INFO)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.clock()
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            args = (
                _client(scope),
                quoted(f"{scope.get('method', '?')} {scope.get('path', '')}"),
                status or "-",
                (self.clock() - started) * 1000,
                who(scope),
            )
            if status == 401:
                self.refused.report("unauthorized", ACCESS_LINE, *args)
            else:
                access_log.info(ACCESS_LINE, *args)


ACCESS_LINE = "%s %s %s %.1fms token=%s"


def _client(scope: Mapping[str, Any]) -> str:
    client = scope.get("client")
    if not client:
        return "-"
    host, port = client[0], client[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


__all__ = [
    "NO_TOKEN",
    "TOKEN_KEY",
    "AccessLog",
    "Recorded",
    "changes",
    "digest",
    "full_digest",
    "load_reported",
    "rules_hook",
    "rules_replaced",
    "site_created",
    "site_deleted",
    "site_hook",
    "site_modified",
    "who",
]
