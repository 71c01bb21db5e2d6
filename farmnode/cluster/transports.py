"""Heartbeat transports: UDP unicast, UDP multicast and a serial line, behind one interface.

A node sends every heartbeat on every transport, and a peer is dead only when it is silent
on all of them, so one broken cable or switch port does not fail a group over. Transports
move opaque datagrams (the encoded, authenticated heartbeats of
:mod:`farmnode.cluster.protocol`); they neither parse nor trust them. Implementations are
chosen by name from :data:`TRANSPORTS` (``udp``, ``multicast``, ``serial``);
:func:`build_transports` builds those ``[[cluster.transports]]`` describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import re
import socket
import struct
import termios
import tty
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Final, cast

from farmnode.cluster.protocol import MAX_MESSAGE, TransportError
from farmnode.cluster.settings import ClusterSettings, TransportSettings
from farmnode.errors import ConfigError

#: Called with (datagram, transport name) for every datagram received; must not block.
OnDatagram = Callable[[bytes, str], None]
#: Makes a socket (family, type); tests pass one that creates it inside a network namespace.
SocketFactory = Callable[[int, int], socket.socket]
Address = tuple[str, int]

DEFAULT_PORT: Final = 6940
#: DSCP CS6 (network control), as VRRP and routing protocols use: queued ahead of bulk data.
TOS_CS6: Final = 0xC0


class Transport(ABC):
    """One path to the peers.

    Contract: :meth:`start` opens the path and raises :class:`TransportError` when it cannot;
    afterwards every datagram received is handed to ``on_datagram(data, self.name)`` from the
    event loop. :meth:`send` never blocks and never raises: a dead link, an unreachable peer,
    a full buffer or a transport not started is counted in ``stats`` and the datagram is
    dropped (the next heartbeat follows within one interval). :meth:`stop` closes the path,
    is idempotent, and no datagram is delivered after it returns. Every method is called
    from the event loop's thread; ``stats`` counts ``sent``, ``received`` and the failures.
    """

    name: str
    stats: Counter[str]

    @abstractmethod
    async def start(self, on_datagram: OnDatagram) -> None:
        """Open the path and deliver what arrives to ``on_datagram``."""

    @abstractmethod
    def send(self, payload: bytes) -> None:
        """Send ``payload`` to every peer on this path, now or never."""

    @abstractmethod
    async def stop(self) -> None:
        """Close the path."""


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> Address:
    """``"10.213.0.11:6940"``, ``"10.213.0.11"`` or ``"[fd00::1]:6940"`` as (host, port).

    Raises :class:`ValueError` naming the text when it is not an IP address with a port.
    """
    host, port = text, default_port
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6]:port")
        port = int(rest[1:]) if rest else default_port
    elif text.count(":") == 1:
        host, _, tail = text.partition(":")
        port = int(tail)
    ipaddress.ip_address(host)
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: port {port} is not 0-65535")
    return host, port


def _family(host: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


class _Datagrams(asyncio.DatagramProtocol):
    """Hands datagrams to the owner's callback; send errors (ICMP unreachable) are counted."""

    def __init__(self, owner: _UdpTransport, on_datagram: OnDatagram) -> None:
        self.owner = owner
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.owner.stats["received"] += 1
        self.on_datagram(data, self.owner.name)

    def error_received(self, exc: Exception) -> None:
        self.owner.stats["send_errors"] += 1


class _UdpTransport(Transport):
    """The shared part of the UDP transports: one socket, datagrams sent to ``targets``."""

    def __init__(self, name: str, socket_factory: SocketFactory) -> None:
        self.name = name
        self.stats = Counter()
        self._socket_factory = socket_factory
        self._transport: asyncio.DatagramTransport | None = None
        self.local_address: Address | None = None

    @abstractmethod
    def _targets(self) -> Iterable[Address]: ...

    @abstractmethod
    def _open(self) -> socket.socket:
        """A bound socket, configured; raises ``OSError`` or ``ValueError``."""

    async def start(self, on_datagram: OnDatagram) -> None:
        if self._transport is not None:
            raise TransportError(self.name, "already started")
        try:
            sock = self._open()
        except (OSError, ValueError) as exc:
            raise TransportError(self.name, str(exc)) from exc
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self, on_datagram), sock=sock
        )
        self._transport = transport
        self.local_address = cast(Address, sock.getsockname()[:2])

    def send(self, payload: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self.stats["not_running"] += 1
            return
        for target in self._targets():
            try:
                transport.sendto(payload, target)
            except (OSError, ValueError, RuntimeError):
                self.stats["send_errors"] += 1
            else:
                self.stats["sent"] += 1

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
            await asyncio.sleep(0)  # let the loop run the close callbacks

    def _new_socket(self, family: int) -> socket.socket:
        sock = self._socket_factory(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS_CS6)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, TOS_CS6)
        except OSError:
            sock.close()
            raise
        return sock


