"""The ``ipaddr`` agent: a floating IPv4 or IPv6 address, added through netlink, announced.

``start`` adds the address to the interface (pyroute2, idempotent), sends the first
announcement (gratuitous ARP or unsolicited neighbour advertisement, see
:mod:`farmnode.agents.arp`) before it returns, and leaves a background task that sends the
rest of the burst (``arp_count`` at ``arp_interval``), a second burst ``arp_repeat_after``
seconds later, and then one announcement every ``arp_refresh`` seconds when that is set.
:meth:`IpAddr.announce` sends another burst on demand (the election calls it whenever it
sees a lower-priority node claim the group). ``stop`` stops the announcements and removes
the address (absent already: ``SUCCESS``). ``monitor``: the address on the interface and
the interface up is ``SUCCESS``, the address absent ``NOT_RUNNING``.

IPv6 addresses are added with ``nodad``: a floating address must be usable at once, and
duplicate address detection would only race the old owner.

With the ``netns`` parameter (a name under ``/run/netns``) every netlink call and the raw
sockets are made inside that network namespace; tests use it, production leaves it unset.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from farmnode.agents.arp import ARP_MODES, Announcer, ArpMode, parse_mac
from farmnode.agents.base import Agent, OcfResult, Param, in_netns, not_negative, positive

log = logging.getLogger("farmnode.agents.ipaddr")

IFF_UP = 0x1
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFNAMSIZ = 16


def _address(value: str) -> str | None:
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        return "an address with optional prefix length (10.0.0.50/24, 2001:db8::50/64)"
    return None


def _interface(value: str) -> str | None:
    ok = 0 < len(value) < IFNAMSIZ and "/" not in value and not value.isspace()
    return None if ok else "an interface name (1 to 15 characters, no '/')"


def _arp_mode(value: str) -> str | None:
    return None if value in ARP_MODES else f"one of {', '.join(ARP_MODES)}"


def _count(value: int) -> str | None:
    return None if 0 <= value <= 100 else "an integer from 0 to 100"


def _os_result(exc: OSError) -> OcfResult:
    """``ERR_PERM`` for a refusal (not root, no ``CAP_NET_ADMIN``/``CAP_NET_RAW``), else generic."""
    return OcfResult.ERR_PERM if exc.errno in (errno.EPERM, errno.EACCES) else OcfResult.ERR_GENERIC


@contextlib.contextmanager
def _netlink() -> Iterator[Any]:
    """A pyroute2 ``IPRoute`` in the calling thread's namespace; netlink errors as OSError.

    pyroute2 is imported here, on first use, because importing it costs about 0.2 s that
    nothing else of farmnode should pay.
    """
    from pyroute2 import IPRoute  # type: ignore[import-untyped]
    from pyroute2.netlink.exceptions import NetlinkError  # type: ignore[import-untyped]

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise OSError(exc.code, f"netlink: {os.strerror(exc.code)}") from exc


def _addr(
    ipr: Any,
    command: str,
    index: int,
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface,
    **extra: Any,
) -> None:
    """``ip addr add|del`` through ``ipr``; netlink errors as :class:`OSError`."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        ipr.addr(
            command,
            index=index,
            address=str(address.ip),
            prefixlen=address.network.prefixlen,
            **extra,
        )
    except NetlinkError as exc:
        raise OSError(exc.code, f"netlink addr {command}: {os.strerror(exc.code)}") from exc


@dataclass(frozen=True, slots=True)
class _Link:
    index: int
    mac: bytes
    up: bool


