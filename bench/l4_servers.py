"""The processes of the layer-4 benchmark: the real servers, and the userspace plane.

``python -m bench.l4_servers real BULK_PORT SHORT_PORT`` runs the real servers on
127.0.0.1 and prints ``ready`` once both ports accept:

- **bulk** (``BULK_PORT``): on every connection, sends the same 16 MiB of random bytes over
  and over with ``sendfile(2)`` from a memfd (no copy through Python, so the source costs
  little CPU) until the peer goes away. One thread per connection.
- **short** (``SHORT_PORT``): a tiny HTTP/1.1 server on uvloop that answers every request
  with ``200 ok`` (2 bytes of body) and closes the connection: one connection per request,
  which is what the connection-rate figure measures.

Both sides of the comparison (HAProxy and the userspace plane) use these same servers.

``python -m bench.l4_servers plane BULK_LISTEN SHORT_LISTEN BULK_PORT SHORT_PORT`` runs the
userspace data plane (one process, uvloop): two TCP virtual services on 127.0.0.1, each in
front of one of those servers (scheduler ``rr``, no health checks), as HAProxy is configured.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import threading
from typing import cast

import uvloop

from farmnode.dataplane.userspace import UserspacePlane
from farmnode.spec import CheckSpec, RealSpec, ServiceSpec
from farmnode.switch.service import VirtualService

BULK_BYTES = 16 * 1024 * 1024
SHORT_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def bulk_source() -> int:
    """A memfd holding :data:`BULK_BYTES` of random data, positioned at 0."""
    fd = os.memfd_create("l4-bulk")
    os.write(fd, os.urandom(BULK_BYTES))
    return fd


def send_forever(conn: socket.socket, source: int) -> None:
    """Send ``source`` round and round over ``conn`` until the peer closes or resets."""
    out = conn.fileno()
    try:
        while True:
            offset = 0
            while offset < BULK_BYTES:
                sent = os.sendfile(out, source, offset, BULK_BYTES - offset)
                if sent == 0:
                    return
                offset += sent
    except OSError:
        return
    finally:
        conn.close()


def serve_bulk(listener: socket.socket, source: int) -> None:
    """Accept loop of the bulk server: one daemon thread per connection."""
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=send_forever, args=(conn, source), daemon=True).start()


class ShortHttp(asyncio.Protocol):
    """Answers the first complete request head with :data:`SHORT_RESPONSE`, then closes."""

    __slots__ = ("head", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.head += data
        if b"\r\n\r\n" in self.head and self.transport is not None:
            self.transport.write(SHORT_RESPONSE)
            self.transport.close()


def listen(port: int) -> socket.socket:
    sock = socket.create_server(("127.0.0.1", port), backlog=4096, reuse_port=False)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve_real(bulk_port: int, short_port: int) -> None:
    stop = stop_event()
    bulk = listen(bulk_port)
    threading.Thread(target=serve_bulk, args=(bulk, bulk_source()), daemon=True).start()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(ShortHttp, sock=listen(short_port), backlog=4096)
    print("ready", flush=True)
    await stop.wait()
    server.close()


async def serve_plane(listen_ports: list[int], real_ports: list[int]) -> None:
    stop = stop_event()
    planes = []
    for name, port, real in zip(("bulk", "short"), listen_ports, real_ports, strict=True):
        spec = ServiceSpec(
            name=name,
            protocol="tcp",
            host="127.0.0.1",
            port=port,
            scheduler="rr",
            real=(RealSpec("127.0.0.1", real),),
            check=CheckSpec(kind="none"),
        )
        plane = UserspacePlane(spec, VirtualService(spec))
        await plane.start()
        planes.append(plane)
    print("ready", flush=True)
    await stop.wait()
    for plane in planes:
        await plane.stop()


USAGE = """usage: python -m bench.l4_servers real BULK_PORT SHORT_PORT
       python -m bench.l4_servers plane BULK_LISTEN SHORT_LISTEN BULK_PORT SHORT_PORT"""


def main(argv: list[str]) -> int:
    ports = [int(a) for a in argv[1:] if a.isdigit()]
    if argv[:1] == ["real"] and len(ports) == len(argv) - 1 == 2:
        uvloop.run(serve_real(*ports))
        return 0
    if argv[:1] == ["plane"] and len(ports) == len(argv) - 1 == 4:
        uvloop.run(serve_plane(ports[:2], ports[2:]))
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
