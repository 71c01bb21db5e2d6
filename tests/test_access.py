"""Named, scoped admin tokens: the configuration (pure), the decision (pure, hypothesis),
and every role against a real dispatcher on loopback sockets, with its audit and access log;
farmnode's reporter with a reporter token."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.access import (
    ACTIONS,
    MIN_TOKEN_LENGTH,
    ROLES,
    AdminToken,
    authenticate,
    bearer,
    decide,
    parse_tokens,
)
from dispatcher.config import build_config
from dispatcher.errors import ConfigError, InvalidValue
from farmnode.config import ReportSettings
from farmnode.report import Measure, Reporter
from tests.conftest import RunningDispatcher

ADMIN = "admin-token-0123456789"
OPS = "operator-token-0123456789"
EU_OPS = "eu-operator-token-012345"
READ = "reader-token-0123456789"
EU_REPORT = "eu-reporter-token-01234"

# --- configuration (pure) ------------------------------------------------------------------


def test_plain_strings_are_admin_tokens_named_by_position() -> None:
    tokens = parse_tokens(["t", "another"], "admin_tokens")
    assert [(t.name, t.role, t.token, t.sites) for t in tokens] == [
        ("token-1", "admin", "t", frozenset()),
        ("token-2", "admin", "another", frozenset()),
    ]
    assert "another" not in repr(tokens)  # a token never shows in a repr


def test_tables_name_role_and_sites() -> None:
    [ops, feed] = parse_tokens(
        [
            {"name": "ops", "token": OPS, "role": "operator"},
            {"name": "eu-node", "token": EU_REPORT, "role": "reporter", "sites": ["eu"]},
        ],
        "admin_tokens",
    )
    assert (ops.name, ops.role, ops.sites) == ("ops", "operator", frozenset())
    assert (feed.name, feed.role, feed.sites) == ("eu-node", "reporter", frozenset({"eu"}))
    assert feed.describe() == "eu-node (reporter, sites eu)"


@pytest.mark.parametrize(
    ("entries", "field", "words"),
    [
        ([{"name": "a", "token": OPS, "role": "root"}], "[0].role", "one of admin"),
        ([{"name": "a", "token": "short-but-x", "role": "admin"}], "[0].token", "at least 16"),
        ([{"name": "a", "token": " " * 20, "role": "admin"}], "[0].token", "visible ASCII"),
        ([""], "[0]", "non-empty"),
        (["has space"], "[0]", "no spaces"),
        ([{"token": OPS, "role": "admin"}], "[0].name", "required"),
        ([{"name": "a", "role": "admin"}], "[0].token", "required"),
        ([{"name": "a", "token": OPS}], "[0].role", "required"),
        ([{"name": "a", "token": OPS, "role": "admin", "x": 1}], "[0].x", "no such key"),
        ([{"name": "a b", "token": OPS, "role": "admin"}], "[0].name", "letters"),
        ([{"name": "a", "token": OPS, "role": "reader", "sites": ["eu"]}], "[0].sites", "only"),
        ([{"name": "a", "token": OPS, "role": "admin", "sites": ["eu"]}], "[0].sites", "only"),
        ([{"name": "a", "token": OPS, "role": "reporter"}], "[0].sites", "at least one"),
        ([{"name": "a", "token": OPS, "role": "reporter", "sites": []}], "[0].sites", "at least"),
        ([{"name": "a", "token": OPS, "role": "reporter", "sites": "eu"}], "[0].sites", "array"),
        ([{"name": "a", "token": OPS, "role": "operator", "sites": ["/"]}], "[0].sites[0]", ""),
        (["t", {"name": "token-1", "token": OPS, "role": "admin"}], "[1].name", "unique"),
        ([OPS, {"name": "x", "token": OPS, "role": "reader"}], "[1].token", "no other entry"),
        ([7], "[0]", "a token string or a table"),
    ],
)
def test_bad_entries_are_refused_by_key_path(entries: list[Any], field: str, words: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        parse_tokens(entries, "admin_tokens")
    assert caught.value.field == f"admin_tokens{field}"
    assert words in caught.value.message
    assert OPS not in str(caught.value)  # never echo a token


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from([*ROLES, "eu", ""]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
ENTRIES = st.lists(
    VALUES
    | st.just(OPS)
    | st.fixed_dictionaries(
        {},
        optional={
            "name": VALUES | st.sampled_from(["ops", "a"]),
            "token": VALUES | st.just(OPS),
            "role": VALUES | st.sampled_from(ROLES),
            "sites": VALUES | st.just(["eu"]),
        },
    ),
    max_size=4,
)


@given(entries=ENTRIES | VALUES)
def test_any_value_is_tokens_or_one_clear_error(entries: Any) -> None:
    error: InvalidValue | None = None
    tokens: tuple[AdminToken, ...] = ()
    try:
        tokens = parse_tokens(entries, "admin_tokens")
    except InvalidValue as exc:
        error = exc
    if error is not None:
        assert error.field.startswith("admin_tokens")
        assert error.message
        assert OPS not in str(error)
    else:
        assert len({t.name for t in tokens}) == len(tokens)
        assert all(t.role in ROLES and t.token for t in tokens)
        assert all(t.sites for t in tokens if t.role == "reporter")


def test_the_configuration_takes_tables_and_the_environment_takes_admin_tokens() -> None:
    doc = {"dispatcher": {"admin_tokens": [{"name": "ro", "token": READ, "role": "reader"}]}}
    config = build_config(doc, environ={})
    assert [(t.name, t.role) for t in config.dispatcher.admin_tokens] == [("ro", "reader")]
    config = build_config(doc, environ={"FARM_ADMIN_TOKENS": "one, two"})
    assert [(t.name, t.role, t.token) for t in config.dispatcher.admin_tokens] == [
        ("token-1", "admin", "one"),
        ("token-2", "admin", "two"),
    ]
    with pytest.raises(ConfigError, match=r"admin_tokens\[0\]\.role"):
        build_config({"dispatcher": {"admin_tokens": [{"name": "x", "token": READ}]}}, environ={})
    with pytest.raises(ConfigError, match="FARM_ADMIN_TOKENS"):
        build_config(doc, environ={"FARM_ADMIN_TOKENS": "a b"})


# --- authentication and the decision (pure) ------------------------------------------------


def test_authenticate_finds_the_token_and_nothing_close_to_it() -> None:
    tokens = parse_tokens([ADMIN, {"name": "ro", "token": READ, "role": "reader"}], "t")
    table = [(t.token.encode(), t) for t in tokens]
    assert authenticate(table, READ.encode()) is tokens[1]
    assert authenticate(table, ADMIN.encode()) is tokens[0]
    for wrong in (b"", READ[:-1].encode(), (READ + "x").encode(), READ.upper().encode()):
        assert authenticate(table, wrong) is None


def test_bearer_reads_the_last_authorization_header() -> None:
    assert bearer([(b"authorization", b"Bearer  abc ")]) == b"abc"
    assert bearer([(b"authorization", b"bearer abc")]) == b"abc"
    assert bearer([(b"authorization", b"Basic abc")]) is None
    assert bearer([(b"authorization", b"Bearer ")]) is None
    assert bearer([]) is None
    assert bearer([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")]) == b"b"


def _token(role: str, sites: frozenset[str]) -> AdminToken:
    return AdminToken("n", "x" * MIN_TOKEN_LENGTH, role, sites)


SITE_NAMES = st.sampled_from(["eu", "us", "asia"])


@given(
    role=st.sampled_from(ROLES),
    sites=st.frozensets(SITE_NAMES),
    action=st.sampled_from(ACTIONS),
    site=st.none() | SITE_NAMES,
    fields=st.none() | st.frozensets(st.sampled_from(["weight", "drained", "pool", "base_url"])),
)
def test_decide_follows_the_role_table(
    role: str,
    sites: frozenset[str],
    action: str,
    site: str | None,
    fields: frozenset[str] | None,
) -> None:
    token = _token(role, sites if role in ("operator", "reporter") else frozenset())
    decision = decide(token, action, site, fields)
    in_scope = not token.sites or site in token.sites
    weight_only = (
        action == "modify"
        and bool(fields)
        and fields is not None
        and fields <= {"weight", "drained"}
    )
    expected = {
        "admin": True,
        "reader": action in ("read", "explain"),
        "reporter": action == "load" and site in token.sites,
        "operator": (action in ("read", "explain"))
        or (action in ("drain", "undrain", "load", "weight") and in_scope)
        or (weight_only and in_scope),
    }[role]
    assert decision.allowed is expected
    assert decision.allowed or (decision.reason and "may not" in decision.reason)
    assert "x" * MIN_TOKEN_LENGTH not in decision.reason


def test_decide_refuses_an_unknown_action() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        decide(_token("admin", frozenset()), "launch")


# --- every role against a real dispatcher --------------------------------------------------


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "farm.toml"
    path.write_text(
        f"""
