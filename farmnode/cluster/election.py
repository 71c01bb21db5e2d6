"""Who owns each resource group: the election, pure (no I/O, time comes from the view).

One :class:`Planner` per node. Each cycle the daemon hands it the membership
:class:`~farmnode.cluster.membership.View`; :meth:`Planner.plan` returns the steps to take
(``acquire``, ``release``, ``announce``), each with a reason for the log and the notify
command, a one-line status, and the :class:`~farmnode.cluster.membership.Heartbeat` this
node must advertise from now on.

Claims: a node claims a group (advertises it in ``groups``) from the moment it decides to
acquire it — before its resources start — until the daemon reports, through
:meth:`Planner.stopped`, that every resource of it has stopped after a release. Peers never
acquire a group that a live peer claims, so "claimed" is what the safety argument is about.

Rules (docs/cluster.md explains why they give at most one owner):

- rank: higher priority wins; on equal priority the name that sorts first wins;
- a node acquires an unclaimed group only when it is a candidate (an active member with
  quorum, the group not failed here), has been one for ``settle`` seconds, no peer is still
  pending (unheard within initdead), no live peer still sees a member that is silent to
  us (a partial partition), and it outranks every peer that is a candidate for the group;
- a partial view that lasts ``partial_after`` makes the node ``standby``: not a candidate
  (it keeps what it owns), so a peer with a whole view can take the groups;
- an owner releases when it loses quorum, leaves, is a witness, its monitor failed
  ``failures_before_move`` times, or a live peer that outranks it claims the group too; with
  ``auto_failback`` it also hands the group back to a candidate that outranks it once that
  candidate has been seen for ``preempt_delay`` seconds;
- a group whose monitor failed here is not taken again here for ``failure_timeout``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from farmnode.cluster.membership import Heartbeat, NodeState, PeerView, Role, View

if TYPE_CHECKING:
    from farmnode.cluster.settings import ClusterSettings

Action = Literal["acquire", "release", "announce"]


@dataclass(frozen=True, slots=True)
class Step:
    """One thing to do: ``acquire`` (start the group's resources in order), ``release``
    (stop them in reverse order, then call :meth:`Planner.stopped`), or ``announce`` (we own
    the group and a lower-ranked peer claims it too: re-send gratuitous ARP)."""

    action: Action
    group: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """The result of one cycle: steps in order, a status line, what to advertise."""

    steps: tuple[Step, ...]
    status: str
    heartbeat: Heartbeat


@dataclass(frozen=True, slots=True)
class GroupRule:
    """Per-group policy: monitor failures that move the group, and how long they bar it here."""

    name: str
    failures_before_move: int = 1
    failure_timeout: float = 60.0


class _Group:
    """This node's state for one group (mutable; only the planner touches it)."""

    __slots__ = (
        "claimed",
        "eligible_since",
        "failed_at",
        "failures",
        "lower_owners",
        "preferred",
        "preferred_since",
        "rule",
        "stopping",
    )

    def __init__(self, rule: GroupRule) -> None:
        self.rule = rule
        self.claimed = False
        self.stopping = False
        self.failures = 0
        self.failed_at: float | None = None
        self.eligible_since: float | None = None
        self.preferred: str | None = None
        self.preferred_since = 0.0
        self.lower_owners: frozenset[str] = frozenset()


def outranks(a: tuple[int, str], b: tuple[int, str]) -> bool:
    """Whether (priority, name) ``a`` beats ``b``: higher priority, then the smaller name."""
    return (-a[0], a[1]) < (-b[0], b[1])


class Planner:
    """The election for one node over its groups (see the module's rules).

    ``settle`` is how long this node must have been a candidate for a group before it
    acquires it; it must exceed the time for a claim or a candidacy to reach every peer and
    be answered (2 x interval + 2 x the largest message delay); :meth:`from_settings` uses
    4 x interval. ``partial_after`` is how long a partial view may last before the node
    turns ``standby`` (deadtime). ``incarnation`` distinguishes this run of the node from
    earlier ones.

    The daemon's side of the contract: advertise :attr:`Plan.heartbeat` in every heartbeat
    from now on; on ``acquire`` start the group's resources in order (a failed start:
    :meth:`start_failed`); on ``release`` stop them in reverse order and then call
    :meth:`stopped` — until then the group stays claimed; report monitors with
    :meth:`monitor_ok` / :meth:`monitor_failed`.
    """

    __slots__ = (
        "_groups",
        "_hidden_since",
        "_leaving",
        "auto_failback",
        "incarnation",
        "partial_after",
        "preempt_delay",
        "priority",
        "role",
        "self_name",
        "settle",
    )

    def __init__(
        self,
        self_name: str,
        groups: Iterable[GroupRule],
        *,
        priority: int,
        incarnation: int,
        role: Role = "member",
        auto_failback: bool = False,
        preempt_delay: float = 0.0,
        settle: float = 0.8,
        partial_after: float = 1.0,
    ) -> None:
        self.self_name = self_name
        self.priority = priority
        self.incarnation = incarnation
        self.role: Role = role
        self.auto_failback = auto_failback
        self.preempt_delay = preempt_delay
        self.settle = settle
        self.partial_after = partial_after
        self._hidden_since: float | None = None
        self._groups = {rule.name: _Group(rule) for rule in groups}
        self._leaving = False

    @classmethod
    def from_settings(cls, self_name: str, settings: ClusterSettings, incarnation: int) -> Planner:
        """The planner a node's ``[cluster]`` and ``[[groups]]`` describe."""
        rules = [
            GroupRule(g.name, g.failures_before_move, g.failure_timeout) for g in settings.groups
        ]
        return cls(
            self_name,
            rules,
            priority=settings.priority,
            incarnation=incarnation,
            role=settings.role,
            auto_failback=settings.auto_failback,
            preempt_delay=settings.preempt_delay,
            settle=4 * settings.interval,
            partial_after=settings.deadtime,
        )

    # --- what the daemon reports -------------------------------------------------------

    def stopped(self, group: str) -> None:
        """Every resource of ``group`` has stopped after a release: drop the claim."""
        g = self._groups[group]
        g.claimed = g.stopping = False

    def monitor_failed(self, group: str, now: float) -> None:
        """A monitor (or a start) of ``group`` failed here; enough of them move the group."""
        g = self._groups[group]
        g.failures += 1
        if g.failures >= g.rule.failures_before_move and g.failed_at is None:
            g.failed_at = now

    def start_failed(self, group: str, now: float) -> None:
        """A start failed here: the group moves at once (the node is barred from it)."""
        g = self._groups[group]
        g.failures = max(g.failures, g.rule.failures_before_move)
        g.failed_at = now

    def monitor_ok(self, group: str) -> None:
        """A monitor succeeded: consecutive failures start again from zero."""
        self._groups[group].failures = 0

    def leave(self) -> None:
        """A clean stop: release every group and advertise ``leaving`` (no longer a candidate)."""
        self._leaving = True

    @property
    def claims(self) -> frozenset[str]:
        """The groups this node claims now (acquiring, owning or still stopping)."""
        return frozenset(name for name, g in self._groups.items() if g.claimed)

    # --- the cycle -----------------------------------------------------------------------

    def plan(self, view: View) -> Plan:
        """Decide, for every group in order, what this node does now."""
        hidden = self._hidden_peer_seen(view)
        state = self._state(view, hidden)
        steps: list[Step] = []
        lines: list[str] = []
        for name, g in self._groups.items():
            self._clear_failure(g, view.now)
            self._track_eligibility(g, state, view.now)
            step, line = self._decide(name, g, state, view, hidden)
            if step is not None:
                steps.append(step)
            lines.append(f"{name}: {line}")
        return Plan(tuple(steps), self._status(state, view, lines), self._heartbeat(state, view))

    def _state(self, view: View, hidden: str | None) -> NodeState:
        """``standby`` once a partial view (``hidden``) has lasted ``partial_after``.

        A short one is normal — a dead peer is seen by others a little longer than by us —
        and only delays acquisitions; a lasting one stops our candidacy, so that a peer that
        sees everyone can take the groups we would otherwise win.
        """
        if hidden is None:
            self._hidden_since = None
        elif self._hidden_since is None:
            self._hidden_since = view.now
        if self._leaving:
            return "leaving"
        if not view.quorate:
            return "noquorum"
        if self._hidden_since is not None and view.now - self._hidden_since >= self.partial_after:
            return "standby"
        return "active"

    def _clear_failure(self, g: _Group, now: float) -> None:
        if g.failed_at is not None and now - g.failed_at >= g.rule.failure_timeout:
            g.failed_at = None
            g.failures = 0

    def _track_eligibility(self, g: _Group, state: NodeState, now: float) -> None:
        eligible = self.role == "member" and state == "active" and g.failed_at is None
        if not eligible:
            g.eligible_since = None
        elif g.eligible_since is None:
            g.eligible_since = now

    def _decide(
        self, name: str, g: _Group, state: NodeState, view: View, hidden: str | None
    ) -> tuple[Step | None, str]:
        if g.stopping:
            return None, "stopping (releasing)"
        if g.claimed:
            return self._keep_or_release(name, g, state, view)
        return self._acquire_or_wait(name, g, view, hidden)

    # --- an owner: keep or release ---------------------------------------------------------

    def _keep_or_release(
        self, name: str, g: _Group, state: NodeState, view: View
    ) -> tuple[Step | None, str]:
        reason = self._must_release(name, g, state, view)
        if reason is not None:
            g.stopping = True
            return Step("release", name, reason), f"releasing: {reason}"
        lower = frozenset(p.name for p in view.peers.values() if p.claims(name))
        announce = lower - g.lower_owners
        g.lower_owners = lower
        if announce:
            reason = f"lower-ranked owner(s) {', '.join(sorted(announce))} detected"
            return Step("announce", name, reason), f"owned here; {reason}"
        return None, "owned here"

    def _must_release(self, name: str, g: _Group, state: NodeState, view: View) -> str | None:
        if self.role != "member":
            return "a witness owns nothing"
        if state == "leaving":
            return "leaving the cluster"
        if state == "noquorum":
            return f"lost quorum ({self._seen(view)} of {view.voters} voters seen)"
        if g.failed_at is not None:
            return f"monitor failed {g.failures} time(s); moving the group"
        me = (self.priority, self.self_name)
        for peer in view.peers.values():
            if peer.claims(name) and outranks(_rank(peer), me):
                return f"{peer.name} (priority {_rank(peer)[0]}) owns it too and outranks us"
        if self.auto_failback:
            return self._hand_back(name, g, view)
        return None

    def _hand_back(self, name: str, g: _Group, view: View) -> str | None:
        me = (self.priority, self.self_name)
        better = [p for p in view.peers.values() if p.candidate(name) and outranks(_rank(p), me)]
        if not better:
            g.preferred = None
            return None
        best = min(better, key=_order).name
        if g.preferred != best:
            g.preferred, g.preferred_since = best, view.now
        if view.now - g.preferred_since >= self.preempt_delay:
            return f"auto_failback: handing back to {best} (preferred)"
        return None

    # --- not an owner: acquire or wait ------------------------------------------------------

    def _acquire_or_wait(
        self, name: str, g: _Group, view: View, hidden: str | None
    ) -> tuple[Step | None, str]:
        g.lower_owners = frozenset()
        reason = self._cannot_acquire(name, g, view, hidden)
        if reason is not None:
            return None, reason
        g.claimed = True
        why = self._takeover_reason(name, view)
        return Step("acquire", name, why), f"acquiring: {why}"

    def _cannot_acquire(self, name: str, g: _Group, view: View, hidden: str | None) -> str | None:
        reason = self._barred_here(g, view)
        if reason is None:
            reason = hidden
        if reason is None:
            reason = self._blocked_by_peers(name, g, view)
        return reason

    def _barred_here(self, g: _Group, view: View) -> str | None:
        if self.role != "member":
            return "witness (owns nothing)"
        if self._leaving:
            return "leaving"
        if not view.quorate:
            return f"no quorum ({self._seen(view)} of {view.voters} voters seen)"
        if g.failed_at is not None:
            left = g.rule.failure_timeout - (view.now - g.failed_at)
            return f"failed here; may own it again in {left:.1f}s"
        return None

    def _blocked_by_peers(self, name: str, g: _Group, view: View) -> str | None:
        owners = sorted(p.name for p in view.peers.values() if p.claims(name))
        if owners:
            return f"standby (owned by {', '.join(owners)})"
        pending = sorted(p.name for p in view.peers.values() if p.liveness == "pending")
        if pending:
            return f"waiting for {', '.join(pending)} to be heard (initdead)"
        if g.eligible_since is None or view.now - g.eligible_since < self.settle:
            return "settling (candidacy not yet seen by every peer)"
        me = (self.priority, self.self_name)
        better = [p for p in view.peers.values() if p.candidate(name) and outranks(_rank(p), me)]
        if better:
            return f"standby ({min(better, key=_order).name} outranks us)"
        return None

    def _hidden_peer_seen(self, view: View) -> str | None:
        """A peer silent to us but still heard by a live peer: a partial partition.

        Its claims may have changed since we last heard it, so while any live peer still
        sees it we acquire nothing (a peer known to be a witness owns nothing: ignored).
        """
        hidden = {
            p.name
            for p in view.peers.values()
            if not p.alive and (p.heartbeat is None or p.heartbeat.role == "member")
        }
        for peer in view.peers.values():
            if peer.alive and peer.heartbeat is not None:
                seen = hidden.intersection(peer.heartbeat.sees)
                if seen:
                    who = ", ".join(sorted(seen))
                    return f"standby ({peer.name} still sees {who}, silent to us)"
        return None

    def _takeover_reason(self, name: str, view: View) -> str:
        gone = sorted(
            p.name
            for p in view.peers.values()
            if p.heartbeat is not None and name in p.heartbeat.groups
        )
        if gone:
            return f"highest-ranked candidate; previous owner {', '.join(gone)} gone"
        return "highest-ranked candidate; no owner"

    # --- reporting ---------------------------------------------------------------------------

    def _seen(self, view: View) -> int:
        return 1 + sum(1 for p in view.peers.values() if p.fresh)

    def _status(self, state: NodeState, view: View, lines: Sequence[str]) -> str:
        head = f"{self.self_name} ({self.role}, {state}, priority {self.priority})"
        if view.degraded_reason:
            head += f" WARNING {view.degraded_reason}"
        return "; ".join([head, *lines])

    def _heartbeat(self, state: NodeState, view: View) -> Heartbeat:
        failed = frozenset(n for n, g in self._groups.items() if g.failed_at is not None)
        return Heartbeat(
            incarnation=self.incarnation,
            priority=self.priority,
            role=self.role,
            state=state,
            groups=self.claims,
            failed=failed,
            sees=view.sees,
            quorum=view.quorate,
        )


def _rank(peer: PeerView) -> tuple[int, str]:
    priority = peer.heartbeat.priority if peer.heartbeat is not None else 0
    return priority, peer.name


def _order(peer: PeerView) -> tuple[int, str]:
    priority, name = _rank(peer)
    return -priority, name


__all__ = ["Action", "GroupRule", "Plan", "Planner", "Step", "outranks"]
