"""The audit trail: stored with each change in one transaction, on both backends; one
record per mutating admin route (walked from the OpenAPI document); readable by readers
without any secret in it; filtered, paged, pruned; reloads recorded."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.audit_input import audit_query
from dispatcher.audit_trail import run_pruner
from dispatcher.backends.auditstore import AuditNote, AuditQuery
from dispatcher.backends.sites import SiteSpec
from dispatcher.backends.store import SqlSiteStore, StoredRules
from dispatcher.config import build_config
from dispatcher.errors import ConfigError, InvalidValue, StoreError
from dispatcher.openapi import openapi_document
from tests.conftest import LoopbackSite, RunningDispatcher, dispatcher_table

EU = SiteSpec("eu", "http://127.0.0.2:9001")
OPS_TOKEN = "ops-token-value-0123456789"
VIEWER_TOKEN = "viewer-token-value-0123456789"
SECRET_KEY = "secret-key-value-0123456789abcdef"


def note(token: str, action: str) -> Any:
    return lambda before, after: AuditNote(
        token,
        action,
        "site:" + (after or before).name if isinstance(after or before, SiteSpec) else "rules",
        None if before is None else repr(before)[:40],
        None if after is None else repr(after)[:40],
    )


# --- the store, SQLite and PostgreSQL ----------------------------------------------------


def test_every_write_stores_exactly_one_record(store: SqlSiteStore) -> None:
    store.seed([])
    store.create_site(EU, note("ops", "created"))
    store.modify_site("eu", lambda s: replace(s, weight=3), note("ops", "modified"))
    store.set_rules(
        StoredRules("RewriteEngine on\n", "admin API", None, dt.datetime.now(dt.UTC)),
        note("ops", "replaced"),
    )
    store.delete_site("eu", note("ops", "deleted"))
    store.record_audit(AuditNote("-", "reloaded", "config", None, {"applied": []}))
    records = store.audit_records(AuditQuery())
    assert [(r.action, r.object, r.token) for r in records] == [
        ("reloaded", "config", "-"),
        ("deleted", "site:eu", "ops"),
        ("replaced", "rules", "ops"),
        ("modified", "site:eu", "ops"),
        ("created", "site:eu", "ops"),
    ]
    assert records[0].after == {"applied": []}
    assert records[1].after is None
    assert records[4].before is None
    assert all(r.at.tzinfo is dt.UTC for r in records)


def test_a_change_and_its_record_are_written_together_or_not_at_all(store: SqlSiteStore) -> None:
    store.seed([])
    store.create_site(EU)
    revision = store.revision()

    def bad_record(before: Any, after: Any) -> AuditNote:  # the record cannot be stored
        return AuditNote("ops", "modified", "site:eu", None, {"x": object()})

    # the record fails as it is flushed, after the change was: SQLite wraps the encoder's
    # TypeError in a StoreError, psycopg raises it as it is
    with pytest.raises((StoreError, TypeError)):
        store.modify_site("eu", lambda s: replace(s, weight=7), bad_record)
    assert store.get_site("eu").weight == 1  # the change did not happen without its record
    assert store.revision() == revision

    def failing_change(site: SiteSpec) -> SiteSpec:
        raise InvalidValue("weight", "refused")

    with pytest.raises(InvalidValue):
        store.modify_site("eu", failing_change, note("ops", "modified"))
    with pytest.raises((StoreError, TypeError)):
        store.create_site(SiteSpec("us", "http://127.0.0.3:9001"), bad_record)
    with pytest.raises((StoreError, TypeError)):
        store.delete_site("eu", bad_record)
    assert [s.name for s in store.list_sites()] == ["eu"]
    assert store.audit_records(AuditQuery()) == ()  # and no record without its change


def test_filters_and_pages(store: SqlSiteStore) -> None:
    for index in range(25):
        store.record_audit(
            AuditNote("ops" if index % 2 else "bob", "reloaded", f"site:s{index % 3}")
        )
    assert len(store.audit_records(AuditQuery(token="bob"))) == 13
    assert {r.object for r in store.audit_records(AuditQuery(object="site:s1"))} == {"site:s1"}
    seen: list[int] = []
    cursor = None
    while True:
        page = store.audit_records(AuditQuery(limit=10, before_id=cursor))
        seen += [r.id for r in page]
        if len(page) < 10:
            break
        cursor = page[-1].id
    assert seen == sorted(seen, reverse=True)
    assert len(set(seen)) == 25
    now = dt.datetime.now(dt.UTC)
    assert len(store.audit_records(AuditQuery(since=now - dt.timedelta(minutes=1)))) == 25
    assert store.audit_records(AuditQuery(until=now - dt.timedelta(minutes=1))) == ()
    assert store.audit_records(AuditQuery(since=now + dt.timedelta(minutes=1))) == ()


@pytest.mark.anyio
async def test_pruning_is_bounded_per_pass(store: SqlSiteStore) -> None:
    for _ in range(7):
        store.record_audit(AuditNote("ops", "reloaded", "config"))
    assert store.prune_audit(dt.datetime.now(dt.UTC) - dt.timedelta(hours=1), 3) == 0
    assert store.prune_audit(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1), 3) == 3
    assert len(store.audit_records(AuditQuery())) == 4
    task = asyncio.create_task(run_pruner(store, lambda: -10.0, every=60, again=0.01, batch=3))
    for _ in range(200):
        if not store.audit_records(AuditQuery()):
            break
        await asyncio.sleep(0.02)
    task.cancel()
    assert store.audit_records(AuditQuery()) == ()


# --- the query and the setting -------------------------------------------------------------


def test_the_query_refuses_what_it_does_not_know() -> None:
    q = audit_query([("since", "2026-01-02T03:04:05.123456789+02:00"), ("limit", "1000")])
    assert q.since == dt.datetime(2026, 1, 2, 1, 4, 5, 123456, tzinfo=dt.UTC)
    assert q.limit == 1000
    for bad in (
        [("limit", "1001")],
        [("limit", "0")],
        [("cursor", "-1")],
        [("since", "2026-01-02")],
        [("since", "2026-13-02T00:00:00Z")],
        [("until", "9999-12-31T23:59:59-23:59")],
        [("object", "x" * 128)],
        [("token", "a"), ("token", "b")],
        [("password", "x")],
    ):
        with pytest.raises(InvalidValue) as info:
            audit_query(bad)
        assert info.value.field == bad[0][0]


@given(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=40)), max_size=6))
def test_any_query_is_parsed_or_refused_with_a_field(items: list[tuple[str, str]]) -> None:
    field = None
    try:
        q = audit_query(items)
    except InvalidValue as exc:
        field = exc.field
    else:
        assert 1 <= q.limit <= 1000
    assert field is None or field


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(3600, 3600.0), ("90d", 90 * 86400.0), ("1h30m", 5400.0), ("2w", 1209600.0)],
)
def test_audit_retention_takes_seconds_or_a_duration(
    value: Any, seconds: float, tmp_path: Path
) -> None:
    raw = {"dispatcher": {"admin_tokens": ["t"], "audit_retention": value}}
    assert build_config(raw, environ={}, base_dir=tmp_path).dispatcher.audit_retention == seconds
    env = {"FARM_AUDIT_RETENTION": "12h"}
    assert build_config(raw, environ=env, base_dir=tmp_path).dispatcher.audit_retention == 43200.0
    default = build_config({"dispatcher": {"admin_tokens": ["t"]}}, environ={}, base_dir=tmp_path)
    assert default.dispatcher.audit_retention == 90 * 86400.0


@pytest.mark.parametrize("value", [0, "10s", "5x", "", True, "1e9d", -1])
def test_a_bad_audit_retention_names_the_key(value: Any, tmp_path: Path) -> None:
    raw = {"dispatcher": {"admin_tokens": ["t"], "audit_retention": value}}
    with pytest.raises(ConfigError) as info:
        build_config(raw, environ={}, base_dir=tmp_path)
    assert info.value.path == "dispatcher.audit_retention"


# --- the admin API, end to end ------------------------------------------------------------


@pytest.fixture
async def farm(sites: dict[str, LoopbackSite], tmp_path: Path) -> AsyncIterator[RunningDispatcher]:
    rules = tmp_path / "rules.conf"
    rules.write_text("RewriteEngine on\nRewriteRule ^/old$ /new [R=301]\n")
    tokens = (
        f'admin_tokens = [{{ name = "ops", token = "{OPS_TOKEN}", role = "admin" }},'
        f' {{ name = "viewer", token = "{VIEWER_TOKEN}", role = "reader" }}]'
    )
    table = dispatcher_table(f"sqlite:///{tmp_path / 'farm.db'}").replace(
        'admin_tokens = ["secret-token"]', tokens
    )
    config = tmp_path / "farm.toml"
    config.write_text(
        f'{table}secret_keys = ["{SECRET_KEY}"]\nrules = "rules.conf"\n'
        f'[pools.default]\n[[sites]]\nname = "eu"\nbase_url = "{sites["eu"].url}"\n'
    )
    running = RunningDispatcher(await RunningDispatcher.start_runner(config))
    running.admin.headers["authorization"] = f"Bearer {OPS_TOKEN}"
    try:
        yield running
    finally:
        await running.close()


#: Mutating operations that change nothing worth a record: explain changes nothing; load
#: reports are telemetry (every few seconds per site; the latest is kept in site_loads).
NOT_AUDITED = {("post", "/api/v1/explain"), ("put", "/api/v1/sites/{name}/load")}


@pytest.mark.anyio
async def test_every_mutating_route_leaves_one_record_with_the_token_name(
    farm: RunningDispatcher, sites: dict[str, LoopbackSite]
) -> None:
    base = sites["eu"].url
    requests: dict[tuple[str, str], tuple[dict[str, Any], str]] = {
        ("post", "/api/v1/sites"): (
            {"json": {"name": "audited", "base_url": base}},
            "site:audited",
        ),
        ("patch", "/api/v1/sites/{name}"): ({"json": {"weight": 3}}, "site:audited"),
        ("post", "/api/v1/sites/{name}/drain"): ({}, "site:audited"),
        ("post", "/api/v1/sites/{name}/undrain"): ({}, "site:audited"),
        ("put", "/api/v1/rules"): ({"content": b"RewriteEngine on\n"}, "rules"),
        ("delete", "/api/v1/sites/{name}"): ({}, "site:audited"),
        ("put", "/api/v1/sites/{name}/load"): ({"json": {"load": 0.5}}, ""),
        ("post", "/api/v1/explain"): ({"json": {"url": "http://x/"}}, ""),
    }
    document = openapi_document()
    mutating = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("post", "put", "patch", "delete")
    }
    assert mutating == set(requests)  # a new mutating route needs its case here
    baseline = (await farm.admin.get("/api/v1/audit")).json()["records"]
    last = baseline[0]["id"] if baseline else 0
    for (method, path), (kwargs, obj) in requests.items():  # create first, delete last
        target = "audited" if (method, path) != ("put", "/api/v1/sites/{name}/load") else "eu"
        response = await farm.admin.request(
            method.upper(), path.replace("{name}", target), **kwargs
        )
        assert response.status_code < 300, (method, path, response.text)
        new = [
            r for r in (await farm.admin.get("/api/v1/audit")).json()["records"] if r["id"] > last
        ]
        if (method, path) in NOT_AUDITED:
            assert new == [], (method, path)
            continue
        assert len(new) == 1, (method, path, new)
        assert (new[0]["token"], new[0]["object"]) == ("ops", obj)
        last = new[0]["id"]
    actions = [
        r["action"]
        for r in (await farm.admin.get("/api/v1/audit?object=site:audited")).json()["records"]
    ]
    assert actions == ["deleted", "undrained", "drained", "modified", "created"]
    drained = (await farm.admin.get("/api/v1/audit?object=site:audited&limit=3")).json()
    assert drained["records"][1]["before"]["drained"] is True
    assert drained["records"][1]["after"]["drained"] is False
    assert drained["next"] is not None
    rest = (
        await farm.admin.get(f"/api/v1/audit?object=site:audited&cursor={drained['next']}")
    ).json()
    assert [r["action"] for r in rest["records"]] == ["modified", "created"]
    assert rest["next"] is None
    rules = (await farm.admin.get("/api/v1/audit?object=rules&token=ops")).json()["records"][0]
    assert rules["after"]["rules"] == 0
    assert len(rules["after"]["digest"]) == 64
    assert rules["before"]["rules"] == 1
    assert rules["before"]["origin"].endswith("rules.conf")


@pytest.mark.anyio
async def test_a_reader_sees_the_trail_and_no_secret(
    farm: RunningDispatcher, tmp_path: Path
) -> None:
    await farm.admin.post("/api/v1/sites/eu/drain")
    (tmp_path / "rules.conf").write_text("RewriteEngine on\nRewriteRule ^/a$ /b [R=302]\n")
    assert await farm.runner.reload()
    farm.admin.headers["authorization"] = f"Bearer {VIEWER_TOKEN}"
    answer = await farm.admin.get("/api/v1/audit")
    assert answer.status_code == 200
    records = answer.json()["records"]
    assert [(r["token"], r["action"], r["object"]) for r in records[:3]] == [
        ("-", "reloaded", "config"),
        ("-", "adopted", "rules"),
        ("ops", "drained", "site:eu"),
    ]
    assert records[-1]["action"] == "adopted"  # the file's rules at the first start
    text = answer.text
    for secret in (OPS_TOKEN, VIEWER_TOKEN, SECRET_KEY, "RewriteRule"):
        assert secret not in text
    assert (await farm.admin.get("/api/v1/audit?limit=5000")).status_code == 422
    assert (await farm.admin.post("/api/v1/sites/eu/undrain")).status_code == 403
    assert json.loads(text)  # (still JSON)