class IpAddr(Agent):
    """A floating address on an interface, announced by gratuitous ARP or unsolicited NA."""

    kind: ClassVar[str] = "ipaddr"
    description: ClassVar[str] = (
        "A floating IP address. Added to an interface through netlink and announced to the "
        "LAN with gratuitous ARP (IPv4) or unsolicited neighbour advertisements (IPv6)."
    )
    params: ClassVar[tuple[Param, ...]] = (
        Param("address", str, "the address with prefix length", required=True, check=_address),
        Param("interface", str, "the interface to add it to", required=True, check=_interface),
        Param("label", str, "IPv4 label, e.g. eth0:vip (must start with the interface)"),
        Param("arp_count", int, "announcements per burst", default=5, check=_count),
        Param("arp_interval", float, "seconds between announcements", default=0.2, check=positive),
        Param(
            "arp_repeat_after",
            float,
            "seconds until the second burst (0: none)",
            default=5.0,
            check=not_negative,
        ),
        Param(
            "arp_refresh",
            float,
            "seconds between refresh announcements after that (0: none)",
            default=0.0,
            check=not_negative,
        ),
        Param(
            "arp_mode", str, "ARP opcode: request, reply or both", default="both", check=_arp_mode
        ),
        Param("netns", str, "network namespace (name in /run/netns) to work in"),
    )

    def __init__(self, params: Mapping[str, Any], *, name: str = "") -> None:
        super().__init__(params, name=name)
        self.address = ipaddress.ip_interface(self.values["address"])
        self.interface: str = self.values["interface"]
        self.label: str | None = self.values["label"]
        self.netns: str | None = self.values["netns"]
        self.arp_mode: ArpMode = self.values["arp_mode"]
        if self.label is not None:
            if self.address.version != 4:
                raise self.param_error("label", "no label: labels exist for IPv4 addresses only")
            if not self.label.startswith(self.interface) or len(self.label) >= IFNAMSIZ:
                raise self.param_error(
                    "label", f"a name starting with {self.interface!r}, at most 15 characters"
                )
        self._announcer: Announcer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.announcements = 0

    # --- actions ---------------------------------------------------------------------------

    async def start(self) -> OcfResult:
        try:
            announcer = await in_netns(self.netns, self._add_and_open)
        except OSError as exc:
            return self.fail(_os_result(exc), f"cannot add {self.address}: {exc}")
        if announcer is None:
            return self.fail(OcfResult.ERR_INSTALLED, f"no interface {self.interface} here")
        await self._stop_announcing()
        self._announcer = announcer
        log.info("%s: %s added on %s", self.name, self.address, self.interface)
        count = self.values["arp_count"]
        if count > 0:
            self._send_one()
            self._spawn(self._schedule(count - 1))
        return OcfResult.SUCCESS

    async def stop(self) -> OcfResult:
        await self._stop_announcing()
        try:
            removed = await in_netns(self.netns, self._remove)
        except OSError as exc:
            return self.fail(_os_result(exc), f"cannot remove {self.address}: {exc}")
        if removed:
            log.info("%s: %s removed from %s", self.name, self.address, self.interface)
        return OcfResult.SUCCESS

    async def monitor(self) -> OcfResult:
        try:
            state = await in_netns(self.netns, self._state)
        except OSError as exc:
            return self.fail(_os_result(exc), f"cannot read {self.interface}: {exc}")
        return self.fail(state[0], state[1]) if state[0] else OcfResult.SUCCESS

    async def close(self) -> None:
        """Stop announcing and close the raw socket; the address stays where it is."""
        await self._stop_announcing()

    async def announce(self) -> OcfResult:
        """Send one more burst of ``arp_count`` announcements (``NOT_RUNNING`` if not started)."""
        if self._announcer is None:
            return self.fail(OcfResult.NOT_RUNNING, "not started here")
        self._spawn(self._burst(self.values["arp_count"]))
        return OcfResult.SUCCESS

    # --- netlink, in the namespace's thread ------------------------------------------------

    def _link(self, ipr: Any) -> _Link | None:
        indexes = ipr.link_lookup(ifname=self.interface)
        if not indexes:
            return None
        link = ipr.link("get", index=indexes[0])[0]
        mac = link.get("IFLA_ADDRESS") or "00:00:00:00:00:00"
        return _Link(indexes[0], parse_mac(mac), bool(link["flags"] & IFF_UP))

    def _add_and_open(self) -> Announcer | None:
        with _netlink() as ipr:
            link = self._link(ipr)
            if link is None:
                return None
            extra: dict[str, Any] = {}
            if self.label is not None:
                extra["label"] = self.label
            if self.address.version == 6:
                extra["flags"] = IFA_F_NODAD
            try:
                _addr(ipr, "add", link.index, self.address, **extra)
            except OSError as exc:
                if exc.errno != errno.EEXIST:
                    raise
        return Announcer.open(self.interface, link.index, link.mac, self.address.ip, self.arp_mode)

    def _remove(self) -> bool:
        """Delete the address; ``False`` when it was not there (checked first, so a stop
        without privilege on a node that does not hold the address still succeeds)."""
        with _netlink() as ipr:
            link = self._link(ipr)
            if link is None or self._find(ipr, link) is None:
                return False
            try:
                _addr(ipr, "del", link.index, self.address)
            except OSError as exc:
                if exc.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                    return False
                raise
        return True

    def _find(self, ipr: Any, link: _Link) -> Any:
        """The netlink message of our address on ``link``, or ``None``."""
        for entry in ipr.addr("dump", index=link.index):
            if (
                entry.get("IFA_ADDRESS") == str(self.address.ip)
                and entry["prefixlen"] == self.address.network.prefixlen
            ):
                return entry
        return None

    def _state(self) -> tuple[OcfResult, str]:
        with _netlink() as ipr:
            link = self._link(ipr)
            if link is None:
                return OcfResult.NOT_RUNNING, f"no interface {self.interface}"
            entry = self._find(ipr, link)
        if entry is None:
            return OcfResult.NOT_RUNNING, f"{self.address} not on {self.interface}"
        if (entry.get("IFA_FLAGS") or entry["flags"]) & IFA_F_DADFAILED:
            return OcfResult.ERR_GENERIC, f"{self.address}: duplicate address detected"
        if not link.up:
            return OcfResult.ERR_GENERIC, f"{self.interface} is down"
        return OcfResult.SUCCESS, ""

    # --- announcements ---------------------------------------------------------------------

    def _send_one(self) -> None:
        if self._announcer is None:
            return
        try:
            self.announcements += self._announcer.send()
        except OSError as exc:
            log.warning("%s: announcing %s failed: %s", self.name, self.address.ip, exc)

    async def _burst(self, count: int) -> None:
        for _ in range(count):
            await asyncio.sleep(self.values["arp_interval"])
            self._send_one()

    async def _schedule(self, rest_of_first: int) -> None:
        await self._burst(rest_of_first)
        repeat_after: float = self.values["arp_repeat_after"]
        if repeat_after > 0:
            await asyncio.sleep(repeat_after)
            self._send_one()
            await self._burst(self.values["arp_count"] - 1)
        refresh: float = self.values["arp_refresh"]
        while refresh > 0:
            await asyncio.sleep(refresh)
            self._send_one()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"announce-{self.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_announcing(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._announcer is not None:
            self._announcer.close()
            self._announcer = None
