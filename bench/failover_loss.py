"""``python -m bench.failover --loss P [--minutes M]``: false failovers when a share of the
heartbeats is lost at random, farmnode against keepalived, in the lab of ``bench.failover``.

For each system (farmnode at its defaults and at the fast timing; keepalived at
``advert_int 1``, at the fast ``advert_int`` and at each ``--tolerant-keepalived`` setting)
a lab of its own is built, the system is started and left to settle with one owner of the
floating address; then every namespace where the system runs gets, on input::

    table inet bench_loss {
        chain input {
            type filter hook input priority 0; policy accept;
            MATCH counter
            MATCH numgen random mod 100 < P counter drop
        }
    }

where MATCH is ``udp dport 6940`` (farmnode's heartbeats) or ``meta l4proto 112`` (VRRP).
The first counter sees every heartbeat that reaches a node, the second the dropped ones.
For ``M`` minutes the bench asks every node's namespace over netlink, every 50 ms, whether
it holds the floating address, and counts holder changes between polls, moves (the one
holder is another node than the last one), polls with two holders (split brain) and polls
with none. Beside the poll, over the same window:

- the kernel's address events (netlink, RTMGRP_IPV4_IFADDR) in every node namespace: each
  addition and removal of the address, exactly, also those shorter than a poll period;
  from them the additions and the time during which two nodes held the address;
- the daemons' logs: takeovers (farmnode ``group front: acquire``, keepalived ``Entering
  MASTER STATE``), releases with their reasons, farmnode's peers declared dead;
- a packet socket on the LAN bridge: when each node sent each heartbeat (kernel
  timestamps), so a takeover that follows a gap in *sending* (a scheduling stall of a
  loaded machine, not a lost packet) shows as such.

Beside the figures, what independent losses predict (:func:`expected`). Every loop is
bounded in time; the lab is removed afterwards, also on failure.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import select
import socket
import struct
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.failover import (
    BenchError,
    Farmnode,
    Keepalived,
    Maker,
    System,
    lab_for,
    stable,
)
from tests.farmnode.netns import Namespace
from tests.farmnode.test_cluster_lab import HOSTS, PREFIX, VIP, ClusterLab

POLL = 0.05
TABLE = "bench_loss"
ETH_P_ALL, ETH_P_IP = 0x0003, 0x0800
SO_TIMESTAMPNS = 35  # linux/asm-generic/socket.h; also its SCM_ type
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTMGRP_IPV4_IFADDR = 0x10
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
IFA_LOCAL = 2
NAMES = {socket.inet_aton(f"{PREFIX}.{host}"): name for name, host in HOSTS.items()}


# -- nftables ----------------------------------------------------------------------------------


def match(system: System) -> str:
    """The nft match for the system's heartbeats."""
    proto, port = system.heartbeat
    return f"udp dport {port}" if proto == socket.IPPROTO_UDP else f"meta l4proto {proto}"


def add_loss(ns: Namespace, system: System, percent: int, tmp: Path) -> None:
    rule = match(system)
    path = tmp / f"loss-{ns.role}.nft"
    path.write_text(f"""table inet {TABLE} {{
    chain input {{
        type filter hook input priority 0; policy accept;
        {rule} counter
        {rule} numgen random mod 100 < {percent} counter drop
    }}
}}
""")
    ns.run("nft", "-f", str(path))


