"""The site registry, on embedded SQLite and on the machine's real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest
from alembic import command

from dispatcher.backends.sites import CheckSpec, SiteSpec
from dispatcher.backends.store import LoadReport, SqlSiteStore, StoredRules
from dispatcher.errors import InvalidValue, SchemaBehind, SiteExists, SiteNotFound, StoreError

EU = SiteSpec("eu", "http://127.0.0.2:9001", weight=2, check=CheckSpec(url="/health", expect="OK"))
US = SiteSpec("us", "http://127.0.0.3:9001")


def test_a_new_database_is_behind_until_upgraded(database_url: str) -> None:
    store = SqlSiteStore(database_url)
    try:
        with pytest.raises(SchemaBehind) as info:
            store.check_schema()
        assert info.value.current is None
        assert "farm-dispatcher db upgrade --config" in str(info.value)
        assert store.upgrade() == store.head()
        store.check_schema()
        assert store.upgrade() == store.head()  # idempotent
    finally:
        store.close()


def test_seed_happens_once(store: SqlSiteStore) -> None:
    assert store.seed([EU, US])
    assert [s.name for s in store.list_sites()] == ["eu", "us"]
    store.delete_site("us")
    assert not store.seed([EU, US])  # the operator's deletion stands
    assert [s.name for s in store.list_sites()] == ["eu"]


def test_sites_round_trip_with_every_field(store: SqlSiteStore) -> None:
    store.seed([])
    created = store.create_site(replace(EU, drained=True, pool="p"))
    assert created == replace(EU, drained=True, pool="p", position=0)
    assert store.get_site("eu") == created


def test_new_sites_go_last(store: SqlSiteStore) -> None:
    store.seed([EU])
    store.create_site(US)
    store.create_site(SiteSpec("asia", "https://asia.example"))
    assert [s.name for s in store.list_sites()] == ["eu", "us", "asia"]


def test_duplicate_and_missing_names(store: SqlSiteStore) -> None:
    store.seed([EU])
    with pytest.raises(SiteExists):
        store.create_site(replace(EU, base_url="http://elsewhere"))
    assert store.get_site("eu").base_url == EU.base_url
    with pytest.raises(SiteNotFound):
        store.get_site("nope")
    with pytest.raises(SiteNotFound):
        store.delete_site("nope")
    with pytest.raises(SiteNotFound):
        store.modify_site("nope", lambda s: s)


def test_every_write_bumps_the_revision(store: SqlSiteStore) -> None:
    revisions = [store.revision()]
    store.seed([EU])
    revisions.append(store.revision())
    store.create_site(US)
    revisions.append(store.revision())
    store.modify_site("us", lambda s: replace(s, weight=5))
    revisions.append(store.revision())
    store.delete_site("us")
    revisions.append(store.revision())
    assert revisions == sorted(set(revisions))


def test_a_failing_change_writes_nothing(store: SqlSiteStore) -> None:
    store.seed([EU])
    revision = store.revision()

    def bad(site: SiteSpec) -> SiteSpec:
        raise InvalidValue("weight", "nope")

    with pytest.raises(InvalidValue):
        store.modify_site("eu", bad)
    assert store.get_site("eu") == replace(EU, position=0)
    assert store.revision() == revision


def test_modify_keeps_the_position(store: SqlSiteStore) -> None:
    store.seed([EU, US])
    changed = store.modify_site("eu", lambda s: replace(s, weight=9, drained=True))
    assert (changed.weight, changed.drained, changed.position) == (9, True, 0)
    assert [s.name for s in store.list_sites()] == ["eu", "us"]


def test_loads_are_kept_per_site_and_go_with_it(store: SqlSiteStore) -> None:
    store.seed([EU, US])
    at = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    store.record_load(LoadReport("eu", 0.5, 10, at))
    store.record_load(LoadReport("eu", 0.25, None, at + dt.timedelta(seconds=1)))
    store.record_load(LoadReport("us", 1.0, 3, at))
    loads = store.loads()
    assert loads["eu"] == LoadReport("eu", 0.25, None, at + dt.timedelta(seconds=1))
    assert loads["us"].load == 1.0
    with pytest.raises(SiteNotFound):
        store.record_load(LoadReport("nope", 0.1, None, at))
    store.delete_site("eu")
    assert set(store.loads()) == {"us"}


def test_an_unreachable_database_is_a_store_error(tmp_path: object) -> None:
    store = SqlSiteStore("postgresql://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(StoreError, match="cannot connect"):
            store.check_schema()
    finally:
        store.close()


def test_an_unusable_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="cannot use database URL"):
        SqlSiteStore("nosuchdialect://x")


def test_rules_are_stored_and_bump_the_revision(store: SqlSiteStore) -> None:
    store.seed([])
    assert store.get_rules() is None
    revision = store.revision()
    at = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    rules = StoredRules("RewriteEngine on\n", "rules.conf", "ab" * 32, at)
    store.set_rules(rules)
    assert store.get_rules() == rules
    assert store.revision() > revision
    store.set_rules(replace(rules, text="# none\n", origin="admin API", file_digest=None))
    assert store.get_rules() == replace(
        rules, text="# none\n", origin="admin API", file_digest=None
    )


def test_upgrade_from_the_first_revision_keeps_the_data(database_url: str) -> None:
    store = SqlSiteStore(database_url)
    try:
        cfg = store._alembic()
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        with pytest.raises(SchemaBehind) as info:
            store.check_schema()
        assert info.value.current == "0001"
        store.seed([EU])
        store.upgrade()
        store.check_schema()
        assert store.get_site("eu") == replace(EU, position=0)
    finally:
        store.close()
