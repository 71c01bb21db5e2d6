"""The runner: one object that owns start-up, reload and clean shutdown of a dispatcher.

Order matters and is the point of this module. Start: schema check, registry seed, one
probe round, the admin listener, then the public listener or the worker processes that own
it (so the first client already meets known health). Reload (SIGHUP): the file is validated
first and applied without stopping anything. Stop: public side and admin listener
(gracefully, bounded), background tasks, store (bounded: a hung database does not hold up
the exit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn

from dispatcher.addresses import LISTEN_BACKLOG, bind
from dispatcher.admin import AdminApi
from dispatcher.app import DispatchApp, DispatchCore, FarmState, dispatch_core
from dispatcher.asgi import Receive, Scope, Send
from dispatcher.audit_trail import record_reload, run_pruner
from dispatcher.backends.store import SiteStore, open_store
from dispatcher.clientaddr import TrustedProxyMiddleware, trusted_proxies
from dispatcher.config import Config, DispatcherSettings, load_config
from dispatcher.edge import PublicEdge
from dispatcher.errors import DispatcherError, ListenError
from dispatcher.farm import Farm
from dispatcher.logsetup import configure_logging
from dispatcher.metrics import (
    DispatcherCollector,
    MetricsRoute,
    WorkerCounts,
    WorkerSample,
    exposition,
    token_gate,
)
from dispatcher.opsconfig import admin_tls, listener_tls
from dispatcher.redirect import RewriteError
from dispatcher.reload import plan_reload
from dispatcher.requestid import RequestIds
from dispatcher.sdnotify import Notifier, keep_watchdog
from dispatcher.throttle import throttle_warnings
from dispatcher.tlsfiles import ReloadableTls, start_uvicorn
from dispatcher.vitals import (
    HealthRoutes,
    Readiness,
    Verdict,
    dispatcher_liveness,
    dispatcher_readiness,
)

if TYPE_CHECKING:
    from dispatcher.control import WorkerPool
    from dispatcher.dns.server import DnsFront

log = logging.getLogger("webfarm.server")
#: How long stopping waits for store calls still running, and for the store to close.
STORE_GRACE = 1.5
#: How long a reload may take to read the configuration and rules.
RELOAD_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long shutdown waits for open connections, and keep-alive idling."""

    graceful_shutdown: float = 5.0
    keep_alive: int = 5


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """Limits of a uvicorn listener that strangers can reach (the admin listener: it runs in
    the control process, beside the probes). A head beyond ``max_head`` bytes is answered
    400 and closed (h11's incomplete-event limit); beyond ``max_connections`` at once a new
    request is answered 503. On a TLS listener, a handshake not done within
    ``handshake_timeout`` seconds is dropped (uvicorn sets no bound of its own), and at most
    ``max_connections`` handshakes are under way (the oldest shed for a new one)."""

    max_head: int = 16 * 1024
    max_connections: int = 256
    handshake_timeout: float = 10.0


