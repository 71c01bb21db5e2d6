"""The farm's slow side: what happens to store calls when a dispatcher stops."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from dispatcher.backends.store import LoadReport, SqlSiteStore
from dispatcher.config import build_config
from dispatcher.farm import Farm

pytestmark = pytest.mark.anyio


class SlowStore(SqlSiteStore):
    """A real SQLite store whose ``loads()`` takes a while, and that notes misuse."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.running = 0
        self.closed_while_running = False
        self.started = threading.Event()

    def loads(self) -> dict[str, LoadReport]:
        self.running += 1
        self.started.set()
        try:
            time.sleep(0.5)
            return dict(super().loads())
        finally:
            self.running -= 1

    def close(self) -> None:
        self.closed_while_running = self.running > 0
        super().close()


async def test_stop_waits_for_store_calls_of_cancelled_callers(tmp_path: Path) -> None:
    store = SlowStore(f"sqlite:///{tmp_path / 'farm.db'}")
    store.upgrade()
    config = build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={})
    farm = Farm(config, store)
    refresh = asyncio.create_task(farm.refresh())
    assert await asyncio.to_thread(store.started.wait, 5)
    refresh.cancel()  # as Runner.stop cancels the refresher mid-query
    with pytest.raises(asyncio.CancelledError):
        await refresh
    assert store.running == 1  # the thread goes on regardless
    await farm.stop()
    assert store.running == 0
    store.close()
    assert not store.closed_while_running
