"""The control process's side of the worker processes: start them, feed them, keep them.

:class:`WorkerPool` reserves the public address (bound with ``SO_REUSEPORT``, never
listening: it learns the port when port 0 is configured and keeps it while workers come and
go), starts ``workers`` processes (:mod:`dispatcher.worker`, a fresh interpreter each, not a
fork of this one), ships the farm's state to every worker after each change
(:meth:`~dispatcher.farm.Farm.worker_state`, newest only: a slow worker skips the states it
missed), adds up their redirect counts, and restarts a worker that dies (after a short
backoff that grows while it keeps dying). The others keep answering meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dispatcher.addresses import bind
from dispatcher.config import parse_address
from dispatcher.dns.server import bind_pair
from dispatcher.errors import DispatcherError
from dispatcher.farm import Farm
from dispatcher.sdnotify import VARIABLES
from dispatcher.wire import (
    MAX_REPORT,
    Report,
    Setup,
    WireError,
    decode_report,
    encode_state,
    read_frame,
)

log = logging.getLogger("webfarm.control")

#: How long a new worker may take to say it is ready before it is killed and retried.
STARTUP_TIMEOUT = 30.0
#: The first restart waits this long; it doubles while a worker keeps dying young.
MIN_BACKOFF, MAX_BACKOFF = 0.1, 5.0
#: A worker that lived this long resets the backoff.
STABLE_AFTER = 10.0
#: A worker that sends nothing (it reports every 0.5 s) for this long is hung: replaced.
HUNG_AFTER = 15.0


class WorkerError(DispatcherError):
    """The worker processes could not be started."""


@dataclass(frozen=True, slots=True)
class WorkerView:
    """One worker as the status shows it: its pid, the state generation it acked last."""

    index: int
    pid: int | None
    ready: bool
    generation: int
    restarts: int
    silence: float | None = None
    """Seconds since the worker last reported (``None``: not since it started)."""
    connections: int = 0
    """Public connections open in the worker, as it last reported."""
    refused: int = 0
    """Connections answered 503 at the limit, by every worker this slot has had."""
    shed: int = 0
    """Idle connections closed to make room, by every worker this slot has had."""
    dns_tcp: int = 0
    """The DNS front's TCP connections open in the worker, as it last reported."""


@dataclass(slots=True)
class _Slot:
    """One worker position; a restarted worker takes its predecessor's slot."""

    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    generation: int = -1
    sent: int = -1
    restarts: int = 0
    heard: float | None = None
    edge: Mapping[str, int] = field(default_factory=dict)  # the current worker's report
    carried: Counter[str] = field(default_factory=Counter)  # its predecessors' totals
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    first_ready: asyncio.Event = field(default_factory=asyncio.Event)

    def view(self) -> WorkerView:
        pid = self.proc.pid if self.proc is not None else None
        silence = None if self.heard is None else time.monotonic() - self.heard
        edge, carried = self.edge, self.carried
        return WorkerView(
            self.index,
            pid,
            self.ready,
            self.generation,
            self.restarts,
            silence,
            connections=edge.get("connections", 0) if self.ready else 0,
            refused=carried["refused"] + edge.get("refused", 0),
            shed=carried["shed"] + edge.get("shed", 0),
            dns_tcp=edge.get("dns_tcp", 0) if self.ready else 0,
        )

    def retire(self) -> None:
        """The worker is gone: keep its totals for the slot, forget its gauges."""
        self.carried.update({k: v for k, v in self.edge.items() if k in ("refused", "shed")})
        self.edge = {}


