"""The nftables plane's pure core: which services it can run (:func:`unsupported_reason`,
asked at config time), the ``nft -f`` text that puts a service's chains and rules in place
(:func:`render`, :func:`render_removal`) and the reading of what nft and conntrack print
(:func:`table_is_empty`, :func:`stale_chains`, :func:`count_flows`). Nothing here runs a
process: :mod:`farmnode.dataplane.nftables` runs ``nft`` and applies this text; its
docstring describes the chains and maps rendered here.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from farmnode.errors import DataplaneError, SchedulerError
from farmnode.spec import STATELESS_SCHEDULERS, RealSpec, ServiceSpec
from farmnode.switch.tables import maglev_table, sh_table

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
    return removal_script([name for spec in specs for name in chains(spec)], table)


def removal_script(names: Sequence[str], table: str) -> str:
    """One transaction deleting the chains ``names`` (present or not) from ``table``."""
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


def stale_chains(listing: str, keep: Sequence[ServiceSpec]) -> list[str]:
    """Chains in ``nft -j list table`` output that belong to none of the ``keep`` services."""
    wanted = {name for spec in keep for name in chains(spec)}
    data = json.loads(listing)
    items = data.get("nftables", []) if isinstance(data, dict) else []
    found = [item["chain"].get("name") for item in items if "chain" in item]
    return [name for name in found if isinstance(name, str) and name not in wanted]
