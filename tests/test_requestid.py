"""Request ids on the admin listener (dispatcher.requestid): the client's when sane, else a
new one; in the answer's headers and in the log context while the request runs."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.asgi import Message, Receive, Scope, Send
from dispatcher.logsetup import request_id
from dispatcher.requestid import ALLOWED, HEADER, MAX_LENGTH, SCOPE_KEY, RequestIds, accepted

pytestmark = pytest.mark.anyio
NEW_ID = re.compile(r"\A[0-9a-f]{32}\Z")


class Echo:
    """An app that answers 200 and remembers the request id it saw in the log context."""

    def __init__(self) -> None:
        self.seen: str | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen = request_id.get()
        assert scope[SCOPE_KEY] == self.seen
        headers = [(b"content-type", b"text/plain"), (HEADER, b"from-the-app")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, list[Any]]:
    app = Echo()
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    await RequestIds(app)(scope, receive, send)
    ids = [v.decode() for k, v in sent[0]["headers"] if k == HEADER]
    assert len(ids) == 1, sent[0]["headers"]  # the app's own is replaced
    assert ids[0] == app.seen
    assert request_id.get() is None  # reset after the request
    return app.seen, ids


@pytest.mark.parametrize(
    "given_id",
    ["abc-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "c0a8:1a2b.5f3e_1+x/y=@z", "a" * 128],
)
async def test_a_sane_client_id_is_kept_and_echoed(given_id: str) -> None:
    seen, _ = await call([(b"X-Request-ID", given_id.encode())])
    assert seen == given_id


@pytest.mark.parametrize(
    "value",
    [b"", b"a" * (MAX_LENGTH + 1), b"a space", b"new\nline", b"caf\xc3\xa9", b"<b>", b"\x00"],
)
async def test_anything_else_is_replaced_by_a_new_id(value: bytes) -> None:
    seen, _ = await call([(b"x-request-id", value)])
    assert seen is not None
    assert NEW_ID.fullmatch(seen)


async def test_without_a_header_each_request_gets_its_own_id() -> None:
    first, _ = await call([])
    second, _ = await call([])
    assert first != second
    assert first is not None
    assert NEW_ID.fullmatch(first)


def test_only_the_first_header_counts() -> None:
    assert accepted([(b"x-request-id", b"bad id"), (b"x-request-id", b"good")]) is None
    assert accepted([(b"x-request-id", b"one"), (b"x-request-id", b"two")]) == "one"


@given(st.binary(max_size=200))
def test_an_accepted_id_is_always_safe(value: bytes) -> None:
    got = accepted([(HEADER, value)])
    if got is not None:
        assert ALLOWED.fullmatch(got.encode())
        assert got.isascii()
        assert got.isprintable()
        assert got.encode() == value
