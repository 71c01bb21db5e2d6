"""``python -m bench.failover``: ``kill -9`` of the owner of a floating address, until a
client connects to the standby: farmnode's heartbeat against Debian's keepalived (VRRP).

The lab of ``tests/farmnode/test_cluster_lab.py`` (reused: a bridge namespace as the LAN,
nodes n1 (priority 150) and n2 (priority 100), the witness w, a client; 10.213.70.0/24;
floating address 10.213.70.50/24), built afresh for each system and removed afterwards,
also on failure. In n1 and n2 a listener bound to ``0.0.0.0:7000`` answers every
connection with the node's name.

Systems, each with the floating address as its only moving part that matters here:

- **farmnode** with its default timing (interval 0.2 s, deadtime 1.0 s, initdead 2.0 s:
  the lab's configuration, three voters);
- **keepalived** (VRRP, ``unicast_peer``, one instance holding the address, ``nopreempt``
  like farmnode's ``auto_failback = false``) at ``advert_int 1`` (its default, VRRPv2) and
  at a fast setting (VRRPv3, ``advert_int 0.1``).

One trial: the client reaches the owner; ``kill -9`` of the owner's whole process group
(keepalived's parent and its VRRP child alike, as in a crash); the client tries a TCP
connection to 10.213.70.50:7000 every 10 ms (50 ms timeout each) until one is answered by
the standby; the figure is the time from the kill to that connection. A ``kill -9`` leaves
the address on the dead owner's interface, whose listener still answers: such answers are
counted ("stale") and do not end the trial; the standby's gratuitous ARP moves the client
over. Then the killed node is restarted (for keepalived, its stale address is removed
first, as a reboot would) and the bench waits until one node holds the address, the
restarted one is back as a standby and the client reaches the owner; the next trial kills
that owner.

``--fast-farmnode`` adds farmnode at a fast timing (``--fast-interval``, ``--fast-deadtime``;
0.05 / 0.3 by default) to the trials. ``--loss P`` measures false failovers under random
heartbeat loss instead (``bench/failover_loss.py``).

Needs root, ``ip`` and ``keepalived`` (``make bench`` installs it); without root it prints
why and returns 0; without keepalived it measures farmnode alone and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from farmnode.config import parse_config
from farmnode.errors import ConfigError
from tests.farmnode.netns import Lab, unavailable_reason
from tests.farmnode.test_cluster_lab import (
    DEADTIME,
    HB_PORT,
    HOSTS,
    INITDEAD,
    INTERVAL,
    PREFIX,
    VIP,
    ClusterLab,
    Member,
    Responder,
    _config,
)
from tests.farmnode.test_cluster_lab_more import _build

PORT = 7000
POLL = 0.01  # the client's connection attempts
CONNECT_TIMEOUT = 0.05
TRIAL_BOUND = 15.0  # no trial waits longer for the standby
SETTLE_BOUND = 30.0  # nor for a stable state after the restart
NODES = ("n1", "n2")
PRIORITY = {"n1": 150, "n2": 100}
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
BACKUP_PRIORITY = min(PRIORITY.values())
IPPROTO_VRRP = 112


class BenchError(RuntimeError):
    """The lab did not reach a state the bench waits for within its bound."""


@dataclass(frozen=True, slots=True)
class Timing:
    """farmnode's heartbeat timing in the lab; initdead is twice deadtime (its default)."""

    interval: float = INTERVAL
    deadtime: float = DEADTIME

    @property
    def label(self) -> str:
        return f"farmnode (interval {_seconds(self.interval)}, deadtime {_seconds(self.deadtime)})"

    @property
    def fresh_window(self) -> float:
        """Quorum counts voters heard within this (farmnode/cluster/membership.py)."""
        return max(self.interval, self.deadtime - 2 * self.interval)

    def config(self, name: str, dev: str) -> str:
        """The lab's configuration of node ``name`` at this timing."""
        text = _config(name, dev)
        if (self.interval, self.deadtime) == (INTERVAL, DEADTIME):
            return text
        lab = f"interval = {INTERVAL}\ndeadtime = {DEADTIME}\ninitdead = {INITDEAD}\n"
        if lab not in text:
            raise BenchError(f"the lab's configuration no longer holds {lab!r}")
        ours = f"interval = {self.interval}\ndeadtime = {self.deadtime}\n"
        return text.replace(lab, ours + f"initdead = {2 * self.deadtime}\n")

    def refused(self) -> str | None:
        """Why farmnode's configuration check refuses this timing, or ``None``."""
        try:
            parse_config(tomllib.loads(self.config("n1", "eth0")), "n1.toml", environ={})
        except ConfigError as exc:
            return str(exc)
        return None