[dispatcher]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
database_url = "sqlite:///{tmp_path / "farm.db"}"
registry_refresh = 0.2
admin_tokens = [
  "{ADMIN}",
  {{ name = "ops", token = "{OPS}", role = "operator" }},
  {{ name = "eu-ops", token = "{EU_OPS}", role = "operator", sites = ["eu"] }},
  {{ name = "ro", token = "{READ}", role = "reader" }},
  {{ name = "eu-node", token = "{EU_REPORT}", role = "reporter", sites = ["eu"] }},
]

[[sites]]
name = "eu"
base_url = "http://127.0.0.1:9"
check = {{ interval = 5, timeout = 0.2 }}

[[sites]]
name = "us"
base_url = "http://127.0.0.2:9"
check = {{ interval = 5, timeout = 0.2 }}
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
async def farm(tmp_path: Path) -> AsyncIterator[RunningDispatcher]:
    running = RunningDispatcher(await RunningDispatcher.start_runner(_config(tmp_path)))
    try:
        yield running
    finally:
        await running.close()


async def call(
    farm: RunningDispatcher, token: str, method: str, path: str, body: Any = None
) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"}
    if isinstance(body, str):
        return await farm.admin.request(method, path, content=body, headers=headers)
    return await farm.admin.request(method, path, json=body, headers=headers)


