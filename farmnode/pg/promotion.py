"""Who may take the primary role: the promotion rules (pure), fencing and forced promotion.

The ``postgresql`` agent (:mod:`farmnode.agents.postgresql`) asks these before it promotes
this node's standby, after Patroni's ``synchronous_mode_strict`` and
``maximum_lag_on_failover``; the last known primary is the other node whose last advertised
role is ``primary`` or ``demoted`` (:mod:`farmnode.pg.peers`):

1. this node is a writable primary already: success;
2. the last known primary is alive and still advertises ``primary``: refused;
3. this node is a former primary not yet rewound while another node has been primary:
   refused (unless forced);
4. this node is in the last known primary's ``pg.sync``: allowed; otherwise allowed only when
   that primary's last ``pg.lsn`` minus this node's position is at most
   ``maximum_lag_on_failover`` (unless forced: ``farmnode promote --force``, a request left in
   the data directory by :func:`request_forced_promotion`);
5. no primary ever observed (a fresh cluster): allowed;
6. the last known primary died as a primary (not demoted) and ``fence`` is set: the fence
   command runs first (``FARM_FENCE_NODE`` = that node, :func:`run_fence`); its failure
   refuses promotion.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from farmnode.pg.health import format_size
from farmnode.pg.instance import FORCE_MARKER
from farmnode.process import last_line, run_process

log = logging.getLogger("farmnode.agents.postgresql")  # the agent's log: its lines

#: Seconds a forced promotion stays requested; an older request is dropped, not obeyed.
FORCE_VALID: Final = 900.0


def fence_argv(value: str | Sequence[str]) -> list[str]:
    """The fence command as an argv (a string is split like a shell would, without one)."""
    return shlex.split(value) if isinstance(value, str) else list(value)


@dataclass(frozen=True, slots=True)
class LastPrimary:
    """The other node whose last advertised role was ``primary`` or ``demoted``.

    ``remembered``: not heard in this run of farmnode but read back from the data directory
    (:data:`~farmnode.pg.instance.LAST_PRIMARY`): who it was and its synchronous standbys
    then; its position since is unknown (``lsn`` is ``None``), so only a standby it named
    synchronous may be promoted without ``--force``.
    """

    node: str
    role: str
    alive: bool
    lsn: int | None
    sync: tuple[str, ...]
    remembered: bool = False


def _override(me: str) -> str:
    return f"`farmnode promote --force {me}` to override"


def blocking_reason(
    me: str, last: LastPrimary | None, needs_rewind: bool, forced: bool
) -> str | None:
    """Why ``me`` may not be promoted whatever its position (rules 2 and 3), or ``None``."""
    if last is None:
        return None
    if last.alive and last.role == "primary":
        return f"not promoting {me}: {last.node} is alive and still primary"
    if needs_rewind and not forced:
        return (
            f"not promoting {me}: it was a primary and has not rejoined (pg_rewind) since "
            f"{last.node} became primary; {_override(me)}"
        )
    return None


def lag_reason(
    me: str, last: LastPrimary | None, position: int | None, limit: int, sync_name: str = ""
) -> str | None:
    """Why ``me`` (``sync_name`` on the primary, default ``me``) at ``position`` may not be
    promoted (rule 4), or ``None``."""
    if last is None or (sync_name or me) in last.sync:
        return None
    head = f"not promoting {me}: not synchronous at {last.node}'s last report and"
    if last.remembered:
        return (
            f"{head} its position is unknown: {last.node} was last seen as primary before "
            f"farmnode restarted here; {_override(me)}"
        )
    if last.lsn is None or position is None:
        return f"{head} its position is unknown (limit {format_size(limit)}); {_override(me)}"
    lag = last.lsn - position
    if lag <= limit:
        return None
    return f"{head} {format_size(lag)} behind it (limit {format_size(limit)}); {_override(me)}"


async def run_fence(
    me: str, node: str, fence: list[str], timeout: float, resource: str
) -> str | None:
    """Run the fence command against ``node`` before ``me`` is promoted over it: why ``me``
    may not be promoted (the command failed, timed out or did not run), or ``None``."""
    env = {"FARM_FENCE_NODE": node}  # on top of the safe child environment
    try:
        async with asyncio.timeout(timeout):
            code, output = await run_process(fence, env)
    except TimeoutError:
        return f"not promoting {me}: fencing {node} timed out"
    except OSError as exc:
        return f"not promoting {me}: cannot run the fence command: {exc}"
    if code != 0:
        said = last_line(output)
        return (
            f"not promoting {me}: fencing {node} failed (exit {code}{': ' if said else ''}{said})"
        )
    log.warning("resource %s: fenced %s", resource, node)
    return None


# --- forced promotion ------------------------------------------------------------------------


def request_forced_promotion(data_dir: str, node: str) -> Path:
    """Leave ``farmnode promote --force``'s request for ``node`` in ``data_dir``: the agent
    on that node uses it at its next promotion (within :data:`FORCE_VALID` seconds). Raises
    ``OSError`` when the file cannot be written."""
    marker = Path(data_dir) / FORCE_MARKER
    marker.write_text(json.dumps({"node": node, "at": time.time()}), encoding="utf-8")
    return marker


def take_force_marker(data_dir: str, node: str, resource: str) -> bool:
    """Whether ``farmnode promote --force`` asked for ``node``'s next promotion within
    :data:`FORCE_VALID` seconds; the request is used up (or dropped) either way."""
    marker = Path(data_dir) / FORCE_MARKER
    try:
        request = json.loads(marker.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return False
    except (OSError, ValueError) as exc:
        log.warning("resource %s: unreadable %s dropped: %s", resource, marker, exc)
        request = None
    with contextlib.suppress(FileNotFoundError):
        marker.unlink()
    if not isinstance(request, dict) or request.get("node") != node:
        log.warning("resource %s: %s is not for %s: dropped", resource, marker, node)
        return False
    at = request.get("at")
    age = time.time() - at if isinstance(at, int | float) else -1.0
    if not 0 <= age <= FORCE_VALID:
        log.warning("resource %s: a forced promotion requested %.0f s ago dropped", resource, age)
        return False
    log.warning("resource %s: forced promotion of %s (farmnode promote --force)", resource, node)
    return True
