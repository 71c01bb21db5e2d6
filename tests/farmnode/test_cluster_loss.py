"""Heartbeat packet loss (issue 6): random drops by nftables, real ``farmnode serve`` processes.

The lab of ``tests/farmnode/test_cluster_lab.py`` (its helpers are reused): a bridge
namespace as the LAN, n1 (priority 150), n2 (priority 100) and the witness w, UDP heartbeats
only (interval 0.2 s, deadtime 1.0 s, initdead 2.0 s), one group ``front`` holding the
floating address 10.213.70.50; all removed afterwards, also on failure.

n1 owns ``front`` first, without loss. Then every node namespace (n1, n2, w) gets a table
that drops the given share of heartbeat datagrams at random on input, and counts::

    table inet loss {
        chain input {
            type filter hook input priority 0; policy accept;
            udp dport 6940 counter
            udp dport 6940 numgen random mod 100 < 5 counter drop
        }
    }

The first counter sees every heartbeat reaching the node, the second the dropped ones; their
ratio is the measured loss, printed beside the nominal one and checked to lie within six
binomial standard deviations of it. For the run's length the test polls every 50 ms who holds
the address. Counted:

- false failovers: every change of the set of holders between two polls (n1 -> nobody -> n2
  is two changes, one move), every poll where nobody holds the address, every poll where two
  do;
- from each node's log, because its status document (``farmnode status --json``) tells
  only the present (liveness, seconds since last heard) and counts no deaths: peers declared
  dead (``peer X: ... -> dead``), peers late (silent > warntime 0.5 s), the node's entries
  into ``noquorum``, its acquisitions and releases, and every silence longer than warntime
  with its length (:class:`LogEvents`), hence the worst one and how many heartbeats were
  lost in a row, beside what independent drops predict.

At 5 % (15 s in ``make test``, 120 s in ``make soak``) nothing may move: no change of holder,
never nobody, never two. At 20 % (120 s, ``make soak``) never two holders; the rest is
measured and printed (``-s``), not asserted.

What independent drops predict (loss p per datagram, one transport, n heartbeats per
direction: 600 in 120 s at interval 0.2 s; six directions between three nodes):

- *declared dead* needs deadtime (1.0 s) of silence: 5 heartbeats lost in a row. The
  expected number of runs of at least k losses among n trials is
  ``p^k (1 + (n - k)(1 - p))`` (:func:`runs_at_least`): 1.8e-4 per direction at 5 %
  (1.1e-3 per 120 s over the six directions) and 0.153 per direction at 20 % (0.92 per
  120 s). One death is no failover: with the witness, n2 acquires only when n1 is dead to it
  *and* w no longer "sees" n1 (a partial view blocks the takeover), so both directions
  n1 -> n2 and n1 -> w must lose 5 in a row at once: about ``2 n (1-p) p^10`` = 1e-4 per
  120 s at 20 %.
- *quorum* counts voters heard within the fresh window, ``deadtime - 2 x interval`` = 0.6 s:
  the owner loses quorum, and releases, when neither of its two peers was heard for 0.6 s,
  3 losses in a row on each at the same time. One direction enters such a silence with
  probability ``(1-p) p^3`` per heartbeat while the other is in one with ``p^3``:
  ``2 n (1-p) p^6`` episodes (:func:`joint_silences`), 1.8e-5 per 120 s at 5 % and 0.061 at
  20 %. n2, an active candidate all along, takes the group as soon as it hears n1 advertise
  ``noquorum`` without the claim, while n1, quorate again a moment later, must settle
  (4 x interval) before it could acquire: each such episode is a move. So the fresh window,
  not deadtime, sets the false-failover rate: about 0.06 moves per 120 s (1.8 an hour) at
  20 %, and none to expect in any practical time at 5 %.

A Monte Carlo of the real ``Membership`` and ``Planner`` of the three nodes (a script run
while writing this test, not part of the suite: the runtime's loop with its wake-ups, drops
at random, heartbeats exactly one interval apart; 1000 runs of 120 s at 20 %) gave 0.061
quorum releases, 0.060 moves and 0.91 declared-dead events per run, 5.8 % of the runs with a
move.

Real heartbeats come a little less often than every interval (each cycle starts when the
previous wait ends: 0.2007 s on average, measured on the lab's bridge without loss), and
the loop wakes 2 ms after a peer's deadline. So three periods often exceed the fresh window
by more than that margin, and two losses followed by a heartbeat a few milliseconds "late"
can already make a peer stale; likewise four losses for deadtime. A loaded machine (others
run tests at the same time) delays heartbeats further. The measured figures therefore can
exceed the arithmetic above; the silences by length and the load average are printed beside
them.

Needs root: without it each test skips with the reason (under CI=true that is a failure).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.farmnode.netns import Namespace
from tests.farmnode.test_cluster_lab import (
    DEADTIME,
    HB_PORT,
    INTERVAL,
    POLL,
    ClusterLab,
    _config,
)
from tests.farmnode.test_cluster_lab_more import _lab, _start_and_settle

STATUS_PORT = 9100  # the lab's node.status_listen, inside each node's namespace
LOAD_EVERY = 5.0  # seconds between load-average samples
DEAD_RUN = round(DEADTIME / INTERVAL)  # heartbeats lost in a row before a peer is dead: 5
FRESH_RUN = round((DEADTIME - 2 * INTERVAL) / INTERVAL)  # ... before it is not fresh: 3
DIRECTIONS = 6  # n1, n2 and w each hear the other two
SIGMAS = 6.0  # how far the measured drops may stray from the nominal share


def runs_at_least(p: float, k: int, n: int) -> float:
    """Expected runs of at least ``k`` consecutive losses among ``n`` independent heartbeats,
    each lost with probability ``p``: one may start at the first heartbeat, or after any
    delivered one."""
    return 0.0 if n < k else p**k * (1 + (n - k) * (1 - p))


def joint_silences(p: float, k: int, n: int) -> float:
    """Expected episodes in which two independent directions are silent for ``k`` heartbeats
    at once, over ``n`` heartbeats: either enters such a silence with ``(1-p) p^k`` per
    heartbeat while the other is in one with ``p^k``."""
    return 2 * n * (1 - p) * p ** (2 * k)


@dataclass(frozen=True)
class LossCase:
    """One run: the share of heartbeats dropped, for how long, and whether nothing may move
    (``steady``) or only two holders are forbidden."""

    percent: int
    seconds: float
    steady: bool


# --- nftables --------------------------------------------------------------------------------


def _loss_ruleset(percent: int) -> str:
    return f"""table inet loss {{
    chain input {{
        type filter hook input priority 0; policy accept;
        udp dport {HB_PORT} counter
        udp dport {HB_PORT} numgen random mod 100 < {percent} counter drop
    }}
}}
"""


def _add_loss(ns: Namespace, percent: int, tmp: Path) -> None:
    path = tmp / f"loss-{ns.role}.nft"
    path.write_text(_loss_ruleset(percent))
    ns.run("nft", "-f", str(path))


def _loss_counters(ns: Namespace) -> tuple[int, int]:
    """(heartbeats that reached the node, heartbeats dropped) from the table's counters."""
    doc = json.loads(ns.run("nft", "-j", "list", "table", "inet", "loss"))
    seen = dropped = -1
    for item in doc["nftables"]:
        if "rule" not in item:
            continue
        exprs = item["rule"]["expr"]
        packets = next(int(e["counter"]["packets"]) for e in exprs if "counter" in e)
        if any("drop" in e for e in exprs):
            dropped = packets
        else:
            seen = packets
    assert seen >= 0, f"{ns.name}: table inet loss counts nothing: {doc}"
    assert dropped >= 0, f"{ns.name}: table inet loss has no counting drop rule: {doc}"
    return seen, dropped


