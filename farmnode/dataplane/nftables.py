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

The map of a rule is rendered (by :mod:`farmnode.dataplane.ruleset`) from
:meth:`VirtualService.eligible` (available real servers, else the fallback): ``rr`` and
``wrr`` are ``numgen inc mod N map {...}`` (wrr repeats each server by its gcd-reduced
weight, interleaved), ``sh`` and ``mh`` are ``jhash ip saddr mod SIZE seed S map {...}``
over :func:`~farmnode.switch.tables.sh_table` / :func:`~farmnode.switch.tables.maglev_table`,
``fo`` is the heaviest server alone. The hash seed is fixed, so a client maps to the same
slot after every refresh, restart and failover to the other node.

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
import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence

from farmnode.dataplane.base import DataPlane
from farmnode.dataplane.ruleset import (
    DEFAULT_TABLE,
    PLANE,
    NftOptions,
    chains,
    count_flows,
    removal_script,
    render,
    render_removal,
    stale_chains,
    table_is_empty,
    unsupported_reason,
)
from farmnode.errors import DataplaneError
from farmnode.process import child_environment
from farmnode.spec import ServiceSpec
from farmnode.switch.service import VirtualService

log = logging.getLogger(__name__)

_NFT_TIMEOUT = 30.0
_DRAIN_POLL = 0.25
_LOCK = threading.Lock()  # one nft transaction at a time in this process (stop's table check)

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
            runner.run(["-f", "-"], removal_script(stale, table))
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
