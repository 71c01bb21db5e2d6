"""What the ``postgresql`` agents of a cluster tell each other: node attributes.

Facts cross nodes as node attributes (:mod:`farmnode.agents.context`): ``pg.role``
(``primary``, ``standby`` or ``demoted``: a former primary not yet rejoined), ``pg.lsn``
(the primary's flush position, a standby's receive/replay position, a demoted node's last
position; an integer) and ``pg.sync`` (the standbys the primary last saw synchronous).
This module reads the other nodes' (the agent publishes its own) and
keeps who the last primary was in the data directory (:class:`LastPrimaryRecord`), so that
a restarted farmnode does not take a cluster it has seen for a fresh one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from farmnode.pg.instance import LAST_PRIMARY, Instance
from farmnode.pg.promotion import LastPrimary

if TYPE_CHECKING:  # farmnode.agents imports this package: no import back at run time
    from farmnode.agents.context import ClusterContext

log = logging.getLogger("farmnode.agents.postgresql")  # the agent's log: its lines

ROLE, LSN, SYNC = "pg.role", "pg.lsn", "pg.sync"


def standby_nodes(context: ClusterContext) -> set[str]:
    """Other nodes advertising ``pg.role = standby``: the synchronous candidates (a
    pg_basebackup or pg_receivewal streaming from the primary is not one)."""
    me = context.node
    return {n for n, s in context.observed(ROLE).items() if n != me and s.value == "standby"}


def live_primary(context: ClusterContext) -> str | None:
    """Another node alive and advertising ``pg.role = primary``, or ``None``."""
    me = context.node
    for node, seen in context.observed(ROLE).items():
        if node != me and seen.value == "primary" and context.alive(node):
            return node
    return None


def observed_primary(context: ClusterContext) -> LastPrimary | None:
    """The other node last heard as primary (an alive one first, then the freshest), or
    ``None`` when no other node has advertised ``primary`` or ``demoted`` in this run."""
    me = context.node
    roles = [
        seen
        for node, seen in context.observed(ROLE).items()
        if node != me and seen.value in ("primary", "demoted")
    ]
    if not roles:
        return None
    best = min(roles, key=lambda s: (not (s.alive and s.value == "primary"), s.age))
    lsn_seen = context.observed(LSN).get(best.node)
    sync_seen = context.observed(SYNC).get(best.node)
    try:
        lsn = int(lsn_seen.value) if lsn_seen is not None else None
    except ValueError:
        lsn = None
    sync = tuple(n for n in (sync_seen.value.split(",") if sync_seen else ()) if n)
    return LastPrimary(best.node, best.value, context.alive(best.node), lsn, sync)


def primary_position(context: ClusterContext) -> int | None:
    """The live primary's (another node's) last advertised ``pg.lsn``, or ``None``."""
    source = live_primary(context)
    seen = context.observed(LSN).get(source) if source else None
    try:
        return int(seen.value) if seen is not None else None
    except ValueError:
        return None


def named_sync(context: ClusterContext, app_name: str) -> bool:
    """Whether the live primary last named ``app_name`` synchronous (``pg.sync``)."""
    source = live_primary(context)
    seen = context.observed(SYNC).get(source) if source else None
    return seen is not None and app_name in seen.value.split(",")


class LastPrimaryRecord:
    """Who the last primary was, kept in the data directory (:data:`LAST_PRIMARY`)."""

    def __init__(self, data_dir: str, resource: str) -> None:
        self.path = Path(data_dir) / LAST_PRIMARY
        self.resource = resource
        self._remembered: dict[str, object] | None = None  # last record written

    def remember(self, last: LastPrimary, instance: Instance) -> None:
        """Keep who the last primary was (not its position: that goes stale at once) in the
        data directory, rewritten only when it changes."""
        record: dict[str, object] = {"node": last.node, "role": last.role, "sync": list(last.sync)}
        if record == self._remembered:
            return
        try:
            instance.write_file(LAST_PRIMARY, json.dumps(record).encode())
        except OSError as exc:
            path = instance.file(LAST_PRIMARY)
            log.warning(
                "resource %s: cannot keep the last primary in %s: %s", self.resource, path, exc
            )
            return
        self._remembered = record

    def read(self, context: ClusterContext) -> LastPrimary | None:
        """The last primary as kept in the data directory, or ``None`` (a fresh cluster)."""
        path = self.path
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            node, role, sync = record["node"], record["role"], record["sync"]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            # unreadable: assume the worst (a primary we know nothing of), never "fresh"
            log.warning("resource %s: %s unreadable (%s)", self.resource, path, exc)
            return LastPrimary("unknown", "primary", False, None, (), remembered=True)
        if node == context.node or not isinstance(sync, list):
            return None
        names = tuple(str(name) for name in sync)
        return LastPrimary(
            str(node), str(role), context.alive(str(node)), None, names, remembered=True
        )
