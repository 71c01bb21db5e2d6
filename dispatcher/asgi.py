"""The ASGI type aliases every listener of both packages shares (``Scope``, ``Receive``...).

A module of its own, importing nothing of webfarm: a status listener, the metrics route or a
site's session middleware names these types without importing the dispatcher's hot path
(:mod:`dispatcher.app`, and the snapshot, rules and probes behind it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