def _seconds(value: float) -> str:
    """``1.0``, ``0.3``, ``0.05``: one decimal at least, as the lab's files write them."""
    return f"{value:.1f}" if round(value, 1) == value else f"{value:g}"


@dataclass
class Trial:
    seconds: float  # from kill -9 to the standby's first answered connection
    stale: int  # connections the dead owner's stale address still answered meanwhile


# -- the systems under test --------------------------------------------------------------------


class System:
    """One failover system in the lab: start a node, tell when a restarted node is settled.

    ``heartbeat`` is what its heartbeats are on the wire: (IP protocol, destination port or
    ``None``); ``events``: a pattern for each log line that matters, and what the line
    means (``takeover``: the node takes the address); the pattern's match is shown.
    """

    label = ""
    heartbeat: tuple[int, int | None] = (socket.IPPROTO_UDP, HB_PORT)
    events: tuple[tuple[str, str], ...] = ()  # (regular expression, meaning)

    def __init__(self, lab: ClusterLab) -> None:
        self.lab = lab

    def nodes(self) -> tuple[str, ...]:
        return NODES

    def start(self, name: str) -> None:
        raise NotImplementedError

    def before_restart(self, name: str) -> None:
        """What a reboot of the killed node would do before its daemon starts again."""

    def settled(self, name: str) -> bool:
        """``True`` once the restarted node ``name`` is a standby again."""
        raise NotImplementedError

    def settle_time(self) -> float:
        """Extra seconds to wait after :meth:`settled`, for the state to hold."""
        raise NotImplementedError


class Farmnode(System):
    events = (
        (r"group front: acquire: .*", "takeover"),
        (r"group front: release: .*", "release"),
        (r"peer \S+: \w+ -> dead", "peer declared dead"),
    )

    def __init__(self, lab: ClusterLab, timing: Timing = Timing()) -> None:
        super().__init__(lab)
        self.timing = timing
        self.label = timing.label

    def nodes(self) -> tuple[str, ...]:
        return (*NODES, "w")

    def start(self, name: str) -> None:
        self.lab.start(name)

    def settled(self, name: str) -> bool:
        with contextlib.suppress(subprocess.SubprocessError, RuntimeError, ValueError):
            return bool(self.lab.status(name)["cluster"]["state"] == "active")
        return False

    def settle_time(self) -> float:
        return 6 * self.timing.interval  # its settle time (4 x interval) and a little more


