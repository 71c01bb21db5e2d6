"""The site registry, on embedded SQLite and on the machine's real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import replace

import psycopg
import pytest
from alembic import command
from sqlalchemy import text

from dispatcher.backends.sites import CheckSpec, SiteSpec
from dispatcher.backends.store import LoadReport, SqlSiteStore, StoredRules
from dispatcher.errors import (
    InvalidValue,
    SchemaBehind,
    SiteExists,
    SiteNotFound,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from dispatcher.placement.rtt import MAX_REPORT_ENTRIES, RttEntry, RttReport

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
        with pytest.raises(StoreUnavailable, match="cannot connect") as info:
            store.check_schema()
        assert "Connection refused" in str(info.value)
        with pytest.raises(StoreUnavailable, match="cannot connect") as info:
            store.create_site(US)  # says what happened, not "run db upgrade"
        assert "upgrade" not in str(info.value)
    finally:
        store.close()


def test_values_the_database_cannot_hold_are_rejected(store: SqlSiteStore) -> None:
    """What validation lets through by mistake is a typed error on both backends."""
    store.seed([EU])
    at = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    for connections in (2**63, 2**64, -(2**70)):
        with pytest.raises(StoreRejected):
            store.record_load(LoadReport("eu", 0.5, connections, at))
    store.record_load(LoadReport("eu", 0.5, 2**31 - 1, at))
    assert store.loads()["eu"].connections == 2**31 - 1
    if not store.url.startswith("sqlite"):  # SQLite keeps both as they are
        with pytest.raises(StoreRejected, match="NUL"):
            store.set_rules(StoredRules("# a \x00\n", "admin API", None, at))
        with pytest.raises(StoreRejected):
            store.create_site(SiteSpec("long", "http://127.0.0.1/" + "p" * 2048))
    assert store.get_rules() is None
    assert [s.name for s in store.list_sites()] == ["eu"]


def test_a_write_that_outlives_its_deadline_is_rolled_back(database_url: str) -> None:
    store = SqlSiteStore(database_url, timeout=0.5)
    try:
        store.upgrade()
        store.seed([EU])
        revision = store.revision()

        def slow(site: SiteSpec) -> SiteSpec:
            time.sleep(0.5)  # the client gives up meanwhile
            return replace(site, weight=7)

        with pytest.raises(StoreUnavailable, match="nothing was changed"):
            store.modify_site("eu", slow)
        assert store.get_site("eu").weight == EU.weight
        assert store.revision() == revision
        store.modify_site("eu", lambda site: replace(site, weight=7))  # the store still works
        assert store.get_site("eu").weight == 7
    finally:
        store.close()


@pytest.mark.postgres
def test_postgresql_refuses_a_commit_past_the_clients_deadline(postgres_url: str) -> None:
    """The server-side half: a COMMIT that reaches the server late (it was stopped, say)
    fails, whatever the client did; a transaction without a deadline is not affected."""
    store = SqlSiteStore(postgres_url)
    try:
        store.upgrade()
        store.seed([EU])
        revision = store.revision()
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        conn.execute("SELECT set_config('webfarm.deadline', (clock_timestamp())::text, true)")
        conn.execute("UPDATE registry SET revision = revision + 1")
        conn.execute("UPDATE sites SET weight = 9")
        with pytest.raises(psycopg.errors.QueryCanceled, match="deadline"):
            conn.commit()
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT revision FROM registry").fetchone() == (revision,)
        conn.execute("UPDATE sites SET weight = 9")  # no deadline set: an operator's change
        conn.commit()
        assert conn.execute("SELECT weight FROM sites").fetchone() == (9,)


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


def _migrate(store: SqlSiteStore, revision: str, down: bool = False) -> None:
    cfg = store._alembic()
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def _insert_as_at_0001(store: SqlSiteStore) -> None:
    """EU as a dispatcher of revision 0001 wrote it (its columns only)."""
    with store.engine.begin() as conn:
        conn.execute(
            text(
                'INSERT INTO sites (name, base_url, pool, weight, drained, "check",'
                " position, updated_at) VALUES ('eu', :url, 'default', 2, false, :check, 0,"
                " CURRENT_TIMESTAMP)"
            ),
            {"url": EU.base_url, "check": json.dumps(EU.check.as_dict())},
        )
        conn.execute(text("UPDATE registry SET seeded = true, revision = revision + 1"))


def test_upgrade_from_the_first_revision_keeps_the_data(database_url: str) -> None:
    store = SqlSiteStore(database_url)
    try:
        _migrate(store, "0001")
        with pytest.raises(SchemaBehind) as info:
            store.check_schema()
        assert info.value.current == "0001"
        _insert_as_at_0001(store)
        store.upgrade()
        store.check_schema()
        assert store.get_site("eu") == replace(EU, position=0)
    finally:
        store.close()


def test_site_topology_round_trips_and_its_migration_goes_both_ways(database_url: str) -> None:
    """0004 adds region, country, latitude, longitude: sites written before have none of
    them; a site's topology is stored and changed; downgrading to 0003 keeps the sites."""
    store = SqlSiteStore(database_url)
    try:
        _migrate(store, "0003")
        _insert_as_at_0001(store)
        store.upgrade()  # (0004 and what came after it: the model reads every column)
        assert store.get_site("eu") == replace(EU, position=0)
        placed = replace(US, region="na-east", country="US", coordinates=(40.7, -74.0))
        assert store.create_site(placed) == replace(placed, position=1)
        assert store.get_site("us") == replace(placed, position=1)
        moved = store.modify_site(
            "us", lambda s: replace(s, region=None, coordinates=(-33.9, 151.2), country="AU")
        )
        assert (moved.region, moved.country, moved.coordinates) == (None, "AU", (-33.9, 151.2))
        assert store.get_site("us") == moved
        _migrate(store, "0003", down=True)
        with store.engine.connect() as conn:
            names = conn.execute(text("SELECT name FROM sites ORDER BY position")).scalars()
            assert list(names) == ["eu", "us"]
        store.upgrade()
        assert store.get_site("us") == replace(moved, region=None, country=None, coordinates=None)
    finally:
        store.close()