def forbidden(response: httpx.Response) -> bool:
    if response.status_code != 403:
        return False
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert "may not" in error["message"]
    return True


NEW_SITE = {"name": "asia", "base_url": "http://127.0.0.3:9"}
RULES = "RewriteEngine on\nRewriteRule ^/old$ /new [R=301,L]\n"


@pytest.mark.anyio
async def test_a_reporter_reports_for_its_site_and_does_nothing_else(
    farm: RunningDispatcher,
) -> None:
    ok = await call(farm, EU_REPORT, "PUT", "/api/v1/sites/eu/load", {"load": 0.5})
    assert ok.status_code == 200, ok.text
    refused = [
        ("PUT", "/api/v1/sites/us/load", {"load": 0.5}),
        ("POST", "/api/v1/sites/eu/drain", None),
        ("POST", "/api/v1/sites/eu/undrain", None),
        ("PATCH", "/api/v1/sites/eu", {"weight": 5}),
        ("DELETE", "/api/v1/sites/eu", None),
        ("POST", "/api/v1/sites", NEW_SITE),
        ("PUT", "/api/v1/rules", RULES),
        ("GET", "/api/v1/sites", None),
        ("GET", "/api/v1/status", None),
        ("POST", "/api/v1/explain", {"url": "http://x/"}),
    ]
    for method, path, body in refused:
        assert forbidden(await call(farm, EU_REPORT, method, path, body)), (method, path)
    sites = (await call(farm, ADMIN, "GET", "/api/v1/sites")).json()["sites"]
    assert [(s["name"], s["drained"], s["weight"]) for s in sites] == [
        ("eu", False, 1),
        ("us", False, 1),
    ]
    assert [s["load"] is not None for s in sites] == [True, False]