# --- the node's status and log ---------------------------------------------------------------


def _status_doc(ns: Namespace) -> dict[str, Any] | None:
    """``GET /status`` of the node in ``ns``; ``None`` when it does not answer in time."""
    try:
        with ns.connect(("127.0.0.1", STATUS_PORT), timeout=1.0) as sock:
            sock.sendall(b"GET /status HTTP/1.0\r\nHost: node\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return None
    try:
        doc: dict[str, Any] = json.loads(body)
    except ValueError:
        return None
    return doc


_LOG_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"  # farmnode's timestamps (dispatcher.logsetup)
_LIVENESS = re.compile(
    r"^(?P<at>\S+) \w+\s+farmnode\.cluster: peer (?P<peer>\S+): \w+ -> "
    r"(?P<now>alive|late|dead) \(silent for (?P<silent>[\d.]+) s\)"
)
_STATE = re.compile(r"farmnode\.cluster: cluster: \S+ \((?:member|witness), (?P<state>\w+),")
_STEP = re.compile(r"farmnode\.cluster: group \S+: (?P<action>acquire|release): (?P<why>.*)$")


@dataclass
class LogEvents:
    """What one node's log says happened during the run.

    ``silences``: per peer, each silence longer than warntime, from the last heartbeat before
    it to the first after it. The node logs ``alive -> late`` (then perhaps ``-> dead``) as
    the silence passes warntime and ``-> alive`` at its next cycle after a heartbeat, each with
    the seconds since the peer was last heard (to 10 ms); a silence is the difference of the
    two instants, rounded to 10 ms. Where the peer sent twice before that next cycle the end
    is the second heartbeat, so a silence can be overstated by less than one interval
    (rarely)."""

    dead: Counter[str] = field(default_factory=Counter)  # peer -> times declared dead
    late: Counter[str] = field(default_factory=Counter)
    silences: dict[str, list[float]] = field(default_factory=dict)
    noquorum: int = 0  # entries into the noquorum state
    acquired: list[str] = field(default_factory=list)  # the reasons given
    released: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> LogEvents:
        events = cls()
        state = "active"
        quiet: dict[str, float] = {}  # peer -> when last heard, while it is late or dead
        for line in text.splitlines():
            if liveness := _LIVENESS.search(line):
                events._liveness(liveness, quiet)
            elif status := _STATE.search(line):
                if status["state"] == "noquorum" and state != "noquorum":
                    events.noquorum += 1
                state = status["state"]
            elif step := _STEP.search(line):
                kept = events.acquired if step["action"] == "acquire" else events.released
                kept.append(step["why"])
        return events

    def _liveness(self, found: re.Match[str], quiet: dict[str, float]) -> None:
        at = datetime.strptime(found["at"], _LOG_TIME).timestamp()
        heard, peer = at - float(found["silent"]), found["peer"]
        if found["now"] != "alive":
            (self.dead if found["now"] == "dead" else self.late)[peer] += 1
            quiet.setdefault(peer, heard)
        elif peer in quiet:
            silence = round(heard - quiet.pop(peer), 2)  # the log's precision: 10 ms
            self.silences.setdefault(peer, []).append(silence)


# --- the watch -------------------------------------------------------------------------------


@dataclass
class Watch:
    """What the poll loop saw: who held the address, how often the loop ran, the load."""

    began: float
    last: frozenset[str] = frozenset({"n1"})
    polls: int = 0
    changes: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    nobody_polls: int = 0
    two_polls: int = 0
    nobody_since: float | None = None
    longest_nobody: float = 0.0
    last_poll: float | None = None
    longest_spacing: float = 0.0
    load: list[float] = field(default_factory=list)

    def holders(self, now: float, held: frozenset[str]) -> None:
        self.polls += 1
        if self.last_poll is not None:
            self.longest_spacing = max(self.longest_spacing, now - self.last_poll)
        self.last_poll = now
        if held != self.last:
            self.changes.append((now - self.began, held))
            self.last = held
        if len(held) > 1:
            self.two_polls += 1
        if held:
            self.end_nobody(now)
        else:
            self.nobody_polls += 1
            if self.nobody_since is None:
                self.nobody_since = now

    def end_nobody(self, now: float) -> None:
        if self.nobody_since is not None:
            self.longest_nobody = max(self.longest_nobody, now - self.nobody_since)
            self.nobody_since = None

    @property
    def moves(self) -> int:
        """Changes of the single holder (n1 -> nobody -> n2 is one move)."""
        holder, moves = "n1", 0
        for _, held in self.changes:
            if len(held) == 1 and holder not in held:
                holder, moves = next(iter(held)), moves + 1
        return moves


def _watch(lab: ClusterLab, seconds: float) -> Watch:
    """Poll every POLL s for ``seconds``: who holds the address; the load average."""
    began = time.monotonic()
    watch = Watch(began)
    deadline, tick, next_load = began + seconds, began, began
    for _ in range(int(seconds / POLL) + 1):
        now = time.monotonic()
        if now >= deadline:
            break
        watch.holders(now, frozenset(lab.holders()))
        if now >= next_load:
            watch.load.append(os.getloadavg()[0])
            next_load += LOAD_EVERY
        tick = max(tick + POLL, time.monotonic())
        time.sleep(max(0.0, tick - time.monotonic()))
    watch.end_nobody(time.monotonic())
    return watch


# --- the runs --------------------------------------------------------------------------------


def _sent(doc: Mapping[str, Any] | None) -> int:
    """Heartbeat datagrams a node has sent (over every transport), from its status."""
    if doc is None:
        return 0
    transports = doc["cluster"]["counters"]["transports"].values()
    return sum(int(t.get("sent", 0)) for t in transports)


def _report(
    case: LossCase,
    watch: Watch,
    counters: Mapping[str, tuple[int, int]],
    events: Mapping[str, LogEvents],
    per_direction: float,
    load: tuple[tuple[float, ...], tuple[float, ...]],
) -> None:
    seen = sum(s for s, _ in counters.values())
    dropped = sum(d for _, d in counters.values())
    p = dropped / seen
    fractions = ", ".join(f"{n} {d}/{s}" for n, (s, d) in counters.items())
    print(f"\nheartbeat loss {case.percent} % for {case.seconds:g} s")
    print(f"  measured drop fraction {p:.4f} (nominal {case.percent / 100:.2f}): {fractions}")
    spacing = (watch.last_poll or watch.began) - watch.began
    print(
        f"  polls: {watch.polls} (every {1000 * spacing / max(1, watch.polls - 1):.1f} ms on "
        f"average, longest spacing {watch.longest_spacing:.3f} s)"
    )
    history = " ".join(f"{t:.2f}s:{'+'.join(sorted(h)) or 'nobody'}" for t, h in watch.changes)
    print(
        f"  false failovers: {len(watch.changes)} holder change(s), {watch.moves} move(s), "
        f"{watch.nobody_polls} poll(s) with nobody (longest {watch.longest_nobody:.3f} s), "
        f"{watch.two_polls} with two; history: {history or 'n1 throughout'}"
    )
    for name, ev in events.items():
        print(
            f"  {name} log: declared dead {dict(ev.dead) or 0}, late {dict(ev.late) or 0}, "
            f"noquorum {ev.noquorum}, acquired {ev.acquired or 0}, released {ev.released or 0}"
        )
    n = round(per_direction)
    _report_silences(events, p, n, case.seconds)
    dead = sum(sum(ev.dead.values()) for ev in events.values())
    for label, q in (("measured", p), ("nominal", case.percent / 100)):
        print(
            f"  expected at the {label} p = {q:.4f}, {n} heartbeats per direction: declared dead "
            f"{DIRECTIONS * runs_at_least(q, DEAD_RUN, n):.3g} (measured {dead}); owner's "
            f"quorum loss, hence moves, {joint_silences(q, FRESH_RUN, n):.3g} (measured "
            f"{watch.moves}); takeover past a live owner {joint_silences(q, DEAD_RUN, n):.2g}"
        )
    samples = watch.load or [0.0]
    print(
        f"  load average (1, 5, 15 min): start {load[0]}, end {load[1]}; 1-min during the run "
        f"{min(samples):.2f}-{max(samples):.2f} (mean {sum(samples) / len(samples):.2f}); "
        f"2 cores, shared with other engineers' test runs"
    )


def quorum_risk(silences: Mapping[str, list[float]], seconds: float) -> float:
    """Expected entries into ``noquorum`` of a node with two peers, from the silences it saw
    in ``seconds``, the two directions taken as independent: each silence of one peer longer
    than the fresh window meets a silence of the other with the share of the time the other
    was past the fresh window."""
    if len(silences) != 2:
        return 0.0
    fresh = DEADTIME - 2 * INTERVAL
    a, b = silences.values()
    return sum(
        sum(s > fresh for s in one) * sum(max(0.0, s - fresh) for s in other) / seconds
        for one, other in ((a, b), (b, a))
    )


def _report_silences(events: Mapping[str, LogEvents], p: float, n: int, seconds: float) -> None:
    """Silences longer than warntime: per direction, by length, as heartbeats lost in a row,
    and the quorum losses they make likely."""
    rows, lost = [], Counter[int]()
    for name, ev in events.items():
        for peer, silences in sorted(ev.silences.items()):
            rows.append(f"{name}<-{peer} {len(silences)} (longest {max(silences):.2f})")
            lost.update(round(s / INTERVAL) - 1 for s in silences)
    every = [s for ev in events.values() for ss in ev.silences.values() for s in ss]
    fresh = DEADTIME - 2 * INTERVAL
    print(
        f"  silences > warntime from the logs: {', '.join(rows) or 'none'}; longest "
        f"{max(every, default=0.0):.2f} s; {sum(s > fresh for s in every)} over the fresh "
        f"window ({fresh:.1f} s), {sum(s > DEADTIME for s in every)} over deadtime"
    )
    top = max(lost, default=DEAD_RUN)
    counted = ", ".join(
        f"{k}: {lost[k]}/{DIRECTIONS * (runs_at_least(p, k, n) - runs_at_least(p, k + 1, n)):.3g}"
        for k in range(2, max(top, DEAD_RUN) + 1)
    )
    print(f"  heartbeats lost in a row (silence / interval - 1), counted/expected: {counted}")
    lengths = Counter(f"{s:.2f}" for s in every)
    print(f"  silences by length (s: count): {dict(sorted(lengths.items())) or 'none'}")
    risk = ", ".join(
        f"{name} {quorum_risk(ev.silences, seconds):.3g} (measured {ev.noquorum})"
        for name, ev in events.items()
    )
    print(f"  entries into noquorum expected from each node's own silences: {risk}")


CASES = [
    pytest.param(LossCase(5, 15.0, steady=True), id="5pct-15s"),
    pytest.param(
        LossCase(5, 120.0, steady=True),
        id="5pct-120s",
        marks=[pytest.mark.slow, pytest.mark.timeout(300)],
    ),
    pytest.param(
        LossCase(20, 120.0, steady=False),
        id="20pct-120s",
        marks=[pytest.mark.slow, pytest.mark.timeout(300)],
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_random_heartbeat_loss(case: LossCase, tmp_path: Path) -> None:
    with _lab(tmp_path, _config) as lab:
        _start_and_settle(lab)
        assert lab.holders() == {"n1"}
        nodes = {name: member.ns for name, member in lab.members.items()}
        before = {name: _status_doc(ns) for name, ns in nodes.items()}
        offsets = {name: m.log.stat().st_size for name, m in lab.members.items()}
        load_start = tuple(round(x, 2) for x in os.getloadavg())
        for ns in nodes.values():
            _add_loss(ns, case.percent, tmp_path)

        watch = _watch(lab, case.seconds)

        counters = {name: _loss_counters(ns) for name, ns in nodes.items()}
        after = {name: _status_doc(ns) for name, ns in nodes.items()}
        load_end = tuple(round(x, 2) for x in os.getloadavg())
        events = {
            name: LogEvents.parse(m.log.read_bytes()[offsets[name] :].decode(errors="replace"))
            for name, m in lab.members.items()
        }
        sent = sum(_sent(after[n]) - _sent(before[n]) for n in nodes)
        _report(case, watch, counters, events, sent / DIRECTIONS, (load_start, load_end))

        for name, member in lab.members.items():
            assert member.process is not None
            assert member.process.poll() is None, f"{name} exited\n{lab.logs()}"
        seen = sum(s for s, _ in counters.values())
        dropped = sum(d for _, d in counters.values())
        p = case.percent / 100
        assert dropped > 0, counters
        spread = SIGMAS * math.sqrt(seen * p * (1 - p)) + 1
        assert abs(dropped - p * seen) <= spread, f"{dropped}/{seen} dropped, nominal {p}"
        assert watch.two_polls == 0, f"two holders seen: {watch.changes}\n{lab.logs()}"
        if case.steady:
            assert watch.changes == [], f"the address moved: {watch.changes}\n{lab.logs()}"
            assert watch.nobody_polls == 0
            assert all(not ev.acquired and not ev.released for ev in events.values()), events
            assert lab.holders() == {"n1"}


# --- the arithmetic and the log reader, without root -----------------------------------------


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
@pytest.mark.parametrize("k", [2, 3, 5])
def test_runs_at_least_is_exact(p: float, k: int) -> None:
    """Against every pattern of 9 heartbeats: the expected number of maximal runs of >= k losses."""
    total = 0.0
    for lost in itertools.product((False, True), repeat=9):
        chance = math.prod(p if x else 1 - p for x in lost)
        lengths = [len(list(run)) for x, run in itertools.groupby(lost) if x]
        total += chance * sum(length >= k for length in lengths)
    assert math.isclose(runs_at_least(p, k, 9), total)


LOG = """\
2026-11-25T17:36:32.926Z WARNING farmnode.cluster: peer n2: alive -> late (silent for 0.50 s)
2026-11-25T17:36:33.426Z WARNING farmnode.cluster: peer n2: late -> dead (silent for 1.00 s)
2026-11-25T17:36:33.430Z INFO    farmnode.cluster: peer n2: active -> noquorum
2026-11-25T17:36:33.627Z INFO    farmnode.cluster: peer n2: dead -> alive (silent for 0.20 s)
2026-11-25T17:36:40.002Z WARNING farmnode.cluster: peer w: alive -> late (silent for 0.50 s)
2026-11-25T17:36:40.010Z INFO    farmnode.cluster: cluster: n1 (member, noquorum, priority 150); \
front: releasing: lost quorum (1 of 3 voters seen)
2026-11-25T17:36:40.011Z INFO    farmnode.cluster: group front: release: \
lost quorum (1 of 3 voters seen)
2026-11-25T17:36:40.020Z INFO    farmnode.cluster: cluster: n1 (member, noquorum, priority 150); \
front: no quorum (1 of 3 voters seen)
2026-11-25T17:36:40.152Z INFO    farmnode.cluster: peer w: late -> alive (silent for 0.04 s)
2026-11-25T17:36:40.160Z INFO    farmnode.cluster: cluster: n1 (member, active, priority 150); \
front: settling (candidacy not yet seen by every peer)
2026-11-25T17:36:41.000Z INFO    farmnode.cluster: group front: acquire: \
highest-ranked candidate; no owner
"""


def test_log_events_reads_deaths_silences_quorum_and_steps() -> None:
    events = LogEvents.parse(LOG)
    assert events.dead == Counter({"n2": 1})
    assert events.late == Counter({"n2": 1, "w": 1})
    assert events.silences == {"n2": [1.0], "w": [0.61]}  # 33.427 - 32.426; 40.112 - 39.502
    assert events.noquorum == 1  # two noquorum status lines in a row: one entry
    assert events.released == ["lost quorum (1 of 3 voters seen)"]
    assert events.acquired == ["highest-ranked candidate; no owner"]
    assert quorum_risk(events.silences, 120.0) == pytest.approx((0.01 + 0.4) / 120.0)