class UdpUnicast(_UdpTransport):
    """UDP from ``bind`` (``host:port``) to each of ``peers``, every heartbeat to every peer.

    Works across routers and where multicast is filtered; the peer list is the set of nodes
    that may be reached. ``set_peers`` replaces it (a reload, or a test on ephemeral ports).
    """

    def __init__(
        self,
        bind: str | Address,
        peers: Sequence[str | Address] = (),
        *,
        socket_factory: SocketFactory = socket.socket,
    ) -> None:
        self.bind = parse_address(bind) if isinstance(bind, str) else bind
        super().__init__(f"udp:{_show(self.bind)}", socket_factory)
        self.peers: tuple[Address, ...] = ()
        self.set_peers(peers)

    def set_peers(self, peers: Sequence[str | Address]) -> None:
        """Send to ``peers`` from now on."""
        self.peers = tuple(parse_address(p) if isinstance(p, str) else p for p in peers)

    def _targets(self) -> Iterable[Address]:
        return self.peers

    def _open(self) -> socket.socket:
        sock = self._new_socket(_family(self.bind[0]))
        try:
            sock.bind(self.bind)
        except OSError:
            sock.close()
            raise
        return sock


class UdpMulticast(_UdpTransport):
    """UDP to multicast ``group``:``port`` on the LAN of ``interface``.

    ``interface`` is the LAN interface's name (``eth0``) or one of its IPv4 addresses; it
    picks both where the group is joined and where datagrams leave. ``ttl`` 1 keeps
    heartbeats on the LAN; ``loop`` False keeps this node from hearing itself. The socket
    binds the group address, so datagrams for other groups on the same port are not
    delivered. The name is ``multicast:GROUP:PORT%INTERFACE``.
    """

    def __init__(
        self,
        group: str,
        port: int,
        interface: str,
        *,
        ttl: int = 1,
        loop: bool = False,
        socket_factory: SocketFactory = socket.socket,
    ) -> None:
        address = ipaddress.ip_address(group)
        if address.version != 4 or not address.is_multicast:
            raise ValueError(f"{group!r}: expected an IPv4 multicast group (224.0.0.0/4)")
        if not (_is_ipv4(interface) or IFNAME_RE.fullmatch(interface)):
            raise ValueError(f"interface {interface!r}: a network interface name or IPv4 address")
        if not 1 <= ttl <= 255:
            raise ValueError(f"ttl {ttl}: 1-255")
        self.group, self.port, self.interface = group, port, interface
        self.ttl, self.loop = ttl, loop
        super().__init__(f"multicast:{group}:{port}%{interface}", socket_factory)

    def _targets(self) -> Iterable[Address]:
        return ((self.group, self.port),)

    def _open(self) -> socket.socket:
        sock = self._new_socket(socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.group, self.port))
            mreq = socket.inet_aton(self.group) + self._local(sock)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, mreq)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(self.loop))
        except OSError:
            sock.close()
            raise
        return sock

    def _local(self, sock: socket.socket) -> bytes:
        """The local half of a ``struct ip_mreqn``: interface address, interface index."""
        if _is_ipv4(self.interface):
            return socket.inet_aton(self.interface) + struct.pack("=i", 0)
        return bytes(4) + struct.pack("=i", _ifindex(sock, self.interface))  # INADDR_ANY, index


#: Linux interface names: 1-15 characters, no '/', ':' or white space.
IFNAME_RE: Final = re.compile(r"[^/:\s]{1,15}")
_SIOCGIFINDEX: Final = 0x8933
_IFREQ: Final = struct.Struct("16si")


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _ifindex(sock: socket.socket, name: str) -> int:
    """The index of interface ``name`` in ``sock``'s network namespace (``OSError`` if none).

    Asked through the socket itself (``SIOCGIFINDEX``), not ``if_nametoindex``, which looks
    in the calling thread's namespace.
    """
    request = _IFREQ.pack(name.encode(), 0)
    index: int = _IFREQ.unpack(fcntl.ioctl(sock.fileno(), _SIOCGIFINDEX, request))[1]
    return index


