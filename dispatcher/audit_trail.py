"""Keeping the audit trail: the pruner of expired records, and the record of a reload.

The pruner runs in the control process, off the request path: every ``PRUNE_EVERY``
seconds it deletes at most ``PRUNE_BATCH`` records older than ``audit_retention`` in one
short transaction, and again after ``PRUNE_AGAIN`` seconds while it finds a full batch, so
that a large backlog never holds the database for long. Several dispatchers sharing one
database may all prune: deleting is idempotent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from dispatcher.audit import NO_TOKEN
from dispatcher.backends.auditstore import AuditNote
from dispatcher.backends.store import SiteStore
from dispatcher.errors import StoreError

log = logging.getLogger("webfarm.audit")

PRUNE_EVERY = 300.0
PRUNE_AGAIN = 1.0
PRUNE_BATCH = 1000


async def run_pruner(
    store: SiteStore,
    retention: Callable[[], float],
    every: float = PRUNE_EVERY,
    again: float = PRUNE_AGAIN,
    batch: int = PRUNE_BATCH,
) -> None:
    """Prune forever (cancel to stop); ``retention()`` is read at each pass (reloads)."""
    pause = 0.0
    while True:
        await asyncio.sleep(pause)
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=retention())
        try:
            pruned = await asyncio.to_thread(store.prune_audit, cutoff, batch)
        except StoreError as exc:
            log.warning("could not prune the audit trail (will try again): %s", exc)
            pruned = 0
        if pruned:
            log.info("pruned %d audit record(s) older than %s", pruned, cutoff.isoformat())
        pause = again if pruned >= batch else every


async def record_reload(
    store: SiteStore, source: str, applied: tuple[str, ...], restart: tuple[str, ...]
) -> None:
    """Store that the configuration was reloaded (setting names only, never values); a
    database that fails is logged, it does not undo the reload."""
    note = AuditNote(
        NO_TOKEN,
        "reloaded",
        "config",
        None,
        {"source": source, "applied": list(applied), "needs_restart": list(restart)},
    )
    try:
        await asyncio.to_thread(store.record_audit, note)
    except StoreError as exc:
        log.error("reloaded, but could not store the audit record: %s", exc)  # noqa: TRY400
