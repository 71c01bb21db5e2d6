"""The conditions of /livez and /readyz as pure functions (dispatcher.vitals, farmnode.vitals)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from dispatcher.vitals import (
    WORKER_SILENCE,
    Readiness,
    dispatcher_liveness,
    dispatcher_readiness,
)
from farmnode.cluster.runtime import ClusterRuntime
from farmnode.config import NodeConfig, NodeSettings
from farmnode.vitals import node_liveness, node_readiness


@dataclass(frozen=True)
class Worker:
    index: int
    pid: int | None = 100
    ready: bool = True
    silence: float | None = 0.3


READY = Readiness(
    loaded=True,
    probed=True,
    listening=True,
    stopping=False,
    database_answered=99.0,
    refreshed=99.5,
    registry_refresh=1.0,
    now=100.0,
)


def test_liveness_in_process_is_the_control_loop() -> None:
    verdict = dispatcher_liveness(control=None, workers=None)
    assert verdict.ok
    assert verdict.status == 200
    assert verdict.document() == {
        "status": "ok",
        "checks": {"control": {"ok": True, "detail": "running"}},
    }
    dead = dispatcher_liveness(control="the registry refresher has ended", workers=None)
    assert dead.status == 503
    assert dead.document()["checks"]["control"]["detail"] == "the registry refresher has ended"


def test_every_worker_must_run_and_report() -> None:
    assert dispatcher_liveness(control=None, workers=[Worker(0), Worker(1)]).ok
    for bad, said in [
        (Worker(1, ready=False), "worker 1 is not running"),
        (Worker(1, pid=None), "worker 1 is not running"),
        (Worker(1, silence=WORKER_SILENCE + 0.1), "worker 1 (pid 100) last heard 5.1 s ago"),
        (Worker(1, silence=None), "last heard never"),
    ]:
        verdict = dispatcher_liveness(control=None, workers=[Worker(0), bad])
        assert verdict.status == 503
        assert said in verdict.document()["checks"]["workers"]["detail"]


def test_ready_when_every_condition_holds() -> None:
    verdict = dispatcher_readiness(READY)
    assert verdict.ok
    doc = verdict.document()
    assert doc["snapshot_age"] == 0.5
    assert set(doc["checks"]) == {"snapshot", "probes", "database", "listening"}
    assert doc["checks"]["database"]["detail"] == "answered 1.0 s ago (bound 10 s)"


def test_the_database_bound_is_ten_registry_refreshes() -> None:
    assert dispatcher_readiness(replace(READY, database_answered=90.0)).ok
    late = dispatcher_readiness(replace(READY, database_answered=89.9))
    assert not late.ok
    assert late.document()["checks"]["database"] == {
        "ok": False,
        "detail": "last answered 10.1 s ago, beyond the bound of 10 s",
    }
    quick = replace(READY, registry_refresh=0.2, database_answered=97.0)
    assert not dispatcher_readiness(quick).ok
    never = dispatcher_readiness(replace(READY, database_answered=None, refreshed=None))
    assert never.document()["snapshot_age"] is None
    assert never.document()["checks"]["database"]["detail"] == "has not answered yet"


def test_each_condition_can_fail_alone() -> None:
    for change, name in [
        ({"loaded": False}, "snapshot"),
        ({"probed": False}, "probes"),
        ({"listening": False}, "listening"),
        ({"stopping": True}, "listening"),
    ]:
        doc = dispatcher_readiness(replace(READY, **change)).document()
        assert doc["status"] == "failing"
        assert [n for n, c in doc["checks"].items() if not c["ok"]] == [name]


# --- farmnode ---


@dataclass
class Service:
    started: bool


@dataclass
class Node:
    state: str = "running: 1 service(s), 1/1 real server(s) up"
    services: Mapping[str, Service] = field(default_factory=lambda: {"web": Service(True)})
    deferred: frozenset[str] = frozenset()
    cluster: ClusterRuntime | None = None
    config: NodeConfig = field(default_factory=lambda: NodeConfig(NodeSettings("n1"), ()))


def test_a_running_node_is_live_and_ready() -> None:
    assert node_liveness(Node()).ok
    ready = node_readiness(Node())
    assert ready.ok
    assert set(ready.document()["checks"]) == {"started", "services"}


def test_a_node_starting_or_stopping_is_not_ready() -> None:
    for state in ("starting", "stopping"):
        assert node_liveness(Node(state=state)).ok
        assert not node_readiness(Node(state=state)).ok
    assert not node_liveness(Node(state="stopped")).ok


def test_a_closed_service_counts_unless_a_cluster_group_opens_it() -> None:
    services = {"web": Service(True), "db": Service(False)}
    doc = node_readiness(Node(services=services)).document()
    assert doc["checks"]["services"] == {"ok": False, "detail": "not running: db"}
    assert node_readiness(Node(services=services, deferred=frozenset({"db"}))).ok