def test_site_addresses_round_trip_and_their_migration_goes_both_ways(database_url: str) -> None:
    """0007 adds the addresses the DNS front answers: sites written before have none; a
    site's addresses are stored and changed; downgrading to 0006 keeps the sites."""
    store = SqlSiteStore(database_url)
    try:
        _migrate(store, "0006")
        _insert_as_at_0001(store)
        _migrate(store, "0007")
        assert store.get_site("eu") == replace(EU, position=0)
        named = replace(US, addresses=("192.0.2.3", "2001:db8::3"))
        assert store.create_site(named) == replace(named, position=1)
        assert store.get_site("us") == replace(named, position=1)
        moved = store.modify_site("us", lambda s: replace(s, addresses=("198.51.100.3",)))
        assert store.get_site("us").addresses == moved.addresses == ("198.51.100.3",)
        cleared = store.modify_site("us", lambda s: replace(s, addresses=()))
        assert store.get_site("us") == cleared
        assert cleared.addresses == ()
        store.modify_site("us", lambda s: replace(s, addresses=("198.51.100.3",)))
        _migrate(store, "0006", down=True)
        with store.engine.connect() as conn:
            names = conn.execute(text("SELECT name FROM sites ORDER BY position")).scalars()
            assert list(names) == ["eu", "us"]
        store.upgrade()
        assert store.get_site("us").addresses == ()
    finally:
        store.close()


# --- learned latency -----------------------------------------------------------------------


def _rtt(site: str, at: dt.datetime, *entries: tuple[str, float, int]) -> RttReport:
    return RttReport(site, tuple(RttEntry(*entry) for entry in entries), at)


def test_rtt_tables_ride_with_load_reports(store: SqlSiteStore) -> None:
    store.seed([EU, US])
    at = dt.datetime(2026, 12, 10, 12, 0, tzinfo=dt.UTC)
    eu = _rtt("eu", at, ("192.0.2.0/24", 0.0123, 17), ("2001:db8:1::/48", 0.2, 1))
    store.record_load(LoadReport("eu", 0.5, 3, at), eu)
    assert store.rtt_stamps() == {"eu": at}
    assert store.rtt_tables(["eu", "us", "nope"]) == {"eu": eu}
    assert store.rtt_tables([]) == {}
    later = at + dt.timedelta(seconds=5)
    store.record_load(LoadReport("eu", 0.4, 2, later))  # no table: the stored one stays
    assert store.rtt_tables(["eu"]) == {"eu": eu}
    replaced = _rtt("eu", later, ("198.51.100.0/24", 0.05, 2))
    store.record_load(LoadReport("eu", 0.4, 2, later), replaced)
    assert store.rtt_tables(["eu"]) == {"eu": replaced}
    store.record_load(LoadReport("eu", 0.4, 2, later), _rtt("eu", later))  # an empty table
    assert store.rtt_tables(["eu"])["eu"].entries == ()
    with pytest.raises(SiteNotFound):
        store.record_load(LoadReport("nope", 0.1, 1, at), _rtt("nope", at, ("192.0.2.0/24", 1, 1)))
    assert set(store.rtt_stamps()) == {"eu"}
    store.delete_site("eu")
    assert store.rtt_stamps() == {}


def test_a_full_rtt_table_round_trips(store: SqlSiteStore) -> None:
    store.seed([EU])
    at = dt.datetime(2026, 12, 10, 12, 0, tzinfo=dt.UTC)
    entries = [(f"2001:db8:{i + 1:x}::/48", i / 1e6, i + 1) for i in range(MAX_REPORT_ENTRIES)]
    table = _rtt("eu", at, *entries)
    store.record_load(LoadReport("eu", 0.5, 3, at), table)
    assert store.rtt_tables(["eu"]) == {"eu": table}


@pytest.mark.postgres
def test_postgresql_guards_rtt_writes_with_the_deadline_trigger(postgres_url: str) -> None:
    store = SqlSiteStore(postgres_url)
    try:
        store.upgrade()
    finally:
        store.close()
    with psycopg.connect(postgres_url) as conn:
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'webfarm_write_deadline'"
        ).fetchall()
    assert ("site_rtt",) in triggers