def counters(ns: Namespace) -> tuple[int, int]:
    """(heartbeats that reached the node, heartbeats dropped) from the table's counters."""
    doc = json.loads(ns.run("nft", "-j", "list", "table", "inet", TABLE))
    seen = dropped = -1
    for item in doc["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        packets = [int(e["counter"]["packets"]) for e in exprs if "counter" in e]
        if packets and any("drop" in e for e in exprs):
            dropped = packets[0]
        elif packets:
            seen = packets[0]
    if seen < 0 or dropped < 0:
        raise BenchError(f"{ns.name}: table inet {TABLE} lacks its two counters: {doc}")
    return seen, dropped


# -- who holds the address: netlink, cheap enough for a 50 ms poll ------------------------------


def _netlink(ns: Namespace) -> socket.socket:
    """A NETLINK_ROUTE socket in ``ns``."""
    return ns.call(lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE))


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence, payload) of each netlink message in ``data``."""
    offset = 0
    while offset + 16 <= len(data):
        length, kind, _, seq, _ = struct.unpack_from("=LHHLL", data, offset)
        yield kind, seq, data[offset + 16 : offset + max(length, 16)]
        offset += (max(length, 16) + 3) & ~3


class AddressWatch:
    """One NETLINK_ROUTE socket per node namespace; :meth:`held` dumps their IPv4 addresses."""

    def __init__(self, lab: ClusterLab) -> None:
        self.vip = socket.inet_aton(VIP)
        self.seq = 0
        self.socks: dict[str, socket.socket] = {}
        for name, member in lab.members.items():
            sock = _netlink(member.ns)
            sock.settimeout(2.0)
            self.socks[name] = sock

    def close(self) -> None:
        for sock in self.socks.values():
            sock.close()

    def held(self) -> frozenset[str]:
        return frozenset(name for name, sock in self.socks.items() if self.vip in self._dump(sock))

    def _dump(self, sock: socket.socket) -> set[bytes]:
        self.seq += 1
        header = struct.pack("=LHHLL", 24, RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0)
        sock.send(header + struct.pack("=BBBBI", socket.AF_INET, 0, 0, 0, 0))
        found: set[bytes] = set()
        for _ in range(1000):  # a dump of a few addresses is one or two datagrams
            for kind, seq, payload in _messages(sock.recv(65536)):
                if seq != self.seq:
                    continue
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    raise BenchError(f"netlink address dump failed: {payload[:40]!r}")
                if kind == RTM_NEWADDR:
                    found |= _locals(payload[8:])  # after the ifaddrmsg
        raise BenchError("netlink address dump did not end")


class AddressEvents:
    """Every addition and removal of the floating address in the node namespaces, as the
    kernel announces them (RTMGRP_IPV4_IFADDR): exact, where a poll may miss a short one."""

    def __init__(self, lab: ClusterLab) -> None:
        self.vip = socket.inet_aton(VIP)
        self.socks: dict[socket.socket, str] = {}
        for name, member in lab.members.items():
            sock = _netlink(member.ns)
            sock.bind((0, RTMGRP_IPV4_IFADDR))
            sock.setblocking(False)
            self.socks[sock] = name
        self.seen: list[tuple[float, str, bool]] = []  # (monotonic, node, added)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="address-events", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()

    def _run(self) -> None:
        while not self.done.is_set():
            ready, _, _ = select.select(list(self.socks), [], [], 0.2)
            at = time.monotonic()
            for sock in ready:
                with contextlib.suppress(BlockingIOError):
                    for kind, _, payload in _messages(sock.recv(65536)):
                        if kind in (RTM_NEWADDR, RTM_DELADDR) and self.vip in _locals(payload[8:]):
                            self.seen.append((at, self.socks[sock], kind == RTM_NEWADDR))


def _locals(attributes: bytes) -> set[bytes]:
    """The IFA_LOCAL values among an ifaddrmsg's attributes."""
    found = set()
    at = 0
    while at + 4 <= len(attributes):
        size, kind = struct.unpack_from("=HH", attributes, at)
        if size < 4:
            break
        if kind == IFA_LOCAL:
            found.add(attributes[at + 4 : at + size])
        at += (size + 3) & ~3
    return found


# -- when each node sent its heartbeats: a packet socket on the LAN bridge ----------------------


class Sniffer:
    """Records, per sending node, the kernel time (as ``time.monotonic()``) of every heartbeat
    it put on the LAN, seen where it enters the bridge."""

    def __init__(self, lab: ClusterLab, system: System) -> None:
        lan = next(ns for ns in lab.lab.namespaces if ns.role == "lan")
        self.proto, self.port = system.heartbeat
        self.sock = lan.call(
            lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        )
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.2)
        self.sent: dict[str, list[float]] = {name: [] for name in HOSTS}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sniffer", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                frame, ancillary, _, address = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            if address[2] == socket.PACKET_OUTGOING or not address[0].startswith("p-"):
                continue  # each frame once: where it enters the bridge from its sender
            sender = self._sender(frame)
            if sender is not None:
                self.sent[sender].append(_monotonic(ancillary))

    def _sender(self, frame: bytes) -> str | None:
        if len(frame) < 34 or int.from_bytes(frame[12:14]) != ETH_P_IP or frame[23] != self.proto:
            return None
        if self.port is not None:
            ihl = (frame[14] & 0x0F) * 4
            if frame[14 + ihl + 2 : 14 + ihl + 4] != self.port.to_bytes(2):
                return None
        return NAMES.get(frame[26:30])

    def longest_gap(self, name: str, since: float, until: float) -> float:
        """The longest time between two heartbeats ``name`` sent within [since, until]."""
        times = [t for t in self.sent[name] if since <= t <= until]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def _monotonic(ancillary: list[tuple[int, int, bytes]]) -> float:
    """The frame's kernel receive time (CLOCK_REALTIME) on the ``time.monotonic()`` scale."""
    offset = time.time() - time.monotonic()
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack_from("=qq", data)
            return float(seconds + nanoseconds / 1e9 - offset)
    return time.monotonic()


