"""The audit trail's rows: written inside the store's transactions, read and pruned here.

A change's record is added in the transaction of the change itself (:func:`add`), so that
neither exists without the other. :func:`query` pages newest first on the row id (the
cursor is the last id seen); :func:`prune` deletes at most ``limit`` expired rows per call.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from dispatcher.backends.models import AuditRow

#: The most records one page of ``GET /api/v1/audit`` holds.
MAX_PAGE = 1000


@dataclass(frozen=True, slots=True)
class AuditNote:
    """What a change did: by which token (its name), the action, the object, before/after
    (JSON values, never a secret)."""

    token: str
    action: str
    object: str
    before: Any = None
    after: Any = None


#: Given the object before and after the change (``None``: it did not exist), the record.
AuditHook = Callable[[Any, Any], AuditNote]


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: dt.datetime
    token: str
    action: str
    object: str
    before: Any
    after: Any

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at.isoformat(),
            "token": self.token,
            "action": self.action,
            "object": self.object,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters (all optional) and a page: ``before_id`` is the cursor (records older than it)."""

    object: str | None = None
    token: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    limit: int = 100
    before_id: int | None = None


def add(session: Session, hook: AuditHook | None, before: Any, after: Any) -> None:
    """Add the record ``hook`` makes of this change (nothing when there is no hook)."""
    if hook is None:
        return
    note = hook(before, after)
    session.add(
        AuditRow(
            at=dt.datetime.now(dt.UTC),
            token=note.token[:63],
            action=note.action[:32],
            object=note.object[:127],
            before=note.before,
            after=note.after,
        )
    )


def query(session: Session, q: AuditQuery) -> tuple[AuditRecord, ...]:
    stmt = select(AuditRow).order_by(AuditRow.id.desc()).limit(max(1, min(q.limit, MAX_PAGE)))
    if q.object is not None:
        stmt = stmt.where(AuditRow.object == q.object)
    if q.token is not None:
        stmt = stmt.where(AuditRow.token == q.token)
    if q.since is not None:
        stmt = stmt.where(AuditRow.at >= q.since)
    if q.until is not None:
        stmt = stmt.where(AuditRow.at < q.until)
    if q.before_id is not None:
        stmt = stmt.where(AuditRow.id < q.before_id)
    return tuple(
        AuditRecord(r.id, _utc(r.at), r.token, r.action, r.object, r.before, r.after)
        for r in session.scalars(stmt)
    )


def prune(session: Session, cutoff: dt.datetime, limit: int) -> int:
    """Delete up to ``limit`` records older than ``cutoff`` (oldest first); how many."""
    ids = list(
        session.scalars(
            select(AuditRow.id).where(AuditRow.at < cutoff).order_by(AuditRow.id).limit(limit)
        )
    )
    if ids:
        session.execute(delete(AuditRow).where(AuditRow.id.in_(ids)))
    return len(ids)


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


__all__ = [
    "MAX_PAGE",
    "AuditHook",
    "AuditNote",
    "AuditQuery",
    "AuditRecord",
    "add",
    "prune",
    "query",
]
