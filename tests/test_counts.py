"""The redirect counts: the hot path counts in the snapshot's cells, per site and reason, and
no count is lost or taken twice when the snapshot is replaced between reports (a worker's),
or between reads (the control process serving requests itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dispatcher.app import DispatchCore
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.store import SqlSiteStore
from dispatcher.config import build_config
from dispatcher.counts import AFFINITY, PLACED, REASONS, RULES, RedirectCounts
from dispatcher.farm import Farm
from dispatcher.redirect import compile_rules
from dispatcher.snapshot import Snapshot, build_snapshot
from dispatcher.worker import WorkerFarm

SITES = [SiteSpec("eu", "http://eu.example.com"), SiteSpec("us", "http://us.example.com")]
CONFIG = build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={})
TWO_POOLS = build_config(
    {"dispatcher": {"admin_tokens": ["t"]}, "pools": {"default": {}, "far": {}}}, environ={}
)


def snapshot(up: set[str], previous: Snapshot | None = None, **kw: Any) -> Snapshot:
    return build_snapshot(
        kw.pop("config", CONFIG),
        revision=1 if previous is None else previous.revision + 1,
        sites=kw.pop("sites", SITES),
        health=lambda name: Health("up" if name in up else "down", None),
        loads={},
        previous=previous,
        **kw,
    )


def redirect(core: DispatchCore, count: int) -> list[bytes]:
    """``count`` plain redirects through the wire edge's entry; the sites' base URLs."""
    bases = []
    for _ in range(count):
        scope = {"method": "GET", "query_string": b"", "raw_path": b"/x", "headers": []}
        status, head, _ = core.answer_wire(scope, b"/x", b"client.example")
        assert status == 302
        assert isinstance(head, bytes)
        bases.append(head.split(b"location: ")[1].removesuffix(b"/x\r\n"))
    return bases


def test_the_hot_path_counts_in_the_chosen_candidates_cell() -> None:
    farm = WorkerFarm(snapshot({"eu", "us"}), CONFIG)
    bases = redirect(DispatchCore(farm), 10)
    expected = {n: bases.count(f"http://{n}.example.com".encode()) for n in ("eu", "us")}
    assert {n: c[PLACED] for n, c in farm.snapshot.placed.items()} == expected
    assert farm.redirects.get("eu") == expected["eu"]  # (read without folding)
    assert farm.redirects.split("eu") == (expected["eu"], 0, 0)
    assert farm.redirects.take() == {n: (c, 0, 0) for n, c in expected.items()}
    assert farm.redirects.take() == {}  # taken: from zero again
    assert all(cell == [0, 0, 0] for cell in farm.snapshot.placed.values())


def test_no_count_is_lost_or_taken_twice_across_snapshot_replacements() -> None:
    """A worker's counts between two reports span three snapshots (one where us is down):
    the report has every redirect once; the next one has only those made since."""
    farm = WorkerFarm(snapshot({"eu", "us"}), CONFIG)
    core = DispatchCore(farm)
    redirect(core, 4)
    farm.install(snapshot({"eu"}, farm.snapshot))
    redirect(core, 3)  # all to eu
    old = farm.snapshot
    farm.install(snapshot({"eu", "us"}, old))
    redirect(core, 5)
    farm.install(farm.snapshot)  # (the same one again: nothing counted twice)
    report = farm.redirects.take()
    assert sum(placed for placed, _, _ in report.values()) == 12
    assert report["eu"][PLACED] >= 3
    redirect(core, 2)
    old.placed["eu"][PLACED] += 100  # a snapshot replaced is never read again
    assert sum(sum(split) for split in farm.redirects.take().values()) == 2


def test_a_site_gone_from_the_snapshot_keeps_its_counts_until_taken() -> None:
    farm = WorkerFarm(snapshot({"eu", "us"}), CONFIG)
    redirect(DispatchCore(farm), 6)
    farm.install(snapshot({"eu", "us"}, farm.snapshot, sites=SITES[:1]))
    assert farm.redirects.get("us") == 3  # (a plain rotation: three each)
    assert farm.redirects.totals() == {"eu": 3, "us": 3}


def test_the_rules_count_the_sites_they_send_to() -> None:
    """A rule's ``${site:far}`` is counted as ``rules``, the default pool's placement after
    the rules as the plain path's is (``placed``)."""
    sites = [*SITES, SiteSpec("asia", "http://asia.example.com", pool="far")]
    rules = compile_rules(
        "RewriteEngine On\n"
        "RewriteRule ^/far$ ${site:far}/there [R=302,L]\n"
        "RewriteRule ^/old$ /new\n",
        filename="t",
        known_pools=TWO_POOLS.pools,
    )
    first = snapshot({"eu", "us", "asia"}, config=TWO_POOLS, sites=sites, rules=rules)
    farm = WorkerFarm(first, TWO_POOLS)
    core = DispatchCore(farm)
    for path in (b"/far", b"/old", b"/far"):
        scope = {"method": "GET", "query_string": b"", "raw_path": path, "headers": []}
        assert core.answer(scope)[0] == 302
    assert farm.redirects.totals() == {"asia": 2, "eu": 1}
    assert farm.redirects.splits() == {"asia": (0, 0, 2), "eu": (1, 0, 0)}


