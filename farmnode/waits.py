"""Waits that cannot swallow a cancellation: the daemon's and the cluster loop's sleeps.

``asyncio.wait_for`` on Python 3.11 returns the inner result instead of raising
:class:`asyncio.CancelledError` when the task is cancelled in the same tick as the inner
awaitable finishes (fixed in 3.12). A loop that sleeps on ``wait_for(event.wait(), t)`` and
is cancelled just after the event was set then runs on, and whoever awaits it after
``cancel()`` waits forever: farmnode with a ``[cluster]`` never exited on SIGTERM. Nothing in
farmnode uses ``wait_for``; these helpers use ``asyncio.timeout()``, which counts
cancellation requests (``Task.cancelling()``) and so never takes one that is not its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass; whether it is set.

    A cancellation of the caller always propagates.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


async def cancel_and_wait(
    task: asyncio.Task[Any], what: str, limit: float, log: logging.Logger
) -> bool:
    """Cancel ``task`` and wait at most ``limit`` seconds for it to end; whether it ended.

    The task's own exception is not raised (it is logged, as is a task that outlives
    ``limit``: a bug, but the caller's shutdown goes on). A cancellation of the *caller*
    propagates, unlike ``with suppress(CancelledError): await task``, which takes it.
    """
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=limit)
    if not done:
        log.error("%s did not end within %g s of its cancellation; left behind", what, limit)
        return False
    if not task.cancelled() and task.exception() is not None:
        log.error("%s ended with an error: %r", what, task.exception())
    return True


__all__ = ["cancel_and_wait", "wait_event"]
