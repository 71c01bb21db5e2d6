"""Instructions per plain redirect, edge and core, counted by callgrind: a figure that does
not move with the machine's load (wrk's CPU figures do, by 10-20 % on a shared machine).

``python -m bench.callgrind_edge`` runs this module twice under ``valgrind --tool=callgrind``
(``PYTHONHASHSEED=0``), once with ``--requests`` requests and once with a tenth of them,
and prints the difference in instructions over the difference in requests: the cost of one
request with the start-up, the imports and the warm-up taken out.

Each run drives :class:`~dispatcher.http1.HttpConnection` on a :class:`~dispatcher.edge.
PublicEdge` with no socket: a fake transport takes the answers (a C ``deque.append``, so it
costs next to nothing; the real ``write`` is a ``send`` on a socket), and the requests are
wrk's, ``GET /bench/path?x=1`` with a ``Host`` header, one per ``data_received``, kept alive,
spread over 32 connections as ``wrk -c32`` does. The decision core is the one ``python -m
bench.servers dispatcher`` serves (``dispatch_core`` over the bench's configuration: three
sites up in one weighted pool, no rules, no affinity, the hand-off relay on as the bench's
signing keys turn it on). ``--kind bare-edge`` puts the bench's fixed 302 in place of the
core: what the edge alone costs; ``--kind dispatcher-rules`` adds the bench's 50 rules
(``bench/rules50.conf``: none answers the request, so every one is tried).

``--drive N`` runs the requests without valgrind (what each valgrind run executes) and
checks the answers: every one a 302 to a site, kept alive.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from bench.servers import BARE_LOCATION, RULES, FixedAnswer, dispatcher_config
from dispatcher.app import dispatch_core
from dispatcher.backends.health import Health
from dispatcher.config import Config, build_config
from dispatcher.counts import PLACED
from dispatcher.edge import PublicEdge
from dispatcher.http1 import Decider, HttpConnection
from dispatcher.redirect import load_rules
from dispatcher.snapshot import Snapshot, build_snapshot

REQUEST = b"GET /bench/path?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
CONNECTIONS = 32
REQUESTS = 20_000


class FakeTransport:
    """What a connection writes to: the last answer is kept, the rest dropped."""

    __slots__ = ("sent", "write")

    def __init__(self) -> None:
        self.sent: collections.deque[bytes] = collections.deque(maxlen=1)
        self.write = self.sent.append

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else None

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def abort(self) -> None:
        pass


def all_up(text: str, rules: Path | None = None) -> tuple[Config, Snapshot]:
    """The configuration in ``text`` (TOML) and its snapshot with every site up (and the
    rules file ``rules``, if any): what the callgrind harnesses answer from."""
    config = build_config(tomllib.loads(text), environ={}, base_dir=Path())
    snapshot = build_snapshot(
        config,
        revision=1,
        sites=config.sites,
        health=lambda name: Health("up", None),
        loads={},
        rules=None if rules is None else load_rules(rules, known_pools=set(config.pools)),
    )
    return config, snapshot


def drive(requests: int, kind: str) -> None:
    """Answer ``requests`` requests over ``CONNECTIONS`` kept-alive connections, and check
    the answers (each connection's last one)."""
    rules = RULES if kind == "dispatcher-rules" else None
    config, snapshot = all_up(dispatcher_config(8080, [9001, 9002, 9003], rules), rules)
    farm = _Farm(snapshot)
    core: Decider = FixedAnswer(BARE_LOCATION)
    if kind != "bare-edge":
        core = dispatch_core(farm, config.dispatcher)
    loop = asyncio.new_event_loop()
    with socket.socket() as sock:
        edge = PublicEdge(core, sock)
        edge._clock(loop)  # (its clock and Date header, as start() sets them)
        feeds, transports = [], []
        for _ in range(CONNECTIONS):
            conn = HttpConnection(edge)
            transports.append(FakeTransport())
            conn.connection_made(transports[-1])
            feeds.append(conn.data_received)
        for i in range(requests):  # the measured loop: keep it bare
            feeds[i % CONNECTIONS](REQUEST)
        for transport in transports[: min(requests, CONNECTIONS)]:  # each one answered
            _check(transport.sent[-1] if transport.sent else b"", kind)
        if kind != "bare-edge":
            counted = {name: cell[PLACED] for name, cell in snapshot.placed.items()}
            assert sum(counted.values()) == requests, counted
        assert len(edge.connections) == CONNECTIONS
    loop.close()


class _Farm:
    def __init__(self, snapshot: Any) -> None:
        self.snapshot = snapshot


def _check(answer: bytes, kind: str) -> None:
    head = answer.split(b"\r\n")
    assert head[0] == b"HTTP/1.1 302 Found", answer
    assert b"connection: close" not in answer.lower(), answer
    location = next(h for h in head if h.lower().startswith(b"location: "))
    if kind != "bare-edge":
        assert re.fullmatch(rb"location: http://127\.0\.0\.1:900[123]/bench/path\?x=1", location)


def instructions(requests: int, kind: str, out: Path) -> int:
    """The instructions one run of ``requests`` requests executes, all of it."""
    return callgrind_total("bench.callgrind_edge", ["--kind", kind, "--drive", str(requests)], out)


def callgrind_total(module: str, arguments: list[str], out: Path) -> int:
    """The instructions ``python -m module arguments`` executes under callgrind
    (``PYTHONHASHSEED=0``), all of it; the profile goes to ``out``."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        "-m",
        module,
        *arguments,
    ]
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    text = out.read_text(encoding="ascii", errors="replace")
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise SystemExit(f"{module}: no totals in {out}")
    return int(found.group(1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind_edge")
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument(
        "--kind", choices=("dispatcher", "dispatcher-rules", "bare-edge"), default="dispatcher"
    )
    parser.add_argument("--drive", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive is not None:
        drive(args.drive, args.kind)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("bench.callgrind_edge: valgrind is missing (apt-get install valgrind)")
    few = args.requests // 10
    with tempfile.TemporaryDirectory(prefix="webfarm-callgrind-") as tmp:
        low = instructions(few, args.kind, Path(tmp) / "low.out")
        high = instructions(args.requests, args.kind, Path(tmp) / "high.out")
    per = (high - low) / (args.requests - few)
    print(f"{args.kind}: {per:,.0f} instructions per request ({args.requests - few} requests)")


if __name__ == "__main__":
    main()
