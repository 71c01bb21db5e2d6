"""The servers a benchmark measures, each run alone in its own process (one worker).

``python -m bench.servers dispatcher PORT`` runs the dispatcher's hot path in front of
three loopback sites; ``dispatcher-rules`` the same with the 50-rule set ``rules50.conf``;
``dispatcher-affinity`` the same with cookie affinity (signed ``farm_site`` stamps);
``python -m bench.servers bare PORT`` runs the peer: a bare ASGI app
that answers every request with the same 302, on the same uvicorn settings (the same
:class:`~dispatcher.server.Listener`, httptools, uvloop, no access log).

The dispatcher kinds answer on the public edge the workers run (:mod:`dispatcher.edge`);
``dispatcher-uvicorn`` and ``dispatcher-rules-uvicorn`` serve the same decision core as the
ASGI :class:`~dispatcher.app.DispatchApp` on uvicorn (the edge before issue 12), to compare;
``bare-edge`` is the bare app's fixed 302 on the dispatcher's own edge.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
import tempfile
from asyncio.subprocess import DEVNULL
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from dispatcher.addresses import bind
from dispatcher.app import Answer, DispatchApp
from dispatcher.asgi import Receive, Scope, Send
from dispatcher.backends.store import open_store
from dispatcher.config import load_config
from dispatcher.demo import DemoSite
from dispatcher.edge import PublicEdge
from dispatcher.server import Listener, Runner, Timeouts

TIMEOUTS = Timeouts(graceful_shutdown=1.0)
BARE_LOCATION = b"http://127.0.0.1:9001/bench/path?x=1"


class BareRedirect:
    """The peer: the same 302 the dispatcher sends, with nothing behind it."""

    def __init__(self, location: bytes) -> None:
        self.headers = [(b"location", location), (b"content-length", b"0")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 302, "headers": self.headers})
        await send({"type": "http.response.body", "body": b""})


class FixedAnswer:
    """The same 302 as a decision core would give it, for the public edge."""

    def __init__(self, location: bytes) -> None:
        self.headers = [(b"content-length", b"0"), (b"location", location)]

    def answer(self, scope: Scope) -> Answer:
        return 302, list(self.headers), b""

    def answer_wire(self, scope: Scope, url: bytes, host: bytes | None) -> Answer:
        return 302, list(self.headers), b""


async def serve_bare_edge(port: int, stop: asyncio.Event) -> None:
    """The fixed 302 on the dispatcher's own public edge (dispatcher.edge)."""
    edge = PublicEdge(FixedAnswer(BARE_LOCATION), bind(f"127.0.0.1:{port}"))
    await edge.start()
    print("ready", flush=True)
    await stop.wait()
    await edge.stop()


async def serve_bare(port: int, stop: asyncio.Event) -> None:
    listener = Listener(
        BareRedirect(BARE_LOCATION),
        f"127.0.0.1:{port}",
        access_log=False,
        timeouts=TIMEOUTS,
    )
    await listener.start()
    print("ready", flush=True)
    await stop.wait()
    await listener.stop()


RULES = Path(__file__).with_name("rules50.conf")
REGIONS = ("eu", "us", "asia")


#: The bench's signing keys (the affinity servers' and the returning clients' stamps).
KEYS = ("bench-old-key-0123456789", "bench-new-key-0123456789")


def dispatcher_config(
    port: int, site_ports: list[int], rules: Path | None = None, affinity: str = "off"
) -> str:
    """Three sites in the default pool; with rules, one more in each regional pool."""
    placed = [(f"s{i}", "default", p) for i, p in enumerate(site_ports)]
    if rules is not None:
        placed += [(region, region, p) for region, p in zip(REGIONS, site_ports, strict=True)]
    sites = "".join(
        f'\n[[sites]]\nname = "{name}"\npool = "{pool}"\nbase_url = "http://127.0.0.1:{p}"\n'
        'check = { url = "/health", expect = "OK", interval = 2.0 }\n'
        for name, pool, p in placed
    )
    pools = "".join(f"[pools.{region}]\n" for region in REGIONS) if rules else ""
    rules_line = f'rules = "{rules}"\n' if rules else ""
    keys = ", ".join(f'"{k}"' for k in KEYS)
    affinity_lines = f'affinity = "{affinity}"\nsecret_keys = [{keys}]\n'
    return (
        f'[dispatcher]\nlisten = "127.0.0.1:{port}"\nadmin_listen = "127.0.0.1:0"\n'
        f'database_url = "sqlite:///farm.db"\nadmin_tokens = ["bench"]\nlog_level = "warning"\n'
        f'{rules_line}{affinity_lines}\n[pools.default]\npolicy = "weighted"\n{pools}{sites}'
    )


