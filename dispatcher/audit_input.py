"""The query of ``GET /api/v1/audit``, read from hostile input into an :class:`AuditQuery`.

``object``, ``token``: exact matches; ``since``/``until``: RFC 3339 timestamps with an
offset (``since`` inclusive, ``until`` exclusive); ``limit``: 1 to 1000 (default 100);
``cursor``: the ``next`` of the previous page. Anything else, or a parameter given twice,
is a 422 naming it.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from typing import Any

from dispatcher.backends.auditstore import MAX_PAGE, AuditQuery
from dispatcher.errors import InvalidValue

DEFAULT_PAGE = 100
PARAMETERS = ("object", "token", "since", "until", "limit", "cursor")
RFC3339 = re.compile(
    r"\A(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})\Z"
)
_TEXT_LIMITS = {"object": 127, "token": 63}


def audit_query(items: Iterable[tuple[str, str]]) -> AuditQuery:
    """``items``: the request's query parameters (``QueryParams.multi_items()``)."""
    seen: dict[str, str] = {}
    for key, value in items:
        if key not in PARAMETERS:
            raise InvalidValue(
                key[:40] or "query", f"no such parameter (allowed: {', '.join(PARAMETERS)})"
            )
        if key in seen:
            raise InvalidValue(key, "given more than once")
        seen[key] = value
    for key, longest in _TEXT_LIMITS.items():
        if key in seen and not 1 <= len(seen[key]) <= longest:
            raise InvalidValue(key, f"1 to {longest} characters")
    since = _timestamp(seen, "since")
    until = _timestamp(seen, "until")
    return AuditQuery(
        object=seen.get("object"),
        token=seen.get("token"),
        since=since,
        until=until,
        limit=_number(seen, "limit", None, 1, MAX_PAGE) or DEFAULT_PAGE,
        before_id=_number(seen, "cursor", None, 1, 2**62),
    )


def _timestamp(seen: dict[str, str], key: str) -> dt.datetime | None:
    text = seen.get(key)
    if text is None:
        return None
    match = RFC3339.match(text)
    if match is None:
        raise InvalidValue(key, f"an RFC 3339 time with an offset, got {text[:64]!r}")
    day, clock, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]  # Python reads microseconds at most
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        return dt.datetime.fromisoformat(f"{day}T{clock}{fraction}{offset}").astimezone(dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidValue(key, f"not a valid time: {exc}") from None


def _number(seen: dict[str, str], key: str, default: int | None, low: int, high: int) -> int | None:
    text = seen.get(key)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 19 or not low <= int(text) <= high:
        raise InvalidValue(key, f"a whole number from {low} to {high}, got {text[:32]!r}")
    return int(text)


def _param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


#: ``GET /api/v1/audit`` in the OpenAPI document (:mod:`dispatcher.openapi`).
AUDIT_PATH: dict[str, Any] = {
    "get": {
        "summary": "The audit trail: every change made through this API and every reload,"
        " newest first (token names, never their values; rules as digest and count)",
        "parameters": [
            _param(
                "object",
                {"type": "string", "minLength": 1, "maxLength": 127},
                'what changed: "site:NAME", "rules" or "config"',
            ),
            _param(
                "token",
                {"type": "string", "minLength": 1, "maxLength": 63},
                'the name of the token that made the change ("-": a reload)',
            ),
            _param("since", {"type": "string", "format": "date-time"}, "RFC 3339, inclusive"),
            _param("until", {"type": "string", "format": "date-time"}, "RFC 3339, exclusive"),
            _param(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                f"records per page (default {DEFAULT_PAGE})",
            ),
            _param(
                "cursor",
                {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
                "the next of the previous page",
            ),
        ],
        "responses": {
            "200": {
                "description": "a page of records",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/AuditPage"}}
                },
            },
            "4XX": {"$ref": "#/components/responses/Error"},
            "503": {"$ref": "#/components/responses/Error"},
        },
    }
}

AUDIT_SCHEMAS: dict[str, Any] = {
    "AuditPage": {
        "type": "object",
        "required": ["records", "next"],
        "properties": {
            "records": {"type": "array", "items": {"$ref": "#/components/schemas/AuditRecord"}},
            "next": {"type": ["string", "null"], "description": "cursor of the next page"},
        },
    },
    "AuditRecord": {
        "type": "object",
        "required": ["id", "at", "token", "action", "object", "before", "after"],
        "properties": {
            "id": {"type": "integer"},
            "at": {"type": "string"},
            "token": {"type": "string"},
            "action": {"type": "string"},
            "object": {"type": "string"},
            "before": {},
            "after": {},
        },
    },
}