# -- what independent losses predict ------------------------------------------------------------


def runs_at_least(n: float, k: int, p: float) -> float:
    """Expected runs of at least ``k`` losses in a row among ``n`` heartbeats, each lost
    independently with probability ``p``."""
    return p**k * (1 + max(0.0, n - k) * (1 - p)) if n >= k else 0.0


def joint_runs(n: float, k: int, p: float) -> float:
    """Expected episodes in which two directions (``n`` heartbeats each, independent phases)
    are both in a run of at least ``k`` losses: one enters such a run, probability
    ``(1 - p) p^k`` per heartbeat, while the other is in one, ``p^k``; either way round."""
    return 2 * n * (1 - p) * p ** (2 * k)


@dataclass(frozen=True, slots=True)
class Expected:
    takeovers: float  # the model's expected false takeovers in the window
    edge: float  # an upper bound: see expected()
    why: str


def expected(system: System, p: float, seconds: float) -> Expected:
    """False takeovers that independent losses ``p`` predict in ``seconds``.

    keepalived: the backup takes over when it has heard no advert for its master-down
    interval (``down_timer_adverts``, 3 by the RFCs, x advert_int + skew, the skew 0.61 x
    advert_int at priority 100): as many lost adverts in a row from the master. farmnode
    (three voters): the owner releases when neither peer was heard within the fresh window
    (``deadtime - 2 x interval``: k = 3 heartbeats at the defaults, 4 at 0.05 / 0.3), and
    the standby then takes over; or the standby and the witness both miss the owner for
    ``deadtime`` (``deadtime / interval`` in a row on each). ``edge`` is an upper bound:
    the same if on one side the heartbeat after k - 1 losses always came too late (a node
    wakes 2 ms after a peer's window lapses; heartbeats go out one interval +- 2 ms apart, so
    only a small share of such runs comes that late).
    """
    if isinstance(system, Keepalived):
        n = seconds / system.advert_int
        k = math.floor(system.master_down / system.advert_int + 1e-9)
        rate = runs_at_least(n, k, p)
        return Expected(rate, rate, f"{k} adverts in a row, n = {n:.0f}")
    if isinstance(system, Farmnode):
        t = system.timing
        n = seconds / t.interval
        fresh = round(t.fresh_window / t.interval)
        dead = round(t.deadtime / t.interval)
        rate = joint_runs(n, fresh, p) + joint_runs(n, dead, p)
        edge = 2 * n * (1 - p) * p ** (2 * fresh - 1) + joint_runs(n, dead, p)
        return Expected(rate, edge, f"both peers {fresh} in a row, n = {n:.0f} per direction")
    raise BenchError(f"no model for {system.label}")


# -- one system ---------------------------------------------------------------------------------


@dataclass
class LossRun:
    label: str
    started: float = 0.0  # time.monotonic() when the loss began
    seconds: float = 0.0
    polls: int = 0
    longest_poll_gap: float = 0.0  # the bench's own stalls show here
    changes: int = 0  # the set of holders differs from the poll before
    moves: int = 0  # the one holder is another node than the one holder before
    two: int = 0  # polls with two holders
    none: int = 0  # polls with no holder
    adds: int = 0  # the address added to a node (netlink events)
    two_seconds: float = 0.0  # time with two holders (netlink events)
    seen: int = 0  # heartbeats that reached a node's input (all nodes)
    dropped: int = 0
    takeovers: int = 0  # from the logs
    reasons: Counter[str] = field(default_factory=Counter)
    events: list[str] = field(default_factory=list)
    longest_send_gap: dict[str, float] = field(default_factory=dict)
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end
    model: Expected | None = None

    @property
    def loss(self) -> float:
        return self.dropped / self.seen if self.seen else 0.0