async def start_sites() -> list[Listener]:
    """The three loopback sites the dispatcher kinds send clients to, started."""
    sites = [
        Listener(
            DemoSite(f"s{i}"),
            "127.0.0.1:0",
            access_log=False,
            timeouts=TIMEOUTS,
        )
        for i in range(3)
    ]
    for site in sites:
        await site.start()
    return sites


async def serve_dispatcher_rules(port: int, stop: asyncio.Event) -> None:
    await serve_dispatcher(port, stop, RULES)


async def serve_dispatcher_uvicorn(port: int, stop: asyncio.Event) -> None:
    await serve_dispatcher(port, stop, uvicorn=True)


async def serve_dispatcher_rules_uvicorn(port: int, stop: asyncio.Event) -> None:
    await serve_dispatcher(port, stop, RULES, uvicorn=True)


async def serve_dispatcher_affinity(port: int, stop: asyncio.Event) -> None:
    await serve_dispatcher(port, stop, affinity="cookie")


async def serve_dispatcher(
    port: int,
    stop: asyncio.Event,
    rules: Path | None = None,
    affinity: str = "off",
    *,
    uvicorn: bool = False,
) -> None:
    with tempfile.TemporaryDirectory(prefix="webfarm-bench-") as tmp:
        sites = await start_sites()
        config_file = Path(tmp) / "farm.toml"
        ports = [s.port for s in sites]
        public = 0 if uvicorn else port  # the uvicorn edge takes the port instead
        config_file.write_text(dispatcher_config(public, ports, rules, affinity))
        config = load_config(config_file, environ={})
        store = open_store(config.dispatcher.database_url)
        store.upgrade()
        runner = Runner(config, store, TIMEOUTS)
        await runner.start()
        old_edge = None
        if uvicorn:
            assert runner.core is not None
            app = DispatchApp(runner.farm, core=runner.core)
            old_edge = Listener(app, f"127.0.0.1:{port}", access_log=False, timeouts=TIMEOUTS)
            await old_edge.start()
        print("ready", flush=True)
        await stop.wait()
        if old_edge is not None:
            await old_edge.stop()
        await runner.stop()
        for site in sites:
            await site.stop()


async def serve_processes(port: int, stop: asyncio.Event, workers: int) -> None:
    """``farm-dispatcher serve`` as deployed: a control process and ``workers`` worker
    processes (children of this one, so the bench counts their CPU), in front of three
    loopback sites served by this process."""
    with tempfile.TemporaryDirectory(prefix="webfarm-bench-") as tmp:
        sites = await start_sites()
        config_file = Path(tmp) / "farm.toml"
        text = dispatcher_config(port, [s.port for s in sites])
        config_file.write_text(
            text.replace("[dispatcher]\n", f"[dispatcher]\nworkers = {workers}\n")
        )
        command = [sys.executable, "-m", "dispatcher", "--log-level", "warning"]
        upgrade = await asyncio.create_subprocess_exec(
            *command, "db", "upgrade", "--config", str(config_file), stdout=DEVNULL
        )
        await upgrade.wait()
        serve = await asyncio.create_subprocess_exec(
            *command, "serve", "--config", str(config_file), stdout=DEVNULL
        )
        try:
            await _until_answering(port, serve)
            print("ready", flush=True)
            await stop.wait()
        finally:
            if serve.returncode is None:
                serve.terminate()
            await serve.wait()
            for site in sites:
                await site.stop()


async def _until_answering(port: int, process: asyncio.subprocess.Process) -> None:
    """Wait (30 s at most) until ``port`` answers a request with a redirect."""
    for _ in range(300):
        if process.returncode is not None:
            raise SystemExit("bench: farm-dispatcher serve exited")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            head = await reader.read(12)
            writer.close()
            if head.startswith(b"HTTP/1.1 30"):
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise SystemExit("bench: farm-dispatcher serve did not answer within 30 s")


async def main(kind: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    servers: dict[str, Callable[[int, asyncio.Event], Awaitable[None]]] = {
        "bare": serve_bare,
        "bare-edge": serve_bare_edge,
        "dispatcher": serve_dispatcher,
        "dispatcher-rules": serve_dispatcher_rules,
        "dispatcher-affinity": serve_dispatcher_affinity,
        "dispatcher-uvicorn": serve_dispatcher_uvicorn,
        "dispatcher-rules-uvicorn": serve_dispatcher_rules_uvicorn,
        "serve-workers-1": functools.partial(serve_processes, workers=1),
        "serve-workers-2": functools.partial(serve_processes, workers=2),
    }
    await servers[kind](port, stop)


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(sys.argv[1], int(sys.argv[2])))