@pytest.mark.anyio
async def test_a_reader_reads_and_explains(farm: RunningDispatcher) -> None:
    for path in ("/api/v1/sites", "/api/v1/sites/eu", "/api/v1/status", "/api/v1/rules"):
        assert (await call(farm, READ, "GET", path)).status_code == 200, path
    assert (await call(farm, READ, "HEAD", "/api/v1/sites")).status_code == 200
    explained = await call(farm, READ, "POST", "/api/v1/explain", {"url": "http://x/"})
    assert explained.status_code == 200, explained.text
    for method, path, body in [
        ("PUT", "/api/v1/sites/eu/load", {"load": 0.5}),
        ("POST", "/api/v1/sites/eu/drain", None),
        ("PATCH", "/api/v1/sites/eu", {"weight": 5}),
        ("DELETE", "/api/v1/sites/us", None),
        ("PUT", "/api/v1/rules", RULES),
    ]:
        assert forbidden(await call(farm, READ, method, path, body)), (method, path)
    assert (await call(farm, READ, "GET", "/api/v1/nothing")).status_code == 404


@pytest.mark.anyio
async def test_an_operator_drains_weighs_and_reports_within_its_sites(
    farm: RunningDispatcher,
) -> None:
    for token in (OPS, EU_OPS):
        for path in ("/api/v1/sites/eu/drain", "/api/v1/sites/eu/undrain"):
            assert (await call(farm, token, "POST", path)).status_code == 200
        weighed = await call(farm, token, "PATCH", "/api/v1/sites/eu", {"weight": 3})
        assert (weighed.status_code, weighed.json()["weight"]) == (200, 3)
        drained = await call(farm, token, "PATCH", "/api/v1/sites/eu", {"drained": False})
        assert drained.status_code == 200
        load = await call(farm, token, "PUT", "/api/v1/sites/eu/load", {"load": 0.1})
        assert load.status_code == 200
        assert (await call(farm, token, "GET", "/api/v1/status")).status_code == 200
        for method, path, body in [
            ("PATCH", "/api/v1/sites/eu", {"weight": 2, "base_url": "http://127.0.0.4:9"}),
            ("PATCH", "/api/v1/sites/eu", {"pool": "default"}),
            ("PATCH", "/api/v1/sites/eu", [1]),
            ("DELETE", "/api/v1/sites/eu", None),
            ("POST", "/api/v1/sites", NEW_SITE),
            ("PUT", "/api/v1/rules", RULES),
        ]:
            assert forbidden(await call(farm, token, method, path, body)), (token, method, path)
    # outside its sites, the scoped operator may read but not act
    assert (await call(farm, OPS, "POST", "/api/v1/sites/us/drain")).status_code == 200
    for method, path, body in [
        ("POST", "/api/v1/sites/us/undrain", None),
        ("PATCH", "/api/v1/sites/us", {"weight": 3}),
        ("PUT", "/api/v1/sites/us/load", {"load": 0.2}),
    ]:
        assert forbidden(await call(farm, EU_OPS, method, path, body)), (method, path)
    assert (await call(farm, EU_OPS, "GET", "/api/v1/sites/us")).json()["drained"] is True
    # an invalid body is still the handler's 400, and changes nothing
    assert (await call(farm, OPS, "PATCH", "/api/v1/sites/eu", "{")).status_code == 400


@pytest.mark.anyio
async def test_a_plain_admin_token_may_do_everything(farm: RunningDispatcher) -> None:
    assert (await call(farm, ADMIN, "POST", "/api/v1/sites", NEW_SITE)).status_code == 201
    patched = await call(farm, ADMIN, "PATCH", "/api/v1/sites/asia", {"pool": "default"})
    assert patched.status_code == 200
    assert (await call(farm, ADMIN, "PUT", "/api/v1/rules", RULES)).status_code == 200
    assert (await call(farm, ADMIN, "DELETE", "/api/v1/sites/asia")).status_code == 204
    unknown = await call(farm, "not-a-token-at-all", "GET", "/api/v1/sites")
    assert unknown.status_code == 401
    assert unknown.json()["error"]["code"] == "unauthorized"


# --- the audit log and the admin access log ------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger]


