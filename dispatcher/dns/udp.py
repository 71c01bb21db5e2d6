"""Reading and answering a UDP socket's datagrams in bounded batches.

The event loop calls a reader's ``readable`` when its socket is readable (``add_reader``);
the reader takes at most :data:`UDP_BATCH` datagrams, has them answered together
(:meth:`~dispatcher.dns.service.DnsService.answer_datagrams`), sends the answers at once,
and returns to the loop, so that a flood of queries cannot starve the other work on it
(the HTTP edge of the same worker). An answer the kernel will not take now (its send
buffer is full) is dropped and counted (``udp_backlog``), never queued, as UDP servers do;
one it refuses otherwise is counted ``udp_send_failed``. A datagram longer than
:data:`MAX_QUERY` bytes is not answered (``udp_oversized``): no query needs as much, and
over TCP a message that long is refused too (``tcp_max_message`` is at most that by
default).

Two readers, the same behaviour:

- :class:`MmsgReader` (Linux): one ``recvmmsg`` system call reads the batch into buffers
  allocated once, one ``sendmmsg`` sends every answer (the answers are copied into
  buffers allocated once; the addresses they go to are those the queries came from, in
  place). Two system calls a batch instead of two a query: on a virtual machine a system
  call costs about a microsecond, as much as the rest of a compiled answer.
- :class:`RecvfromReader` elsewhere (``recvfrom`` and ``sendto``, one call each a query),
  and wherever ``recvmmsg`` cannot be found.
"""

from __future__ import annotations

import ctypes
import errno
import socket
import sys
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dispatcher.dns.service import DnsService

#: Datagrams read per wake-up of a UDP socket (then the event loop runs other work).
UDP_BATCH = 64
#: The longest datagram answered (the longest query there is to answer is far shorter).
MAX_QUERY = 4096
#: The longest answer a batch buffer holds (``max_udp_payload`` is at most 4096); a longer
#: one (there is none today) is sent on its own.
MAX_ANSWER = 4096
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK)
_MAPPED = b"\0" * 10 + b"\xff\xff"


def udp_reader(service: DnsService, sock: socket.socket) -> UdpReader:
    """The reader for ``sock`` (non-blocking, bound): :class:`MmsgReader` where the system
    has ``recvmmsg`` and ``sendmmsg``, else :class:`RecvfromReader`."""
    if _MMSG is not None:
        return MmsgReader(service, sock)
    return RecvfromReader(service, sock)


class UdpReader(Protocol):
    """What the event loop calls when the socket is readable."""

    sock: socket.socket

    def readable(self) -> None: ...


class RecvfromReader:
    """The portable reader: ``recvfrom`` and ``sendto``, a call each a datagram."""

    def __init__(self, service: DnsService, sock: socket.socket) -> None:
        self.service = service
        self.sock = sock

    def readable(self) -> None:
        recvfrom = self.sock.recvfrom
        datagrams: list[bytes] = []
        peers: list[Any] = []
        hosts: list[str] = []
        oversized = 0
        for _ in range(UDP_BATCH):
            try:
                data, peer = recvfrom(MAX_QUERY + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error about an earlier answer
                continue
            if len(data) > MAX_QUERY:
                oversized += 1
                continue
            host = peer[0]
            if host[:7] == "::ffff:" and "." in host:
                host = host[7:]
            datagrams.append(data)
            peers.append(peer)
            hosts.append(host)
        counts = self.service.counts
        if oversized:
            counts["udp_oversized"] += oversized
        if not datagrams:
            return
        sendto = self.sock.sendto
        answers = self.service.answer_datagrams(datagrams, hosts)
        for response, peer in zip(answers, peers, strict=True):
            if response is not None:
                try:
                    sendto(response, peer)
                except (BlockingIOError, InterruptedError):
                    counts["udp_backlog"] += 1
                except OSError:
                    counts["udp_send_failed"] += 1


class _Iovec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("len", ctypes.c_size_t))


class _Msghdr(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    )


class _Mmsghdr(ctypes.Structure):
    _fields_ = (("hdr", _Msghdr), ("len", ctypes.c_uint))


