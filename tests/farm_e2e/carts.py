"""Two small shopping-cart web sites for the end-to-end tests, one ASGI and one WSGI, with
the same pages, and the real servers that run them on a loopback address.

Pages (both apps):

- ``GET /health``: ``OK <site>`` (the dispatcher's probe expects ``OK``).
- ``GET /cart``: JSON ``{"site": <site>, "items": [...]}``.
- ``POST /cart/add`` (form field ``item``) or ``GET /cart/add?item=x``: add one item, then
  ``303`` to ``/cart``. A missing or bad item (1 to 64 printable characters) is a 400.
- ``GET /``: a small HTML shop page listing the cart, with a form that posts to
  ``/cart/add`` (what the browser test clicks).

The cart lives in the farm's signed session (``items`` in the session dict), so the web
servers keep no state: the ASGI app is Starlette behind ``SessionMiddleware``, the WSGI
app is plain WSGI behind ``WSGISessionMiddleware``, served by ``wsgiref`` with a threading
mix-in. Both run the middleware with ``site=<name>`` (hand-off tokens bound to the site
are redeemed), an optional cookie ``domain`` and a ``send_elsewhere`` that sends clients
to :attr:`CartServer.elsewhere` while :attr:`CartServer.draining` is set (never ``/health``,
so a draining site stays healthy in the dispatcher's eyes).

:meth:`CartServer.stop` kills a site for real: the listening socket and every connection
are closed, so the dispatcher's own probes see it down. :meth:`CartServer.start` brings it
back on the same address and port.
"""

from __future__ import annotations

import abc
import asyncio
import html
import json
import threading
from collections import Counter
from collections.abc import Callable
from socketserver import ThreadingMixIn
from typing import Any, Literal
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dispatcher.server import Listener, Timeouts
from dispatcher.session import (
    ENVIRON_KEY,
    HandoffTarget,
    RequestInfo,
    SessionMiddleware,
    SessionOptions,
    WSGISessionMiddleware,
)
from dispatcher.session.wsgi import Environ, StartResponse

Kind = Literal["asgi", "wsgi"]
MAX_ITEM = 64
BAD_ITEM = f"item: 1 to {MAX_ITEM} printable characters"

# --- what both apps do (pure) ------------------------------------------------------------


def items_of(session: dict[str, Any]) -> list[str]:
    """The cart in ``session`` (a new client has none)."""
    items = session.get("items", [])
    return [str(item) for item in items] if isinstance(items, list) else []


def add_item(session: dict[str, Any], form: str) -> bool:
    """Add the ``item`` of the urlencoded ``form`` to the cart; False if it is missing or bad."""
    item = dict(parse_qsl(form)).get("item", "")
    if not 1 <= len(item) <= MAX_ITEM or not item.isprintable():
        return False
    session["items"] = [*items_of(session), item]
    return True


def cart_json(site: str, session: dict[str, Any]) -> dict[str, Any]:
    return {"site": site, "items": items_of(session)}


def shop_page(site: str, session: dict[str, Any]) -> str:
    items = "".join(f"<li>{html.escape(item)}</li>" for item in items_of(session))
    return (
        f"<!doctype html>\n<html><head><title>shop {html.escape(site)}</title></head><body>\n"
        f"<h1>site {html.escape(site)}</h1>\n<ul id=items>{items}</ul>\n"
        '<form method=post action="/cart/add">'
        "<input name=item maxlength=64 required><button type=submit>add</button></form>\n"
        "</body></html>\n"
    )


# --- the ASGI app: Starlette ---------------------------------------------------------------


def starlette_cart(site: str, seen_hosts: set[str]) -> Starlette:
    """The cart as a Starlette app; ``request.session`` is the farm's session."""

    async def health(request: Request) -> Response:
        return PlainTextResponse(f"OK {site}")

    async def cart(request: Request) -> Response:
        seen_hosts.add(request.headers.get("host", ""))
        return JSONResponse(cart_json(site, request.session))

    async def add(request: Request) -> Response:
        seen_hosts.add(request.headers.get("host", ""))
        form = (await request.body()).decode() if request.method == "POST" else request.url.query
        if not add_item(request.session, form):
            return PlainTextResponse(BAD_ITEM, 400)
        return Response(status_code=303, headers={"location": "/cart"})

    async def shop(request: Request) -> Response:
        seen_hosts.add(request.headers.get("host", ""))
        return HTMLResponse(shop_page(site, request.session))

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/cart", cart),
            Route("/cart/add", add, methods=["GET", "POST"]),
            Route("/", shop),
        ]
    )


# --- the WSGI app: plain WSGI ----------------------------------------------------------------


