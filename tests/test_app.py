"""The hot path, driven as a plain ASGI callable (no sockets): what each request gets."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.app import Answer, DispatchApp, DispatchCore, WireAnswer
from dispatcher.backends.health import Health
from dispatcher.backends.sites import SiteSpec
from dispatcher.config import build_config
from dispatcher.relay import HandoffRelay, split_handoff
from dispatcher.session.tokens import HandoffToken
from dispatcher.snapshot import Snapshot, build_snapshot


@dataclass
class FakeFarm:
    snapshot: Snapshot

    @property
    def redirects(self) -> dict[str, int]:
        """What the hot path counted in the snapshot's cells, by site (whatever the reason)."""
        return {name: sum(cell) for name, cell in self.snapshot.placed.items() if any(cell)}


def farm(sites: list[SiteSpec], up: set[str], pool: Mapping[str, Any] | None = None) -> FakeFarm:
    config = build_config(
        {"dispatcher": {"admin_tokens": ["t"]}, "pools": {"default": dict(pool or {})}},
        environ={},
    )
    snapshot = build_snapshot(
        config,
        revision=1,
        sites=sites,
        health=lambda name: Health("up" if name in up else "down", None),
        loads={},
    )
    return FakeFarm(snapshot)


async def call(
    app: DispatchApp,
    raw_path: bytes,
    query: bytes = b"",
    method: str = "GET",
    host: bytes = b"www.example.com",
) -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {
        "type": "http",
        "method": method,
        "path": raw_path.decode("latin-1"),
        "raw_path": raw_path,
        "query_string": query,
        "headers": [(b"host", host), (b"user-agent", b"test")],
    }
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


EU = SiteSpec("eu", "http://127.0.0.2:9001", weight=1)
US = SiteSpec("us", "https://us.example.com/prefix", weight=1)


@pytest.mark.anyio
async def test_redirect_keeps_path_and_query_byte_for_byte() -> None:
    app = DispatchApp(farm([EU], {"eu"}))
    raw = b"/a%20b/%7Euser/%C3%A9;p=1"
    query = b"x=1&y=%2F&z&empty=&sp=a+b"
    status, headers, body = await call(app, raw, query)
    assert status == 302
    assert headers[b"location"] == b"http://127.0.0.2:9001" + raw + b"?" + query
    assert body == b""


@pytest.mark.anyio
async def test_base_url_path_prefix_and_no_query() -> None:
    app = DispatchApp(farm([US], {"us"}))
    _, headers, _ = await call(app, b"/cart")
    assert headers[b"location"] == b"https://us.example.com/prefix/cart"


@given(
    st.binary(max_size=40).map(
        lambda b: b"/" + bytes(c for c in b if 0x21 <= c < 0x7F and c != 0x3F)
    ),
    st.binary(max_size=40).map(lambda b: bytes(c for c in b if 0x21 <= c < 0x7F)),
)
@pytest.mark.anyio
async def test_any_path_and_query_are_appended_untouched(raw: bytes, query: bytes) -> None:
    app = DispatchApp(farm([EU], {"eu"}))
    _, headers, _ = await call(app, raw, query)
    expected = b"http://127.0.0.2:9001" + raw + (b"?" + query if query else b"")
    assert headers[b"location"] == expected


@pytest.mark.anyio
async def test_redirect_status_follows_the_pool() -> None:
    app = DispatchApp(farm([EU], {"eu"}, {"redirect_status": 307}))
    status, _, _ = await call(app, b"/form", method="POST")
    assert status == 307


@pytest.mark.anyio
async def test_only_healthy_undrained_weighted_sites_get_clients() -> None:
    drained = SiteSpec("drained", "http://127.0.0.4:1", drained=True)
    zero = SiteSpec("zero", "http://127.0.0.5:1", weight=0)
    f = farm([EU, US, drained, zero], up={"us", "drained", "zero"})
    app = DispatchApp(f)
    locations = {(await call(app, b"/"))[1][b"location"] for _ in range(20)}
    assert locations == {b"https://us.example.com/prefix/"}
    assert f.redirects == {"us": 20}


