"""A headless Chromium (Debian's ``/usr/bin/chromium``) driven over the Chrome DevTools
Protocol with the ``websockets`` package: just enough to walk a journey like a person would
(navigate, wait for the page to load, read it, submit a form, read the cookie jar).

How the network rule is kept (test traffic to loopback only):

- **Names.** ``--host-resolver-rules`` maps the farm's names to their loopback addresses,
  then ``MAP * ~NOTFOUND``: every other name fails to resolve inside the browser, so no DNS
  query leaves the machine (``localhost`` is left to the system, i.e. ``/etc/hosts``).
- **Everything else.** ``--proxy-server`` points at a loopback port that this process holds
  bound but never listens on, so any request not on the bypass list (the farm's names and
  loopback addresses) is refused on the spot instead of going out.
- **Background traffic.** ``--disable-background-networking``, ``--disable-component-update``,
  ``--disable-sync``, ``--disable-extensions``, ``--no-first-run``, and WebRTC held to the
  proxy (``--force-webrtc-ip-handling-policy=disable_non_proxied_udp``), so no UDP either.
- **DevTools** listens on 127.0.0.1 (``--remote-debugging-port=0``: a free port, read from
  ``DevToolsActivePort`` in the profile); the client ignores proxy settings.

The browser runs in its own session (process group) with a fresh profile in a temporary
directory. :meth:`Browser.close` asks it to quit, kills its process group if it does not
(only that group, by its id), and removes the directory, also after a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

CHROMIUM = "/usr/bin/chromium"
START_LIMIT = 20.0  # seconds for the browser to start and open DevTools
STEP_LIMIT = 10.0  # seconds for one command or one page load
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # we run as root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-component-update",
    "--disable-sync",
    "--metrics-recording-only",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--remote-debugging-port=0",
)


class BrowserError(Exception):
    """The browser failed to start, a command failed, or a page did not load in time."""


def resolver_rules(hosts: Mapping[str, str]) -> str:
    """``--host-resolver-rules``: the mapped names, and nothing else resolves."""
    maps = [f"MAP {name} {address}" for name, address in hosts.items()]
    return ", ".join([*maps, "MAP * ~NOTFOUND", "EXCLUDE localhost"])


class Browser:
    """A headless Chromium, started by :meth:`start` (or ``async with``), with pages from
    :meth:`new_page`. ``hosts`` maps names to loopback addresses (see the module doc)."""

    def __init__(self, hosts: Mapping[str, str], executable: str = CHROMIUM) -> None:
        self.hosts = dict(hosts)
        self.executable = executable
        self._dir: Path | None = None
        self._blackhole: socket.socket | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    async def __aenter__(self) -> Browser:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # --- life cycle ---

    async def start(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="farm-chromium-"))
        profile = self._dir / "profile"
        self._blackhole = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._blackhole.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
        proxy = f"http://127.0.0.1:{self._blackhole.getsockname()[1]}"
        bypass = ";".join([*self.hosts, *sorted(set(self.hosts.values()))])
        args = [
            self.executable,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--host-resolver-rules={resolver_rules(self.hosts)}",
            f"--proxy-server={proxy}",
            f"--proxy-bypass-list={bypass}",
            "about:blank",
        ]
        with (self._dir / "chromium.log").open("wb") as log:
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        port, path = await self._devtools_address(profile / "DevToolsActivePort")
        self._ws = await connect(
            f"ws://127.0.0.1:{port}{path}",
            proxy=None,
            max_size=2**24,
            ping_interval=None,
            open_timeout=STEP_LIMIT,
            close_timeout=2,
        )
        self._reader = asyncio.create_task(self._read(self._ws), name="cdp reader")

    async def _devtools_address(self, active_port: Path) -> tuple[int, str]:
        """The port and path Chromium writes once DevTools listens (bounded wait)."""
        deadline = time.monotonic() + START_LIMIT
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrowserError(f"chromium exited with {self._process.returncode}: {self.log()}")
            with contextlib.suppress(FileNotFoundError, ValueError):
                port, path = active_port.read_text().split("\n")[:2]
                if path.startswith("/devtools/browser/"):
                    return int(port), path
            await asyncio.sleep(0.05)
        raise BrowserError(f"chromium did not open DevTools within {START_LIMIT}s: {self.log()}")

    def log(self, limit: int = 2000) -> str:
        """The end of the browser's own output, for error messages."""
        if self._dir is None:
            return ""
        try:
            return (self._dir / "chromium.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    async def close(self) -> None:
        """Quit the browser (killing its process group if it will not), remove its profile."""
        if self._ws is not None:
            with contextlib.suppress(BrowserError, ConnectionClosed, TimeoutError):
                await self.send("Browser.close", timeout=3)
            await self._ws.close()
            self._ws = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._process is not None:
            await asyncio.to_thread(_end, self._process)
            self._process = None
        if self._blackhole is not None:
            self._blackhole.close()
            self._blackhole = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    # --- the protocol ---

    async def send(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = STEP_LIMIT,
    ) -> dict[str, Any]:
        """Send one command (to a page when ``session`` is given); its result, or
        :class:`BrowserError` with the protocol's error."""
        if self._ws is None:
            raise BrowserError(f"{method}: the browser is not running")
        message: dict[str, Any] = {"id": next(self._ids), "method": method}
        message["params"] = dict(params or {})
        if session is not None:
            message["sessionId"] = session
        reply = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = reply
        try:
            await self._ws.send(json.dumps(message))
            answer = await asyncio.wait_for(reply, timeout)
        finally:
            self._pending.pop(message["id"], None)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def _read(self, ws: ClientConnection) -> None:
        """Route replies to their callers and events to their page's queue."""
        try:
            async for raw in ws:
                message = json.loads(raw)
                reply = self._pending.get(message.get("id", -1))
                if reply is not None and not reply.done():
                    reply.set_result(message)
                elif "method" in message:
                    self.events(message.get("sessionId", "")).put_nowait(message)
        except ConnectionClosed:
            pass
        finally:
            for reply in self._pending.values():
                if not reply.done():
                    reply.set_exception(BrowserError("the browser closed the DevTools connection"))

    def events(self, session: str) -> asyncio.Queue[dict[str, Any]]:
        """The queue of events from one page (``session``; ``""``: the browser itself)."""
        return self._events.setdefault(session, asyncio.Queue())

    async def new_page(self) -> Page:
        """A new tab on ``about:blank``, attached and with page events on."""
        target = await self.send("Target.createTarget", {"url": "about:blank"})
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"])
        await page.send("Page.enable")
        return page

    async def cookies(self) -> list[dict[str, Any]]:
        """Every cookie the browser holds (``name``, ``value``, ``domain``, ``path``, ...)."""
        result = await self.send("Storage.getCookies")
        cookies: list[dict[str, Any]] = result["cookies"]
        return cookies


class Page:
    """One tab. Loads are awaited through ``Page.loadEventFired``: each action that
    navigates first empties the tab's event queue, so only its own load counts."""

    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    async def send(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.send(method, params, session=self.session)

    async def navigate(self, url: str) -> str:
        """Go to ``url`` (following redirects) and wait for the load; the final URL."""
        self._forget_events()
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        await self._loaded(f"the page at {url}")
        return await self.location()

    async def submit(self, selector: str, fields: Mapping[str, str]) -> str:
        """Fill ``fields`` (input name -> value) of the form at ``selector``, submit it as a
        click on its button would, and wait for the page it leads to; the final URL."""
        script = (
            f"(() => {{ const form = document.querySelector({json.dumps(selector)});"
            f" for (const [name, value] of Object.entries({json.dumps(dict(fields))}))"
            " form.elements.namedItem(name).value = value;"
            " form.requestSubmit(); return true; })()"
        )
        self._forget_events()
        await self.evaluate(script)
        await self._loaded(f"the answer to form {selector}")
        return await self.location()

    async def evaluate(self, expression: str, *, await_promise: bool = False) -> Any:
        """The JSON value of ``expression`` in the page; :class:`BrowserError` if it throws."""
        result = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def location(self) -> str:
        return str(await self.evaluate("location.href"))

    async def text(self) -> str:
        return str(await self.evaluate("document.body.innerText"))

    async def fetch_json(self, path: str) -> Any:
        """``fetch(path)`` from the page, with its cookies, as parsed JSON."""
        script = f"fetch({json.dumps(path)}, {{credentials: 'same-origin'}}).then(r => r.json())"
        return await self.evaluate(script, await_promise=True)

    def _forget_events(self) -> None:
        queue = self.browser.events(self.session)
        while not queue.empty():
            queue.get_nowait()

    async def _loaded(self, what: str) -> None:
        queue = self.browser.events(self.session)
        deadline = time.monotonic() + STEP_LIMIT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"{what} did not load within {STEP_LIMIT}s")
            try:
                event = await asyncio.wait_for(queue.get(), left)
            except TimeoutError:
                continue
            if event["method"] == "Page.loadEventFired":
                return


def _end(process: subprocess.Popen[bytes], limit: float = 5.0) -> None:
    """Let the browser quit (``limit`` seconds), then end its whole process group (whose
    id is the browser's pid: ``start_new_session``), so no renderer or helper outlives it.

    The browser is reaped only after the group is signalled: until then its pid, and so
    the group id, cannot be reused by anything else.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and not _exited(process.pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=limit)


def _exited(pid: int) -> bool:
    """Whether ``pid`` (our child) has exited, without reaping it."""
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    return os.waitid(os.P_PID, pid, flags) is not None
