"""The cluster status document: what ``farmnode status`` shows of a node's cluster runtime.

Read from a :class:`~farmnode.cluster.runtime.ClusterRuntime` at one instant: the node,
its members (each peer's liveness and last heartbeat), quorum, groups (who owns and who
claims each, this node's local state, what its resources report) and counters. Claimants
are ranked as ownership is: higher priority first, then the name that sorts first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from farmnode.cluster.membership import PeerView, View

if TYPE_CHECKING:
    from farmnode.cluster.runtime import ClusterRuntime


def status_document(runtime: ClusterRuntime) -> dict[str, Any]:
    """Members, quorum, groups and counters, as ``farmnode status`` shows them."""
    view = runtime.membership.view()
    advert = runtime.plan.heartbeat if runtime.plan is not None else None
    return {
        "node": runtime.node_name,
        "cluster": runtime.settings.name,
        "role": runtime.settings.role,
        "priority": runtime.settings.priority,
        "state": advert.state if advert is not None else "starting",
        "incarnation": runtime.incarnation,
        "status": runtime.last_status,
        "members": {name: _member(peer) for name, peer in view.peers.items()},
        "quorum": {
            "quorate": view.quorate,
            "voters": view.voters,
            "seen": 1 + sum(1 for p in view.peers.values() if p.fresh),
            "warnings": list(runtime.settings.warnings),
        },
        "groups": {name: _group_status(runtime, name, view) for name in runtime.groups},
        "counters": {
            "heartbeats_sent": runtime.sent,
            "encode_errors": runtime.send_errors,
            "receiver": dict(runtime.receiver.stats),
            "restarts": dict(runtime.receiver.restarts),
            "transports": {t.name: dict(t.stats) for t in runtime.transports},
        },
    }


def ranked_claimants(group: str, view: View) -> list[str]:
    """The peers that claim ``group`` in ``view``, best-ranked first (see :func:`_order`)."""
    peers = [p for p in view.peers.values() if p.claims(group)]
    peers.sort(key=_order)
    return [p.name for p in peers]


def _group_status(runtime: ClusterRuntime, name: str, view: View) -> dict[str, Any]:
    claimants = ranked_claimants(name, view)
    if name in runtime.planner.claims:
        claimants.insert(0, runtime.node_name)
    run = runtime.groups[name]
    return {
        "owner": runtime.owner(name),
        "claimed_by": claimants,
        "local": run.state,
        "resources": {
            agent.name: dict(seen)
            for agent in run.group.agents
            if (seen := agent.status()) is not None
        },
    }


def _order(peer: PeerView) -> tuple[int, str]:
    """Best-ranked first: higher priority, then the name that sorts first."""
    return (-peer.heartbeat.priority if peer.heartbeat is not None else 0), peer.name


def _member(peer: PeerView) -> dict[str, Any]:
    hb = peer.heartbeat
    return {
        "liveness": peer.liveness,
        "alive": peer.alive,
        "fresh": peer.fresh,
        "last_heard": {t: round(ago, 3) for t, ago in peer.last_heard.items()},
        "state": hb.state if hb is not None else None,
        "role": hb.role if hb is not None else None,
        "priority": hb.priority if hb is not None else None,
        "groups": sorted(hb.groups) if hb is not None else [],
    }


__all__ = ["ranked_claimants", "status_document"]
