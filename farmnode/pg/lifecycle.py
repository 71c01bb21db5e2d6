"""What the ``postgresql`` agent does to its server whatever its role: stop it whatever it
takes, tell a crashed primary from a clean stop, rewind it from a new primary.

Each works on one :class:`~farmnode.pg.instance.Instance`; what the agent's role does with
the outcome (keep the snapshot, mark the node demoted, follow) stays in
:mod:`farmnode.agents.postgresql`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from farmnode.pg.instance import Instance, Snapshot

log = logging.getLogger("farmnode.agents.postgresql")  # the agent's log: its lines

#: pg_rewind may take this long (it copies changed blocks and WAL from the source).
REWIND_TIMEOUT: Final = 600.0


async def crashed_primary(instance: Instance) -> bool:
    """Whether a stopped data directory last ran as a primary and did not shut down
    cleanly (``kill -9``): it must be rewound before it may run again. A clean
    ``shut down`` without a marker (a fresh cluster) is not."""
    if instance.exists("standby.signal") or instance.exists("backup_label"):
        return False
    state = (await instance.controldata()).get("Database cluster state", "")
    return state in ("in production", "shutting down", "in crash recovery")


async def halt(instance: Instance, budget: float, resource: str) -> Snapshot:
    """Stop the server whatever it takes within about ``budget`` seconds: fast, then
    immediate, then SIGKILL. Returns what is known of it then (running or not)."""
    if await instance.stop("fast", budget * 0.4):
        return Snapshot(running=False)
    log.warning("resource %s: fast stop failed; stopping in immediate mode", resource)
    if await instance.stop("immediate", budget * 0.2):
        return Snapshot(running=False)
    log.error("resource %s: immediate stop failed; killing the postmaster", resource)
    instance.kill()
    deadline = time.monotonic() + 2.0
    while instance.running() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return Snapshot(running=instance.running())


async def run_rewind(
    instance: Instance, data_dir: str, conninfo: str, password: str | None
) -> tuple[int, str]:
    """``pg_rewind`` of the stopped ``data_dir`` from the server at ``conninfo``, this
    node's own files kept aside meanwhile (:meth:`Instance.kept_from_rewind`): its exit
    code and output. Raises ``TimeoutError`` after :data:`REWIND_TIMEOUT` seconds."""
    env = {"PGPASSWORD": password} if password else {}
    with instance.kept_from_rewind():
        async with asyncio.timeout(REWIND_TIMEOUT):
            return await instance.run(
                "pg_rewind", f"--target-pgdata={data_dir}", f"--source-server={conninfo}", env=env
            )
