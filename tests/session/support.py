"""Test apps with one behaviour in three shapes (Starlette, plain ASGI, plain WSGI), and the
real servers that run them on loopback: uvicorn and wsgiref, each in a thread."""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dispatcher.asgi import Receive, Scope, Send
from dispatcher.session.wsgi import Environ, StartResponse, WSGIApp

START_TIMEOUT = 10.0


class FakeClock:
    """A wall clock that stands still until advanced (Unix seconds)."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def act(path: str, query: str, session: dict[str, Any]) -> tuple[int, bytes]:
    """The one behaviour of every test app: change the session as the path says, then
    answer JSON with the session and the request target."""
    params = dict(parse_qsl(query))
    if path == "/set":
        session[params["key"]] = params["value"]
    elif path == "/append":
        items = session.setdefault("items", [])
        items.append(params["value"])
    elif path == "/clear":
        session.clear()
    elif path == "/big":
        session["big"] = secrets.token_urlsafe(int(params["size"]))
    target = f"{path}?{query}" if query else path
    return 200, json.dumps({"session": session, "target": target}).encode()


def starlette_app() -> Starlette:
    async def endpoint(request: Request) -> Response:
        status, body = act(request.url.path, request.url.query, request.session)
        return Response(body, status, media_type="application/json")

    return Starlette(routes=[Route("/{rest:path}", endpoint)])


async def plain_asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    query = scope["query_string"].decode("latin-1")
    status, body = act(scope["path"], query, scope["session"])
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def plain_wsgi_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    session = environ["webfarm.session"]
    status, body = act(environ["PATH_INFO"], environ.get("QUERY_STRING", ""), session)
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    start_response(f"{status} OK", headers)
    return [body]


def forwarded_proto(app: WSGIApp) -> WSGIApp:
    """What werkzeug's ``ProxyFix(x_proto=1)`` does, in front of the session middleware:
    trust ``X-Forwarded-Proto`` (here: from the test client on loopback)."""

    def wrapped(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        proto = environ.get("HTTP_X_FORWARDED_PROTO")
        if proto in ("http", "https"):
            environ["wsgi.url_scheme"] = proto
        return app(environ, start_response)

    return wrapped


class Served:
    """A server running an app on 127.0.0.1 in a background thread."""

    url: str

    def stop(self) -> None:
        raise NotImplementedError


class UvicornThread(Served):
    """uvicorn with ``--proxy-headers`` trusting loopback, as behind a TLS proxy."""

    def __init__(self, app: Any) -> None:
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(64)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_level="critical",
            access_log=False,
            proxy_headers=True,
            forwarded_allow_ips="127.0.0.1",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )
        self.thread.start()
        _wait_for(lambda: self.server.started, "uvicorn to start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.socket.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class WSGIRefThread(Served):
    """The standard library's reference WSGI server."""

    def __init__(self, app: WSGIApp) -> None:
        self.server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(timeout=5)
        self.server.server_close()


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {START_TIMEOUT} s for {what}")
        time.sleep(0.01)