class Keepalived(System):
    """Debian's keepalived, VRRP only, one instance, unicast to the other node.

    ``down_adverts`` is keepalived's ``down_timer_adverts`` (a deviation from the VRRP RFCs,
    which fix it at 3): the backup takes over after that many advert intervals plus skew.
    """

    heartbeat = (IPPROTO_VRRP, None)
    events = (("Entering MASTER STATE", "takeover"), ("Entering BACKUP STATE", "release"))

    def __init__(self, lab: ClusterLab, advert_int: float, down_adverts: int = 3) -> None:
        super().__init__(lab)
        self.advert_int = advert_int
        self.down_adverts = down_adverts
        version = 2 if advert_int >= 1 and advert_int == int(advert_int) else 3
        self.version = version
        self.label = f"keepalived (VRRPv{version}, advert_int {advert_int:g})"
        if down_adverts != 3:
            self.label = (
                f"keepalived (advert_int {advert_int:g}, down_timer_adverts {down_adverts})"
            )
        self.started: dict[str, float] = {}

    def config(self, member: Member) -> str:
        peer = next(n for n in NODES if n != member.name)
        return f"""global_defs {{
    router_id {member.name}
    vrrp_version {self.version}
    script_user root
}}
vrrp_instance front {{
    state BACKUP
    nopreempt
    interface {member.dev}
    virtual_router_id 51
    priority {PRIORITY[member.name]}
    advert_int {self.advert_int:g}{self._down_timer()}
    unicast_src_ip {PREFIX}.{HOSTS[member.name]}
    unicast_peer {{
        {PREFIX}.{HOSTS[peer]}
    }}
    virtual_ipaddress {{
        {VIP}/24 dev {member.dev}
    }}
}}
"""

    def _down_timer(self) -> str:
        """The ``down_timer_adverts`` line, only where it is not the RFCs' 3."""
        return "" if self.down_adverts == 3 else f"\n    down_timer_adverts {self.down_adverts}"

    def start(self, name: str) -> None:
        member = self.lab.members[name]
        base = self.lab.tmp / f"ka-{name}"
        conf = base.with_suffix(".conf")
        conf.write_text(self.config(member))
        out = member.log.open("a")
        member.logs.append(out)
        argv = [KEEPALIVED, "-n", "-l", "-D", "-G", "-P", "-f", str(conf)]
        argv += ["-p", f"{base}.pid", "-r", f"{base}-vrrp.pid", "-i", name]
        member.process = member.ns.popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.started[name] = time.monotonic()

    def before_restart(self, name: str) -> None:
        member = self.lab.members[name]
        with contextlib.suppress(RuntimeError):
            member.ns.ip("addr", "del", f"{VIP}/24", "dev", member.dev)
        for pidfile in self.lab.tmp.glob(f"ka-{name}*.pid"):  # else: "already running"
            pidfile.unlink()

    def settled(self, name: str) -> bool:
        process = self.lab.members[name].process
        if process is None or process.poll() is not None:
            raise BenchError(f"keepalived on {name} exited\n{logs(self.lab)}")
        # it starts as a BACKUP (nopreempt) and stays one once it hears the owner, which
        # advertises every advert_int: two of those and a margin for its start-up
        return time.monotonic() - self.started[name] > 2 * self.advert_int + 0.5

    def settle_time(self) -> float:
        return 0.5

    @property
    def master_down(self) -> float:
        """The backup's master-down interval: down_timer_adverts (3) x advert_int plus the
        skew time, (256 - priority) / 256 x advert_int."""
        return (self.down_adverts + (256 - BACKUP_PRIORITY) / 256) * self.advert_int


# -- the lab and the trials --------------------------------------------------------------------


def logs(lab: ClusterLab) -> str:
    """The tails of the daemons' logs (a node that ran nothing has none)."""
    return "\n".join(
        f"--- {name}\n{member.log.read_text()[-3000:]}"
        for name, member in lab.members.items()
        if member.log.exists()
    )


def wait_for(what: str, ready: Callable[[], bool], lab: ClusterLab, bound: float) -> None:
    began = time.monotonic()
    while not ready():
        if time.monotonic() - began > bound:
            raise BenchError(f"not within {bound} s: {what}\n{logs(lab)}")
        time.sleep(0.05)


def ask(lab: ClusterLab) -> bytes | None:
    """The name of the node whose listener answered on the floating address, or ``None``."""
    try:
        with lab.client.connect((VIP, PORT), timeout=0.2) as sock:
            return sock.recv(16) or None
    except OSError:
        return None


def first_answer(standby: bytes, bound: float) -> tuple[float, int]:
    """Run inside the client's namespace: try a connection every POLL s until ``standby``
    answers; its ``time.monotonic()`` and the stale answers before it."""
    stale = 0
    began = time.monotonic()
    while time.monotonic() - began < bound:
        tick = time.monotonic()
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect((VIP, PORT))
            answered = time.monotonic()
            name = sock.recv(16)
            if name == standby:
                return answered, stale
            stale += 1
        time.sleep(max(0.0, tick + POLL - time.monotonic()))
    raise BenchError(f"the standby {standby.decode()} did not answer within {bound} s")


def owner_of(lab: ClusterLab) -> str:
    held = lab.holders()
    if len(held) != 1:
        raise BenchError(f"expected one holder of {VIP}, got {sorted(held)}")
    return held.pop()