class Listener:
    """One uvicorn server on one pre-bound socket (``sock``, else one bound to ``address``),
    without uvicorn's signal handling or logging set-up (:mod:`dispatcher.logsetup` routes
    its loggers)."""

    def __init__(
        self,
        app: Any,
        address: str,
        *,
        access_log: bool,
        timeouts: Timeouts,
        sock: socket.socket | None = None,
        limits: ListenerLimits | None = None,
        tls: ReloadableTls | None = None,
    ) -> None:
        self.address = address
        self.tls = tls
        self.handshake_timeout = (limits or ListenerLimits()).handshake_timeout
        self.max_handshakes = (limits or ListenerLimits()).max_connections
        self.socket = sock if sock is not None else bind(address)
        bounded: dict[str, Any] = {}
        if limits is not None:  # h11 bounds a request head, httptools does not
            bounded = {
                "http": "h11",
                "h11_max_incomplete_event_size": limits.max_head,
                "limit_concurrency": limits.max_connections,
            }
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=access_log,
            log_config=None,  # every line through dispatcher.logsetup's handler and format
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=timeouts.keep_alive,
            timeout_graceful_shutdown=math.ceil(timeouts.graceful_shutdown),
            **bounded,
        )
        config.load()
        if limits is not None:  # what a stranger's bad request makes uvicorn warn about
            throttle_warnings(logging.getLogger("uvicorn.error"))
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    async def start(self) -> None:
        await start_uvicorn(
            self._server,
            self.socket,
            self.tls,
            self.handshake_timeout,
            LISTEN_BACKLOG,
            self.max_handshakes,
        )

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (bounded), close the socket."""
        if self._server.started:
            await self._server.shutdown(sockets=[self.socket])
        self.socket.close()


class Swappable:
    """An ASGI app that can be replaced in one step (a reload rebuilds the public app with
    new settings, the admin app with new tokens)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class Runner:
    """Runs one dispatcher: the farm's live state, its admin and public listeners.

    With ``worker_processes`` (``farm-dispatcher serve``) this process is the control
    process and the public listener lives in ``config.dispatcher.workers`` worker processes
    (:class:`~dispatcher.control.WorkerPool`); without, the public app runs in this process
    (tests, ``demo``, embedding). ``reload_config`` reads the configuration again for
    :meth:`reload` (default: the file it came from, with the process environment).
    """

    def __init__(
        self,
        config: Config,
        store: SiteStore | None = None,
        timeouts: Timeouts | None = None,
        *,
        worker_processes: bool = False,
        reload_config: Callable[[], Config] | None = None,
    ) -> None:
        self.config = config
        self.store = store or open_store(
            config.dispatcher.database_url, timeout=config.dispatcher.database_timeout
        )
        settings = config.dispatcher
        self.timeouts = timeouts or Timeouts(
            graceful_shutdown=settings.graceful_timeout,
            keep_alive=max(1, round(settings.keep_alive_timeout)),
        )
        self.farm = Farm(config, self.store)
        self.worker_processes = worker_processes
        self._reload_config = reload_config or (lambda: load_config(config.source))
        self.core: DispatchCore | None = None
        self.public: PublicEdge | None = None
        self.admin: Listener | None = None
        self.workers: WorkerPool | None = None
        self.dns: DnsFront | None = None
        self._admin_app: Swappable | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()
        self.listening = False
        """Set once the public listener (or every worker process) accepts connections."""
        self.stopping = False
        self.stranded = False
        """Set by :meth:`stop` when threads are left stuck in store calls: they would hold up
        the interpreter's exit, so the caller should end the process at once."""

    @property
    def public_port(self) -> int:
        """The public listener's port (the one picked when ``listen`` asks for port 0)."""
        if self.workers is not None:
            return self.workers.port
        if self.public is None:
            raise ListenError(self.config.dispatcher.listen, "not started")
        return self.public.port

    async def start(self) -> None:
        settings = self.config.dispatcher
        await asyncio.to_thread(self.store.check_schema)
        await self.farm.start()
        self._admin_app = Swappable(AdminApi(self.farm).app(settings.admin_tokens))
        metrics = MetricsRoute(
            HealthRoutes(self._admin_app, self.liveness, self.readiness),
            exposition(DispatcherCollector(self.farm, self._worker_counts)),
            token_gate(lambda: self.config.dispatcher),
        )
        self.admin = Listener(
            RequestIds(metrics),
            settings.admin_listen,
            access_log=False,  # the admin app logs every request itself (webfarm.admin.access)
            timeouts=self.timeouts,
            limits=ListenerLimits(
                max_head=settings.max_request_head, handshake_timeout=settings.head_timeout
            ),
            tls=admin_tls(settings),
        )
        await self.admin.start()
        self._pruner = asyncio.create_task(
            run_pruner(self.store, lambda: self.config.dispatcher.audit_retention), name="audit"
        )
        self._start_refresher()  # from now on: worker processes take seconds to start
        if self.worker_processes:
            from dispatcher.control import WorkerPool  # (a cycle: it imports this module)

            self.workers = WorkerPool(
                self.farm,
                settings.listen,
                settings.workers,
                log_level=settings.log_level,
                graceful_timeout=settings.graceful_timeout,
                log_format=settings.log_format,
                dns_listen=self.config.dns.listen if self.config.dns else (),
            )
            await self.workers.start()
            where = f"{settings.workers} worker process(es)"
        else:
            self.core = dispatch_core(self.farm, settings)
            self.public = PublicEdge.for_settings(self.core, bind(settings.listen), settings)
            await self.public.start()
            await self._start_dns()
            where = "this process"
        self.listening = True
        log.info(
            "dispatching on %s://%s (admin on %s://%s): public port %d, admin port %d, %s",
            "http" if listener_tls(settings, "public") is None else "https",
            settings.listen,
            "http" if self.admin.tls is None else "https",
            settings.admin_listen,
            self.public_port,
            self.admin.port,
            where,
        )
        if self.dns_ports:
            log.info("DNS on udp+tcp: port(s) %s", " ".join(map(str, self.dns_ports)))

    @property
    def dns_ports(self) -> list[int]:
        """The DNS front's ports, one per ``[dns] listen`` address (UDP and TCP share it)."""
        if self.workers is not None:
            return [int(a.rpartition(":")[2]) for a in self.workers.dns_addresses]
        return self.dns.ports if self.dns is not None else []

    async def _start_dns(self) -> None:
        """The DNS front in this process (one-process mode), if ``[dns]`` is configured."""
        if self.config.dns is None:
            return
        from dispatcher.dns.server import DnsFront, bind_pair  # (a cycle: it imports us)
        from dispatcher.dns.service import DnsService

        pairs = [bind_pair(address, reuseport=False) for address in self.config.dns.listen]
        service = DnsService(self.farm)
        self.dns = DnsFront(service, pairs)
        self.farm.dns.local = service.report
        await self.dns.start()

    def _start_refresher(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        interval = self.config.dispatcher.registry_refresh
        self._refresher = asyncio.create_task(
            self.farm.run_refresher(interval), name="registry refresher"
        )

    async def reload(self) -> bool:
        """Read the configuration again and apply it (SIGHUP); False if it was refused.

        A file that does not load or does not fit the registry is logged at ERROR and the
        running configuration stays. Settings bound to start-up keep their running value
        and are logged as needing a restart. Nothing is stopped.
        """
        async with self._reloading:
            source = self.config.source
            try:
                async with asyncio.timeout(RELOAD_TIMEOUT):
                    new = await asyncio.to_thread(self._reload_config)
                    plan = plan_reload(self.config, new)
                    self.farm.check_config(plan.config)
                    await self.farm.reconfigure(plan.config)
            except (DispatcherError, RewriteError, TimeoutError) as exc:
                reason = str(exc) or f"reading took over {RELOAD_TIMEOUT:g} s"
                log.error(  # noqa: TRY400 - the message is the whole story
                    "reload of %s refused, the running configuration stays: %s", source, reason
                )
                return False
            old, self.config = self.config, plan.config
            self._apply(old.dispatcher, plan.config.dispatcher)
            log.info("reloaded %s: %s", source, plan.summary())
            await record_reload(self.store, source, plan.applied, plan.needs_restart)
            return True

    def _apply(self, old: DispatcherSettings, new: DispatcherSettings) -> None:
        """Put the settings this process uses itself in force (the workers get theirs with
        the next state, which :meth:`Farm.reconfigure` announced)."""
        if new.admin_tokens != old.admin_tokens and self._admin_app is not None:
            self._admin_app.app = AdminApi(self.farm).app(new.admin_tokens)
        if (new.log_level, new.log_format) != (old.log_level, old.log_format):
            configure_logging(new.log_level, new.log_format)
        if new.registry_refresh != old.registry_refresh:
            self._start_refresher()
        if self.workers is not None:  # for the workers started from now on
            self.workers.graceful_timeout = new.graceful_timeout
            self.workers.log_level, self.workers.log_format = new.log_level, new.log_format
        if self.public is not None and new != old:
            self.core = dispatch_core(self.farm, new)
            self.public.configure(self.core, new)
        elif self.public is not None:
            self.public.reload_tls(new)  # the same files may hold a new certificate
        if self.admin is not None and self.admin.tls is not None:
            self.admin.tls.reload(listener_tls(new, "admin"))

    async def stop(self) -> None:
        """Stop within the graceful timeout plus a few seconds, whatever hangs.

        The public side (workers, or the in-process listener) and the admin listener stop
        together: they stop accepting and let open requests finish within the graceful
        timeout. Then the background tasks end, store calls still running get
        :data:`STORE_GRACE` seconds, and the store is closed (bounded too); if either is
        left hanging, :attr:`stranded` is set.
        """
        self.stopping = True
        stopping = [
            part.stop()
            for part in (self.workers, self.dns, self.public, self.admin)
            if part is not None
        ]
        for failed in await asyncio.gather(*stopping, return_exceptions=True):
            if isinstance(failed, Exception):
                log.error("stopping a listener failed: %s", failed)
        for task in (self._refresher, self._pruner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if not await self.farm.stop(timeout=STORE_GRACE):
            log.error("store calls still running after %g s (a hung database?)", STORE_GRACE)
            self.stranded = True
            return  # closing the store under them would strand their connections
        closing = asyncio.ensure_future(asyncio.to_thread(self.store.close))
        done, _ = await asyncio.wait([closing], timeout=STORE_GRACE)
        if not done:
            log.error("the database did not close within %g s; leaving it", STORE_GRACE)
            self.stranded = True

    async def serve(
        self,
        stop: asyncio.Event,
        reload: asyncio.Event | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        """Start; reload whenever ``reload`` is set; stop once ``stop`` is set.

        ``notifier`` tells the service manager (:mod:`dispatcher.sdnotify`): ready once the
        listeners accept connections, reloading and ready again around each reload,
        stopping; and feeds its watchdog while :meth:`liveness` holds.
        """
        reload = reload or asyncio.Event()
        notify = notifier or Notifier({})
        watchdog: asyncio.Task[None] | None = None
        try:
            await self.start()
            assert self.admin is not None
            notify.ready(
                f"dispatching: public port {self.public_port}, admin port {self.admin.port}"
            )
            watchdog = asyncio.create_task(
                keep_watchdog(notify, lambda: self.liveness().ok), name="watchdog"
            )
            while not stop.is_set():
                stopped = asyncio.ensure_future(stop.wait())
                reloading = asyncio.ensure_future(reload.wait())
                await asyncio.wait([stopped, reloading], return_when="FIRST_COMPLETED")
                stopped.cancel()
                reloading.cancel()
                if reload.is_set() and not stop.is_set():
                    reload.clear()
                    notify.reloading("reloading the configuration")
                    done = await self.reload()
                    notify.ready("reloaded" if done else "reload refused; see the log")
        finally:
            notify.stopping("stopping")
            if watchdog is not None:
                watchdog.cancel()
            await self.stop()

    def _worker_counts(self) -> Sequence[WorkerCounts]:
        """The public side for metrics: the worker processes, or this process as worker 0."""
        if self.workers is not None:
            return self.workers.views()
        edge = self.public
        if edge is None:
            return []
        dns_tcp = len(self.dns.connections) if self.dns is not None else 0
        return [
            WorkerSample(
                0,
                not edge.stopping,
                0,
                edge.open_connections,
                edge.refused_total,
                edge.shed_total,
                dns_tcp,
            )
        ]

    # --- /livez and /readyz (dispatcher.vitals): what was last seen, no I/O ---

    def liveness(self) -> Verdict:
        """The control loop's background work runs; every worker process is live."""
        refresher = self._refresher
        trouble = None
        if refresher is not None and refresher.done() and not self.stopping:
            trouble = "the registry refresher has ended"
        views = self.farm.worker_views
        return dispatcher_liveness(
            control=trouble, workers=None if views is None else list(views())
        )

    def readiness(self) -> Verdict:
        """A snapshot, the first probe round, the public listener, a database that answers."""
        farm = self.farm
        return dispatcher_readiness(
            Readiness(
                loaded=farm.snapshot.revision >= 0,
                probed=farm.started,
                listening=self.listening,
                stopping=self.stopping,
                database_answered=farm.database_answered,
                refreshed=farm.refreshed_at,
                registry_refresh=self.config.dispatcher.registry_refresh,
                now=time.monotonic(),
            )
        )


def dispatch_app(
    farm: FarmState, settings: DispatcherSettings
) -> DispatchApp | TrustedProxyMiddleware:
    """The decision core as an ASGI app (for embedding in another server); behind
    :class:`~dispatcher.clientaddr.TrustedProxyMiddleware` when the settings trust proxies."""
    app = DispatchApp(farm, core=dispatch_core(farm, settings))
    trusted = trusted_proxies(settings.trusted_proxies)
    if trusted is None:
        return app
    return TrustedProxyMiddleware(app, trusted, settings.forwarded_header)
