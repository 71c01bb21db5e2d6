"""What the ``postgresql`` agent last saw of its server, as a document (pure).

The agent keeps the last :class:`~farmnode.pg.instance.Snapshot` it took (its background
task takes one a second, every action one more) with when it was taken: a :class:`Seen`.
:func:`describe` turns it, with what the agent knows of its role and of the cluster (the
primary's advertised position, whether the primary names this node synchronous), into the
JSON document of :meth:`farmnode.agents.PostgresAgent.status`: ``farmnode status`` shows it
under the group and :mod:`farmnode.metrics` renders it in Patroni's names. Nothing here
touches the server or the network.

The document (positions are bytes from ``0/0``, as ``pg_wal_lsn_diff(lsn, '0/0')``)::

    {"agent": "postgresql", "role": "primary" | "replica" | "demoted", "state": "...",
     "problem": "", "age": 0.4,            # seconds since the snapshot (null: none yet)
     "running": true,                      # PostgreSQL runs and answers SQL
     "primary": true, "replica": false, "streaming": false, "sync_standby": false,
     "timeline": 2,
     "xlog": {"location": 50331744,        # the primary's flush position
              "received_location": null, "replayed_location": null},  # a standby's
     "lag": {"bytes": 0, "seconds": 0.0},  # a standby's distance behind the primary
     "standbys": [{"name": "n2", "state": "streaming", "sync_state": "sync",
                   "lag_bytes": 0, "lag_seconds": 0.0}]}   # seen by the primary
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from farmnode.pg.health import HealthState
from farmnode.pg.instance import Replica, Snapshot

#: The role each mode of the agent reports (``idle`` and ``follow``: a replica).
ROLES: Final = {"lead": "primary", "rejoin": "demoted", "failed": "demoted"}


@dataclass(frozen=True, slots=True)
class Seen:
    """A snapshot and when it was taken (monotonic seconds)."""

    snapshot: Snapshot
    at: float


def role_of(mode: str) -> str:
    """``primary``, ``replica`` or ``demoted`` for the agent's mode."""
    return ROLES.get(mode, "replica")


def standby_lag(snap: Snapshot, primary_lsn: int | None) -> tuple[int | None, float | None]:
    """How far a standby is behind: bytes (the primary's advertised position minus this
    node's, received or replayed, whichever is further; never below 0) and seconds (0 when
    it has replayed all it received while streaming; the age of the last replayed
    transaction while replay lags behind; unknown when the receiver does not stream).
    A primary is 0 behind; a stopped server is unknown."""
    if snap.writable:
        return 0, 0.0
    if not snap.standby:
        return None, None
    lag_bytes = None
    if primary_lsn is not None and snap.lsn is not None:
        lag_bytes = max(0, primary_lsn - snap.lsn)
    lag_seconds: float | None = None
    if snap.receiver == "streaming" and snap.received is not None and snap.replayed is not None:
        caught_up = snap.replayed >= snap.received
        lag_seconds = 0.0 if caught_up else _seconds(snap.replay_age)
    return lag_bytes, lag_seconds


def _seconds(value: float | None) -> float | None:
    return None if value is None else max(0.0, round(float(value), 3))


def _standbys(replicas: tuple[Replica, ...]) -> list[dict[str, Any]]:
    """``pg_stat_replication`` as the primary sees it, one entry per name (the first)."""
    seen: dict[str, dict[str, Any]] = {}
    for replica in replicas:
        if replica.name in seen:
            continue
        lag = replica.lag_bytes
        seconds = _seconds(replica.lag_seconds)
        if seconds is None and lag == 0:
            seconds = 0.0  # caught up and idle: PostgreSQL stops measuring (NULL)
        seen[replica.name] = {
            "name": replica.name,
            "state": replica.state,
            "sync_state": replica.sync_state,
            "lag_bytes": None if lag is None else max(0, lag),
            "lag_seconds": seconds,
        }
    return list(seen.values())


def describe(
    seen: Seen | None,
    now: float,
    *,
    mode: str,
    state: str,
    problem: str = "",
    primary_lsn: int | None = None,
    named_sync: bool = False,
) -> dict[str, Any]:
    """The agent's document (module docstring) from its last snapshot ``seen`` at ``now``
    (monotonic). ``primary_lsn``: the live primary's advertised position (``None``: no live
    primary, or this node); ``named_sync``: the live primary names this node synchronous."""
    snap = seen.snapshot if seen is not None else Snapshot(running=False)
    lag_bytes, lag_seconds = standby_lag(snap, primary_lsn)
    standby = snap.standby
    return {
        "agent": "postgresql",
        "role": role_of(mode),
        "state": state,
        "problem": problem,
        "age": None if seen is None else max(0.0, round(now - seen.at, 3)),
        "running": snap.reachable,
        "primary": snap.writable and mode == "lead",
        "replica": standby,
        "streaming": standby and snap.receiver == "streaming",
        "sync_standby": standby and named_sync,
        "timeline": snap.timeline if snap.reachable else None,
        "xlog": {
            "location": snap.lsn if snap.writable else None,
            "received_location": snap.received if standby else None,
            "replayed_location": snap.replayed if standby else None,
        },
        "lag": {"bytes": lag_bytes, "seconds": lag_seconds},
        "standbys": _standbys(snap.replicas) if snap.writable else [],
    }


__all__ = ["ROLES", "Seen", "describe", "role_of", "standby_lag"]


def health_of(
    snap: Snapshot, *, node: str, mode: str, state: str, problem: str,
    primary_lsn: int | None, last_sync: tuple[str, ...],
) -> HealthState:  # fmt: skip
    """The state the HTTP endpoints answer from: a fresh snapshot, the agent's mode and
    state, and the live primary's advertised position (for a standby's lag)."""
    lag: int | None = None
    if snap.writable:
        lag = 0
    elif snap.lsn is not None:
        lag = None if primary_lsn is None else max(0, primary_lsn - snap.lsn)
    shown = state if mode in ("rejoin", "failed") else ("running" if snap.running else "stopped")
    return HealthState(
        node=node,
        role=role_of(mode),
        state=shown,
        running=snap.reachable,
        primary=snap.writable and mode == "lead",
        streaming=snap.standby and snap.receiver == "streaming",
        timeline=snap.timeline,
        lsn=snap.lsn,
        lag=lag,
        sync_standbys=last_sync if mode == "lead" else (),
        reason=problem,
    )