def stable(system: System, restarted: str | None) -> str:
    """Wait until one node holds the address, ``restarted`` is a standby, the client
    reaches the owner; the owner's name."""
    lab = system.lab
    wait_for("one node holds the address", lambda: len(lab.holders()) == 1, lab, SETTLE_BOUND)
    if restarted is not None:
        wait_for(f"{restarted} is a standby", lambda: system.settled(restarted), lab, SETTLE_BOUND)
    time.sleep(system.settle_time())
    owner = owner_of(lab)
    wait_for(f"the client reaches {owner}", lambda: ask(lab) == owner.encode(), lab, SETTLE_BOUND)
    return owner


def trial(system: System, owner: str) -> Trial:
    lab = system.lab
    standby = next(n for n in NODES if n != owner).encode()
    process = lab.members[owner].process
    if process is None:
        raise BenchError(f"{owner} is not running")
    killed = time.monotonic()
    os.killpg(process.pid, signal.SIGKILL)
    try:
        answered, stale = lab.client.call(lambda: first_answer(standby, TRIAL_BOUND))
    except BenchError as exc:
        raise BenchError(f"{exc}; holders {sorted(lab.holders())}\n{logs(lab)}") from exc
    process.wait(timeout=10)
    return Trial(answered - killed, stale)


#: How to build one system in a lab, and the farmnode configuration the lab writes.
Maker = tuple[Callable[[ClusterLab], System], Callable[[str, str], str]]


def run_system(make: Maker, trials: int, tmp: Path) -> tuple[str, list[Trial]]:
    """``trials`` kill -9 trials of one system in a lab of its own; its label and the trials."""
    results: list[Trial] = []
    with lab_for(make, tmp) as (_, system):
        for name in system.nodes():
            system.start(name)
        owner = stable(system, None)
        for number in range(trials):
            result = trial(system, owner)
            results.append(result)
            print(
                f"  {system.label} trial {number + 1}: {owner} killed, "
                f"{result.seconds:.3f} s ({result.stale} stale answers)",
                flush=True,
            )
            system.before_restart(owner)
            system.start(owner)
            owner = stable(system, owner)
    return system.label, results


@contextlib.contextmanager
def lab_for(make: Maker, tmp: Path) -> Iterator[tuple[ClusterLab, System]]:
    """A lab (its farmnode files from ``make``) with the listeners, and the system in it;
    nothing started yet. Removed afterwards, also on failure."""
    listeners: list[Responder] = []
    build, config = make
    with Lab() as lab:
        built = _build(tmp, config, lab)
        try:
            listeners.extend(Responder(built.members[n].ns, n, ("0.0.0.0", PORT)) for n in NODES)
            yield built, build(built)
        finally:
            lab.close()  # the daemons first, while their namespaces exist
            for listener in listeners:
                listener.close()
            for member in built.members.values():
                for out in member.logs:
                    out.close()


# -- reporting ---------------------------------------------------------------------------------


