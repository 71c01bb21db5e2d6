"""Instructions per DNS query, counted by callgrind: a figure that does not move with the
machine's load (dnsperf's CPU figures do, by tens of percent on a shared machine).

``python -m bench.callgrind_dns`` runs this module twice under ``valgrind --tool=callgrind``
(``PYTHONHASHSEED=0``), once with ``--queries`` queries and once with a tenth of them, and
prints the difference in instructions over the difference in queries: the cost of one
query with the start-up, the imports and the warm-up taken out.

The query is ``bench.dns``'s: ``www.farm.example. A`` with RD, EDNS (payload 4096) and a
client subnet option (198.51.100.0/24), each with its own ID, answered from the same
configuration (three sites up in one weighted pool, 10:5:1, one address an answer).

- ``--kind udp`` (the default): through the DNS front's UDP reader on a real loopback
  socket, as a worker serves it. The client is in the same process: it sends a batch of
  :data:`BATCH` queries (``sendto``), the reader is called as the event loop would call
  it when the socket is readable, and the client reads the answers (``recv``); its two
  calls per query are counted too (some two thousand instructions). Callgrind counts user
  space only: what the kernel does for a ``sendto`` is not in the figure.
- ``--kind answer``: :meth:`~dispatcher.dns.service.DnsService.answer_udp` alone, bytes
  in and bytes out, no socket.
- ``--rrl``: response rate limiting on, at a rate no client reaches.

``--drive N`` runs the queries without valgrind (what each valgrind run executes) and
checks the answers: every one a NOERROR with one of the three addresses, the ID echoed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import tempfile
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode

from bench.callgrind_edge import all_up, callgrind_total
from bench.dns import ADDRESSES, ZONE, webfarm_config
from dispatcher.config import Config
from dispatcher.dns.service import DnsService
from dispatcher.dns.udp import udp_reader
from dispatcher.snapshot import Snapshot

QUERIES = 20_000
#: Queries the in-process client sends before the reader drains them (dnsperf keeps 100
#: in flight; the reader takes at most its batch a wake-up).
BATCH = 32
IDS = 256


class _Source:
    def __init__(self, config: Config, snapshot: Snapshot) -> None:
        self.config = config
        self.snapshot = snapshot
        self.dns_history: dict[str, float] = {}


def service(rrl: bool) -> DnsService:
    config, snapshot = all_up(webfarm_config([9001, 9002, 9003], 5353, 1_000_000 if rrl else 0))
    return DnsService(_Source(config, snapshot))


def queries() -> list[bytes]:
    """The query with :data:`IDS` different IDs."""
    made = []
    for ident in range(IDS):
        message = dns.message.make_query(
            "www." + ZONE,
            "A",
            use_edns=0,
            payload=4096,
            options=[dns.edns.ECSOption("198.51.100.0", 24)],
        )
        message.id = ident
        made.append(message.to_wire())
    return made


def drive_answer(count: int, rrl: bool) -> list[bytes]:
    svc = service(rrl)
    wires = queries()
    answer = svc.answer_udp
    last: list[bytes | None] = [None] * IDS
    for i in range(count):  # the measured loop: keep it bare
        last[i % IDS] = answer(wires[i % IDS], "127.0.0.1")
    return [a for a in last if a is not None]


def drive_udp(count: int, rrl: bool) -> list[bytes]:
    svc = service(rrl)
    wires = queries()
    loop = asyncio.new_event_loop()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    server = udp_reader(svc, _udp_socket())
    target = server.sock.getsockname()
    sendto, recv = client.sendto, client.recv
    readable = server.readable
    last: list[bytes] = []
    sent = 0
    while sent < count:  # the measured loop: keep it bare
        batch = min(BATCH, count - sent)
        for i in range(sent, sent + batch):
            sendto(wires[i % IDS], target)
        readable()
        for _ in range(batch):
            last.append(recv(4096))
        sent += batch
        del last[:-IDS]
    server.sock.close()
    client.close()
    loop.close()
    return last


def _udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def check(answers: list[bytes], count: int) -> None:
    assert len(answers) == min(count, IDS), len(answers)
    wanted = {address for address, _ in ADDRESSES}
    for wire in answers:
        message = dns.message.from_wire(wire)
        assert message.rcode() == dns.rcode.NOERROR, message
        found = {rdata.to_text() for rrset in message.answer for rdata in rrset}
        assert len(found) == 1, message
        assert found <= wanted, message


def instructions(count: int, kind: str, rrl: bool, out: Path) -> int:
    """The instructions one run of ``count`` queries executes, all of it."""
    arguments = ["--kind", kind, *(["--rrl"] if rrl else []), "--drive", str(count)]
    return callgrind_total("bench.callgrind_dns", arguments, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind_dns")
    parser.add_argument("--queries", type=int, default=QUERIES)
    parser.add_argument("--kind", choices=("udp", "answer"), default="udp")
    parser.add_argument("--rrl", action="store_true", help="response rate limiting on")
    parser.add_argument("--drive", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive is not None:
        drive = drive_udp if args.kind == "udp" else drive_answer
        check(drive(args.drive, args.rrl), args.drive)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.callgrind_dns: valgrind is missing (apt-get install valgrind)")
    few = args.queries // 10
    with tempfile.TemporaryDirectory(prefix="webfarm-callgrind-") as tmp:
        low = instructions(few, args.kind, args.rrl, Path(tmp) / "low.out")
        high = instructions(args.queries, args.kind, args.rrl, Path(tmp) / "high.out")
    per = (high - low) / (args.queries - few)
    rrl = ", RRL on" if args.rrl else ""
    print(f"{args.kind}{rrl}: {per:,.0f} instructions per query ({args.queries - few} queries)")


if __name__ == "__main__":
    main()