def wsgi_cart(site: str, seen_hosts: set[str]) -> Callable[[Environ, StartResponse], list[bytes]]:
    """The cart as a plain WSGI app; ``environ["webfarm.session"]`` is the farm's session."""

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        path, method = environ.get("PATH_INFO", "/"), environ.get("REQUEST_METHOD", "GET")
        if path == "/health":
            return _answer(start_response, "200 OK", "text/plain", f"OK {site}".encode())
        seen_hosts.add(environ.get("HTTP_HOST", ""))
        session: dict[str, Any] = environ[ENVIRON_KEY]
        if path == "/cart" and method in ("GET", "HEAD"):
            body = json.dumps(cart_json(site, session)).encode()
            return _answer(start_response, "200 OK", "application/json", body)
        if path == "/cart/add" and method in ("GET", "POST"):
            form = _form(environ) if method == "POST" else environ.get("QUERY_STRING", "")
            if not add_item(session, form):
                return _answer(start_response, "400 Bad Request", "text/plain", BAD_ITEM.encode())
            start_response("303 See Other", [("Location", "/cart"), ("Content-Length", "0")])
            return [b""]
        if path == "/" and method in ("GET", "HEAD"):
            page = shop_page(site, session).encode()
            return _answer(start_response, "200 OK", "text/html; charset=utf-8", page)
        return _answer(start_response, "404 Not Found", "text/plain", b"not found")

    return app


def _form(environ: Environ) -> str:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    return bytes(environ["wsgi.input"].read(min(length, 4096))).decode("latin-1")


def _answer(start_response: StartResponse, status: str, kind: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


# --- the servers -----------------------------------------------------------------------------


class CartServer(abc.ABC):
    """One cart site on ``host`` (a loopback address); ``port`` is fixed once first started.

    ``draining`` and ``elsewhere`` drive ``send_elsewhere``; ``seen_hosts`` collects the
    ``Host`` headers of page requests; ``stats`` are the session middleware's counters.
    """

    kind: Kind
    stats: Counter[str]

    def __init__(
        self, name: str, host: str, secret_keys: list[str], *, domain: str | None = None
    ) -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.draining = threading.Event()
        self.elsewhere: HandoffTarget | None = None
        self.seen_hosts: set[str] = set()
        self.secret_keys = secret_keys
        self.domain = domain

    @property
    def address(self) -> str:
        """Where it listens, as a URL on its address (the health check URL's base)."""
        return f"http://{self.host}:{self.port}"

    def session_options(self) -> SessionOptions:
        options: SessionOptions = {"site": self.name, "send_elsewhere": self._send_elsewhere}
        if self.domain is not None:
            options["domain"] = self.domain
        return options

    def _send_elsewhere(self, request: RequestInfo) -> HandoffTarget | None:
        if request.path == "/health" or not self.draining.is_set():
            return None
        return self.elsewhere

    @abc.abstractmethod
    async def start(self) -> None:
        """Listen (again) on ``host:port``; the first start picks a free port."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close the listening socket and every connection; idempotent."""


class ASGICartServer(CartServer):
    """The Starlette cart behind ``SessionMiddleware``, served by uvicorn in this event loop."""

    kind: Kind = "asgi"

    def __init__(
        self, name: str, host: str, secret_keys: list[str], *, domain: str | None = None
    ) -> None:
        super().__init__(name, host, secret_keys, domain=domain)
        self.middleware = SessionMiddleware(
            starlette_cart(name, self.seen_hosts), secret_keys, **self.session_options()
        )
        self.stats = self.middleware.stats
        self._listener: Listener | None = None

    async def start(self) -> None:
        listener = Listener(
            self.middleware,
            f"{self.host}:{self.port}",
            access_log=False,
            timeouts=Timeouts(graceful_shutdown=1.0, keep_alive=1),
        )
        self.port = listener.port
        await listener.start()
        self._listener = listener

    async def stop(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.stop()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per connection; ``server_close`` joins them."""

    daemon_threads = True
    block_on_close = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class WSGICartServer(CartServer):
    """The plain WSGI cart behind ``WSGISessionMiddleware``, served by ``wsgiref`` (threaded)
    in a background thread."""

    kind: Kind = "wsgi"

    def __init__(
        self, name: str, host: str, secret_keys: list[str], *, domain: str | None = None
    ) -> None:
        super().__init__(name, host, secret_keys, domain=domain)
        self.middleware = WSGISessionMiddleware(
            wsgi_cart(name, self.seen_hosts), secret_keys, **self.session_options()
        )
        self.stats = self.middleware.stats
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        server = make_server(
            self.host,
            self.port,
            self.middleware,
            server_class=_ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"wsgiref {self.name}",
            daemon=True,
        )
        self._server = server
        self._thread.start()

    async def stop(self) -> None:
        if self._server is not None:
            server, thread, self._server, self._thread = self._server, self._thread, None, None
            await asyncio.to_thread(_shut_down, server, thread)


def _shut_down(server: WSGIServer, thread: threading.Thread | None) -> None:
    server.shutdown()  # serve_forever returns: no new connections are accepted
    if thread is not None:
        thread.join(timeout=5)
    server.server_close()  # the listening socket closes; request threads are joined


SERVERS: dict[Kind, type[CartServer]] = {"asgi": ASGICartServer, "wsgi": WSGICartServer}


def cart_server(
    kind: Kind, name: str, host: str, secret_keys: list[str], *, domain: str | None = None
) -> CartServer:
    """A (not yet started) cart site of ``kind`` named ``name``, to listen on ``host``."""
    return SERVERS[kind](name, host, secret_keys, domain=domain)