def p99(values: list[float]) -> float:
    """The nearest-rank 99th percentile (the maximum below 100 values)."""
    ordered = sorted(values)
    rank = max(1, -(-99 * len(ordered) // 100))
    return ordered[rank - 1]


def report(results: dict[str, list[Trial]]) -> None:
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    print(f"\nkill -9 of the owner -> client's first connection on the standby ({day}):")
    width = max([40, *(len(label) + 1 for label in results)])
    header = f"{'system':<{width}}{'trials':>7}{'median s':>10}{'p99 s':>8}{'min s':>8}{'max s':>8}"
    print(header + f"{'stale':>7}")
    for label, trials in results.items():
        seconds = [t.seconds for t in trials]
        cells = (statistics.median(seconds), p99(seconds), min(seconds), max(seconds))
        stale = sum(t.stale for t in trials)
        figures = f"{cells[0]:>10.3f}" + "".join(f"{c:>8.3f}" for c in cells[1:])
        print(f"{label:<{width}}{len(trials):>7}{figures}{stale:>7}")
    print("(p99 is the nearest rank: the maximum below 100 trials)")


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--trials", type=int, default=20, help="kill -9 trials per system")
    parser.add_argument(
        "--fast-advert", type=float, default=0.1, help="keepalived's fast advert_int (VRRPv3)"
    )
    parser.add_argument(
        "--only", choices=("farmnode", "keepalived"), help="measure one system only"
    )
    parser.add_argument(
        "--fast-farmnode",
        action="store_true",
        help="kill -9 trials of farmnode at the fast timing too (always measured with --loss)",
    )
    parser.add_argument("--fast-interval", type=float, default=0.05, help="the fast interval")
    parser.add_argument("--fast-deadtime", type=float, default=0.3, help="the fast deadtime")
    parser.add_argument(
        "--loss",
        type=int,
        metavar="PERCENT",
        help="instead of kill -9 trials: drop PERCENT %% of the heartbeats at random and "
        "count false failovers (bench/failover_loss.py)",
    )
    parser.add_argument(
        "--minutes", type=float, default=2.0, help="with --loss: minutes per system"
    )
    parser.add_argument(
        "--tolerant-keepalived",
        metavar="ADVERT:N",
        action="append",
        default=[],
        help="also keepalived at advert_int ADVERT with down_timer_adverts N (e.g. 0.04:8; "
        "may be repeated)",
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or args.fast_advert <= 0:
        parser.error("--trials must be at least 1 and --fast-advert above 0")
    if args.loss is not None and not 0 <= args.loss <= 100:
        parser.error(f"--loss must be a percentage from 0 to 100, got {args.loss}")
    if not 0 < args.minutes <= 60:
        parser.error(f"--minutes must be above 0 and at most 60, got {args.minutes:g}")
    refused = Timing(args.fast_interval, args.fast_deadtime).refused()
    if refused is not None:
        parser.error(f"--fast-interval/--fast-deadtime: farmnode refuses them: {refused}")
    args.tolerant = []
    for text in args.tolerant_keepalived:
        advert, _, count = text.partition(":")
        try:
            setting = (float(advert), int(count))
        except ValueError:
            parser.error(f"--tolerant-keepalived: ADVERT:N, got {text!r}")
        if not (setting[0] >= 0.01 and 1 <= setting[1] <= 100):
            parser.error(f"--tolerant-keepalived: advert_int >= 0.01, N 1 to 100, got {text!r}")
        args.tolerant.append(setting)
    return args


def systems(args: argparse.Namespace) -> list[Maker]:
    """The systems to measure, in order: farmnode (defaults, then fast), keepalived (1, fast)."""
    makers: list[Maker] = []
    if args.only != "keepalived":
        makers.append((Farmnode, Timing().config))
        if args.fast_farmnode or args.loss is not None:
            fast = Timing(args.fast_interval, args.fast_deadtime)
            makers.append((lambda lab: Farmnode(lab, fast), fast.config))
    if args.only != "farmnode":
        if os.access(KEEPALIVED, os.X_OK):
            makers.append((lambda lab: Keepalived(lab, 1.0), _config))
            makers.append((lambda lab: Keepalived(lab, args.fast_advert), _config))
            makers.extend((_keepalived(a, n), _config) for a, n in args.tolerant)
        else:
            print("bench.failover: keepalived is missing (make bench installs it): farmnode only")
    return makers


def _keepalived(advert_int: float, down_adverts: int) -> Callable[[ClusterLab], System]:
    return lambda lab: Keepalived(lab, advert_int, down_adverts)


def main(argv: list[str]) -> int:
    args = arguments(argv)
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench.failover: skipped: {reason}")
        return 0
    makers = systems(args)
    if args.loss is not None:
        from bench import failover_loss  # here: it imports this module

        return failover_loss.run(makers, args.loss, args.minutes)
    results: dict[str, list[Trial]] = {}
    for make in makers:
        with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
            try:
                label, trials = run_system(make, args.trials, Path(tmp))
            except BenchError as exc:
                print(f"bench.failover: {exc}")
                report(results)
                return 1
            results[label] = trials
    report(results)
    return 0


if __name__ == "__main__":
    # run as bench.failover, not __main__: bench.failover_loss imports that module, and its
    # classes (Farmnode, BenchError...) must be the ones the systems are made of
    sys.exit(importlib.import_module("bench.failover").main(sys.argv[1:]))