@dataclass
class Probes:
    """What watches the lab during a run: the poll, the address events, the sniffer."""

    watch: AddressWatch
    events: AddressEvents
    sniffer: Sniffer


def measure(make: Maker, percent: int, minutes: float, tmp: Path) -> LossRun:
    """One system in a lab of its own: settle, then ``percent`` loss for ``minutes``."""
    with lab_for(make, tmp) as (lab, system):
        for name in system.nodes():
            system.start(name)
        stable(system, None)
        with contextlib.ExitStack() as stack:
            watch = AddressWatch(lab)
            stack.callback(watch.close)
            events = AddressEvents(lab)
            stack.callback(events.close)
            sniffer = Sniffer(lab, system)
            stack.callback(sniffer.close)
            if watch.held() != lab.holders():
                raise BenchError(f"netlink sees {set(watch.held())}, ip sees {lab.holders()}")
            return _window(system, Probes(watch, events, sniffer), percent, minutes * 60, tmp)


def _window(system: System, probes: Probes, percent: int, seconds: float, tmp: Path) -> LossRun:
    lab = system.lab
    run = LossRun(system.label)
    offsets = {name: m.log.stat().st_size for name, m in lab.members.items() if m.log.exists()}
    owner = probes.watch.held()
    for name in system.nodes():
        add_loss(lab.members[name].ns, system, percent, tmp)
    load_before = os.getloadavg()[0]
    _poll(probes.watch, seconds, run)
    run.load = (load_before, os.getloadavg()[0])
    for name in system.nodes():
        seen, dropped = counters(lab.members[name].ns)
        run.seen += seen
        run.dropped += dropped
    _read_logs(system, offsets, run)
    _replay(system, probes, owner, run)
    end = run.started + run.seconds
    run.longest_send_gap = {
        name: probes.sniffer.longest_gap(name, run.started, end) for name in _senders(system, owner)
    }
    run.model = expected(system, run.loss, run.seconds)
    return run


def _replay(system: System, probes: Probes, owner: frozenset[str], run: LossRun) -> None:
    """Walk the address events of the window: additions, time with two holders, and for
    each addition the longest send gap of the heartbeat senders before it."""
    end = run.started + run.seconds
    span = 2 * _threshold(system)
    held, since = set(owner), run.started
    for at, node, added in list(probes.events.seen):
        if not run.started <= at <= end:
            continue
        if len(held) >= 2:
            run.two_seconds += at - since
        before = frozenset(held)
        if added:
            held.add(node)
            run.adds += 1
        else:
            held.discard(node)
        since = at
        line = f"{at - run.started:7.2f} s: {node} {'adds' if added else 'removes'} the address"
        if added:
            gaps = ", ".join(
                f"{name} {probes.sniffer.longest_gap(name, at - span, at):.3f}"
                for name in _senders(system, before)
            )
            line += f" (longest send gap in the {span:.2f} s before: {gaps or '-'})"
        run.events.append(f"{line}; holders {_names(frozenset(held))}")
    if len(held) >= 2:
        run.two_seconds += end - since


def _senders(system: System, holders: frozenset[str]) -> tuple[str, ...]:
    """Who sends heartbeats all the time: every farmnode node; in VRRP only the master."""
    return system.nodes() if isinstance(system, Farmnode) else tuple(sorted(holders))


def _poll(watch: AddressWatch, seconds: float, run: LossRun) -> None:
    """Ask who holds the address every POLL s for ``seconds``; count into ``run``."""
    run.started = last_poll = tick = time.monotonic()
    held = watch.held()
    owner = next(iter(held)) if len(held) == 1 else None
    while (now := time.monotonic()) < run.started + seconds:
        run.longest_poll_gap = max(run.longest_poll_gap, now - last_poll)
        last_poll = now
        current = watch.held()
        run.polls += 1
        run.two += len(current) >= 2
        run.none += not current
        run.changes += current != held
        held = current
        if len(current) == 1:
            single = next(iter(current))
            run.moves += owner is not None and single != owner
            owner = single
        tick = max(tick + POLL, time.monotonic())
        time.sleep(max(0.0, tick - time.monotonic()))
    run.seconds = time.monotonic() - run.started


