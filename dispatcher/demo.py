"""``farm-dispatcher demo``: a dispatcher in front of three small sites, all on loopback.

Everything lives in a temporary directory (config file and SQLite database) that is
removed when the demo stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path

from dispatcher.asgi import Receive, Scope, Send
from dispatcher.backends.store import open_store
from dispatcher.config import load_config
from dispatcher.server import Listener, Runner, Timeouts

DEMO_TOKEN = "demo-token"  # noqa: S105 - a loopback-only demo's published token
DEMO_SITES = (("eu", 2), ("us", 1), ("asia", 1))


class DemoSite:
    """A tiny web site: ``/health`` says OK, every other page says which site it is."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        text = "OK\n"
        if scope["path"] != "/health":
            query = scope["query_string"].decode("latin-1")
            text = f"Hello from site {self.name}: {scope['path']}{'?' if query else ''}{query}\n"
        body = text.encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def demo_config(port: int, site_ports: list[int]) -> str:
    sites = "".join(
        f"""
[[sites]]
name = "{name}"
base_url = "http://127.0.0.1:{site_port}"
weight = {weight}
check = {{ url = "/health", expect = "OK", interval = 1.0, timeout = 0.5, rise = 2, fall = 2 }}
"""
        for (name, weight), site_port in zip(DEMO_SITES, site_ports, strict=True)
    )
    return f"""# webfarm demo configuration (written by `farm-dispatcher demo`)
[dispatcher]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{port + 1}"
database_url = "sqlite:///farm.db"
admin_tokens = ["{DEMO_TOKEN}"]

[pools.default]
policy = "weighted"
fallback = "sorry"
{sites}"""


async def run_demo(stop: asyncio.Event, *, port: int = 8080) -> None:
    """Run the demo until ``stop`` is set."""
    timeouts = Timeouts(graceful_shutdown=1.0)
    with tempfile.TemporaryDirectory(prefix="webfarm-demo-") as tmp:
        sites = [
            Listener(
                DemoSite(name),
                f"127.0.0.1:{port + 921 + i}",
                access_log=False,
                timeouts=timeouts,
            )
            for i, (name, _) in enumerate(DEMO_SITES)
        ]
        config_file = Path(tmp) / "farm.toml"
        config_file.write_text(demo_config(port, [s.port for s in sites]), encoding="utf-8")
        config = load_config(config_file, environ={})
        store = open_store(
            config.dispatcher.database_url, timeout=config.dispatcher.database_timeout
        )
        await asyncio.to_thread(store.upgrade)
        runner = Runner(config, store, timeouts)
        try:
            for site in sites:
                await site.start()
            await runner.start()
            print(_instructions(port, sites), flush=True)
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await runner.stop()
            for site in sites:
                await site.stop()
            print("\nwebfarm demo stopped.", flush=True)


def _instructions(port: int, sites: list[Listener]) -> str:
    auth = f"-H 'Authorization: Bearer {DEMO_TOKEN}'"
    site_lines = "\n".join(
        f"    {name:5} http://127.0.0.1:{site.port}"
        for (name, _), site in zip(DEMO_SITES, sites, strict=True)
    )
    return f"""
webfarm demo: a dispatcher on http://127.0.0.1:{port} in front of three sites
{site_lines}
admin API on http://127.0.0.1:{port + 1} (token: {DEMO_TOKEN})

Try:
  curl -i 'http://127.0.0.1:{port}/shop/cart?item=42'       # a 302 to one of the sites
  curl -sL 'http://127.0.0.1:{port}/hello'                  # follow it
  curl -s {auth} http://127.0.0.1:{port + 1}/api/v1/status
  curl -s -X POST {auth} http://127.0.0.1:{port + 1}/api/v1/sites/eu/drain
  curl -s -X POST {auth} http://127.0.0.1:{port + 1}/api/v1/sites/eu/undrain

Ctrl-C stops everything.
"""
