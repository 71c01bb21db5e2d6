"""Gratuitous ARP and unsolicited IPv6 neighbour advertisements, built by hand.

When a floating address moves, the hosts and routers of the LAN still map it to the old
owner's MAC address in their ARP caches, for minutes. The new owner therefore announces
itself: a *gratuitous ARP* is an ARP packet, sent to the Ethernet broadcast address, whose
sender and target protocol addresses are both the floating address and whose sender
hardware address is the new owner's MAC. A host that already has an entry for the address
replaces the MAC in it; one that has none ignores it (Linux creates the entry only with
``net.ipv4.conf.*.arp_accept = 1``), which is harmless: it will ask when it needs to.

What is sent, as heartbeat's ``send_arp`` and keepalived do: an ARP *request* (opcode 1,
the RFC 5227 "ARP announcement": target hardware address zero), and, in ``both`` mode,
an ARP *reply* (opcode 2, target hardware address = sender hardware address, as RFC 5944
4.6 has it) as well, because some old stacks and switches learn from only one of the two.
Packets are repeated because a single frame can be lost and because switches may drop the
first frames after a port change (see ``shared/reference``: gratuitous ARP "sent often
enough").

For IPv6 the equivalent is an unsolicited neighbour advertisement (RFC 4861 section
7.2.6): ICMPv6 type 136 to all-nodes ``ff02::1``, hop limit 255, the *override* flag set,
the floating address as target and the MAC in a target link-layer address option. Linux
updates an existing neighbour entry from it (to STALE, then verifies on use).

The builders and the parser are pure; :class:`Announcer` owns the raw sockets.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Literal

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARP_REQUEST = 1
ARP_REPLY = 2
BROADCAST_MAC = b"\xff" * 6
ZERO_MAC = b"\x00" * 6
MIN_FRAME = 60  # Ethernet minimum without the FCS; short frames are padded with zeros
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LL_ADDR = 2
NA_FLAG_ROUTER = 0x80000000
NA_FLAG_SOLICITED = 0x40000000
NA_FLAG_OVERRIDE = 0x20000000
ALL_NODES = "ff02::1"
ICMP6_FILTER = 1  # linux/icmpv6.h; a set bit blocks that type
ICMP6_BLOCK_ALL = b"\xff" * 32
ND_HOP_LIMIT = 255

ArpMode = Literal["request", "reply", "both"]
ARP_MODES: tuple[ArpMode, ...] = ("request", "reply", "both")

_ETH = struct.Struct("!6s6sH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")
_NA = struct.Struct("!BBHI16sBB6s")


def parse_mac(text: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` as 6 bytes; :class:`ValueError` for anything else."""
    parts = text.split(":")
    if len(parts) != 6 or not all(len(part) == 2 for part in parts):
        raise ValueError(f"{text!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    return bytes(int(part, 16) for part in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in mac)


def arp_frame(mac: bytes, address: ipaddress.IPv4Address, op: int = ARP_REQUEST) -> bytes:
    """A broadcast Ethernet frame carrying a gratuitous ARP for ``address`` at ``mac``.

    Sender and target protocol address are both ``address``; the target hardware address
    is zero in a request and ``mac`` again in a reply (Linux takes a reply for gratuitous,
    and lets it override a fresh entry, only when target and sender MAC are equal).
    Padded to the 60-byte minimum.
    """
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    if op not in (ARP_REQUEST, ARP_REPLY):
        raise ValueError(f"ARP opcode {op}: expected 1 (request) or 2 (reply)")
    ip = address.packed
    target_mac = ZERO_MAC if op == ARP_REQUEST else mac
    header = _ETH.pack(BROADCAST_MAC, mac, ETH_P_ARP)
    body = _ARP.pack(ARPHRD_ETHER, ETH_P_IP, 6, 4, op, mac, ip, target_mac, ip)
    return (header + body).ljust(MIN_FRAME, b"\x00")


@dataclass(frozen=True, slots=True)
class ArpPacket:
    """An Ethernet/IPv4 ARP packet as read off the wire."""

    destination: bytes
    source: bytes
    op: int
    sender_mac: bytes
    sender_ip: ipaddress.IPv4Address
    target_mac: bytes
    target_ip: ipaddress.IPv4Address

    @property
    def gratuitous(self) -> bool:
        return self.sender_ip == self.target_ip


def parse_arp_frame(frame: bytes) -> ArpPacket | None:
    """The Ethernet/IPv4 ARP packet in ``frame``, or ``None`` for anything else. Never raises."""
    if len(frame) < _ETH.size + _ARP.size:
        return None
    destination, source, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_ARP:
        return None
    hrd, pro, hln, pln, op, sha, spa, tha, tpa = _ARP.unpack_from(frame, _ETH.size)
    if (hrd, pro, hln, pln) != (ARPHRD_ETHER, ETH_P_IP, 6, 4):
        return None
    return ArpPacket(
        destination,
        source,
        op,
        sha,
        ipaddress.IPv4Address(spa),
        tha,
        ipaddress.IPv4Address(tpa),
    )


def arp_frames(mac: bytes, address: ipaddress.IPv4Address, mode: ArpMode) -> list[bytes]:
    """The frames of one announcement in ``mode`` (request, reply, or request then reply)."""
    ops = {"request": (ARP_REQUEST,), "reply": (ARP_REPLY,), "both": (ARP_REQUEST, ARP_REPLY)}
    return [arp_frame(mac, address, op) for op in ops[mode]]


def neighbor_advert(mac: bytes, address: ipaddress.IPv6Address) -> bytes:
    """An unsolicited neighbour advertisement (ICMPv6 body) for ``address`` at ``mac``.

    Override flag set, solicited and router flags clear, one target link-layer address
    option. The checksum field is zero: the kernel fills it in for ICMPv6 raw sockets.
    """
    if len(mac) != 6:
        raise ValueError("a MAC address has 6 bytes")
    return _NA.pack(
        ND_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE, address.packed, ND_OPT_TARGET_LL_ADDR, 1, mac
    )


@dataclass(frozen=True, slots=True)
class NeighborAdvert:
    flags: int
    target: ipaddress.IPv6Address
    target_mac: bytes | None


def parse_neighbor_advert(message: bytes) -> NeighborAdvert | None:
    """The NA in an ICMPv6 message, or ``None`` for anything else. Never raises."""
    if len(message) < 24 or message[0] != ND_NEIGHBOR_ADVERT or message[1] != 0:
        return None
    flags = struct.unpack_from("!I", message, 4)[0]
    target = ipaddress.IPv6Address(message[8:24])
    mac = None
    offset = 24
    while offset + 2 <= len(message):
        kind, units = message[offset], message[offset + 1]
        if units == 0 or offset + units * 8 > len(message):
            return None  # RFC 4861: a zero-length option invalidates the packet
        if kind == ND_OPT_TARGET_LL_ADDR and units == 1:
            mac = message[offset + 2 : offset + 8]
        offset += units * 8
    return NeighborAdvert(flags, target, mac)


class Announcer:
    """Sends the announcements for one address out of one interface.

    Built from the sockets (already opened in the right namespace, see :meth:`open`) so
    that the sending itself needs no privilege and no namespace switch. Send errors raise
    :class:`OSError`; :meth:`close` is idempotent.
    """

    __slots__ = ("address", "frames", "ifindex", "interface", "sock")

    def __init__(
        self,
        sock: socket.socket,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        frames: list[bytes],
        ifindex: int,
        interface: str,
    ) -> None:
        self.sock = sock
        self.interface = interface
        self.address = address
        self.frames = frames
        self.ifindex = ifindex

    @classmethod
    def open(
        cls,
        interface: str,
        ifindex: int,
        mac: bytes,
        address: ipaddress.IPv4Address | ipaddress.IPv6Address,
        mode: ArpMode = "both",
    ) -> Announcer:
        """Open the raw socket for ``address`` on ``interface`` in the calling thread's netns.

        IPv4: an ``AF_PACKET`` raw socket that sends to the interface and receives nothing.
        IPv6: an ICMPv6 raw socket bound to the (non-tentative) floating address, hop limit
        255, every incoming type filtered out. Raises :class:`OSError` (``EPERM`` without
        ``CAP_NET_RAW``).
        """
        if isinstance(address, ipaddress.IPv4Address):
            # protocol 0: the socket receives nothing, so no unread queue builds up
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            return cls(sock, address, arp_frames(mac, address, mode), ifindex, interface)
        sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        try:
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, ICMP6_BLOCK_ALL)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ND_HOP_LIMIT)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            sock.bind((str(address), 0, 0, ifindex))
        except OSError:
            sock.close()
            raise
        return cls(sock, address, [neighbor_advert(mac, address)], ifindex, interface)

    def send(self) -> int:
        """Send one announcement (one or two packets); returns the packets sent."""
        for frame in self.frames:
            if isinstance(self.address, ipaddress.IPv4Address):
                self.sock.sendto(frame, (self.interface, ETH_P_ARP))
            else:
                self.sock.sendto(frame, (ALL_NODES, 0, 0, self.ifindex))
        return len(self.frames)

    def close(self) -> None:
        self.sock.close()
