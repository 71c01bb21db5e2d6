"""A request id for every admin request: in its log lines and in its answer.

:class:`RequestIds` is plain ASGI middleware. It takes the client's ``X-Request-Id`` when
it is sane (:func:`accepted`: 1 to :data:`MAX_LENGTH` characters of
:data:`ALLOWED`, the first such header only), else makes one (:func:`new_id`: 32 hex
digits), keeps it in :data:`dispatcher.logsetup.request_id` while the request is handled
(so every line logged for it carries it, the access line included) and in the scope
(``scope["webfarm.request_id"]``), and adds it to the response's headers. A proxy or a
load balancer in front that sets the header ties its own log to ours; a client cannot
inject anything through it (an id that is not accepted is replaced, never echoed).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from typing import Any, Final

from dispatcher.asgi import Message, Receive, Scope, Send
from dispatcher.logsetup import request_id

HEADER: Final = b"x-request-id"
MAX_LENGTH: Final = 128
#: What an accepted id is made of: letters, digits and ``-._:+/=@`` (UUIDs, hex, base64,
#: HAProxy's ``%ID`` formats).
ALLOWED: Final = re.compile(rb"[A-Za-z0-9._:+/=@-]{1,%d}" % MAX_LENGTH)
SCOPE_KEY: Final = "webfarm.request_id"


def new_id() -> str:
    return secrets.token_hex(16)


def accepted(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The first ``X-Request-Id`` of ``headers`` if it is sane, else ``None``."""
    for name, value in headers:
        if name.lower() == HEADER:
            return value.decode("ascii") if ALLOWED.fullmatch(value) else None
    return None


class RequestIds:
    """Gives each HTTP request an id (see the module's docstring)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = accepted(scope.get("headers", ())) or new_id()
        scope[SCOPE_KEY] = rid
        echoed = rid.encode("ascii")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != HEADER]
                message = {**message, "headers": [*headers, (HEADER, echoed)]}
            await send(message)

        token = request_id.set(rid)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id.reset(token)


__all__ = ["ALLOWED", "HEADER", "MAX_LENGTH", "RequestIds", "accepted", "new_id"]
