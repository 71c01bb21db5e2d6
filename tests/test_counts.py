"""The redirect counts: the hot path counts in the snapshot's cells, and no count is lost or
taken twice when the snapshot is replaced between reports (a worker's), or between reads
(the control process serving requests itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dispatcher.app import DispatchCore
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.store import SqlSiteStore
from dispatcher.config import build_config
from dispatcher.counts import RedirectCounts
from dispatcher.farm import Farm
from dispatcher.redirect import compile_rules
from dispatcher.snapshot import Snapshot, build_snapshot
from dispatcher.worker import WorkerFarm

SITES = [SiteSpec("eu", "http://eu.example.com"), SiteSpec("us", "http://us.example.com")]
CONFIG = build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={})
RULES = build_config(
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
    assert {n: c[0] for n, c in farm.snapshot.placed.items()} == expected
    assert farm.redirects.get("eu") == expected["eu"]  # (read without folding)
    assert farm.redirects.take() == expected
    assert farm.redirects.take() == {}  # taken: from zero again
    assert all(cell == [0] for cell in farm.snapshot.placed.values())


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
    assert sum(report.values()) == 12
    assert report["eu"] >= 3
    redirect(core, 2)
    old.placed["eu"][0] += 100  # a snapshot replaced is never read again
    assert sum(farm.redirects.take().values()) == 2


def test_a_site_gone_from_the_snapshot_keeps_its_counts_until_taken() -> None:
    farm = WorkerFarm(snapshot({"eu", "us"}), CONFIG)
    redirect(DispatchCore(farm), 6)
    farm.install(snapshot({"eu", "us"}, farm.snapshot, sites=SITES[:1]))
    assert farm.redirects.get("us") == 3  # (a plain rotation: three each)
    assert farm.redirects.totals() == {"eu": 3, "us": 3}


def test_the_rules_count_the_sites_they_send_to() -> None:
    """A rule's ``${site:far}`` and the default pool's placement after the rules are
    counted as the plain path's are."""
    sites = [*SITES, SiteSpec("asia", "http://asia.example.com", pool="far")]
    rules = compile_rules(
        "RewriteEngine On\n"
        "RewriteRule ^/far$ ${site:far}/there [R=302,L]\n"
        "RewriteRule ^/old$ /new\n",
        filename="t",
        known_pools=RULES.pools,
    )
    first = snapshot({"eu", "us", "asia"}, config=RULES, sites=sites, rules=rules)
    farm = WorkerFarm(first, RULES)
    core = DispatchCore(farm)
    for path in (b"/far", b"/old", b"/far"):
        scope = {"method": "GET", "query_string": b"", "raw_path": path, "headers": []}
        assert core.answer(scope)[0] == 302
    assert farm.redirects.totals() == {"asia": 2, "eu": 1}


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
    assert farm.redirects.take() == {"eu": 2, "us": 3}


def test_redirect_counts_add_and_forget() -> None:
    counts = RedirectCounts()
    cells = {"eu": [2], "us": [0]}
    counts.follow(cells)
    counts.add({"eu": 1, "asia": 4})
    assert counts.get("eu") == 3
    assert counts.get("nowhere") == 0
    counts.forget("asia")
    assert counts.totals() == {"eu": 3}
    assert cells == {"eu": [0], "us": [0]}  # folded


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
        farm.add_redirects({"eu": 10, "gone": 5})  # a worker's report
        assert farm.redirects.get("eu") + farm.redirects.get("us") == 16
        assert farm.redirects.totals() == {"eu": 13, "us": 3}
    finally:
        await farm.stop()
        store.close()