class WorkerPool:
    """``count`` worker processes serving ``listen`` from ``farm``'s state."""

    def __init__(
        self,
        farm: Farm,
        listen: str,
        count: int,
        *,
        log_level: str,
        graceful_timeout: float,
        log_format: str = "text",
        dns_listen: Sequence[str] = (),
    ) -> None:
        self.farm = farm
        self.listen = listen
        self.log_level = log_level
        self.log_format = log_format
        self.graceful_timeout = graceful_timeout
        self._slots = [_Slot(i) for i in range(count)]
        self._generation = 0
        self._frame = b""
        self._shipped_at = 0.0
        self._dirty = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reserved: socket.socket | None = None
        self.dns_listen = tuple(dns_listen)
        self._dns_reserved: list[tuple[socket.socket, socket.socket | None]] = []
        self.dns_addresses: tuple[str, ...] = ()
        self._start_failed = asyncio.Event()
        self.host, self.port = parse_address(listen)
        self.hung_after = HUNG_AFTER

    # --- life cycle ---

    async def start(self) -> None:
        """Reserve the address, start every worker, return once all of them answer."""
        self._reserved = bind(self.listen, reuseport=True, listen=False)
        self.port = int(self._reserved.getsockname()[1])
        self._reserve_dns()
        self._publish_now()
        self.farm.on_change = self._dirty.set
        self.farm.worker_views = self.views
        self._tasks.append(asyncio.create_task(self._publisher(), name="state publisher"))
        for slot in self._slots:
            self._tasks.append(asyncio.create_task(self._keep(slot), name=f"worker {slot.index}"))
        ready = asyncio.ensure_future(self._all_ready())
        failed = asyncio.ensure_future(self._start_failed.wait())
        await asyncio.wait([ready, failed], timeout=STARTUP_TIMEOUT, return_when="FIRST_COMPLETED")
        ready.cancel()
        failed.cancel()
        if not all(slot.first_ready.is_set() for slot in self._slots):
            await self.stop()
            raise WorkerError(
                f"the worker processes did not start within {STARTUP_TIMEOUT:g} s"
                if not self._start_failed.is_set()
                else "a worker process failed to start (see the log above)"
            )
        self._release_udp()

    def _reserve_dns(self) -> None:
        """Reserve each DNS address as the public one is (TCP bound, never listening), and
        its UDP port with a bound socket until the workers have bound theirs: a bound UDP
        socket takes its share of the datagrams, so this one is closed once every worker
        is ready (the workers' sockets hold the port from then on)."""
        addresses = []
        for address in self.dns_listen:
            tcp, udp = bind_pair(address, reuseport=True, listen=False)
            self._dns_reserved.append((tcp, udp))
            host, _ = parse_address(address)
            shown = f"[{host}]" if ":" in host else host
            addresses.append(f"{shown}:{tcp.getsockname()[1]}")
        self.dns_addresses = tuple(addresses)

    def _release_udp(self) -> None:
        for index, (tcp, udp) in enumerate(self._dns_reserved):
            if udp is not None:
                udp.close()
                self._dns_reserved[index] = (tcp, None)

    async def _all_ready(self) -> None:
        for slot in self._slots:
            await slot.first_ready.wait()

    async def stop(self) -> None:
        """SIGTERM every worker; each finishes its open requests within the graceful
        timeout. Workers still there a second later are killed."""
        self._stopping.set()
        self.farm.on_change = None
        self.farm.worker_views = None
        for slot in self._slots:
            _signal(slot.proc, signal.SIGTERM)
        keepers = self._tasks[1:]
        if keepers:
            await asyncio.wait(keepers, timeout=self.graceful_timeout + 1.0)
        for slot in self._slots:
            if slot.proc is not None and slot.proc.poll() is None:
                log.error(
                    "worker %d (pid %d) did not stop in time: killed", slot.index, slot.proc.pid
                )
                _signal(slot.proc, signal.SIGKILL)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._reserved is not None:
            self._reserved.close()
        for tcp, udp in self._dns_reserved:
            tcp.close()
            if udp is not None:
                udp.close()

    def views(self) -> list[WorkerView]:
        return [slot.view() for slot in self._slots]

    @property
    def generation(self) -> int:
        """The generation of the newest state shipped."""
        return self._generation

    # --- shipping states ---

    def _publish_now(self) -> None:
        self._generation += 1
        self._frame = encode_state(self.farm.worker_state(self._generation))
        self._shipped_at = time.monotonic()
        for slot in self._slots:
            slot.wake.set()

    async def _publisher(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                self._publish_now()
            except Exception:  # a bug must not end shipping for good
                log.exception("could not build the workers' state")

    async def _send(self, slot: _Slot, writer: asyncio.StreamWriter) -> None:
        """Write the newest state whenever there is one this worker has not had."""
        while True:
            await slot.wake.wait()
            slot.wake.clear()
            if slot.sent < self._generation:
                slot.sent = self._generation
                try:
                    writer.write(self._frame)
                    await writer.drain()
                except OSError:  # the worker is gone: its reader sees the end and reaps it
                    return

    # --- one worker ---

    async def _keep(self, slot: _Slot) -> None:
        """Run a worker in ``slot``; when it dies, start another (unless stopping)."""
        backoff = MIN_BACKOFF
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self._run_one(slot)
            except (OSError, WireError) as exc:
                log.error("worker %d failed: %s", slot.index, exc)  # noqa: TRY400 - the message is the whole story
            except Exception:  # a bug must not leave the slot empty for good
                log.exception("worker %d failed unexpectedly", slot.index)
            if self._stopping.is_set():
                return
            if not slot.first_ready.is_set():  # at start-up: fail, do not retry
                self._start_failed.set()
                return
            if time.monotonic() - started > STABLE_AFTER:
                backoff = MIN_BACKOFF
            log.warning("worker %d: starting a new one in %.1f s", slot.index, backoff)
            stopping = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait([stopping], timeout=backoff)
            stopping.cancel()
            backoff = min(backoff * 2, MAX_BACKOFF)
            slot.restarts += 1

    async def _run_one(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        started = time.monotonic()
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    sys.executable,
                    "-m",
                    "dispatcher.worker",
                    f"--fd={theirs.fileno()}",
                    f"--parent={os.getpid()}",
                    f"--log-level={self.log_level}",
                    f"--log-format={self.log_format}",
                ],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=worker_environment(os.environ),
            )
        finally:
            theirs.close()
        slot.proc, slot.ready, slot.generation, slot.sent = proc, False, -1, -1
        slot.heard = None
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        sender: asyncio.Task[None] | None = None
        try:
            writer.write(encode_state(Setup(slot.index, self.host, self.port, self.dns_addresses)))
            sender = asyncio.create_task(self._send(slot, writer), name=f"states {slot.index}")
            slot.wake.set()
            await self._listen(slot, reader, started)
        finally:
            if sender is not None:
                sender.cancel()
            writer.close()
            slot.ready = False
            slot.retire()
            status = await self._reap(proc)
            if not self._stopping.is_set():
                log.warning(
                    "worker %d (pid %d) is gone (%s)", slot.index, proc.pid, _describe(status)
                )

    async def _listen(self, slot: _Slot, reader: asyncio.StreamReader, started: float) -> None:
        """Handle the worker's reports until its channel closes."""
        async with asyncio.timeout(STARTUP_TIMEOUT) as startup:
            report = await self._next(reader)
            if report is None or report.kind != "ready":
                raise WireError("the worker did not start (see its log above)")
            startup.reschedule(None)
        slot.ready, slot.generation, pid = True, report.generation, report.pid
        slot.heard = time.monotonic()
        slot.first_ready.set()
        log.info(
            "worker %d started (pid %d, ready in %.0f ms)",
            slot.index,
            report.pid,
            (time.monotonic() - started) * 1000,
        )
        while True:
            try:
                async with asyncio.timeout(self.hung_after):
                    report = await self._next(reader)
            except TimeoutError:
                log.error(  # noqa: TRY400 - no traceback to tell
                    "worker %d (pid %d) sent nothing for %g s: hung, replacing it",
                    slot.index,
                    pid,
                    self.hung_after,
                )
                _signal(slot.proc, signal.SIGKILL)
                return
            if report is None:
                return
            slot.heard = time.monotonic()
            if report.kind == "ack":
                slot.generation = report.generation
                if report.generation == self._generation:
                    log.debug(
                        "worker %d has state %d (%.1f ms after it was built)",
                        slot.index,
                        report.generation,
                        (time.monotonic() - self._shipped_at) * 1000,
                    )
            elif report.kind == "counts":
                if report.redirects:
                    self.farm.add_redirects(report.redirects)
                if report.edge is not None:
                    slot.edge = report.edge
                if report.dns is not None:
                    self.farm.dns.add(report.dns)

    async def _next(self, reader: asyncio.StreamReader) -> Report | None:
        payload = await read_frame(reader, MAX_REPORT)
        return None if payload is None else decode_report(payload)

    async def _reap(self, proc: subprocess.Popen[bytes]) -> int:
        """Wait for ``proc`` to end: SIGTERM if it is still there, SIGKILL after the
        graceful timeout."""
        deadline = time.monotonic() + self.graceful_timeout + 1.0
        if proc.poll() is None and not self._stopping.is_set():
            _signal(proc, signal.SIGTERM)
        while proc.poll() is None:
            if time.monotonic() > deadline:
                _signal(proc, signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(0.02)
        return proc.returncode


def worker_environment(environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """A worker's environment: ours without ``FARM_*`` (the secrets it needs come over its
    channel, and it needs few: no admin tokens, no database URL) and without the service
    manager's notification variables (only the control process speaks to systemd)."""
    return {k: v for k, v in environ.items() if not k.startswith("FARM_") and k not in VARIABLES}


def _signal(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _describe(status: int) -> str:
    if status < 0:
        return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"