def _functions() -> tuple[Any, Any] | None:
    """libc's ``recvmmsg`` and ``sendmmsg``, or None (not Linux, or not found)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    recvmmsg.argtypes = (
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_void_p,
    )
    sendmmsg.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    recvmmsg.restype = sendmmsg.restype = ctypes.c_int
    return recvmmsg, sendmmsg


_MMSG = _functions()
#: True where :class:`MmsgReader` can run.
HAS_MMSG = _MMSG is not None
_WORD = ctypes.sizeof(ctypes.c_size_t)  # (pointers and sizes: one machine word)
_STRIDE = ctypes.sizeof(_Mmsghdr) // _WORD  # words per mmsghdr
_LEN_AT = _Mmsghdr.len.offset // 4  # msg_len, in 32-bit units from the mmsghdr's start
_STRIDE32 = ctypes.sizeof(_Mmsghdr) // 4
_NAME_SLOT = 32  # bytes per peer address (a sockaddr_in6 is 28)


class MmsgReader:
    """The Linux reader: ``recvmmsg`` and ``sendmmsg``, two system calls a batch.

    Buffers (made once): ``UDP_BATCH`` receive slots of ``MAX_QUERY + 1`` bytes (a datagram
    that fills one was longer than :data:`MAX_QUERY`), the peers' addresses, the same
    number of send slots of :data:`MAX_ANSWER` bytes, and two ``mmsghdr`` arrays: the
    receiving one points at the receive slots and the address slots, the sending one at
    the send slots and, for its *j*-th answer, at the address of the query it answers.
    """

    def __init__(self, service: DnsService, sock: socket.socket) -> None:
        assert _MMSG is not None  # (udp_reader chooses us only then)
        self.service = service
        self.sock = sock
        self._recvmmsg, self._sendmmsg = _MMSG
        self._fd = sock.fileno()
        self._six = sock.family == socket.AF_INET6
        namelen = 28 if self._six else 16
        batch = UDP_BATCH
        size = MAX_QUERY + 1
        # (a c_char array's slice is bytes; typeshed says a list of them)
        self._inbox: Any = ctypes.create_string_buffer(batch * size)
        self._names: Any = ctypes.create_string_buffer(batch * _NAME_SLOT)
        self._outbox = ctypes.create_string_buffer(batch * MAX_ANSWER)
        self._received = (_Mmsghdr * batch)()
        self._sending = (_Mmsghdr * batch)()
        self._in_iov = (_Iovec * batch)()
        self._out_iov = (_Iovec * batch)()
        inbox, outbox = ctypes.addressof(self._inbox), ctypes.addressof(self._outbox)
        self._names_at = names = ctypes.addressof(self._names)
        for i in range(batch):
            self._in_iov[i].base, self._in_iov[i].len = inbox + i * size, size
            self._out_iov[i].base = outbox + i * MAX_ANSWER
            for headers, iov in ((self._received, self._in_iov), (self._sending, self._out_iov)):
                header = headers[i].hdr
                header.name, header.namelen = names + i * _NAME_SLOT, namelen
                header.iov, header.iovlen = ctypes.addressof(iov[i]), 1
        self._lengths = memoryview(self._received).cast("B").cast("I")[_LEN_AT::_STRIDE32]
        self._send_words = memoryview(self._sending).cast("B").cast("N")  # type: ignore[call-overload]
        self._iov_words = memoryview(self._out_iov).cast("B").cast("N")  # type: ignore[call-overload]
        self._outbox_view = memoryview(self._outbox).cast("B")
        self._hosts: dict[bytes, str] = {}

    def readable(self) -> None:
        count = self._recvmmsg(self._fd, self._received, UDP_BATCH, socket.MSG_DONTWAIT, None)
        if count <= 0:  # nothing there (or an ICMP error about an earlier answer)
            return
        inbox, names, hosts = self._inbox, self._names, self._hosts
        size = MAX_QUERY + 1
        datagrams: list[bytes] = []
        addresses: list[str] = []
        slots: list[int] = []
        oversized = 0
        at, named = (8, 24) if self._six else (4, 8)
        for i, length in enumerate(self._lengths[:count].tolist()):
            if length > MAX_QUERY:
                oversized += 1
                continue
            start = i * size
            datagrams.append(inbox[start : start + length])
            peer = names[i * _NAME_SLOT + at : i * _NAME_SLOT + named]
            host = hosts.get(peer)
            if host is None:
                host = self._host(peer)
            addresses.append(host)
            slots.append(i)
        if oversized:
            self.service.counts["udp_oversized"] += oversized
        if datagrams:
            self._send(self.service.answer_datagrams(datagrams, addresses), slots)

    def _host(self, peer: bytes) -> str:
        """The text of a peer's address (IPv4-mapped IPv6 as IPv4), kept for the next time."""
        if len(peer) == 16 and peer[:12] == _MAPPED:
            host = socket.inet_ntop(socket.AF_INET, peer[12:])
        else:
            host = socket.inet_ntop(socket.AF_INET6 if len(peer) == 16 else socket.AF_INET, peer)
        hosts = self._hosts
        if len(hosts) >= 4096:
            hosts.clear()
        hosts[peer] = host
        return host

    def _send(self, answers: list[bytes | None], slots: list[int]) -> None:
        """Send each answer to the address its query came from, in one ``sendmmsg``."""
        outbox, iov, words = self._outbox_view, self._iov_words, self._send_words
        names = self._names_at
        pending = 0
        for answer, slot in zip(answers, slots, strict=True):
            if answer is None:
                continue
            length = len(answer)
            if length > MAX_ANSWER:  # (none is, today)
                self._send_one(answer, slot)
                continue
            start = pending * MAX_ANSWER
            outbox[start : start + length] = answer
            iov[pending * 2 + 1] = length
            words[pending * _STRIDE] = names + slot * _NAME_SLOT
            pending += 1
        done = 0
        while done < pending:
            sent = self._sendmmsg(
                self._fd, ctypes.byref(self._sending, done * _STRIDE * _WORD), pending - done, 0
            )
            if sent > 0:
                done += sent
                continue
            code = ctypes.get_errno()
            if code in _AGAIN:  # the send buffer is full: the rest is dropped
                self.service.counts["udp_backlog"] += pending - done
                return
            if code != errno.EINTR:
                self.service.counts["udp_send_failed"] += 1
                done += 1  # (that one answer; the others may still go)

    def _send_one(self, answer: bytes, slot: int) -> None:
        start = slot * _NAME_SLOT
        peer = self._names[start : start + _NAME_SLOT]
        family = int.from_bytes(peer[:2], sys.byteorder)
        port = int.from_bytes(peer[2:4], "big")
        if family == socket.AF_INET6:
            target: tuple[Any, ...] = (socket.inet_ntop(family, peer[8:24]), port, 0, 0)
        else:
            target = (socket.inet_ntop(socket.AF_INET, peer[4:8]), port)
        try:
            self.sock.sendto(answer, target)
        except (BlockingIOError, InterruptedError):
            self.service.counts["udp_backlog"] += 1
        except OSError:
            self.service.counts["udp_send_failed"] += 1
