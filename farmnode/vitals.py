"""farmnode's ``GET /livez`` and ``GET /readyz`` (on the status listener, no token).

The same contract as the dispatcher's (:mod:`dispatcher.vitals`: 200 or 503, a JSON body
that names each condition, nothing but what the daemon already holds in memory):

- **live**: the node has not stopped, and with a ``[cluster]`` its loop (heartbeats,
  election, resource groups) finished a cycle within :func:`cluster_bound` seconds. A
  status listener that answers at all also shows the daemon's event loop runs.
- **ready**: the node finished starting and is not stopping; every service that is not
  deferred to a cluster group has its data plane open (a deferred service, closed on a
  standby, is not held against it); with a ``[cluster]``, the loop runs and this node sees
  a quorum.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Protocol

from dispatcher.vitals import Condition, Verdict
from farmnode.cluster.runtime import ClusterRuntime
from farmnode.config import NodeConfig

#: A cluster loop that has not cycled for this many intervals (and at least
#: :data:`MIN_CLUSTER_BOUND` seconds) is stuck.
CLUSTER_INTERVALS = 10
MIN_CLUSTER_BOUND = 5.0
NOT_STARTED = frozenset({"new", "starting", "stopping", "stopped"})


class RunningService(Protocol):
    @property
    def started(self) -> bool: ...


class NodeView(Protocol):
    """What the conditions read of a :class:`farmnode.daemon.Node`."""

    @property
    def state(self) -> str: ...
    @property
    def services(self) -> Mapping[str, RunningService]: ...
    @property
    def deferred(self) -> Collection[str]: ...
    @property
    def cluster(self) -> ClusterRuntime | None: ...
    @property
    def config(self) -> NodeConfig: ...


def cluster_bound(runtime: ClusterRuntime) -> float:
    return max(MIN_CLUSTER_BOUND, CLUSTER_INTERVALS * runtime.settings.interval)


def node_liveness(node: NodeView, now: float | None = None) -> Verdict:
    at = time.monotonic() if now is None else now
    conditions = [Condition("node", node.state != "stopped", node.state)]
    if node.config.cluster is not None:
        conditions.append(_cluster_loop(node.cluster, at))
    return Verdict(tuple(conditions))


def node_readiness(node: NodeView, now: float | None = None) -> Verdict:
    at = time.monotonic() if now is None else now
    state = node.state
    started = state not in NOT_STARTED and not state.startswith("stopping")
    closed = sorted(
        name for name, run in node.services.items() if not run.started and name not in node.deferred
    )
    conditions = [
        Condition("started", started, state),
        Condition(
            "services",
            not closed,
            f"not running: {', '.join(closed)}" if closed else f"{len(node.services)} service(s)",
        ),
    ]
    runtime = node.cluster
    if node.config.cluster is not None:
        conditions.append(_cluster_loop(runtime, at))
        quorate = runtime is not None and runtime.membership.view().quorate
        conditions.append(Condition("quorum", quorate, "quorate" if quorate else "no quorum"))
    return Verdict(tuple(conditions))


def _cluster_loop(runtime: ClusterRuntime | None, now: float) -> Condition:
    if runtime is None or not runtime.running:
        return Condition("cluster", False, "the cluster runtime is not running")
    bound = cluster_bound(runtime)
    cycled = runtime.cycled_at
    if cycled is None:
        return Condition("cluster", False, "the cluster loop has not cycled yet")
    age = max(0.0, now - cycled)
    ok = age <= bound
    return Condition("cluster", ok, f"last cycle {age:.1f} s ago (bound {bound:g} s)")


__all__ = ["cluster_bound", "node_liveness", "node_readiness"]
