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

Needs root, ``ip`` and ``keepalived`` (``make bench`` installs it); without root it prints
why and returns 0; without keepalived it measures farmnode alone and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tests.farmnode.netns import Lab, unavailable_reason
from tests.farmnode.test_cluster_lab import (
    HOSTS,
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


class BenchError(RuntimeError):
    """The lab did not reach a state the bench waits for within its bound."""


@dataclass
class Trial:
    seconds: float  # from kill -9 to the standby's first answered connection
    stale: int  # connections the dead owner's stale address still answered meanwhile


# -- the systems under test --------------------------------------------------------------------


class System:
    """One failover system in the lab: start a node, tell when a restarted node is settled."""

    label = ""

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
    label = "farmnode (interval 0.2, deadtime 1.0)"

    def nodes(self) -> tuple[str, ...]:
        return (*NODES, "w")

    def start(self, name: str) -> None:
        self.lab.start(name)

    def settled(self, name: str) -> bool:
        with contextlib.suppress(subprocess.SubprocessError, RuntimeError, ValueError):
            return bool(self.lab.status(name)["cluster"]["state"] == "active")
        return False

    def settle_time(self) -> float:
        return 6 * INTERVAL  # its settle time (4 x interval) and a little more


class Keepalived(System):
    """Debian's keepalived, VRRP only, one instance, unicast to the other node."""

    def __init__(self, lab: ClusterLab, advert_int: float) -> None:
        super().__init__(lab)
        self.advert_int = advert_int
        version = 2 if advert_int >= 1 and advert_int == int(advert_int) else 3
        self.version = version
        self.label = f"keepalived (VRRPv{version}, advert_int {advert_int:g})"
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
    advert_int {self.advert_int:g}
    unicast_src_ip {PREFIX}.{HOSTS[member.name]}
    unicast_peer {{
        {PREFIX}.{HOSTS[peer]}
    }}
    virtual_ipaddress {{
        {VIP}/24 dev {member.dev}
    }}
}}
"""

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


def run_system(
    make: Callable[[ClusterLab], System], trials: int, tmp: Path
) -> tuple[str, list[Trial]]:
    """``trials`` kill -9 trials of one system in a lab of its own; its label and the trials."""
    results: list[Trial] = []
    with _lab(tmp) as lab:
        system = make(lab)
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
def _lab(tmp: Path) -> Iterator[ClusterLab]:
    listeners: list[Responder] = []
    with Lab() as lab:
        built = _build(tmp, _config, lab)
        try:
            listeners.extend(Responder(built.members[n].ns, n, ("0.0.0.0", PORT)) for n in NODES)
            yield built
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
    header = f"{'system':<40}{'trials':>7}{'median s':>10}{'p99 s':>8}{'min s':>8}{'max s':>8}"
    print(header + f"{'stale':>7}")
    for label, trials in results.items():
        seconds = [t.seconds for t in trials]
        cells = (statistics.median(seconds), p99(seconds), min(seconds), max(seconds))
        stale = sum(t.stale for t in trials)
        figures = f"{cells[0]:>10.3f}" + "".join(f"{c:>8.3f}" for c in cells[1:])
        print(f"{label:<40}{len(trials):>7}{figures}{stale:>7}")
    print("(p99 is the nearest rank: the maximum below 100 trials)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover")
    parser.add_argument("--trials", type=int, default=20, help="kill -9 trials per system")
    parser.add_argument(
        "--fast-advert", type=float, default=0.1, help="keepalived's fast advert_int (VRRPv3)"
    )
    parser.add_argument(
        "--only", choices=("farmnode", "keepalived"), help="measure one system only"
    )
    args = parser.parse_args(argv)
    if args.trials < 1 or args.fast_advert <= 0:
        parser.error("--trials must be at least 1 and --fast-advert above 0")
    reason = unavailable_reason()
    if reason is not None:
        print(f"bench.failover: skipped: {reason}")
        return 0
    systems: list[Callable[[ClusterLab], System]] = []
    if args.only != "keepalived":
        systems.append(Farmnode)
    if args.only != "farmnode":
        if os.access(KEEPALIVED, os.X_OK):
            systems.append(lambda lab: Keepalived(lab, 1.0))
            systems.append(lambda lab: Keepalived(lab, args.fast_advert))
        else:
            print("bench.failover: keepalived is missing (make bench installs it): farmnode only")
    results: dict[str, list[Trial]] = {}
    for make in systems:
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
    sys.exit(main(sys.argv[1:]))
