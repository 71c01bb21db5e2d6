"""The pure core and the edges' request views, without sockets: options, cookie attributes,
change detection, and the scopes the ASGI middleware does not answer."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from dispatcher.asgi import Message, Scope
from dispatcher.errors import InvalidValue
from dispatcher.session import (
    HandoffToken,
    SessionMiddleware,
    SessionSettings,
    TokenTooLarge,
    UnserializableState,
)
from dispatcher.session.asgi import request_info as asgi_request_info
from dispatcher.session.cookies import cookie_values
from dispatcher.session.core import Loaded, Redirect, RequestInfo, SessionCore, snapshot
from dispatcher.session.wsgi import request_info as wsgi_request_info

KEYS = ["k"]


def core(**options: Any) -> SessionCore:
    return SessionCore(SessionSettings(KEYS, **options))


def request(target: str = "/", cookie: str = "", scheme: str = "http") -> RequestInfo:
    path, _, query = target.partition("?")
    return RequestInfo("GET", scheme, "eu.example.com", path, query, cookie)


def written(c: SessionCore, session: dict[str, Any], cookie: str = "") -> str | None:
    loaded = c.load(request(cookie=cookie))
    assert isinstance(loaded, Loaded)
    loaded.session.clear()
    loaded.session.update(session)
    return c.finish(loaded)


# --- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"cookie_name": "bad name"}, "cookie_name"),
        ({"cookie_name": ""}, "cookie_name"),
        ({"path": "relative"}, "path"),
        ({"path": "/a;b"}, "path"),
        ({"domain": "exa mple.com"}, "domain"),
        ({"domain": "example.com; Secure"}, "domain"),
        ({"max_age": 0}, "max_age"),
        ({"same_site": "sometimes"}, "same_site"),
        ({"same_site": "none"}, "same_site"),
    ],
)
def test_bad_options_are_refused_when_built(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        SessionSettings(KEYS, **options)
    assert caught.value.field == field


def test_bad_handoff_lifetime_and_keys_are_refused_when_built() -> None:
    with pytest.raises(InvalidValue, match="handoff_lifetime"):
        core(handoff_lifetime=120)
    with pytest.raises(InvalidValue, match="secret_keys"):
        SessionMiddleware(_never_called, [])


def test_every_cookie_option_shows_in_the_header() -> None:
    c = core(
        cookie_name="sid",
        path="/shop",
        domain=".example.com",
        max_age=3600,
        same_site="none",
        https_only=True,
    )
    header = written(c, {"a": 1})
    assert header is not None
    assert header.split("; ")[1:] == [
        "Path=/shop",
        "Max-Age=3600",
        "Domain=.example.com",
        "HttpOnly",
        "SameSite=None",
        "Secure",
    ]
    assert header.startswith("sid=")


def test_a_browser_session_cookie_without_max_age() -> None:
    header = written(core(max_age=None, same_site="strict"), {"a": 1})
    assert header is not None
    assert "Max-Age" not in header
    assert "SameSite=Strict" in header


def test_deletion_matches_path_and_domain() -> None:
    c = core(path="/shop", domain=".example.com")
    cookie = "farm_session=" + c.codec.dumps({"a": 1})
    header = written(c, {}, cookie)
    assert header == (
        "farm_session=; Path=/shop; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; "
        "Domain=.example.com; HttpOnly; SameSite=Lax"
    )


# --- change detection -------------------------------------------------------------------


def test_no_write_when_equal_as_json() -> None:
    c = core()
    cookie = "farm_session=" + c.codec.dumps({"b": [1, 2], "a": {"x": 1}})
    assert written(c, {"a": {"x": 1}, "b": (1, 2)}, cookie) is None


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=5))
def test_snapshots_are_equal_iff_the_sessions_are(session: dict[str, Any]) -> None:
    changed = {**session, "extra": [session]}
    assert snapshot(dict(reversed(list(session.items())))) == snapshot(session)
    assert snapshot(changed) != snapshot(session)


def test_unserializable_state_is_a_typed_error_at_write_time() -> None:
    with pytest.raises(UnserializableState):
        written(core(), {"a": {1, 2}})


def test_the_whole_set_cookie_header_counts_against_the_limit() -> None:
    c = core(compress_over=None)

    def header_for(size: int) -> str | None:
        loaded = c.load(request())
        assert isinstance(loaded, Loaded)
        loaded.session["x"] = "a" * size
        return c.finish(loaded)

    low, high = 1, 4093  # header_for(low) fits, header_for(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        try:
            header_for(middle)
        except TokenTooLarge:
            high = middle
        else:
            low = middle
    largest = header_for(low)
    assert largest is not None
    assert 4090 <= len(largest) <= 4093
    with pytest.raises(TokenTooLarge) as caught:
        header_for(high)
    assert caught.value.limit == 4093
    assert "farm_session" in caught.value.what


def test_cookie_values_in_order() -> None:
    header = 'a=1; farm_session=one;farm_session="two" ; b; farm_session2=x; =y'
    assert cookie_values(header, "farm_session") == ["one", "two"]
    assert cookie_values("", "farm_session") == []


# --- decisions --------------------------------------------------------------------------


def test_without_a_site_name_handoff_tokens_are_left_to_the_app() -> None:
    token = HandoffToken(KEYS).encode("eu", {"a": 1})
    decision = core().begin(request(f"/?farm_handoff={token}"))
    assert isinstance(decision, Loaded)
    assert decision.session == {}


def test_a_handoff_with_an_empty_session_deletes_the_old_cookie() -> None:
    c = core(site="eu")
    token = HandoffToken(KEYS).encode("eu", {})
    decision = c.begin(request(f"/x?farm_handoff={token}", cookie="farm_session=old"))
    assert isinstance(decision, Redirect)
    assert decision.set_cookie is not None
    assert decision.set_cookie.startswith("farm_session=;")


# --- the edges' request views -----------------------------------------------------------


def test_asgi_request_info_uses_the_raw_path_and_joins_cookie_headers() -> None:
    scope: Scope = {
        "type": "http",
        "method": "POST",
        "scheme": "https",
        "path": "/a b",
        "raw_path": b"/a%20b",
        "query_string": b"x=%2F",
        "headers": [(b"host", b"h:1"), (b"cookie", b"a=1"), (b"cookie", b"b=2")],
    }
    info = asgi_request_info(scope)
    assert info == RequestInfo("POST", "https", "h:1", "/a%20b", "x=%2F", "a=1; b=2")
    assert info.secure
    assert info.target == "/a%20b?x=%2F"
    del scope["raw_path"]
    assert asgi_request_info(scope).path == "/a%20b"


def test_wsgi_request_info_requotes_the_path_with_the_script_name() -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "wsgi.url_scheme": "http",
        "HTTP_HOST": "h",
        "SCRIPT_NAME": "/app",
        "PATH_INFO": "/a b/\xe9",
        "QUERY_STRING": "q=1",
        "HTTP_COOKIE": "a=1",
    }
    info = wsgi_request_info(environ)
    assert info == RequestInfo("GET", "http", "h", "/app/a%20b/%E9", "q=1", "a=1")
    assert not info.secure


# --- scopes the ASGI middleware does not answer -----------------------------------------


@pytest.mark.anyio
async def test_websockets_get_a_read_only_session_and_lifespan_passes_through() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        seen.append(scope)

    middleware = SessionMiddleware(app, KEYS)
    token = middleware.core.codec.dumps({"user": "alice"})
    websocket: Scope = {
        "type": "websocket",
        "path": "/ws",
        "query_string": b"",
        "headers": [(b"cookie", f"farm_session={token}".encode())],
    }
    await middleware(websocket, _receive, _send)
    await middleware({"type": "lifespan"}, _receive, _send)
    assert seen[0]["session"] == {"user": "alice"}
    assert "session" not in seen[1]


async def _receive() -> Message:
    return {"type": "http.disconnect"}


async def _send(message: Message) -> None:
    raise AssertionError(f"nothing should be sent: {message}")


async def _never_called(scope: Scope, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


@pytest.mark.anyio
async def test_installs_as_starlette_middleware() -> None:
    async def show(request: Request) -> JSONResponse:
        request.session["hits"] = request.session.get("hits", 0) + 1
        return JSONResponse(request.session)

    app = Starlette(
        routes=[Route("/", show)],
        middleware=[Middleware(SessionMiddleware, secret_keys=KEYS, cookie_name="sid")],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://eu.test") as client:
        first = await client.get("/")
        second = await client.get(
            "/", headers={"cookie": first.headers["set-cookie"].split(";")[0]}
        )
    assert second.json() == {"hits": 2}


def test_a_bad_cookie_is_logged_without_its_value(caplog: pytest.LogCaptureFixture) -> None:
    c = core()
    with caplog.at_level(logging.WARNING, logger="webfarm.session"):
        loaded = c.load(request(cookie="farm_session=secret-looking-value"))
    assert loaded.session == {}
    assert c.stats["bad_cookie"] == 1
    [record] = caplog.records
    assert "bad session cookie" in record.getMessage()
    assert "secret-looking-value" not in record.getMessage()