def test_the_embedded_route_reads_the_cells() -> None:
    """``route`` passes what placement puts on ``here`` and counts it, across a snapshot
    replacement as well."""
    farm = WorkerFarm(snapshot({"eu", "us"}), CONFIG)
    core = DispatchCore(farm)
    scope = {"method": "GET", "query_string": b"", "raw_path": b"/p", "headers": []}
    passed = [type(core.route(scope, "eu")).__name__ for _ in range(4)]
    assert passed.count("Passed") == 2  # (the rotation: eu, us, eu, us)
    farm.install(snapshot({"us"}, farm.snapshot))
    assert type(core.route(scope, "eu")).__name__ != "Passed"  # eu takes no clients now
    assert farm.redirects.totals() == {"eu": 2, "us": 3}


def test_redirect_counts_add_and_forget() -> None:
    counts = RedirectCounts()
    cells = {"eu": [2, 0, 1], "us": [0, 0, 0]}
    counts.follow(cells)
    counts.add({"eu": (1, 5, 0), "asia": (4, 0, 0)})
    assert counts.get("eu") == 9
    assert counts.split("eu") == (3, 5, 1)
    assert counts.get("nowhere") == 0
    assert counts.split("nowhere") == (0, 0, 0)
    counts.forget("asia")
    assert counts.totals() == {"eu": 9}
    assert counts.splits() == {"eu": (3, 5, 1)}
    assert cells == {"eu": [0, 0, 0], "us": [0, 0, 0]}  # folded


def test_the_reasons_slots_are_the_cells_layout() -> None:
    assert (REASONS[PLACED], REASONS[AFFINITY], REASONS[RULES]) == ("placed", "affinity", "rules")
    assert all(len(cell) == len(REASONS) for cell in snapshot({"eu", "us"}).placed.values())


def test_each_reason_is_counted_once_across_snapshot_replacements() -> None:
    """Counts in every slot of a cell survive the replacement of its snapshot, reason by
    reason; a cell replaced and bumped again is not read; what was taken is not taken
    again; a site gone keeps its split until taken."""
    counts = RedirectCounts()
    first = snapshot({"eu", "us"})
    counts.follow(first.placed)
    first.placed["eu"][PLACED] += 3
    first.placed["eu"][AFFINITY] += 2
    first.placed["us"][RULES] += 1
    assert counts.split("eu") == (3, 2, 0)  # (read without folding)
    second = snapshot({"eu", "us"}, first)
    counts.follow(second.placed)
    assert first.placed["eu"] == [0, 0, 0]  # folded when it was let go of
    second.placed["eu"][AFFINITY] += 4
    second.placed["us"][PLACED] += 1
    first.placed["eu"][RULES] += 100  # a snapshot replaced is never read again
    assert counts.split("eu") == (3, 6, 0)
    assert counts.take() == {"eu": (3, 6, 0), "us": (1, 0, 1)}
    third = snapshot({"eu"}, second, sites=SITES[:1])  # us is gone
    second.placed["us"][RULES] += 2
    counts.follow(third.placed)
    third.placed["eu"][RULES] += 5
    assert counts.get("us") == 2
    assert counts.totals() == {"eu": 5, "us": 2}
    assert counts.take() == {"eu": (0, 0, 5), "us": (0, 0, 2)}
    assert counts.take() == {}


@pytest.mark.parametrize("up", [set(), {"eu"}])
def test_a_snapshot_maps_its_candidates_only(up: set[str]) -> None:
    built = snapshot(up)
    assert set(built.placed) == up


@pytest.mark.anyio
async def test_the_control_process_adds_its_own_counts_to_the_workers(tmp_path: Path) -> None:
    """One-process mode: the hot path counts in the farm's snapshot; a snapshot rebuilt
    (a health change) keeps them; the workers' reports add up on top."""
    store = SqlSiteStore(f"sqlite:///{tmp_path / 'farm.db'}")
    store.upgrade()
    check = {"url": "/health", "timeout": 0.2, "fall": 1}
    raw = {  # (nothing listens: both down, and the pool fails open)
        "dispatcher": {"admin_tokens": ["t"]},
        "pools": {"default": {"all_down": "fail-open"}},
        "sites": [
            {"name": n, "base_url": f"http://127.0.0.1:{port}", "check": check}
            for n, port in (("eu", 9), ("us", 7))
        ],
    }
    farm = Farm(build_config(raw, environ={}), store)
    try:
        await farm.start()
        core = DispatchCore(farm)
        scope = {"method": "GET", "query_string": b"", "raw_path": b"/", "headers": []}
        for _ in range(4):
            core.answer(scope)
        farm._changed()  # a new snapshot, as a health change makes
        for _ in range(2):
            core.answer(scope)
        farm.add_redirects({"eu": (8, 2, 0), "gone": (5, 0, 0)})  # a worker's report
        assert farm.redirects.get("eu") + farm.redirects.get("us") == 16
        assert farm.redirects.totals() == {"eu": 13, "us": 3}
        assert farm.redirects.split("eu") == (11, 2, 0)
    finally:
        await farm.stop()
        store.close()