@pytest.mark.anyio
async def test_every_change_is_audited_with_the_token_name_before_and_after(
    farm: RunningDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="webfarm")
    await call(farm, EU_OPS, "POST", "/api/v1/sites/eu/drain")
    await call(farm, EU_OPS, "PATCH", "/api/v1/sites/eu", {"weight": 4})
    await call(farm, ADMIN, "POST", "/api/v1/sites", NEW_SITE)
    await call(farm, ADMIN, "PATCH", "/api/v1/sites/asia", {"check": {"interval": 7}})
    await call(farm, ADMIN, "DELETE", "/api/v1/sites/asia")
    await call(farm, ADMIN, "PUT", "/api/v1/rules", RULES)
    await call(farm, ADMIN, "PUT", "/api/v1/rules", "RewriteEngine off\n")
    await call(farm, EU_REPORT, "PUT", "/api/v1/sites/eu/load", {"load": 0.25})
    await call(farm, READ, "POST", "/api/v1/sites/eu/undrain")  # refused: no audit line
    lines = _lines(caplog, "webfarm.audit")
    assert lines[:5] == [
        'eu-ops drained site eu: {"drained":[false,true]}',
        'eu-ops modified site eu: {"weight":[1,4]}',
        "token-1 created site asia: "
        '{"addresses":[],"base_url":"http://127.0.0.3:9","check":{"expect":"","fall":3,"interval":2.0,'
        '"rise":2,"timeout":1.0,"url":"/"},"coordinates":null,"country":null,"drained":false,'
        '"name":"asia","pool":"default","region":null,"weight":1}',
        'token-1 modified site asia: {"check.interval":[2.0,7.0]}',
        "token-1 deleted site asia, which was "
        '{"addresses":[],"base_url":"http://127.0.0.3:9","check":{"expect":"","fall":3,"interval":7.0,'
        '"rise":2,"timeout":1.0,"url":"/"},"coordinates":null,"country":null,"drained":false,'
        '"name":"asia","pool":"default","region":null,"weight":1}',
    ]
    assert lines[5].startswith("token-1 replaced the rewrite rules: none -> 1 rule(s), digest none")
    assert lines[6].startswith("token-1 replaced the rewrite rules: rules -> 0 rule(s), digest ")
    assert '(was from "admin API")' in lines[6]
    assert "RewriteRule" not in "".join(lines)  # digests, never the text
    assert lines[7] == "eu-node reported load 0.25 (None connections) for site eu"
    assert len(lines) == 8
    load_record = [r for r in caplog.records if "reported load" in r.getMessage()]
    assert [r.levelno for r in load_record] == [logging.DEBUG]


@pytest.mark.anyio
async def test_the_admin_listener_logs_every_request_although_access_log_is_off(
    farm: RunningDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    assert farm.runner.config.dispatcher.access_log is False
    caplog.set_level(logging.INFO, logger="webfarm")
    await call(farm, READ, "GET", "/api/v1/sites/eu")
    await call(farm, READ, "DELETE", "/api/v1/sites/eu")
    await call(farm, "wrong-token", "GET", "/api/v1/sites%0D%0Aforged")
    lines = _lines(caplog, "webfarm.admin.access")
    assert len(lines) == 3, lines
    assert lines[0].startswith("127.0.0.1:")
    assert '"GET /api/v1/sites/eu" 200 ' in lines[0]
    assert lines[0].endswith("token=ro")
    assert '"DELETE /api/v1/sites/eu" 403 ' in lines[1]
    assert " 401 " in lines[2]
    assert lines[2].endswith("token=-")
    for i in range(50):  # guessing tokens: one line per 10 s, not one per guess
        await call(farm, f"guess-{i}", "GET", "/api/v1/sites")
    assert len(_lines(caplog, "webfarm.admin.access")) == 3
    assert all("\n" not in line and "\r" not in line for line in lines)
    assert not any(READ in line for line in lines)


# --- farmnode's reporter with a reporter token ---------------------------------------------


@pytest.mark.anyio
async def test_farmnode_reports_with_a_reporter_token_and_is_told_why_not_elsewhere(
    farm: RunningDispatcher,
) -> None:
    assert farm.runner.admin is not None
    url = f"http://127.0.0.1:{farm.runner.admin.port}"

    async def measure() -> Measure:
        return Measure(2, True)

    for site, expected in [
        ("eu", "reported load 0.200 (2 conn)"),
        ("us", "report refused: HTTP 403: the token may not report load for site 'us'"),
    ]:
        settings = ReportSettings(url=url, site=site, token=EU_REPORT, capacity=10, interval=1)
        reporter = Reporter(settings, measure)
        try:
            assert (await reporter.report_once()).startswith(expected)
        finally:
            await reporter.close()
