"""The session middleware for WSGI apps (plain, Flask, Django...):
``environ["webfarm.session"]`` is a dict.

The decisions live in :class:`~dispatcher.session.core.SessionCore`, shared with the ASGI
twin; this module only translates ``environ`` and ``start_response``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol, Unpack
from urllib.parse import quote

from dispatcher.session.codec import SecretKeys
from dispatcher.session.core import (
    Redirect,
    RequestInfo,
    SessionCore,
    SessionOptions,
    SessionSettings,
)

ENVIRON_KEY = "webfarm.session"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType]
Environ = dict[str, Any]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class WSGISessionMiddleware:
    """Signed-cookie sessions for a WSGI app; every option is a
    :class:`~dispatcher.session.core.SessionSettings` field (see ``docs/sessions.md``).

    The app finds the session at ``environ["webfarm.session"]``; a request may be answered
    here with a redirect (a hand-off redeemed, or ``send_elsewhere``). ``stats``,
    ``url_codec`` and ``handoff_tokens`` are those of the ASGI twin. Thread-safe.
    """

    def __init__(
        self, app: WSGIApp, secret_keys: SecretKeys, **options: Unpack[SessionOptions]
    ) -> None:
        self.app = app
        self.core = SessionCore(SessionSettings(secret_keys, **options))
        self.stats = self.core.stats
        self.url_codec = self.core.url_codec
        self.handoff_tokens = self.core.handoff

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        decision = self.core.begin(request_info(environ))
        if isinstance(decision, Redirect):
            start_response(f"{decision.status} Temporary Redirect", decision.headers())
            return [b""]
        environ[ENVIRON_KEY] = decision.session
        core = self.core

        def start_with_cookie(
            status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            header = core.finish(decision)
            if header is not None:
                headers = [*headers, ("Set-Cookie", header)]
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_cookie)


def request_info(environ: Environ) -> RequestInfo:
    """The core's view of a WSGI request (the path re-quoted as ``wsgiref`` does)."""
    path = quote(
        environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
        safe="/;=,",
        encoding="latin-1",
    )
    return RequestInfo(
        method=environ.get("REQUEST_METHOD", "GET"),
        scheme=environ.get("wsgi.url_scheme", "http"),
        host=environ.get("HTTP_HOST", ""),
        path=path or "/",
        query=environ.get("QUERY_STRING", ""),
        cookie=environ.get("HTTP_COOKIE", ""),
    )