_NUMBERS = re.compile(r"\d+(\.\d+)?")


def _read_logs(system: System, offsets: dict[str, int], run: LossRun) -> None:
    """Count the log lines of ``system.events`` the nodes wrote since ``offsets`` (each
    match with its numbers as N): takeovers, releases, farmnode's peers declared dead."""
    patterns = [(re.compile(pattern), what) for pattern, what in system.events]
    for name in system.nodes():
        member = system.lab.members[name]
        with member.log.open("rb") as log:
            log.seek(offsets.get(name, 0))
            text = log.read().decode(errors="replace")
        for line in text.splitlines():
            for pattern, what in patterns:
                found = pattern.search(line)
                if found is not None:
                    run.reasons[f"{name} {what}: {_NUMBERS.sub('N', found.group())}"] += 1
                    run.takeovers += what == "takeover"


def _threshold(system: System) -> float:
    """The silence after which the system's standby takes over."""
    if isinstance(system, Keepalived):
        return system.master_down
    if isinstance(system, Farmnode):
        return system.timing.deadtime
    raise BenchError(f"no threshold for {system.label}")


def _names(held: frozenset[str]) -> str:
    return "+".join(sorted(held)) or "nobody"


# -- all systems --------------------------------------------------------------------------------


def report(results: list[LossRun], percent: int, minutes: float) -> None:
    print(
        f"\n{percent} % of the heartbeats dropped at random on input, {minutes:g} min per "
        "system. takeovers: logged; adds: the address added (netlink events); expected: "
        "independent losses; moves/changes/two/none: the 50 ms polls; two s: time with two "
        "holders (netlink events); load: 1-minute load average at the start/end:"
    )
    width = max([40, *(len(r.label) + 1 for r in results)])
    print(
        f"{'system':<{width}}{'drop %':>7}{'takeovers':>10}{'adds':>5}{'expected':>17}"
        f"{'moves':>6}{'changes':>8}{'two':>5}{'none':>5}{'two s':>7}{'polls':>6}{'load':>10}"
    )
    for r in results:
        print(
            f"{r.label:<{width}}{100 * r.loss:>7.2f}{r.takeovers:>10}{r.adds:>5}"
            f"{_guess(r.model):>17}{r.moves:>6}{r.changes:>8}{r.two:>5}{r.none:>5}"
            f"{r.two_seconds:>7.2f}{r.polls:>6}{f'{r.load[0]:.2f}/{r.load[1]:.2f}':>10}"
        )
    for r in results:
        gaps = ", ".join(f"{n} {g:.3f}" for n, g in r.longest_send_gap.items())
        print(f"\n{r.label}: {r.seconds:.1f} s, {r.dropped} of {r.seen} heartbeats dropped")
        if r.model is not None:
            print(f"  model: {r.model.why}")
        print(f"  longest send gap (heartbeat senders; VRRP: the master): {gaps} s")
        print(f"  longest gap between two polls: {r.longest_poll_gap:.3f} s")
        for reason, count in sorted(r.reasons.items()):
            print(f"  log: {count} x {reason}")
        for event in r.events[:40]:
            print(f"  {event}")
        if len(r.events) > 40:
            print(f"  ... and {len(r.events) - 40} more address events")


def _guess(model: Expected | None) -> str:
    """The model's expectation, ``low-edge`` where the edge case differs."""
    if model is None:
        return "-"
    if model.edge == model.takeovers:
        return f"{model.takeovers:.2g}"
    return f"{model.takeovers:.2g}-{model.edge:.2g}"


def run(makers: list[Maker], percent: int, minutes: float) -> int:
    """Measure every system of ``makers``; print the table; 0, or 1 when a lab failed."""
    results: list[LossRun] = []
    for make in makers:
        with tempfile.TemporaryDirectory(prefix="bench-failover-loss-") as tmp:
            try:
                result = measure(make, percent, minutes, Path(tmp))
            except BenchError as exc:
                print(f"bench.failover --loss: {exc}")
                report(results, percent, minutes)
                return 1
            results.append(result)
            print(f"  {result.label}: done ({result.takeovers} takeovers)", flush=True)
    report(results, percent, minutes)
    return 0
