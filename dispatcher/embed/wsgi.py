"""The embedded dispatcher for WSGI apps (plain WSGI, Flask, Django...), PEP 3333.

The decisions live in :class:`~dispatcher.embed.runtime.EmbeddedDispatcher`, shared with the
ASGI twin. The farm (prober, refresher) runs on an event loop of its own in a daemon thread;
request threads read its snapshots and decide one at a time (a lock: the policies' rotation
and the affinity templates are not for concurrent threads; it costs well under 1 µs).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote_to_bytes
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from dispatcher.app import Passed
from dispatcher.backends.store import SiteStore
from dispatcher.config import Config
from dispatcher.embed.runtime import EmbeddedDispatcher
from dispatcher.throttle import ThrottledLog

log = logging.getLogger("webfarm.embed")
OptExcInfo = (
    tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None] | None
)
#: How long :meth:`WSGIDispatcherMiddleware.close` waits for the farm's thread to end.
CLOSE_TIMEOUT = 5.0
_REASONS = {status.value: status.phrase for status in HTTPStatus}
#: What :func:`urllib.parse.quote` leaves alone in a path rebuilt from ``PATH_INFO``
#: (RFC 3986 ``pchar`` and ``/``), as servers that keep no raw target send it.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


class WSGIDispatcherMiddleware:
    """The dispatcher's rules and placement in front of a WSGI app that is the registered
    site ``site``, from the dispatcher's ``config`` (a :class:`~dispatcher.config.Config`,
    or the path of its TOML file) and database. See ``docs/embedding.md``.

    A request gets the dispatcher's answer (a rule's redirect or status, or a redirect to
    the site placement chose, with the affinity stamp), unless placement keeps it here:
    then it goes on to the app, with ``PATH_INFO``, ``SCRIPT_NAME``, ``QUERY_STRING`` (and
    ``REQUEST_URI``/``RAW_URI`` where the server sets them) as the rules rewrote them.

    The farm runs in a daemon thread with its own event loop, started by the first request
    (when the server is serving: the first probe round must find this site up) or by
    :meth:`start`, and stopped by :meth:`close` or at interpreter exit. A process forked
    after it started (``gunicorn --preload``) starts its own on its first request,
    answering from the inherited snapshot meanwhile. Requests go to the app as they came
    until the first snapshot exists (``dispatcher.ready``), and for paths under the
    ``exempt`` prefixes.
    """

    def __init__(
        self,
        app: WSGIApplication,
        config: Config | str | Path,
        *,
        site: str,
        exempt: Iterable[str] = (),
        store: SiteStore | None = None,
    ) -> None:
        self.app = app
        self.dispatcher = EmbeddedDispatcher(config, site, exempt=exempt, store=store)
        self._deciding = threading.Lock()
        self._starting = threading.Lock()
        self._thread: _LoopThread | None = None
        self._closed = False
        self._faults = ThrottledLog(log)
        forked = weakref.WeakMethod(self._forked)
        os.register_at_fork(after_in_child=lambda: _call(forked))
        at_exit(weakref.WeakMethod(self.close))

    def start(self) -> None:
        """Start the farm's thread now if it is not running (else the first request does);
        ``dispatcher.ready`` is set once the first snapshot exists."""
        with self._starting:
            if self._thread is None and not self._closed:
                self._thread = _LoopThread(self.dispatcher)

    def close(self) -> None:
        """Stop the farm's thread (bounded: :data:`CLOSE_TIMEOUT`); the last snapshot keeps
        answering. Idempotent; also run at interpreter exit (:func:`at_exit`)."""
        with self._starting:
            thread, self._closed = self._thread, True
        if thread is not None and not thread.stop(CLOSE_TIMEOUT):
            log.error("the embedded dispatcher's thread did not stop within %g s", CLOSE_TIMEOUT)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if self._thread is None and not self._closed:
            self.start()
        try:
            scope = scope_of(environ)
            with self._deciding:
                result = self.dispatcher.decide(scope)
        except Exception:  # a bug (or a server's odd environ) must not fail the site's requests
            if self._faults.throttle.hit("decide") is not None:
                log.exception("the embedded dispatcher failed; the request goes to the app")
            result = None
        if result is None:
            return self.app(environ, start_response)
        if isinstance(result, Passed):
            return self._pass(result, scope, environ, start_response)
        status, headers, body = result
        reason = _REASONS.get(status, "Unknown")
        start_response(
            f"{status} {reason}", [(n.decode(), v.decode("latin-1")) for n, v in headers]
        )
        return [body]

    def _pass(
        self, passed: Passed, scope: dict[str, Any], environ: WSGIEnvironment, start: StartResponse
    ) -> Iterable[bytes]:
        """On to the app, with the rewritten path and query and the answer's cookies."""
        path, _, query = passed.target.partition(b"?")
        if path != scope["raw_path"] or query != scope["query_string"]:
            rewrite_environ(environ, path, query)
        cookies = [(n.decode(), v.decode("latin-1")) for n, v in passed.headers]
        if not cookies:
            return self.app(environ, start)

        def start_with_cookies(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo = None, /
        ) -> Callable[[bytes], object]:
            return start(status, [*headers, *cookies], exc_info)

        return self.app(environ, start_with_cookies)

    def _forked(self) -> None:
        """In a child just forked: the farm's thread did not come along; start anew on the
        first request. The locks may have been held by a thread that is not here."""
        self._deciding = threading.Lock()
        self._starting = threading.Lock()
        self._thread = None
        self.dispatcher.forget_inherited()