def _show(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- serial ---------------------------------------------------------------------------------

#: SLIP (RFC 1055) framing: END delimits frames, ESC escapes END and ESC inside them.
END, ESC, ESC_END, ESC_ESC = 0xC0, 0xDB, 0xDC, 0xDD
#: A frame (unescaped) longer than this is noise, not a heartbeat: dropped whole.
MAX_FRAME: Final = MAX_MESSAGE
#: Bytes waiting for a slow line before new frames are dropped (a few seconds at 9600 baud).
MAX_BACKLOG: Final = 8192
READ_SIZE: Final = 4096
RETRY_AFTER: Final = 1.0
BAUDRATES: Final = {
    rate: getattr(termios, f"B{rate}")
    for rate in (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
    if hasattr(termios, f"B{rate}")
}


def slip_frame(payload: bytes) -> bytes:
    """``payload`` escaped and framed: END, body, END (the leading END flushes line noise)."""
    body = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class SlipDecoder:
    """Reassembles SLIP frames from a byte stream read in arbitrary pieces.

    :meth:`feed` returns the complete frames found so far. Garbage between frames comes out
    as a frame of its own (the protocol rejects it: ``magic`` or ``short``); a frame with a
    bad escape or longer than ``max_frame`` is dropped whole and counted in ``stats``, and
    decoding resumes at the next END. Memory stays bounded whatever is fed.
    """

    __slots__ = ("_buffer", "_dropping", "_escaped", "max_frame", "stats")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self.stats: Counter[str] = Counter()
        self._buffer = bytearray()
        self._escaped = False
        self._dropping = False  # the current frame is bad: skip to the next END

    def feed(self, data: bytes) -> list[bytes]:
        """The frames completed by ``data``, in order."""
        frames: list[bytes] = []
        for byte in data:
            if byte == END:
                self._end(frames)
            elif not self._dropping:
                self._byte(byte)
        return frames

    def _end(self, frames: list[bytes]) -> None:
        if self._buffer and not self._dropping and not self._escaped:
            frames.append(bytes(self._buffer))
            self.stats["frames"] += 1
        elif self._escaped and not self._dropping:
            self.stats["bad_escape"] += 1
        self._buffer.clear()
        self._escaped = self._dropping = False

    def _byte(self, byte: int) -> None:
        if self._escaped:
            self._escaped = False
            if byte not in (ESC_END, ESC_ESC):
                self._drop("bad_escape")
                return
            byte = END if byte == ESC_END else ESC
        elif byte == ESC:
            self._escaped = True
            return
        if len(self._buffer) >= self.max_frame:
            self._drop("oversize")
            return
        self._buffer.append(byte)

    def _drop(self, reason: str) -> None:
        self.stats[reason] += 1
        self._buffer.clear()
        self._dropping = True


class Serial(Transport):
    """A serial line (``/dev/ttyS1``, a USB adapter, a pty in tests) to exactly one peer.

    The tty is opened non-blocking and set raw (no echo, no line editing, no flow control,
    8 data bits, ``CLOCAL`` so modem lines are ignored) at ``baudrate``. Heartbeats travel
    SLIP-framed (:func:`slip_frame`), so line noise and reads that split a frame cost at most
    the frames they touch. A read error (the other end of a pty closed, a USB adapter
    unplugged) is counted and the device is reopened every ``retry_after`` seconds.
    """

    def __init__(
        self, device: str, baudrate: int = 115200, *, retry_after: float = RETRY_AFTER
    ) -> None:
        if baudrate not in BAUDRATES:
            raise ValueError(f"baudrate {baudrate}: one of {', '.join(map(str, BAUDRATES))}")
        self.device, self.baudrate, self.retry_after = device, baudrate, retry_after
        self.name = f"serial:{device}"
        self.stats = Counter()
        self.decoder = SlipDecoder()
        self._fd: int | None = None
        self._backlog = bytearray()
        self._on_datagram: OnDatagram | None = None
        self._retry: asyncio.TimerHandle | None = None

    async def start(self, on_datagram: OnDatagram) -> None:
        if self._on_datagram is not None:
            raise TransportError(self.name, "already started")
        try:
            self._open()
        except (OSError, termios.error) as exc:
            raise TransportError(self.name, f"cannot open: {exc}") from exc
        self._on_datagram = on_datagram

    def send(self, payload: bytes) -> None:
        if self._fd is None:
            self.stats["not_running"] += 1
            return
        frame = slip_frame(payload)
        if len(self._backlog) + len(frame) > MAX_BACKLOG:
            self.stats["overflow"] += 1
            return
        self._backlog += frame
        self.stats["sent"] += 1
        if len(self._backlog) == len(frame):  # nothing was waiting: try to write now
            self._write()

    async def stop(self) -> None:
        self._on_datagram = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._close()

    def _open(self) -> None:
        fd = os.open(self.device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            _set_raw(fd, BAUDRATES[self.baudrate])
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _close(self) -> None:
        fd, self._fd = self._fd, None
        self._backlog.clear()
        if fd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
            os.close(fd)

    def _read(self) -> None:
        if self._fd is None:
            return
        try:
            data = os.read(self._fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EOF or EIO: the other end went away
            self._fail("read_errors")
            return
        self.stats["bytes_in"] += len(data)
        for frame in self.decoder.feed(data):
            self.stats["received"] += 1
            if self._on_datagram is not None:
                self._on_datagram(frame, self.name)

    def _write(self) -> None:
        if self._fd is None:
            return
        try:
            written = os.write(self._fd, self._backlog)
        except BlockingIOError:
            written = 0
        except OSError:
            self._fail("send_errors")
            return
        del self._backlog[:written]
        loop = asyncio.get_running_loop()
        if self._backlog:
            loop.add_writer(self._fd, self._write)
        else:
            loop.remove_writer(self._fd)

    def _fail(self, what: str) -> None:
        """Count ``what``, close the device and try to reopen it later."""
        self.stats[what] += 1
        self._close()
        if self._on_datagram is not None and self._retry is None:
            self._retry = asyncio.get_running_loop().call_later(self.retry_after, self._reopen)

    def _reopen(self) -> None:
        self._retry = None
        if self._on_datagram is None:
            return
        try:
            self._open()
        except (OSError, termios.error):
            self._fail("reopen_errors")
        else:
            self.stats["reopened"] += 1


def _set_raw(fd: int, speed: int) -> None:
    """Raw 8N1 at ``speed``: no echo, no translation, no flow control, modem lines ignored."""
    tty.setraw(fd, termios.TCSANOW)
    attrs = termios.tcgetattr(fd)
    attrs[0] &= ~(termios.IXON | termios.IXOFF | termios.IXANY)
    attrs[2] &= ~(termios.CRTSCTS | termios.CSTOPB | termios.PARENB)
    attrs[2] |= termios.CLOCAL | termios.CREAD | termios.CS8
    attrs[4] = attrs[5] = speed
    attrs[6][termios.VMIN] = 0
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    with contextlib.suppress(termios.error):
        termios.tcflush(fd, termios.TCIOFLUSH)


#: Transport implementations by the ``kind`` of ``[[cluster.transports]]``.
TRANSPORTS: Final[dict[str, type[Transport]]] = {
    "udp": UdpUnicast,
    "multicast": UdpMulticast,
    "serial": Serial,
}


def build_transports(settings: ClusterSettings) -> list[Transport]:
    """The transports ``[[cluster.transports]]`` describes, chosen from :data:`TRANSPORTS`.

    A udp transport sends to every address of every peer.
    """
    return [_transport(t, settings) for t in settings.transports]


def _transport(t: TransportSettings, settings: ClusterSettings) -> Transport:
    cls = TRANSPORTS[t.kind]
    if cls is UdpUnicast and t.bind is not None:
        peers = [address for peer in settings.peers for address in peer.addresses]
        return UdpUnicast(t.bind, peers)
    if cls is UdpMulticast and t.group is not None and t.interface is not None:
        return UdpMulticast(t.group, t.port, t.interface, ttl=t.ttl)
    if cls is Serial and t.device is not None:
        return Serial(t.device, t.baudrate)
    raise ConfigError("cluster", "cluster.transports", f"a complete {t.kind} transport")
