"""What the embedding tests run: a Starlette site and a Flask site (each answers ``/health``
with ``OK`` and every other page with what it received, as JSON), the real servers that run
them on loopback (uvicorn with lifespan, waitress), and the farm's configuration."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from wsgiref.types import WSGIApplication

import uvicorn
from flask import Flask, Response, request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from waitress.server import BaseWSGIServer, create_server

from tests.conftest import dispatcher_table

START_TIMEOUT = 10.0
RULES = r"""RewriteEngine on
RewriteRule ^/old$ /new [R=301,L]
RewriteRule ^/away$ http://elsewhere.example.org/landing [R=302,L]
RewriteRule ^/secret - [F]
RewriteRule ^/legacy/(.*)$ /v2/$1?from=legacy [QSA]
RewriteRule ^/track$ - [CO=seen:1:.example.com:60]
RewriteRule ^/region/(.*)$ ${site:default}/r/$1 [R=302,L]
"""
KEYS = "embed-test-key"
CHECK = "interval = 0.3, timeout = 2, rise = 1, fall = 3"  # patient: a busy machine


def listening() -> socket.socket:
    """A TCP socket listening on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    return f"http://127.0.0.1:{sock.getsockname()[1]}"


def farm_config(
    tmp_path: Path, database_url: str, *, eu: str, us: str, policy: str = "failover"
) -> Path:
    """The dispatcher's configuration: "us" first (failover), then "eu" (the embedding
    site), cookie affinity, the test rules; written to ``tmp_path``, its path returned."""
    (tmp_path / "rules.conf").write_text(RULES)
    extra = f'rules = "rules.conf"\naffinity = "cookie"\nsecret_keys = ["{KEYS}"]'
    blocks = "".join(
        f"""
[[sites]]
name = "{name}"
base_url = "{url}"
check = {{ url = "/health", expect = "OK", {CHECK} }}
"""
        for name, url in (("us", us), ("eu", eu))
    )
    path = tmp_path / "farm.toml"
    path.write_text(
        f'{dispatcher_table(database_url, extra)}\n[pools.default]\npolicy = "{policy}"\n{blocks}'
    )
    return path


# --- the sites ----------------------------------------------------------------------------


def starlette_site() -> Starlette:
    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("OK")

    async def page(request: Request) -> JSONResponse:
        seen = {
            "path": request.scope["path"],
            "raw_path": request.scope["raw_path"].decode("latin-1"),
            "query": request.scope["query_string"].decode("latin-1"),
            "session": request.scope.get("session"),
        }
        response = JSONResponse(seen)
        response.set_cookie("app", "1")
        return response

    return Starlette(routes=[Route("/health", health), Route("/{rest:path}", page)])


def flask_site() -> Flask:
    app = Flask("embedded")

    @app.route("/health")
    def health() -> str:
        return "OK"

    @app.route("/", defaults={"rest": ""})
    @app.route("/<path:rest>")
    def page(rest: str) -> Response:
        environ = request.environ
        seen = {
            "path": environ["SCRIPT_NAME"] + environ["PATH_INFO"],
            "script_name": environ["SCRIPT_NAME"],
            "path_info": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"],
            "request_uri": environ.get("REQUEST_URI"),
            "session": environ.get("webfarm.session"),
        }
        response = Response(json.dumps(seen), content_type="application/json")
        response.set_cookie("app", "1")
        return response

    return app


# --- the servers --------------------------------------------------------------------------


class Served:
    """A real server running an app on a listening socket, in a background thread."""

    url: str

    def stop(self) -> None:
        raise NotImplementedError


class UvicornServer(Served):
    """uvicorn, lifespan on (the middleware starts and stops the farm with it)."""

    def __init__(
        self, app: Any, sock: socket.socket, *, lifespan: Literal["on", "off"] = "on"
    ) -> None:
        self.socket = sock
        self.url = url_of(sock)
        config = uvicorn.Config(
            app, lifespan=lifespan, log_level="warning", timeout_graceful_shutdown=1
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        wait_for(lambda: self.server.started, "uvicorn to start", timeout=START_TIMEOUT + 5)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


class WaitressServer(Served):
    """waitress, with a few threads (the middleware decides for several at once)."""

    def __init__(self, app: WSGIApplication, sock: socket.socket) -> None:
        self.url = url_of(sock)
        server = create_server(app, sockets=[sock], threads=8)
        assert isinstance(server, BaseWSGIServer)
        self.server = server
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.close()
        self.thread.join(timeout=10)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what}")
        time.sleep(0.02)