def scope_of(environ: WSGIEnvironment) -> dict[str, Any]:
    """The request as the decision reads it (the keys of an ASGI ``http`` scope), from a
    PEP 3333 ``environ``: headers from ``HTTP_*``, ``CONTENT_TYPE`` and ``CONTENT_LENGTH``
    (names lower-cased, ``_`` read as ``-``), the path as the client sent it."""
    headers: list[tuple[bytes, bytes]] = []
    for key, value in environ.items():
        if key[:5] == "HTTP_" and isinstance(value, str):
            name = key[5:].replace("_", "-").lower().encode("latin-1", "replace")
            headers.append((name, value.encode("latin-1", "replace")))
    for key, name in (("CONTENT_TYPE", b"content-type"), ("CONTENT_LENGTH", b"content-length")):
        value = environ.get(key)
        if value and isinstance(value, str):
            headers.append((name, value.encode("latin-1", "replace")))
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    protocol = environ.get("SERVER_PROTOCOL", "")
    return {
        "type": "http",
        "method": environ.get("REQUEST_METHOD", "GET"),
        "scheme": environ.get("wsgi.url_scheme", "http"),
        "http_version": protocol[5:] if protocol[:5] == "HTTP/" else "1.1",
        "path": path or "/",
        "raw_path": raw_path(environ, path or "/"),
        "query_string": environ.get("QUERY_STRING", "").encode("latin-1", "replace"),
        "headers": headers,
        "client": (environ.get("REMOTE_ADDR", ""), _port(environ.get("REMOTE_PORT"))),
        "server": (environ.get("SERVER_NAME", ""), _port(environ.get("SERVER_PORT"))),
    }


def raw_path(environ: WSGIEnvironment, decoded: str) -> bytes:
    """The path as the client sent it: ``REQUEST_URI``'s (or gunicorn's ``RAW_URI``) when it
    agrees with ``SCRIPT_NAME + PATH_INFO`` (``decoded``), else those %-encoded again."""
    uri = environ.get("REQUEST_URI") or environ.get("RAW_URI")
    if isinstance(uri, str) and uri[:1] == "/":
        raw = uri.partition("?")[0]
        if raw == decoded or unquote_to_bytes(raw) == decoded.encode("latin-1", "replace"):
            return raw.encode("latin-1", "replace")
    return quote(decoded, safe=_PATH_SAFE, encoding="latin-1", errors="replace").encode("ascii")


def rewrite_environ(environ: WSGIEnvironment, path: bytes, query: bytes) -> None:
    """Put an internally rewritten path and query (as on the wire) into ``environ``.

    ``PATH_INFO`` is the path %-decoded, its bytes as latin-1 characters (PEP 3333); a path
    under ``SCRIPT_NAME`` keeps it (``PATH_INFO`` is the rest), one outside it empties it.
    ``REQUEST_URI`` and ``RAW_URI``, where the server set them, become the new target.
    """
    decoded = unquote_to_bytes(path).decode("latin-1")
    script = environ.get("SCRIPT_NAME", "")
    if script and (decoded == script or decoded.startswith(script + "/")):
        environ["PATH_INFO"] = decoded[len(script) :]
    else:
        environ["SCRIPT_NAME"], environ["PATH_INFO"] = "", decoded
    environ["QUERY_STRING"] = query.decode("latin-1")
    target = (path + b"?" + query if query else path).decode("latin-1")
    for key in ("REQUEST_URI", "RAW_URI"):
        if key in environ:
            environ[key] = target


def _port(value: object) -> int:
    if isinstance(value, str) and value.isdigit() and len(value) <= 5:
        return int(value)
    return 0


def _call(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()


def at_exit(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    """Call ``method`` (if its object still lives) when the interpreter exits, while the
    farm's store calls can still run in worker threads.

    :mod:`atexit` runs too late for that: by then ``concurrent.futures`` has shut down the
    event loop's executor (its exit hook runs once the non-daemon threads are done, before
    ``atexit``). :func:`threading._register_atexit` is the hook it uses itself; these hooks
    run last registered first, so ours is registered after its own (imported here). Where
    that hook is missing, :mod:`atexit` (stopping then logs the store calls it could not
    run).
    """
    import concurrent.futures.thread  # noqa: F401 - its hook first (registered on import)

    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover - CPython has had it since 3.9
        atexit.register(_call, method)
    else:
        register(_call, method)


class _LoopThread:
    """A daemon thread with an event loop of its own, running an embedded dispatcher until
    :meth:`stop`."""

    def __init__(self, dispatcher: EmbeddedDispatcher) -> None:
        self.dispatcher = dispatcher
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._up = threading.Event()
        self.thread = threading.Thread(
            target=self._main, name=f"webfarm embedded dispatcher {dispatcher.site}", daemon=True
        )
        self.thread.start()

    def stop(self, timeout: float) -> bool:
        """Ask the loop to stop the dispatcher and end; whether the thread ended in time."""
        self._up.wait(timeout)
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(stopping.set)
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception:
            log.exception("the embedded dispatcher's thread failed")

    async def _serve(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        self._up.set()
        try:
            await self.dispatcher.start()
            await self._stopping.wait()
        finally:
            await self.dispatcher.stop()
