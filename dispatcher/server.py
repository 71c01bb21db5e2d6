"""The runner: one object that owns start-up and clean shutdown of a dispatcher.

Order matters and is the point of this module. Start: schema check, registry seed, one
probe round, the admin listener, then the public listener (so the first client already
meets known health). Stop: public listener, admin listener, background tasks, store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import Any

import uvicorn

from dispatcher.admin import AdminApi
from dispatcher.affinity import make_affinity
from dispatcher.app import DispatchApp, DispatchCore
from dispatcher.backends.store import SiteStore, open_store
from dispatcher.config import Config, DispatcherSettings, parse_address
from dispatcher.edge import PublicEdge
from dispatcher.errors import ListenError
from dispatcher.farm import Farm
from dispatcher.http1 import EdgeLimits
from dispatcher.relay import HandoffRelay
from dispatcher.session import HandoffToken

log = logging.getLogger("webfarm.server")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """How long shutdown waits for open connections, and keep-alive idling."""

    graceful_shutdown: float = 5.0
    keep_alive: int = 5


def bind(address: str) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one)."""
    host, port = parse_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ListenError(address, exc.strerror or str(exc)) from None
    sock.setblocking(False)
    return sock


class Listener:
    """One uvicorn server on one pre-bound socket, without uvicorn's signal handling."""

    def __init__(
        self, app: Any, address: str, *, access_log: bool, log_level: str, timeouts: Timeouts
    ) -> None:
        self.address = address
        self.socket = bind(address)
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=access_log,
            log_level=log_level,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=timeouts.keep_alive,
            timeout_graceful_shutdown=int(timeouts.graceful_shutdown),
        )
        config.load()
        self._server = uvicorn.Server(config)
        self._server.lifespan = config.lifespan_class(config)

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    async def start(self) -> None:
        await self._server.startup(sockets=[self.socket])

    async def stop(self) -> None:
        """Stop accepting, let open requests finish (bounded), close the socket."""
        if self._server.started:
            await self._server.shutdown(sockets=[self.socket])
        self.socket.close()


class Runner:
    """Runs one dispatcher: the farm's live state, its admin and public listeners."""

    def __init__(
        self, config: Config, store: SiteStore | None = None, timeouts: Timeouts | None = None
    ) -> None:
        self.config = config
        self.store = store or open_store(config.dispatcher.database_url)
        self.timeouts = timeouts or Timeouts()
        self.farm = Farm(config, self.store)
        self.core: DispatchCore | None = None
        self.public: PublicEdge | None = None
        self.admin: Listener | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        settings = self.config.dispatcher
        await asyncio.to_thread(self.store.check_schema)
        await self.farm.start()
        common: dict[str, Any] = {"log_level": settings.log_level, "timeouts": self.timeouts}
        self.admin = Listener(
            AdminApi(self.farm).app(settings.admin_tokens),
            settings.admin_listen,
            access_log=True,
            **common,
        )
        self.core = dispatch_core(self.farm, settings)
        self.public = PublicEdge(
            self.core,
            bind(settings.listen),
            limits=EdgeLimits.from_settings(settings),
            access_log=settings.access_log,
        )
        await self.admin.start()
        await self.public.start()
        self._tasks.append(
            asyncio.create_task(
                self.farm.run_refresher(settings.registry_refresh), name="registry refresher"
            )
        )
        log.info(
            "dispatching on http://%s (admin on http://%s)", settings.listen, settings.admin_listen
        )

    async def stop(self) -> None:
        if self.public is not None:
            await self.public.stop()
        if self.admin is not None:
            await self.admin.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.farm.stop()
        self.store.close()

    async def serve(self, stop: asyncio.Event) -> None:
        """Start, wait for ``stop`` to be set, stop."""
        try:
            await self.start()
            await stop.wait()
        finally:
            await self.stop()


def dispatch_app(farm: Farm, settings: DispatcherSettings) -> DispatchApp:
    """The decision core as an ASGI app (for embedding in another server)."""
    return DispatchApp(farm, core=dispatch_core(farm, settings))


def dispatch_core(farm: Farm, settings: DispatcherSettings) -> DispatchCore:
    """The decision core as the settings ask: with affinity, and with the hand-off relay
    when there are keys to verify tokens with."""
    affinity = make_affinity(
        settings.affinity,
        settings.secret_keys,
        lifetime=settings.affinity_lifetime,
        cookie_domain=settings.cookie_domain,
        netmask=settings.affinity_netmask,
        netmask6=settings.affinity_netmask6,
    )
    relay = None
    if settings.secret_keys:
        tokens = HandoffToken(settings.secret_keys, lifetime=settings.handoff_lifetime)
        relay = HandoffRelay(tokens, name=settings.handoff_name)
    return DispatchCore(farm, retry_after=settings.retry_after, affinity=affinity, relay=relay)