@pytest.mark.anyio
async def test_no_healthy_site_gives_the_sorry_page() -> None:
    app = DispatchApp(farm([EU], up=set()), retry_after=17)
    status, headers, body = await call(app, b"/x")
    assert status == 503
    assert headers[b"retry-after"] == b"17"
    assert b"unavailable" in body
    assert headers[b"content-length"] == str(len(body)).encode()
    status, _, body = await call(app, b"/x", method="HEAD")
    assert (status, body) == (503, b"")


@pytest.mark.anyio
async def test_no_healthy_site_with_a_fallback_url_redirects_there() -> None:
    app = DispatchApp(farm([EU], up=set(), pool={"fallback": "https://status.example.com/down"}))
    status, headers, _ = await call(app, b"/x?y")
    assert status == 302
    assert headers[b"location"] == b"https://status.example.com/down"


@pytest.mark.anyio
async def test_never_redirects_a_client_to_where_it_already_is() -> None:
    f = farm([EU, SiteSpec("other", "http://127.0.0.9:9001")], {"eu", "other"})
    app = DispatchApp(f)
    for _ in range(10):
        _, headers, _ = await call(app, b"/", host=b"127.0.0.2:9001")
        assert headers[b"location"] == b"http://127.0.0.9:9001/"
    # the only site is the one the client came through: that is a loop, so the fallback
    alone = DispatchApp(farm([EU], {"eu"}))
    status, _, _ = await call(alone, b"/", host=b"127.0.0.2:9001")
    assert status == 503


@pytest.mark.parametrize(
    "query",
    [b"xfarm_handoff=1", b"a=1&afarm_handoff=farm_handoff=", b"farm_handoff=&zfarm_handoff=2"],
)
def test_a_handoff_look_alike_in_the_query_is_kept_and_answered(query: bytes) -> None:
    # (it used to be relayed again and again: RecursionError, a 500 from the edge)
    relay = HandoffRelay(HandoffToken(("key-one-0123456789abcdef",), lifetime=30), name="edge")
    core = DispatchCore(farm([EU], {"eu"}), relay=relay)
    scope = {"type": "http", "method": "GET", "raw_path": b"/p", "query_string": query}
    status, headers, _ = core.answer({**scope, "headers": []})
    _, rest = split_handoff(query)
    assert (status, dict(headers)[b"location"]) == (302, b"http://127.0.0.2:9001/p?" + rest)


# --- the wire edge's way in: the same answers -------------------------------------------------

TARGET_BYTES = st.binary(max_size=30) | st.sampled_from(
    [
        b"/",
        b"/a?",
        b"/a??",
        b"/a?x=1",
        b"/a\r\nx: y",
        b"/\n",
        b"/\r",
        b"*",
        b"",
        b"?",
        b"/?farm_handoff=x",
    ]
)


@given(
    st.lists(TARGET_BYTES, min_size=1, max_size=3).map(b"".join),
    st.lists(
        st.tuples(st.sampled_from([b"host", b"x-a"]), st.sampled_from([b"", b"A.b:1", b"h"])),
        max_size=3,
    ),
    st.sampled_from(["GET", "HEAD", "OPTIONS"]),
    st.booleans(),
)
def test_answer_wire_answers_as_answer_does(
    url: bytes, headers: list[tuple[bytes, bytes]], method: str, relayed: bool
) -> None:
    # what the httptools edge hands the core (the target as it came, split at the first ?
    # into the scope, and the first Host header) gets the answer the scope alone gets
    keys = ("key-one-0123456789abcdef",)
    relay = HandoffRelay(HandoffToken(keys, lifetime=30), name="edge") if relayed else None
    core = DispatchCore(farm([EU], {"eu"}), relay=relay)
    path, mark, query = url.partition(b"?")
    scope = {
        "type": "http",
        "method": method,
        "raw_path": path,
        "query_string": query if mark else b"",
        "headers": headers,
    }
    host = next((v for n, v in headers if n == b"host"), None)
    assert as_answer(core.answer_wire(dict(scope), url, host)) == core.answer(dict(scope))


def as_answer(answer: WireAnswer) -> Answer:
    """An :data:`~dispatcher.app.WireAnswer` with its header lines (when joined) split."""
    status, headers, body = answer
    if isinstance(headers, bytes):
        lines = headers.split(b"\r\n")
        assert lines[-1] == b"", headers  # each line ends with CRLF
        pairs = [line.split(b": ", 1) for line in lines[:-1]]
        headers = [(name, value) for name, value in pairs]
    return status, headers, body
