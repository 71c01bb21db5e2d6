"""A worker process: the public listener and the hot path, on the latest state it was sent.

The control process (:mod:`dispatcher.control`) starts each worker as
``python -m dispatcher.worker --fd N --parent PID`` with one end of a socketpair. The
worker reads its :class:`~dispatcher.wire.Setup` and first
:class:`~dispatcher.wire.WorkerState`, builds its snapshot, binds the public address with
``SO_REUSEPORT`` and says ``ready``. From then on it

- applies every state it is sent (builds the snapshot itself, compiles the rules when their
  text changed, rebuilds the public app when the configuration changed, reads its TLS files
  again after each reload of the control process) and acks it;
- sends its redirect counts every :data:`COUNTS_INTERVAL` seconds (also when there are
  none: a worker that stays silent for long is taken as hung and replaced);
- never waits on the control process: it writes without waiting for the pipe to drain, and
  if the pipe dies it keeps serving its last state until its parent is gone;
- stops on SIGTERM: stops accepting, lets open requests finish within the graceful timeout.

It ignores SIGINT and SIGHUP (a terminal's Ctrl-C or hang-up reaches the whole process
group; the control process decides), runs at a worse scheduling priority than its parent
once it is serving (:data:`WORKER_NICENESS`) so a busy hot path cannot starve the probes
(starting up, it competes as an equal: a restart under load should not crawl), and asks the kernel
for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so it never outlives it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import TypeVar

import uvloop

from dispatcher.addresses import bind
from dispatcher.app import DispatchCore, dispatch_core
from dispatcher.config import Config
from dispatcher.counts import RedirectCounts
from dispatcher.dns.server import DnsFront, bind_pair
from dispatcher.dns.service import DnsService
from dispatcher.edge import PublicEdge
from dispatcher.errors import ConfigError, DispatcherError
from dispatcher.logsetup import LOG_FORMATS, LOG_LEVELS, configure_logging
from dispatcher.placement.locate import Locator
from dispatcher.placement.pool import Where
from dispatcher.redirect import RewriteError, RewriteProgram, compile_rules
from dispatcher.snapshot import Snapshot, build_snapshot, locator_for
from dispatcher.wire import (
    MAX_FRAME,
    RulesText,
    Setup,
    WireError,
    WorkerState,
    decode_state,
    encode_dns,
    encode_redirects,
    encode_report,
    health_of,
    read_frame,
)

log = logging.getLogger("webfarm.worker")
T = TypeVar("T")

#: How much nicer than the control process a worker runs (``nice`` steps).
WORKER_NICENESS = 10
#: How often a worker sends its redirect counts, in seconds.
COUNTS_INTERVAL = 0.5
#: How often a worker whose pipe died checks that its parent still lives.
PARENT_CHECK = 0.5
#: Reports a worker buffers for a control process that does not read before it drops them.
MAX_UNSENT = 4 * 1024 * 1024
PR_SET_PDEATHSIG = 1


class WorkerFarm:
    """The hot path's view (:class:`~dispatcher.app.FarmState`): the snapshot this worker
    built last, the configuration it was built with (what the DNS front reads, see
    :class:`~dispatcher.dns.service.DnsSource`) and the redirects counted since the last
    report (:meth:`install` puts a snapshot in force, its predecessor's counts kept)."""

    def __init__(self, snapshot: Snapshot, config: Config) -> None:
        self.snapshot = snapshot
        self.config = config
        self.redirects = RedirectCounts()
        self.redirects.follow(snapshot.placed)
        self.dns_history: Mapping[str, float] = {}

    def install(self, snapshot: Snapshot) -> None:
        """Put ``snapshot`` in force (the counts made in the one it replaces are kept)."""
        self.redirects.follow(snapshot.placed)
        self.snapshot = snapshot


class StateBuilder:
    """Turns the states a worker is sent into snapshots (pure but for rule compilation).

    Each snapshot is built from the previous one, so rotations carry on across states; the rules are
    compiled only when their text, origin or the pools change, and a program that no longer
    compiles (a map file gone) leaves the previous one running.
    """

    def __init__(self) -> None:
        self._previous: Snapshot | None = None
        self._rules: RewriteProgram | None = None
        self._rules_key: tuple[object, ...] | None = None
        self._locator: Locator | None = None
        self._locator_key: tuple[object, ...] | None = None

    def build(self, state: WorkerState) -> Snapshot:
        config = state.config
        snapshot = build_snapshot(
            config,
            revision=state.revision,
            sites=state.sites,
            health=health_of(state.health),
            loads=state.loads,
            previous=self._previous,
            rules=self._compiled(state.rules, config),
            where=Where(self._located(config), state.rtt),
        )
        self._previous = snapshot
        return snapshot

    def _located(self, config: Config) -> Locator | None:
        """The locator for ``config``, built again only when what it is built from changed;
        one that cannot be built (a database file gone since the control process checked
        it) leaves the previous one in use."""
        policies = tuple(pool.policy for pool in config.pools.values())
        key = (config.networks, config.dispatcher.geoip_database, policies)
        if key != self._locator_key:
            try:
                self._locator = locator_for(config)
            except ConfigError as exc:
                log.error("cannot locate clients here, keeping the running locator: %s", exc)  # noqa: TRY400 - the message is the whole story
            self._locator_key = key
        return self._locator

    def _compiled(self, rules: RulesText | None, config: Config) -> RewriteProgram | None:
        if rules is None:
            self._rules, self._rules_key = None, None
            return None
        key = (rules.text, rules.origin, tuple(config.pools), config.rules_base_dir)
        if key != self._rules_key:
            try:
                self._rules = compile_rules(
                    rules.text,
                    filename=rules.origin,
                    base_dir=config.rules_base_dir,
                    known_pools=config.pools,
                )
            except RewriteError as exc:
                log.error("the rules no longer compile here, keeping the running ones: %s", exc)  # noqa: TRY400 - the message is the whole story
            self._rules_key = key
        return self._rules


class Worker:
    """One worker's life: set up, serve, apply states, report, stop."""

    def __init__(self, channel: socket.socket, parent: int) -> None:
        self.channel = channel
        self.parent = parent
        self.builder = StateBuilder()
        self.farm: WorkerFarm | None = None
        self.core: DispatchCore | None = None
        self.edge: PublicEdge | None = None
        self.dns: DnsFront | None = None
        self.config: Config | None = None
        self.reloads = 0
        self.stop = asyncio.Event()
        self.fields: dict[str, int] = {}
        """What every log line of this worker carries (its index, once it is known)."""
        self._writer: asyncio.StreamWriter | None = None

    async def run(self) -> None:
        reader, self._writer = await asyncio.open_unix_connection(sock=self.channel)
        setup = await _expect(reader, Setup)
        self.fields = {"worker": setup.index}
        state = await _expect(reader, WorkerState)
        self.apply(state)
        settings = state.config.dispatcher
        host = f"[{setup.host}]" if ":" in setup.host else setup.host
        address = f"{host}:{setup.port}"
        assert self.core is not None  # set by apply
        self.edge = listener = PublicEdge.for_settings(
            self.core, bind(address, reuseport=True), settings
        )
        await listener.start()
        if setup.dns:
            assert self.farm is not None  # set by apply
            pairs = [bind_pair(a, reuseport=True) for a in setup.dns]
            self.dns = DnsFront(DnsService(self.farm), pairs)
            await self.dns.start()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        os.nice(WORKER_NICENESS)  # once started: a restart under load should not crawl
        self._report({"type": "ready", "pid": os.getpid(), "generation": state.generation})
        log.info(
            "worker %d (pid %d) serving on %s://%s",
            setup.index,
            os.getpid(),
            listener.scheme,
            address,
        )
        tasks = [
            asyncio.create_task(self._read(reader), name="states"),
            asyncio.create_task(self._send_counts(), name="counts"),
        ]
        try:
            await self.stop.wait()
        finally:
            if self.dns is not None:
                await self.dns.stop()
            await listener.stop()
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._flush_counts()
            self._writer.close()

    def apply(self, state: WorkerState) -> None:
        """Build the snapshot ``state`` describes and put it in force (no await inside)."""
        snapshot = self.builder.build(state)
        if self.farm is None:
            self.farm = WorkerFarm(snapshot, state.config)
        if self.core is None or state.config != self.config:
            settings = state.config.dispatcher
            self.core = dispatch_core(self.farm, settings)
            if self.edge is not None:  # the core, the limits, the trusted proxies
                self.edge.configure(self.core, settings)
            self.config = state.config
            configure_logging(settings.log_level, settings.log_format, fields=self.fields)
        elif state.reloads != self.reloads and self.edge is not None:
            self.edge.reload_tls(state.config.dispatcher)  # renewed files at the same paths
        self.reloads = state.reloads
        self.farm.config = state.config  # (before the snapshot: the DNS front reads them)
        self.farm.dns_history = state.dns_history
        self.farm.install(snapshot)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while (payload := await read_frame(reader, MAX_FRAME)) is not None:
                message = decode_state(payload)
                if isinstance(message, WorkerState):
                    self.apply(message)
                    self._report({"type": "ack", "generation": message.generation})
        except (WireError, OSError) as exc:
            log.error("worker pid %d: the control channel failed: %s", os.getpid(), exc)  # noqa: TRY400 - the message is the whole story
            if self._writer is not None:
                self._writer.close()  # the control process sees it closed and replaces us
        log.warning(
            "worker pid %d: no more states from the control process; serving the last one "
            "until the parent is gone",
            os.getpid(),
        )
        while os.getppid() == self.parent:
            await asyncio.sleep(PARENT_CHECK)
        log.warning("worker pid %d: the control process is gone; stopping", os.getpid())
        self.stop.set()

    async def _send_counts(self) -> None:
        while True:
            await asyncio.sleep(COUNTS_INTERVAL)
            self._flush_counts()

    def _flush_counts(self) -> None:
        """Report the counts (also when there are none: the report says this worker lives)."""
        farm = self.farm
        if farm is None:
            return
        report: dict[str, object] = {"type": "counts", **encode_redirects(farm.redirects.take())}
        edge = self.edge
        if edge is not None:  # totals since this worker started (the control adds them up)
            report["edge"] = {
                "connections": edge.open_connections,
                "refused": edge.refused_total,
                "shed": edge.shed_total,
                "dns_tcp": len(self.dns.connections) if self.dns is not None else 0,
            }
        if self.dns is not None:  # (since the last report)
            report.update(encode_dns(self.dns.service.take_report()))
        self._report(report)

    def _report(self, message: dict[str, object]) -> None:
        """Send without waiting; drop it when the control process does not keep up."""
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > MAX_UNSENT:
            return
        writer.write(encode_report(message))


async def _expect(reader: asyncio.StreamReader, kind: type[T]) -> T:
    payload = await read_frame(reader, MAX_FRAME)
    if payload is None:
        raise WireError(f"the control process closed the channel before sending {kind.__name__}")
    message = decode_state(payload)
    if not isinstance(message, kind):
        raise WireError(f"expected {kind.__name__}, got {type(message).__name__}")
    return message


def die_with_parent(parent: int) -> bool:
    """Ask for SIGTERM when the parent dies; False if it is already gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent


def run(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dispatcher.worker")
    parser.add_argument("--fd", type=int, required=True, help="the control channel's fd")
    parser.add_argument("--parent", type=int, required=True, help="the control process's pid")
    parser.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    parser.add_argument("--log-format", default="text", choices=LOG_FORMATS)
    args = parser.parse_args(argv)
    if not die_with_parent(args.parent):
        return 1
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    configure_logging(args.log_level, args.log_format)
    channel = socket.socket(fileno=args.fd)
    worker = Worker(channel, args.parent)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(worker.run())
    except (WireError, DispatcherError, OSError) as exc:
        log.error("worker pid %d cannot run: %s", os.getpid(), exc)  # noqa: TRY400 - the message is the whole story
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run())
