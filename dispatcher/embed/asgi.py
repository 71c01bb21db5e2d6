"""The embedded dispatcher for ASGI apps (Starlette, FastAPI, plain ASGI).

Same shape as the session middleware: store the app, answer or pass each ``http`` scope.
The decisions live in :class:`~dispatcher.embed.runtime.EmbeddedDispatcher`, shared with the
WSGI twin; this module translates scopes and runs the farm on the server's event loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from urllib.parse import unquote

from dispatcher.app import Passed
from dispatcher.asgi import Message, Receive, Scope, Send
from dispatcher.backends.store import SiteStore
from dispatcher.config import Config
from dispatcher.embed.runtime import EmbeddedDispatcher
from dispatcher.throttle import ThrottledLog

log = logging.getLogger("webfarm.embed")
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
#: The app's lifespan messages after which the farm stops.
_ENDS = ("lifespan.startup.failed", "lifespan.shutdown.complete", "lifespan.shutdown.failed")


class DispatcherMiddleware:
    """The dispatcher's rules and placement in front of an ASGI app that is the registered
    site ``site``, from the dispatcher's ``config`` (a :class:`~dispatcher.config.Config`,
    or the path of its TOML file) and database. See ``docs/embedding.md``.

    An ``http`` request gets the dispatcher's answer (a rule's redirect or status, or a
    redirect to the site placement chose, with the affinity stamp), unless placement keeps
    it here: then it goes on to the app, with the path and query the rules rewrote it to.
    Other scopes (WebSocket) go to the app untouched.

    The farm runs on the server's event loop, in the background: started on
    ``lifespan.startup`` (which it does not hold up: the first probe round must find this
    site serving) and stopped on ``lifespan.shutdown``, also when the app itself does not
    speak lifespan; without lifespan at all (``--lifespan off``), started on the first
    request and never stopped. Requests go to the app as they came until the first
    snapshot exists, and for paths under the ``exempt`` prefixes.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: Config | str | Path,
        *,
        site: str,
        exempt: Iterable[str] = (),
        store: SiteStore | None = None,
    ) -> None:
        self.app = app
        self.dispatcher = EmbeddedDispatcher(config, site, exempt=exempt, store=store)
        self._started = False
        self._faults = ThrottledLog(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http":
            if kind == "lifespan":
                await self._lifespan(scope, receive, send)
            else:
                await self.app(scope, receive, send)
            return
        if not self._started:  # no lifespan from this server
            self._started = True
            await self.dispatcher.start()
        try:
            result = self.dispatcher.decide(scope)
        except Exception:  # a bug must not fail the site's requests: they go to the app
            if self._faults.throttle.hit("decide") is not None:
                log.exception("the embedded dispatcher failed; the request goes to the app")
            result = None
        if result is None:
            await self.app(scope, receive, send)
        elif isinstance(result, Passed):
            await self._pass(result, scope, receive, send)
        else:
            status, headers, body = result
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def _pass(self, passed: Passed, scope: Scope, receive: Receive, send: Send) -> None:
        """On to the app, with the rewritten path and query and the answer's cookies."""
        path, _, query = passed.target.partition(b"?")
        raw = scope.get("raw_path")
        if raw is None:
            raw = scope["path"].encode("utf-8")
        if path != raw or query != scope.get("query_string", b""):
            decoded = unquote(path.decode("latin-1"))  # as uvicorn derives ``path``
            scope = {**scope, "raw_path": path, "path": decoded, "query_string": query}
        cookies = passed.headers
        if not cookies:
            await self.app(scope, receive, send)
            return

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *cookies]}
            await send(message)

        await self.app(scope, receive, send_with_cookies)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Start the farm on startup, stop it after the app's shutdown; the app sees the
        protocol as if the middleware were not there. An app that does not speak lifespan
        (returns or raises before receiving) leaves the protocol to the middleware."""
        received = False

        async def receive_startup() -> Message:
            nonlocal received
            message = await receive()
            received = True
            if message["type"] == "lifespan.startup":
                await self._startup()
            return message

        async def send_shutdown(message: Message) -> None:
            if message["type"] in _ENDS:
                await self.dispatcher.stop()
            await send(message)

        try:
            await self.app(scope, receive_startup, send_shutdown)
        except Exception:
            if received:
                await self.dispatcher.stop()
                raise
            log.debug("the app does not speak lifespan: the middleware answers it alone")
        if not received:
            await self._own_lifespan(receive, send)

    async def _own_lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.dispatcher.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _startup(self) -> None:
        self._started = True
        await self.dispatcher.start()
