"""The nftables data plane: the kernel switches, farmnode renders and applies the rules.

For each virtual service farmnode renders DNAT rules into one IPv4 table per node
(``table ip farmnode`` by default) and applies them with ``nft -f -``: one file, one atomic
transaction. Conntrack does the rest: only the first packet of a connection (or UDP flow)
meets the rules, every later packet follows the NAT binding conntrack keeps, so all packets
of a TCP connection go to one server, and replacing the rules never moves or drops an
established connection.

What one service owns in the table (``NAME`` is the service name)::

    chain NAME-prerouting   nat, hook prerouting:  VIP:PORT from outside -> a real server
    chain NAME-output       nat, hook output:      VIP:PORT from this node -> a real server
    chain NAME-input        filter, hook input:    new VIP:PORT connections no DNAT took
    chain NAME-postrouting  nat, hook postrouting: masquerade (only with ``snat=True``)

The map of a rule is rendered from :meth:`VirtualService.eligible` (available real servers,
else the fallback): ``rr`` and ``wrr`` are ``numgen inc mod N map {...}`` (wrr repeats each
server by its gcd-reduced weight, interleaved), ``sh`` and ``mh`` are ``jhash ip saddr mod
SIZE seed S map {...}`` over :func:`sh_table` / :func:`maglev_table`, ``fo`` is the heaviest
server alone. The hash seed is fixed, so a client maps to the same slot after every
refresh, restart and failover to the other node.

No eligible server: the nat rules are left out, so ``NAME-input`` (always there) refuses
new connections (``reject with tcp reset`` for TCP, ICMP port unreachable for UDP), as IPVS
refuses a connection it has no destination for: clients fail at once instead of hanging in
SYN retries. (``reject`` is not allowed in a prerouting chain, hence the input chain: it
works because the VIP is an address of the switch, as in LVS.)

Not supported, refused at config time by :func:`unsupported_reason`: the connection-counting
schedulers, persistence templates (use ``sh`` or ``mh``), IPv6 and host names.

**Stateless NAT** (``nat = "stateless"``, for ``sh``, ``mh`` and ``fo``, whose choice is a
pure function of the client address): no conntrack at all. Every packet to VIP:PORT is
marked ``notrack`` and has its destination rewritten (the same hash picks the same server
for every packet of a connection), and every reply from a real server on its way to a
client has its source rewritten back to VIP:PORT, in two more chains::

    chain NAME-raw      filter, hook prerouting, priority raw: notrack + destination rewrite
                        (and notrack of the real servers' replies not addressed to this node)
    chain NAME-reply    filter, hook postrouting, priority srcnat: source rewrite of replies

It keeps no state per connection (no conntrack table to fill, e.g. under a SYN flood); it is
not faster than the stateful plane in ``make bench`` (rule evaluation and two rewrites on
every packet replace the per-connection conntrack work; ``docs/performance.md``). The
price: a change of the server set moves the clients whose slot changed *with their
established connections* (``mh``: only the clients of the server that left), so weight 0
does not drain gracefully; replies must route back through the switch (LVS-NAT; no
``snat``); ICMP errors about switched packets are not translated; clients on the switch
itself are not switched; and a real server (address and port) may serve only this service,
since its replies are rewritten by address and port alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import re
import shutil
import subprocess
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from farmnode.dataplane.base import DataPlane
from farmnode.errors import DataplaneError, SchedulerError
from farmnode.process import child_environment
from farmnode.spec import STATELESS_SCHEDULERS, RealSpec, ServiceSpec
from farmnode.switch.service import VirtualService
from farmnode.switch.tables import maglev_table, sh_table

log = logging.getLogger(__name__)

PLANE = "nftables"
#: The table every service of a node shares unless told otherwise.
DEFAULT_TABLE = "farmnode"
#: Maglev table size for ``mh``: a prime; 1021 elements load in a few milliseconds.
MH_SIZE = 1021
#: Bucket count for ``sh``: a prime next to IPVS's 256 buckets.
SH_SIZE = 251
#: At most this many slots in a ``wrr`` map; heavier weight sets are scaled down to fit.
WRR_SLOTS = 1024
#: ``jhash`` seed (b"farm"): fixed, so the client -> slot mapping survives every refresh.
HASH_SEED = 0x6661726D
#: What the plane renders; the rest need per-connection state the kernel rules do not keep.
KERNEL_SCHEDULERS = ("rr", "wrr", "sh", "mh", "fo")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_NFT_TIMEOUT = 30.0
_DRAIN_POLL = 0.25
_LOCK = threading.Lock()  # one nft transaction at a time in this process (stop's table check)


class Backend(Protocol):
    """What rendering reads of a server (:class:`farmnode.switch.schedulers.RealServer`)."""

    @property
    def key(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def effective_weight(self) -> int: ...


# -- what the plane can do -----------------------------------------------------------------


def unsupported_reason(spec: ServiceSpec) -> str | None:
    """Why the nftables plane cannot run ``spec``, or ``None`` when it can.

    The config parser calls this for every ``dataplane = "nftables"`` service and turns a
    message into a :class:`farmnode.errors.ConfigError` at the service's key path.
    """
    checks: tuple[Callable[[ServiceSpec], str | None], ...] = (
        _scheduler_reason,
        _nat_reason,
        _persistence_reason,
        _address_reason,
    )
    for check in checks:
        reason = check(spec)
        if reason is not None:
            return reason
    return None


def _scheduler_reason(spec: ServiceSpec) -> str | None:
    return scheduler_reason(spec.scheduler)


def scheduler_reason(name: str) -> str | None:
    """Why the plane cannot render scheduler ``name``, or ``None`` when it can."""
    if name in KERNEL_SCHEDULERS:
        return None
    does = ", ".join(KERNEL_SCHEDULERS)
    if name in ("lc", "wlc", "sed", "nq", "ovf", "twos"):
        why = "needs connection counts the kernel plane does not keep"
    else:
        why = "is not a scheduler the kernel plane knows"
    return f"scheduler {name!r} {why}; the nftables plane does {does}"


def _nat_reason(spec: ServiceSpec) -> str | None:
    if spec.nat == "stateful" or spec.scheduler in STATELESS_SCHEDULERS:
        return None
    does = ", ".join(STATELESS_SCHEDULERS)
    return (
        f"stateless NAT chooses a server for every packet again, so it needs a scheduler "
        f"that picks by client address ({does}), not {spec.scheduler!r}"
    )


def _persistence_reason(spec: ServiceSpec) -> str | None:
    if spec.persistence is None:
        return None
    return (
        "persistence needs per-client templates the nftables plane does not keep; use "
        "scheduler 'sh' or 'mh' (the kernel hashes the client address, so a client stays on "
        "one server while membership holds; 'mh' keeps most clients when it changes) or the "
        "userspace plane"
    )


def _address_reason(spec: ServiceSpec) -> str | None:
    vip = _ipv4(spec.host)
    if vip is None:
        return (
            f"virtual address {spec.host!r} is not an IPv4 address; the nftables plane "
            "renders an IPv4 ('ip') table: use the userspace plane for IPv6 or host names"
        )
    if vip.is_unspecified:
        return "virtual address 0.0.0.0 is not an address; the nftables plane needs the VIP"
    servers: list[tuple[str, RealSpec]] = [("real server", r) for r in spec.real]
    if spec.fallback is not None:
        servers.append(("fallback", spec.fallback))
    for what, real in servers:
        address = _ipv4(real.host)
        if address is None or address.is_unspecified:
            return (
                f"{what} {real.key} is not an IPv4 address; the nftables plane translates "
                "IPv4 to IPv4 addresses only (no host names, no IPv6)"
            )
    return None


def _ipv4(text: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


# -- rendering (pure) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NftOptions:
    """How services are rendered: the table, the hash table sizes, SNAT.

    ``snat``: masquerade switched connections to the switch's own address on the way to the
    real server, so real servers need no route back through the switch (they then see the
    switch, not the client, as the peer). Without it the plane is LVS-NAT: each real
    server's route to the clients must go through the switch.
    """

    table: str = DEFAULT_TABLE
    sh_size: int = SH_SIZE
    mh_size: int = MH_SIZE
    wrr_slots: int = WRR_SLOTS
    snat: bool = False

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.table):
            raise DataplaneError(
                PLANE, f"table name {self.table!r}: expected letters, digits, _ . - (<= 64)"
            )
        if self.wrr_slots < 1:
            raise DataplaneError(PLANE, f"wrr_slots {self.wrr_slots}: expected >= 1")


class Chains(NamedTuple):
    """The chains one service owns in the table (each service uses some of them)."""

    prerouting: str
    output: str
    input: str
    postrouting: str
    raw: str
    reply: str


_CHAIN_SPECS = {
    "prerouting": "type nat hook prerouting priority dstnat; policy accept;",
    "output": "type nat hook output priority -100; policy accept;",
    "input": "type filter hook input priority filter; policy accept;",
    "postrouting": "type nat hook postrouting priority srcnat; policy accept;",
    "raw": "type filter hook prerouting priority raw; policy accept;",
    "reply": "type filter hook postrouting priority srcnat; policy accept;",
}


def chains(spec: ServiceSpec) -> Chains:
    """The service's chain names, ``NAME-hook``.

    A name nft could not read as an identifier becomes ``svc_CLEANED_CRC32``. The ``-hook``
    suffix keeps every name clear of nft's keywords (``map-input`` is one identifier).
    """
    base = spec.name
    if not _NAME.fullmatch(base) or len(base) > 48:
        cleaned = re.sub(r"[^A-Za-z0-9_]", "_", base)[:32]
        base = f"svc_{cleaned}_{zlib.crc32(base.encode()):08x}"
    return Chains(*(f"{base}-{hook}" for hook in Chains._fields))


def slots(
    scheduler: str, servers: Sequence[Backend], options: NftOptions = NftOptions()
) -> list[Backend]:
    """The map of ``scheduler`` over ``servers``: slot ``i`` of the rule's map -> server.

    ``servers`` is :meth:`VirtualService.eligible` (weights > 0, distinct keys; a lone
    fallback may have any weight). One slot for a single server; ``[]`` for none.
    Raises :class:`DataplaneError` for a scheduler the plane cannot render.
    """
    if len(servers) <= 1:
        return list(servers)
    weights = [max(1, s.effective_weight) for s in servers]
    entries = [(s.key, w) for s, w in zip(servers, weights, strict=True)]
    try:
        if scheduler == "rr":
            return list(servers)
        if scheduler == "wrr":
            return [servers[i] for i in wrr_cycle(weights, options.wrr_slots)]
        if scheduler == "sh":
            return [servers[i] for i in sh_table(entries, options.sh_size)]
        if scheduler == "mh":
            return [servers[i] for i in maglev_table(entries, options.mh_size)]
        if scheduler == "fo":
            return [servers[weights.index(max(weights))]]
    except SchedulerError as exc:
        raise DataplaneError(PLANE, f"scheduler {scheduler!r}: {exc}") from exc
    raise DataplaneError(PLANE, scheduler_reason(scheduler) or f"scheduler {scheduler!r}")


def wrr_cycle(weights: Sequence[int], limit: int = WRR_SLOTS) -> list[int]:
    """One smooth weighted round-robin cycle (nginx's order): indices into ``weights``.

    Weights (> 0) are divided by their gcd; when they still add up to more than ``limit``
    they are scaled down in proportion (each at least 1), so the shares are then approximate.
    Each index appears its (reduced) weight times, spread out: ``[3, 1]`` -> ``0 0 1 0``.
    """
    if not weights:
        return []
    turns = [w // math.gcd(*weights) for w in weights]
    total = sum(turns)
    if total > limit:
        turns = [max(1, t * limit // total) for t in turns]
        turns = [t // math.gcd(*turns) for t in turns]
        total = sum(turns)
    current = [0] * len(turns)
    cycle: list[int] = []
    for _ in range(total):
        best = 0
        for i, t in enumerate(turns):
            current[i] += t
            if current[i] > current[best]:
                best = i
        current[best] -= total
        cycle.append(best)
    return cycle


def _chooser(scheduler: str, size: int) -> str:
    if scheduler in ("sh", "mh"):
        return f"jhash ip saddr mod {size} seed {HASH_SEED:#x}"
    return f"numgen inc mod {size}"


def dnat_statement(scheduler: str, servers: Sequence[Backend], options: NftOptions) -> str:
    """``dnat to ...`` sending a new connection to one of ``servers`` (not empty)."""
    table = slots(scheduler, servers, options)
    if len(table) == 1:
        return f"dnat to {table[0].host}:{table[0].port}"
    elements = ", ".join(f"{i} : {s.host} . {s.port}" for i, s in enumerate(table))
    return f"dnat to {_chooser(scheduler, len(table))} map {{ {elements} }}"


def rewrite_statement(spec: ServiceSpec, servers: Sequence[Backend], options: NftOptions) -> str:
    """Stateless NAT: the destination rewrite of one packet to one of ``servers`` (not
    empty): the address, then the port (one map each; a constant when all agree)."""
    table = slots(spec.scheduler, servers, options)
    chooser = _chooser(spec.scheduler, len(table))

    def choose(field: str, values: Sequence[str]) -> str:
        if len(set(values)) == 1:
            return f"{field} set {values[0]}"
        elements = ", ".join(f"{i} : {v}" for i, v in enumerate(values))
        return f"{field} set {chooser} map {{ {elements} }}"

    hosts = choose("ip daddr", [s.host for s in table])
    ports = choose(f"{spec.protocol} dport", [str(s.port) for s in table])
    return f"{hosts} {ports}"


def _replies(spec: ServiceSpec) -> str:
    """Match of packets from any of ``spec``'s real servers (and fallback), eligible or not:
    a server just removed still has connections whose replies need their source back."""
    reals = [*spec.real, *([spec.fallback] if spec.fallback is not None else [])]
    keys = ", ".join(sorted({f"{r.host} . {r.port}" for r in reals}))
    return f"ip saddr . {spec.protocol} sport {{ {keys} }}"


def _match(spec: ServiceSpec) -> str:
    return f"ip daddr {spec.host} {spec.protocol} dport {spec.port}"


def _reject(spec: ServiceSpec) -> str:
    return "reject with tcp reset" if spec.protocol == "tcp" else "reject"


def service_rules(
    spec: ServiceSpec, eligible: Sequence[Backend], options: NftOptions = NftOptions()
) -> list[tuple[str, str]]:
    """The rules of one service as ``(chain, rule)``, in order."""
    names = chains(spec)
    match = _match(spec)
    if spec.nat == "stateless":
        return _stateless_rules(spec, eligible, options, names)
    rules: list[tuple[str, str]] = []
    if eligible:
        dnat = f"{match} counter {dnat_statement(spec.scheduler, eligible, options)}"
        rules += [(names.prerouting, dnat), (names.output, dnat)]
    # Always there: a new connection that no dnat rule took (none eligible) is refused. Its
    # ``ct`` expression also keeps conntrack on in the namespace while no dnat rule is left
    # (the kernel runs conntrack only while some rule uses it): without conntrack,
    # established connections to drained or failed servers would lose their NAT.
    rules.append((names.input, f"{match} ct state new counter {_reject(spec)}"))
    if options.snat:
        masquerade = (
            f"meta l4proto {spec.protocol} ct original ip daddr {spec.host} "
            f"ct original proto-dst {spec.port} counter masquerade"
        )
        rules.append((names.postrouting, masquerade))
    return rules


def _stateless_rules(
    spec: ServiceSpec, eligible: Sequence[Backend], options: NftOptions, names: Chains
) -> list[tuple[str, str]]:
    match = _match(spec)
    rules: list[tuple[str, str]] = []
    if eligible:
        rewrite = rewrite_statement(spec, eligible, options)
        rules.append((names.raw, f"{match} notrack counter {rewrite}"))
    replies = _replies(spec)
    # replies to this node's own connections to the servers (health checks) stay as they are
    rules.append((names.raw, f"{replies} fib daddr type != local notrack"))
    rules.append((names.reply, f"{replies} counter ip saddr set {spec.host} {spec.protocol} "
                  f"sport set {spec.port}"))  # fmt: skip
    # nothing eligible: the packet stays addressed to the VIP and is refused here
    rules.append((names.input, f"{match} counter {_reject(spec)}"))
    return rules


def _used_chains(spec: ServiceSpec, options: NftOptions) -> list[tuple[str, str]]:
    names = chains(spec)
    if spec.nat == "stateless":
        hooks = ["raw", "reply", "input"]
    else:
        hooks = ["prerouting", "output", "input", *(["postrouting"] if options.snat else [])]
    return [(getattr(names, hook), _CHAIN_SPECS[hook]) for hook in hooks]


def render(
    services: Sequence[tuple[ServiceSpec, Sequence[Backend]]], options: NftOptions = NftOptions()
) -> str:
    """One ``nft -f`` transaction that puts ``services`` (spec, eligible servers) in place.

    The same text starts and refreshes a service: the table and the service's chains are
    created when missing, then flushed and refilled, so chains left by a crashed run are
    replaced, never duplicated, and other services' chains are left alone. A chain the
    service no longer uses (``NAME-postrouting`` without SNAT) is deleted. The kernel
    applies it all or nothing, and conntrack keeps established connections on their
    servers (the rules only ever see a connection's first packet).
    """
    t = f"ip {options.table}"
    lines = [f"add table {t}"]
    for spec, _ in services:
        names = chains(spec)
        used = _used_chains(spec, options)
        for name, definition in used:
            lines += [f"add chain {t} {name} {{ {definition} }}", f"flush chain {t} {name}"]
        unused = [name for name in names if name not in dict(used)]
        lines += _remove_lines(t, unused)
    for spec, eligible in services:
        lines += [f"add rule {t} {c} {r}" for c, r in service_rules(spec, eligible, options)]
    return "\n".join(lines) + "\n"


def _remove_lines(t: str, names: Sequence[str]) -> list[str]:
    # "add chain" first so that deleting never fails on a chain that is not there.
    lines = []
    for name in names:
        lines += [f"add chain {t} {name}", f"delete chain {t} {name}"]
    return lines


def render_removal(specs: Sequence[ServiceSpec], table: str = DEFAULT_TABLE) -> str:
    """One transaction deleting the chains of ``specs`` (present or not) from ``table``."""
    return _removal_script([name for spec in specs for name in chains(spec)], table)


def _removal_script(names: Sequence[str], table: str) -> str:
    t = f"ip {table}"
    return "\n".join([f"add table {t}", *_remove_lines(t, names)]) + "\n"


def table_is_empty(listing: str) -> bool:
    """Whether ``nft -j list table`` output shows a table without chains, sets or maps."""
    data = json.loads(listing)
    items = data.get("nftables", []) if isinstance(data, dict) else []
    return not any(
        isinstance(item, dict) and not ({"metainfo", "table"} & item.keys()) for item in items
    )


_TCP_DONE = frozenset({"TIME_WAIT", "CLOSE"})


def count_flows(conntrack: str, spec: ServiceSpec) -> int:
    """Open flows to ``spec``'s VIP:PORT in ``/proc/net/nf_conntrack`` text.

    A flow counts while its original direction (the first ``src= dst= sport= dport=`` of
    a line) went to the VIP and port; TCP connections in TIME_WAIT or CLOSE are over.
    """
    count = 0
    for line in conntrack.splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[2] != spec.protocol:
            continue
        original: dict[str, str] = {}
        for field in fields:
            key, sep, value = field.partition("=")
            if sep:
                original.setdefault(key, value)
        if original.get("dst") != spec.host or original.get("dport") != str(spec.port):
            continue
        if spec.protocol == "tcp" and fields[5] in _TCP_DONE:
            continue
        count += 1
    return count


# -- running nft -------------------------------------------------------------------------------


class Nft:
    """Runs the ``nft`` binary, inside network namespace ``netns`` when one is given.

    Blocking (the plane calls it from a worker thread); one transaction at a time in this
    process. Every failure is a :class:`DataplaneError` carrying nft's own message.
    """

    def __init__(self, binary: str = "nft", netns: str | None = None, *, owner: str = "") -> None:
        self.binary = binary
        self.netns = netns
        self.owner = owner  # named in error messages: "service 'web': ..."

    def argv(self, args: Sequence[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns is not None else []
        return [*prefix, self.binary, *args]

    def check(self) -> None:
        """Raise :class:`DataplaneError` when the binary is not there."""
        if shutil.which(self.binary) is None:
            raise DataplaneError(
                PLANE, f"the {self.binary!r} binary was not found (apt-get install nftables)"
            )

    def run(
        self, args: Sequence[str], script: str | None = None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``nft ARGS`` with ``script`` on standard input."""
        return self._exec(self.argv(args), script, check=check, owner=self.owner)

    def transact(self, script: str) -> None:
        """Apply ``script`` with ``nft -f -``: one atomic transaction."""
        with _LOCK:
            self.run(["-f", "-"], script)

    def read(self, path: str) -> str | None:
        """A ``/proc`` file as seen from the namespace, or ``None`` when it is unreadable."""
        if self.netns is None:
            try:
                with open(path, encoding="ascii") as f:
                    return f.read()
            except OSError:
                return None
        argv = ["ip", "netns", "exec", self.netns, "cat", path]
        result = self._exec(argv, None, check=False, owner=self.owner)
        return result.stdout if result.returncode == 0 else None

    @staticmethod
    def _exec(
        argv: list[str], script: str | None, *, check: bool, owner: str
    ) -> subprocess.CompletedProcess[str]:
        where = f"service {owner!r}: " if owner else ""
        try:
            result = subprocess.run(  # noqa: S603 - argv built here, no shell
                argv,
                input=script,
                capture_output=True,
                text=True,
                env=child_environment(),
                timeout=_NFT_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataplaneError(PLANE, f"{where}{' '.join(argv)}: {exc}") from exc
        if check and result.returncode != 0:
            detail = result.stderr.strip() or "no message"
            hint = " (nft needs root or CAP_NET_ADMIN)" if "not permitted" in detail else ""
            raise DataplaneError(PLANE, f"{where}{' '.join(argv)} failed{hint}: {detail}")
        return result


def remove_table(table: str = DEFAULT_TABLE, nft: Nft | None = None) -> None:
    """Delete ``table`` with everything in it; nothing happens when there is none.

    Blocking. This also ends the NAT of every connection the table switched.
    """
    NftOptions(table=table)  # validates the name
    (nft or Nft()).transact(f"add table ip {table}\ndelete table ip {table}\n")


def stale_chains(listing: str, keep: Sequence[ServiceSpec]) -> list[str]:
    """Chains in ``nft -j list table`` output that belong to none of the ``keep`` services."""
    wanted = {name for spec in keep for name in chains(spec)}
    data = json.loads(listing)
    items = data.get("nftables", []) if isinstance(data, dict) else []
    found = [item["chain"].get("name") for item in items if "chain" in item]
    return [name for name in found if isinstance(name, str) and name not in wanted]


def prune_table(
    keep: Sequence[ServiceSpec], table: str = DEFAULT_TABLE, nft: Nft | None = None
) -> list[str]:
    """Delete the chains of services other than ``keep`` from ``table``; returns their names.

    Blocking. For the daemon after its services started: chains that a crashed run had for
    services the new configuration dropped go, while the kept services' connections (even
    those the crashed run switched) keep their NAT.
    """
    NftOptions(table=table)  # validates the name
    runner = nft or Nft()
    with _LOCK:
        listing = runner.run(["-j", "list", "table", "ip", table], check=False)
        if listing.returncode != 0:
            return []
        stale = stale_chains(listing.stdout, keep)
        if stale:
            runner.run(["-f", "-"], _removal_script(stale, table))
    return stale


# -- the plane ---------------------------------------------------------------------------------


class NftablesPlane(DataPlane):
    """Renders one virtual service into the node's nftables table and keeps it current.

    ``netns``: run ``nft`` inside that network namespace (``ip netns exec``), for tests and
    for a node whose switch lives in a namespace. ``nft``: the binary. ``options``: table
    name, hash table sizes, SNAT. Raises :class:`DataplaneError` at construction for a
    service the plane cannot run (see :func:`unsupported_reason`).
    """

    name = PLANE

    def __init__(
        self,
        spec: ServiceSpec,
        service: VirtualService,
        *,
        options: NftOptions = NftOptions(),
        netns: str | None = None,
        nft: str = "nft",
    ) -> None:
        super().__init__(spec, service)
        _refuse_unsupported(spec)
        if options.snat and spec.nat == "stateless":
            raise DataplaneError(
                PLANE, f"service {spec.name!r}: stateless NAT cannot masquerade (snat)"
            )
        self.options = options
        self.nft = Nft(nft, netns, owner=spec.name)
        self._installed: ServiceSpec | None = None
        self._stopping = False

    # -- the contract ---------------------------------------------------------------------

    async def start(self) -> None:
        """Install the service's chains, replacing any left over (one transaction).

        Chains a crashed run left are flushed and refilled, not deleted, so the connections
        that run switched keep their NAT.
        """
        self.nft.check()
        self._stopping = False
        await asyncio.to_thread(self.nft.transact, self.rendered())
        self._installed = self.service.spec
        forwarding = await asyncio.to_thread(self.nft.read, "/proc/sys/net/ipv4/ip_forward")
        if (forwarding or "1").strip() == "0":
            log.warning(
                "%s: net.ipv4.ip_forward is 0: only traffic from this node is switched",
                self.spec.name,
            )

    async def refresh(self) -> None:
        """Re-render from :meth:`VirtualService.eligible` and swap the rules atomically.

        Does nothing before :meth:`start` (which renders the service as it is then) and
        once :meth:`stop` has begun (a draining service takes no new connections).
        """
        installed = self._installed
        if installed is None or self._stopping:
            return
        spec = self.service.spec
        _refuse_unsupported(spec)
        script = self.rendered()
        if chains(spec) != chains(installed):  # renamed: the old chains go in the same step
            script = render_removal([installed], self.options.table) + script
        await asyncio.to_thread(self.nft.transact, script)
        self._installed = spec

    async def stop(self, drain: float = 0.0) -> None:
        """Remove the service's chains (and the table when no other service is left in it).

        With ``drain`` > 0, new connections are refused first and established ones (as
        conntrack sees them) get up to ``drain`` seconds to finish.
        """
        installed = self._installed
        if installed is None:
            return
        self._stopping = True
        if drain > 0:
            await asyncio.to_thread(self.nft.transact, render([(installed, [])], self.options))
            await self._drain(installed, drain)
        await asyncio.to_thread(self._remove, installed)
        self._installed = None

    # -- inspection -------------------------------------------------------------------------

    def rendered(self) -> str:
        """The transaction that puts the service as it is now in place."""
        return render([(self.service.spec, self.service.eligible())], self.options)

    async def listing(self) -> str:
        """``nft list table ip TABLE`` as nft prints it (empty when there is no table)."""
        args = ["list", "table", "ip", self.options.table]
        result = await asyncio.to_thread(self.nft.run, args, None, check=False)
        return result.stdout if result.returncode == 0 else ""

    # -- helpers ----------------------------------------------------------------------------

    def _remove(self, spec: ServiceSpec) -> None:
        """Delete the service's chains, then the table if that left it empty."""
        table = self.options.table
        self.nft.transact(render_removal([spec], table))
        with _LOCK:  # no other service's start between the look and the delete
            listing = self.nft.run(["-j", "list", "table", "ip", table], check=False)
            if listing.returncode == 0 and table_is_empty(listing.stdout):
                self.nft.run(["-f", "-"], f"delete table ip {table}\n")

    async def _drain(self, spec: ServiceSpec, drain: float) -> None:
        deadline = time.monotonic() + drain
        while (left := deadline - time.monotonic()) > 0:
            text = await asyncio.to_thread(self.nft.read, "/proc/net/nf_conntrack")
            if text is not None and count_flows(text, spec) == 0:
                return
            await asyncio.sleep(min(_DRAIN_POLL, left))


def _refuse_unsupported(spec: ServiceSpec) -> None:
    reason = unsupported_reason(spec)
    if reason is not None:
        raise DataplaneError(PLANE, f"service {spec.name!r}: {reason}")
