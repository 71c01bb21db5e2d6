"""The session middleware for ASGI apps (Starlette or plain): ``scope["session"]`` is a dict.

Same shape as starlette's ``SessionMiddleware``; the decisions live in
:class:`~dispatcher.session.core.SessionCore`, shared with the WSGI twin.
"""

from __future__ import annotations

from typing import Unpack
from urllib.parse import quote

from dispatcher.asgi import ASGIApp, Message, Receive, Scope, Send
from dispatcher.session.codec import SecretKeys
from dispatcher.session.core import (
    Redirect,
    RequestInfo,
    SessionCore,
    SessionOptions,
    SessionSettings,
)


class SessionMiddleware:
    """Signed-cookie sessions for an ASGI app; every option is a :class:`SessionSettings`
    field (see ``docs/sessions.md``).

    HTTP requests get ``scope["session"]`` and may be answered here with a redirect (a
    hand-off redeemed, or ``send_elsewhere``); WebSocket connections get a read-only session
    (no response to put a cookie in); other scopes pass straight through. ``stats`` counts
    what happened (see :class:`SessionCore`); ``url_codec`` signs ``farm_state`` for
    :func:`~dispatcher.session.urls.with_state`; ``handoff_tokens`` issues hand-off tokens.
    """

    def __init__(
        self, app: ASGIApp, secret_keys: SecretKeys, **options: Unpack[SessionOptions]
    ) -> None:
        self.app = app
        self.core = SessionCore(SessionSettings(secret_keys, **options))
        self.stats = self.core.stats
        self.url_codec = self.core.url_codec
        self.handoff_tokens = self.core.handoff

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope["session"] = self.core.load(request_info(scope)).session
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        decision = self.core.begin(request_info(scope))
        if isinstance(decision, Redirect):
            await _answer(send, decision)
            return
        scope["session"] = decision.session
        core = self.core

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                header = core.finish(decision)
                if header is not None:
                    headers = [*message.get("headers", ()), (b"set-cookie", header.encode())]
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def request_info(scope: Scope) -> RequestInfo:
    """The core's view of an ASGI HTTP or WebSocket scope (the path as the client sent it)."""
    host, cookies = "", []
    for name, value in scope.get("headers", ()):
        if name == b"host":
            host = value.decode("latin-1")
        elif name == b"cookie":
            cookies.append(value.decode("latin-1"))
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else quote(scope.get("path", "/"))
    return RequestInfo(
        method=scope.get("method", "GET"),
        scheme=scope.get("scheme", "http"),
        host=host,
        path=path,
        query=scope.get("query_string", b"").decode("latin-1"),
        cookie="; ".join(cookies),
    )


async def _answer(send: Send, redirect: Redirect) -> None:
    headers = [(name.encode(), value.encode()) for name, value in redirect.headers()]
    await send({"type": "http.response.start", "status": redirect.status, "headers": headers})
    await send({"type": "http.response.body", "body": b""})
