"""The embedded dispatcher's pieces that need no server: what goes to the app untouched
(before the first snapshot, exempt paths, this site's own health check, a hand-off token
bound to it), the options' validation, and the WSGI translation (PEP 3333)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes
from wsgiref.types import StartResponse, WSGIEnvironment

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.app import Answer, DispatchCore, Passed
from dispatcher.backends.health import Health
from dispatcher.backends.sites import CheckSpec, SiteSpec
from dispatcher.config import Config, build_config
from dispatcher.embed import EmbeddedDispatcher, WSGIDispatcherMiddleware
from dispatcher.embed.runtime import own_check
from dispatcher.embed.wsgi import raw_path, rewrite_environ, scope_of
from dispatcher.errors import ConfigError, InvalidValue
from dispatcher.redirect import RuleSyntaxError
from dispatcher.relay import HandoffRelay
from dispatcher.session import HandoffToken
from dispatcher.session.tokens import HANDOFF_PARAM
from dispatcher.snapshot import Snapshot, build_snapshot

KEYS = ["runtime-test-key"]


@dataclass
class FakeFarm:
    snapshot: Snapshot


def config() -> Config:
    return build_config(
        {
            "dispatcher": {"admin_tokens": ["t"]},
            "pools": {"default": {"policy": "failover"}},
            "sites": [
                {"name": "us", "base_url": "http://us.example.com"},
                {"name": "eu", "base_url": "http://eu.example.com", "check": {"url": "/hc?x=1"}},
            ],
        },
        environ={},
    )


def snapshot(sites: Sequence[SiteSpec]) -> Snapshot:
    return build_snapshot(
        config(),
        revision=1,
        sites=sites,
        health=lambda name: Health("up", None),
        loads={},
    )


def embedded(exempt: Sequence[str] = (), *, relay: bool = False) -> EmbeddedDispatcher:
    """Embedded in "eu", decided from a snapshot where "us" comes first (failover)."""
    dispatcher = EmbeddedDispatcher(config(), "eu", exempt=exempt)
    handoffs = HandoffRelay(HandoffToken(KEYS), name="dispatcher") if relay else None
    dispatcher.core = DispatchCore(FakeFarm(snapshot(config().sites)), relay=handoffs)
    return dispatcher


def scope(target: str) -> dict[str, Any]:
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"eu.example.com")],
    }


def redirect(result: Answer | Passed | None) -> bytes:
    """The ``Location`` of a redirect (anything else fails the test)."""
    assert result is not None
    assert not isinstance(result, Passed)
    return dict(result[1])[b"location"]


def test_before_the_first_snapshot_every_request_goes_to_the_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dispatcher = EmbeddedDispatcher(config(), "eu")
    assert dispatcher.decide(scope("/page")) is None
    assert dispatcher.decide(scope("/page")) is None
    warned = [r for r in caplog.records if "no registry snapshot yet" in r.getMessage()]
    assert len(warned) == 1  # throttled


def test_exempt_paths_and_the_sites_own_check_go_to_the_app() -> None:
    dispatcher = embedded(exempt=["/static/", "/api"])
    assert dispatcher.decide(scope("/static/app.css")) is None
    assert dispatcher.decide(scope("/api/v1/x")) is None
    assert dispatcher.decide(scope("/hc?x=1")) is None  # eu's own check URL
    for other in ("/hc", "/hc?x=2", "/static", "/page"):
        assert redirect(dispatcher.decide(scope(other))).startswith(b"http://us.example.com/")


def test_own_check_is_the_checked_target_inside_the_site_only() -> None:
    eu = SiteSpec("eu", "http://eu.example.com/app", check=CheckSpec(url="/health"))
    assert own_check(snapshot([eu]), "eu") == (b"/app/health", b"")
    absolute = SiteSpec("eu", "http://eu.example.com", check=CheckSpec(url="http://x.org/h"))
    assert own_check(snapshot([absolute]), "eu") is None
    assert own_check(snapshot([eu]), "asia") is None


def test_a_base_url_path_is_what_the_dispatcher_sees_below() -> None:
    """Site "eu" is http://eu.example.com/app: its app sees /app/page where the standalone
    dispatcher sees /page (and redirects to the base followed by it)."""
    sites = [
        SiteSpec("eu", "http://eu.example.com/app", check=CheckSpec(url="/health")),
        SiteSpec("us", "http://us.example.com/v"),
    ]
    dispatcher = EmbeddedDispatcher(config(), "eu")
    dispatcher.core = DispatchCore(FakeFarm(snapshot(sites)))
    assert dispatcher.decide(scope("/app/page?q=1")) == Passed(b"/app/page?q=1", [])
    assert dispatcher.decide(scope("/app?x")) == Passed(b"/app?x", [])
    assert dispatcher.decide(scope("/app/")) == Passed(b"/app/", [])
    assert dispatcher.decide(scope("/app/health")) is None
    dispatcher.core = DispatchCore(FakeFarm(snapshot(sites[::-1])))
    assert (
        redirect(dispatcher.decide(scope("/app/page?q=1"))) == b"http://us.example.com/v/page?q=1"
    )
    assert redirect(dispatcher.decide(scope("/apps"))) == b"http://us.example.com/v/apps"


def test_a_handoff_token_bound_to_this_site_is_left_to_the_app() -> None:
    tokens = HandoffToken(KEYS)
    dispatcher = embedded(relay=True)
    here = tokens.encode("eu", {"cart": [1]})
    assert dispatcher.decide(scope(f"/p?{HANDOFF_PARAM}={here}")) is None
    for token in (tokens.encode("us", {}), "forged", "x" * 5000, "\u00e9"):
        target = f"/p?{HANDOFF_PARAM}={quote(token)}"
        assert redirect(dispatcher.decide(scope(target))).startswith(b"http://us.example.com/p")


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"site": ""}, "site"),
        ({"site": 3}, "site"),
        ({"site": "e\nu"}, "site"),
        ({"site": "eu", "exempt": "/static"}, "exempt"),
        ({"site": "eu", "exempt": ["static"]}, "exempt"),
        ({"site": "eu", "exempt": ["/\u00e9"]}, "exempt"),
        ({"site": "eu", "exempt": ["/x"] * 101}, "exempt"),
    ],
)
def test_bad_options_are_refused_naming_them(options: dict[str, Any], field: str) -> None:
    site = options.pop("site")
    with pytest.raises(InvalidValue) as caught:
        EmbeddedDispatcher(config(), site, **options)
    assert caught.value.field == field


def test_a_config_path_is_read_and_a_broken_rule_file_fails_at_once(tmp_path: Path) -> None:
    farm = tmp_path / "farm.toml"
    farm.write_text('[dispatcher]\nadmin_tokens = ["t"]\nrules = "rules.conf"\n')
    (tmp_path / "rules.conf").write_text("RewriteRule\n")
    with pytest.raises(RuleSyntaxError):
        EmbeddedDispatcher(farm, "eu")
    (tmp_path / "rules.conf").write_text("RewriteEngine on\n")
    assert EmbeddedDispatcher(str(farm), "eu").config.source == str(farm)
    with pytest.raises(ConfigError):
        EmbeddedDispatcher(tmp_path / "missing.toml", "eu")


# --- WSGI: environ in, environ out --------------------------------------------------------


def environ(**values: Any) -> dict[str, Any]:
    base = {
        "REQUEST_METHOD": "GET",
        "SCRIPT_NAME": "",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_NAME": "eu.example.com",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.7",
        "REMOTE_PORT": "40000",
        "wsgi.url_scheme": "https",
    }
    return {**base, **values}


def test_scope_of_an_environ() -> None:
    seen = scope_of(
        environ(
            PATH_INFO="/a b",
            SCRIPT_NAME="/app",
            QUERY_STRING="x=%2F",
            HTTP_HOST="eu.example.com",
            HTTP_X_FORWARDED_FOR="10.0.0.1",
            HTTP_COOKIE="farm_site=abc",
            CONTENT_TYPE="text/plain",
            CONTENT_LENGTH="",
            REMOTE_PORT="not-a-port",
        )
    )
    assert seen["raw_path"] == b"/app/a%20b"
    assert seen["query_string"] == b"x=%2F"
    assert seen["scheme"] == "https"
    assert seen["http_version"] == "1.1"
    assert seen["client"] == ("192.0.2.7", 0)
    assert seen["server"] == ("eu.example.com", 80)
    assert sorted(seen["headers"]) == [
        (b"content-type", b"text/plain"),
        (b"cookie", b"farm_site=abc"),
        (b"host", b"eu.example.com"),
        (b"x-forwarded-for", b"10.0.0.1"),
    ]


def test_the_raw_target_is_used_only_when_it_agrees_with_path_info() -> None:
    assert raw_path(environ(REQUEST_URI="/a%2Fb?q"), "/a/b") == b"/a%2Fb"
    assert raw_path(environ(RAW_URI="/x%41"), "/xA") == b"/x%41"
    stale = environ(REQUEST_URI="/before/rewrite")  # a middleware outside changed PATH_INFO
    assert raw_path(stale, "/after") == b"/after"
    absolute = environ(REQUEST_URI="http://eu.example.com/a")
    assert raw_path(absolute, "/a") == b"/a"


def test_a_rewrite_keeps_script_name_when_it_can() -> None:
    inside = environ(SCRIPT_NAME="/app", PATH_INFO="/old", REQUEST_URI="/app/old")
    rewrite_environ(inside, b"/app/new%20one", b"from=legacy")
    assert (inside["SCRIPT_NAME"], inside["PATH_INFO"]) == ("/app", "/new one")
    assert inside["QUERY_STRING"] == "from=legacy"
    assert inside["REQUEST_URI"] == "/app/new%20one?from=legacy"
    assert "RAW_URI" not in inside
    outside = environ(SCRIPT_NAME="/app", PATH_INFO="/old")
    rewrite_environ(outside, b"/application/x", b"")
    assert (outside["SCRIPT_NAME"], outside["PATH_INFO"]) == ("", "/application/x")
    root = environ(SCRIPT_NAME="/app", PATH_INFO="/old")
    rewrite_environ(root, b"/app", b"")
    assert (root["SCRIPT_NAME"], root["PATH_INFO"]) == ("/app", "")


WIRE = st.lists(
    st.one_of(
        st.sampled_from(["/", "a", "~", ";", "=", "@", "%20", "%2F", "%C3%A9", "%FF", "%25"]),
        st.text(
            st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="%?#"),
            max_size=3,
        ),
    ),
    max_size=12,
).map(lambda parts: "/" + "".join(parts))


@given(WIRE, st.sampled_from(["", "/app"]), st.booleans())
def test_a_rewritten_path_reads_back_as_it_was_written(
    path: str, script: str, with_uri: bool
) -> None:
    """PEP 3333 round trip: after a rewrite to ``path`` (as on the wire), the environ's
    ``SCRIPT_NAME + PATH_INFO`` is ``path`` %-decoded (bytes as latin-1), and the path the
    next reader derives from it is ``path`` itself (with the raw target), or one that
    decodes to the same bytes (without it)."""
    env = environ(SCRIPT_NAME=script, PATH_INFO="/x")
    if with_uri:
        env["REQUEST_URI"] = script + "/x"
    rewrite_environ(env, path.encode("ascii"), b"q=1")
    decoded = env["SCRIPT_NAME"] + env["PATH_INFO"]
    assert decoded.encode("latin-1") == unquote_to_bytes(path)
    again = scope_of(env)
    if with_uri:
        assert again["raw_path"] == path.encode("ascii")
    else:
        assert unquote_to_bytes(again["raw_path"]) == unquote_to_bytes(path)
    assert again["query_string"] == b"q=1"


def test_an_environ_the_middleware_cannot_read_goes_to_the_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server's odd ``environ`` (bytes where PEP 3333 wants text) is the middleware's
    fault to survive: logged with its traceback, and the app answers."""
    statuses: list[str] = []

    def app(env: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return [b"app"]

    middleware = WSGIDispatcherMiddleware(app, config(), site="eu")
    middleware.close()  # no farm thread: this test needs none
    middleware.dispatcher.core = embedded().core

    def start(
        status: str, headers: list[tuple[str, str]], exc_info: object = None, /
    ) -> Callable[[bytes], object]:
        statuses.append(status)
        return lambda data: None

    body = middleware(environ(PATH_INFO=b"/page"), start)
    assert (list(body), statuses) == ([b"app"], ["200 OK"])
    assert any(r.exc_info for r in caplog.records if r.name == "webfarm.embed")
    body = middleware(environ(PATH_INFO="/page"), start)
    assert (list(body), statuses[-1]) == ([b""], "302 Found")


HEADER_NAMES = st.sampled_from(["HTTP_HOST", "HTTP_COOKIE", "HTTP_X_FORWARDED_FOR", "HTTP_"])


@given(
    st.dictionaries(HEADER_NAMES, st.text(max_size=60), max_size=4),
    st.text(max_size=40),
    st.text(max_size=40),
    st.one_of(st.none(), st.text(max_size=40)),
)
def test_no_environ_a_client_can_shape_makes_the_decision_raise(
    headers: dict[str, str], path: str, query: str, uri: str | None
) -> None:
    dispatcher = embedded(relay=True)
    env = environ(PATH_INFO=path, QUERY_STRING=query, **headers)
    if uri is not None:
        env["REQUEST_URI"] = uri
    result = dispatcher.decide(scope_of(env))
    assert result is None or isinstance(result, Passed) or 200 <= result[0] < 600
