"""The site registry: sites, their load reports and a revision counter, in one database.

:class:`SiteStore` states the contract; :class:`SqlSiteStore` keeps it with SQLAlchemy on
SQLite (embedded, the default) or PostgreSQL (many dispatchers sharing one registry).
Every method is synchronous and blocking: async callers run them in a worker thread.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, delete, event, func, select, text
from sqlalchemy.exc import DisconnectionError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dispatcher.backends import auditstore
from dispatcher.backends.auditstore import AuditHook, AuditNote, AuditQuery, AuditRecord
from dispatcher.backends.deadline import (
    UPGRADE_HINT,
    Deadline,
    call_budget,
    engine_options,
    translate,
)
from dispatcher.backends.models import LoadRow, RegistryRow, RttRow, RulesRow, SiteRow
from dispatcher.backends.sites import SiteSpec, parse_check
from dispatcher.backends.snapshot import LoadReport
from dispatcher.errors import (
    SchemaBehind,
    SiteExists,
    SiteNotFound,
    StoreError,
    StoreRejected,
    StoreUnavailable,
)
from dispatcher.placement.rtt import RttReport, entries_from_rows

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class StoredRules:
    """The rewrite rules in force: their text, where it came from, and when."""

    text: str
    origin: str
    file_digest: str | None
    updated_at: dt.datetime


class SiteStore(abc.ABC):
    """What the dispatcher needs from its registry.

    Each write is atomic: it either happens whole, with the revision bumped in the same
    transaction, or raises and changes nothing. Readers see only committed writes.

    Every call is bounded in time: it returns or raises within the store's timeout, also
    when the database hangs (only PostgreSQL's connect may take 2 s at least, and name
    resolution of the database host is not bounded). Errors are typed:
    :class:`StoreUnavailable` (unreachable, too slow: nothing was changed, and a write that
    raised it is never applied later), :class:`StoreRejected` (the database cannot hold a
    value), :class:`SiteNotFound`, :class:`SiteExists`, or :class:`StoreError` (schema).
    """

    @abc.abstractmethod
    def check_schema(self) -> None:
        """Raise :class:`SchemaBehind` unless the schema is at the head revision."""

    @abc.abstractmethod
    def upgrade(self) -> str:
        """Bring the schema to head; return the head revision."""

    @abc.abstractmethod
    def seed(self, sites: Iterable[SiteSpec]) -> bool:
        """Insert ``sites`` once in the registry's lifetime; ``True`` if this call did it.

        A registry that was seeded before is left alone, even if its sites were deleted
        since, so the config file never resurrects what an operator removed.
        """

    @abc.abstractmethod
    def revision(self) -> int:
        """A number that grows with every change to the sites."""

    @abc.abstractmethod
    def list_sites(self) -> tuple[SiteSpec, ...]:
        """All sites, in configured order (``position``)."""

    @abc.abstractmethod
    def get_site(self, name: str) -> SiteSpec:
        """The site called ``name``, or :class:`SiteNotFound`."""

    @abc.abstractmethod
    def create_site(self, site: SiteSpec, audit: AuditHook | None = None) -> SiteSpec:
        """Add ``site`` after all others; :class:`SiteExists` if the name is taken.

        Every write that takes ``audit`` stores ``audit(before, after)`` in its own
        transaction (:mod:`~dispatcher.backends.auditstore`): both or neither."""

    @abc.abstractmethod
    def modify_site(
        self, name: str, change: Callable[[SiteSpec], SiteSpec], audit: AuditHook | None = None
    ) -> SiteSpec:
        """Replace a site by ``change(current)``, read and written in one transaction.

        ``change`` may raise (a validation error, say): then nothing is written.
        :class:`SiteNotFound` if there is no such site.
        """

    @abc.abstractmethod
    def delete_site(self, name: str, audit: AuditHook | None = None) -> None:
        """Remove a site and its load report; :class:`SiteNotFound` if there is none."""

    @abc.abstractmethod
    def record_load(self, report: LoadReport, rtt: RttReport | None = None) -> None:
        """Keep ``report`` as the site's latest, and ``rtt`` (when given) as its latest RTT
        table, in one transaction; :class:`SiteNotFound` for an unknown site."""

    @abc.abstractmethod
    def loads(self) -> Mapping[str, LoadReport]:
        """The latest load report of every site that has one."""

    @abc.abstractmethod
    def rtt_stamps(self) -> Mapping[str, dt.datetime]:
        """When each site's RTT table was reported, for the sites that have one (cheap:
        the tables are not read)."""

    @abc.abstractmethod
    def rtt_tables(self, sites: Iterable[str]) -> Mapping[str, RttReport]:
        """The RTT tables of ``sites`` (those that have one)."""

    @abc.abstractmethod
    def get_rules(self) -> StoredRules | None:
        """The rules in force, or ``None`` if none were ever stored."""

    @abc.abstractmethod
    def set_rules(self, rules: StoredRules, audit: AuditHook | None = None) -> None:
        """Replace the rules in force, bumping the revision in the same transaction."""

    @abc.abstractmethod
    def record_audit(self, note: AuditNote) -> None:
        """Store a record of a change made outside this store (a reload)."""

    @abc.abstractmethod
    def audit_records(self, query: AuditQuery) -> tuple[AuditRecord, ...]:
        """The audit records ``query`` selects, newest first."""

    @abc.abstractmethod
    def prune_audit(self, cutoff: dt.datetime, limit: int) -> int:
        """Delete up to ``limit`` audit records older than ``cutoff``; how many."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""


def migrations_dir() -> Path:
    """Where the Alembic scripts are: packaged beside the code, or in the source tree."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise StoreError("the Alembic migrations directory is missing from this installation")


class SqlSiteStore(SiteStore):
    """:class:`SiteStore` on SQLAlchemy; ``url`` is any SQLAlchemy URL (sqlite, postgresql)."""

    def __init__(self, url: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url = _driver_url(url)
        self.timeout = timeout
        self.budget = call_budget(timeout)
        try:
            self.engine: Engine = create_engine(self.url, **engine_options(self.url, self.budget))
        except Exception as exc:  # SQLAlchemy raises several kinds for a bad URL
            raise StoreError(f"cannot use database URL {url!r}: {exc}") from exc
        self._sqlite = self.url.startswith("sqlite")
        if self._sqlite:
            event.listen(self.engine, "connect", self._sqlite_pragmas)
        else:
            event.listen(self.engine, "connect", _mark_fresh)
        event.listen(self.engine, "checkout", self._on_checkout)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock: threading.Lock | None = threading.Lock() if self._sqlite else None
        self._local = threading.local()

    # --- schema ---

    # Alembic is imported where the schema is read or changed, not with this module: a
    # process that only reads the registry (or only needs a LoadReport) never pays for it.

    def _alembic(self) -> AlembicConfig:
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(migrations_dir()))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return cfg

    def head(self) -> str:
        from alembic.script import ScriptDirectory

        head = ScriptDirectory.from_config(self._alembic()).get_current_head()
        if head is None:
            raise StoreError("the migrations directory has no revisions")
        return head

    def current(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self._transaction() as session:
            return MigrationContext.configure(session.connection()).get_current_revision()

    def check_schema(self) -> None:
        current, head = self.current(), self.head()
        if current != head:
            raise SchemaBehind(current, head, UPGRADE_HINT)

    def upgrade(self) -> str:
        from alembic import command

        cfg = self._alembic()
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return self.head()

    # --- registry ---

    def seed(self, sites: Iterable[SiteSpec]) -> bool:
        with self._transaction(write=True) as session:
            registry = self._registry(session, lock=True)
            if registry.seeded:
                return False
            for position, site in enumerate(sites):
                session.add(_row(site, position))
            registry.seeded = True
            registry.revision += 1
        return True

    def revision(self) -> int:
        with self._transaction() as session:
            return self._registry(session).revision

    def list_sites(self) -> tuple[SiteSpec, ...]:
        with self._transaction() as session:
            rows = session.scalars(select(SiteRow).order_by(SiteRow.position, SiteRow.name))
            return tuple(_spec(row) for row in rows)

    def get_site(self, name: str) -> SiteSpec:
        with self._transaction() as session:
            return _spec(self._site(session, name))

    def create_site(self, site: SiteSpec, audit: AuditHook | None = None) -> SiteSpec:
        try:
            with self._transaction(write=True) as session:
                registry = self._registry(session, lock=True)
                if session.get(SiteRow, site.name) is not None:
                    raise SiteExists(site.name)
                last = session.scalar(select(func.max(SiteRow.position)))
                row = _row(site, -1 if last is None else last)
                row.position += 1
                session.add(row)
                registry.revision += 1
                auditstore.add(session, audit, None, _spec(row))
        except StoreRejected as exc:
            if isinstance(exc.__cause__, IntegrityError):  # a replica inserted it just now
                raise SiteExists(site.name) from None
            raise
        return _spec(row)

    def modify_site(
        self, name: str, change: Callable[[SiteSpec], SiteSpec], audit: AuditHook | None = None
    ) -> SiteSpec:
        with self._transaction(write=True) as session:
            registry = self._registry(session, lock=True)
            row = self._site(session, name)
            old = _spec(row)
            new = change(old)
            row.base_url, row.pool, row.weight = new.base_url, new.pool, new.weight
            row.drained, row.check = new.drained, new.check.as_dict()
            _set_topology(row, new)
            row.addresses = list(new.addresses) or None
            row.updated_at = _now()
            registry.revision += 1
            auditstore.add(session, audit, old, _spec(row))
            return _spec(row)

    def delete_site(self, name: str, audit: AuditHook | None = None) -> None:
        with self._transaction(write=True) as session:
            registry = self._registry(session, lock=True)
            row = self._site(session, name)
            auditstore.add(session, audit, _spec(row), None)
            session.delete(row)
            session.execute(delete(LoadRow).where(LoadRow.site == name))
            session.execute(delete(RttRow).where(RttRow.site == name))
            registry.revision += 1

    def record_load(self, report: LoadReport, rtt: RttReport | None = None) -> None:
        with self._transaction(write=True) as session:
            self._site(session, report.site)
            row = session.get(LoadRow, report.site)
            if row is None:
                row = LoadRow(site=report.site)
                session.add(row)
            row.load, row.connections = report.load, report.connections
            row.reported_at = report.reported_at
            if rtt is not None:
                table = session.get(RttRow, report.site)
                if table is None:
                    table = RttRow(site=report.site)
                    session.add(table)
                table.reported_at, table.networks = rtt.reported_at, len(rtt.entries)
                table.entries = [list(entry) for entry in rtt.entries]

    def rtt_stamps(self) -> Mapping[str, dt.datetime]:
        with self._transaction() as session:
            rows = session.execute(select(RttRow.site, RttRow.reported_at))
            return {site: _utc(at) for site, at in rows}

    def rtt_tables(self, sites: Iterable[str]) -> Mapping[str, RttReport]:
        names = list(sites)
        if not names:
            return {}
        with self._transaction() as session:
            rows = session.scalars(select(RttRow).where(RttRow.site.in_(names)))
            return {
                row.site: RttReport(row.site, entries_from_rows(row.entries), _utc(row.reported_at))
                for row in rows
            }

    def loads(self) -> Mapping[str, LoadReport]:
        with self._transaction() as session:
            return {
                row.site: LoadReport(row.site, row.load, row.connections, _utc(row.reported_at))
                for row in session.scalars(select(LoadRow))
            }

    def get_rules(self) -> StoredRules | None:
        with self._transaction() as session:
            row = session.get(RulesRow, 1)
            if row is None:
                return None
            return StoredRules(row.text, row.origin, row.file_digest, _utc(row.updated_at))

    def set_rules(self, rules: StoredRules, audit: AuditHook | None = None) -> None:
        with self._transaction(write=True) as session:
            registry = self._registry(session, lock=True)
            row = session.get(RulesRow, 1)
            old = (
                None
                if row is None
                else StoredRules(row.text, row.origin, row.file_digest, _utc(row.updated_at))
            )
            auditstore.add(session, audit, old, rules)
            if row is None:
                row = RulesRow(id=1)
                session.add(row)
            row.text, row.origin, row.file_digest = rules.text, rules.origin, rules.file_digest
            row.updated_at = rules.updated_at
            registry.revision += 1

    def record_audit(self, note: AuditNote) -> None:
        with self._transaction(write=True) as session:
            auditstore.add(session, lambda _before, _after: note, None, None)

    def audit_records(self, query: AuditQuery) -> tuple[AuditRecord, ...]:
        with self._transaction() as session:
            return auditstore.query(session, query)

    def prune_audit(self, cutoff: dt.datetime, limit: int) -> int:
        with self._transaction(write=True) as session:
            return auditstore.prune(session, cutoff, limit)

    def close(self) -> None:
        self.engine.dispose()

    # --- plumbing ---

    def _transaction(self, write: bool = False) -> _Transaction:
        lock = self._write_lock if write else None
        return _Transaction(self, self._sessions(), lock, write)

    def _sqlite_pragmas(self, dbapi_connection: Any, _record: object) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={max(1, int(self.budget * 1000))}")
        cursor.close()

    def _on_checkout(self, dbapi_connection: Any, record: Any, _proxy: object) -> None:
        """Arm the call's deadline on the connection, then check the connection works.

        This is SQLAlchemy's pre-ping, done here so that the ping itself is bounded: a
        pooled connection to a server that stopped would otherwise wait forever.
        """
        deadline: Deadline | None = getattr(self._local, "deadline", None)
        if deadline is None:  # schema upgrades: not a bounded call
            return
        if not self._sqlite:
            deadline.watch(dbapi_connection.fileno())
            if not record.info.pop("fresh", False):
                self._ping(dbapi_connection, deadline)
        deadline.connected = True

    def _ping(self, dbapi_connection: Any, deadline: Deadline) -> None:
        try:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:
            if deadline.expired:
                raise translate(exc, deadline, self.engine.url) from exc
            raise DisconnectionError(f"pre-ping failed: {exc}") from exc  # reconnects

    @staticmethod
    def _registry(session: Session, lock: bool = False) -> RegistryRow:
        query = select(RegistryRow).where(RegistryRow.id == 1)
        if lock:
            query = query.with_for_update()
        row = session.scalar(query)
        if row is None:
            raise StoreError(f"the registry table is empty; run {UPGRADE_HINT}")
        return row

    @staticmethod
    def _site(session: Session, name: str) -> SiteRow:
        row = session.get(SiteRow, name)
        if row is None:
            raise SiteNotFound(name)
        return row


class _Transaction:
    """``with`` block: one session, committed on success, rolled back on any error.

    The whole block runs under one :class:`Deadline` of the store's timeout: waiting for
    the SQLite write lock, checking a connection out, every statement, and ``COMMIT``,
    which is not sent at all when too little time is left. Errors leave it typed
    (:func:`~dispatcher.backends.deadline.translate`).

    SQLite writers take a process-wide lock, because SQLite answers a read-then-write race
    with "database is locked" instead of waiting; PostgreSQL writers rely on
    ``SELECT ... FOR UPDATE`` of the registry row, and carry a server-side deadline.
    """

    def __init__(
        self, store: SqlSiteStore, session: Session, lock: threading.Lock | None, write: bool
    ) -> None:
        self.store = store
        self.session = session
        self.lock = lock
        self.write = write
        self.deadline = Deadline(store.budget)

    def __enter__(self) -> Session:
        if self.lock is not None and not self.lock.acquire(timeout=self.store.budget):
            self.session.close()
            raise StoreUnavailable(
                f"another write held the database for over {self.store.budget:g} s;"
                " nothing was changed"
            )
        self.store._local.deadline = self.deadline
        try:
            self.session.begin()
            if self.write and not self.store._sqlite:
                self._server_deadline()
        except BaseException as exc:
            self._end()
            raise translate(exc, self.deadline, self.store.engine.url) from exc
        return self.session

    def _server_deadline(self) -> None:
        """Tell PostgreSQL when this transaction's client gives up: a later COMMIT fails.

        The server computes its deadline on its own clock, some time after the client
        sent the statement: at most the round trip later. The client's deadline moves by
        whatever part of the round trip exceeds the margin, so the server's deadline is
        never later than the moment the client cuts the connection.
        """
        left = self.deadline.remaining() - self.deadline.margin
        sent = time.monotonic()
        self.session.execute(
            text(
                "SELECT set_config('webfarm.deadline',"
                " (clock_timestamp() + make_interval(secs => :left))::text, true)"
            ),
            {"left": max(0.0, left)},
        )
        self.deadline.extend(time.monotonic() - sent - self.deadline.margin)

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        error = exc
        try:
            if exc is None and self.deadline.remaining() < self.deadline.margin:
                error = StoreUnavailable(
                    f"the database took over {self.store.budget:g} s; nothing was changed"
                )
            if error is None:
                self.session.commit()
            else:
                with contextlib.suppress(SQLAlchemyError):
                    self.session.rollback()
        except Exception as failed:  # noqa: BLE001 - COMMIT failed: nothing was written
            error = failed
            with contextlib.suppress(SQLAlchemyError):
                self.session.rollback()
        finally:
            self._end()
        if error is None:
            return
        translated = translate(error, self.deadline, self.store.engine.url)
        if translated is exc:
            return  # the with statement raises it as it is
        if translated is error:
            raise translated
        raise translated from error

    def _end(self) -> None:
        try:
            with contextlib.suppress(SQLAlchemyError):
                self.session.close()
        finally:
            self.deadline.close()
            self.store._local.deadline = None
            if self.lock is not None:
                self.lock.release()


def _row(site: SiteSpec, position: int) -> SiteRow:
    row = SiteRow(
        name=site.name,
        base_url=site.base_url,
        pool=site.pool,
        weight=site.weight,
        drained=site.drained,
        check=site.check.as_dict(),
        position=position,
        updated_at=_now(),
        addresses=list(site.addresses) or None,
    )
    _set_topology(row, site)
    return row


def _set_topology(row: SiteRow, site: SiteSpec) -> None:
    row.region, row.country = site.region, site.country
    row.latitude, row.longitude = site.coordinates or (None, None)


def _spec(row: SiteRow) -> SiteSpec:
    coordinates = None
    if row.latitude is not None and row.longitude is not None:
        coordinates = (row.latitude, row.longitude)
    return SiteSpec(
        name=row.name,
        base_url=row.base_url,
        pool=row.pool,
        weight=row.weight,
        check=parse_check(row.check),
        drained=row.drained,
        position=row.position,
        region=row.region,
        country=row.country,
        coordinates=coordinates,
        addresses=tuple(str(a) for a in row.addresses or ()),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _utc(value: dt.datetime) -> dt.datetime:
    """Everything stored is UTC; SQLite hands it back naive, PostgreSQL with its own tzinfo."""
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def _driver_url(url: str) -> str:
    """Use psycopg (3) for ``postgresql://`` URLs, which SQLAlchemy maps to psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _mark_fresh(_dbapi_connection: Any, record: Any) -> None:
    """A new connection needs no ping on its first checkout."""
    record.info["fresh"] = True


def open_store(url: str, timeout: float = DEFAULT_TIMEOUT) -> SqlSiteStore:
    """The store for ``url``: SQLite or PostgreSQL, both through SQLAlchemy.

    ``timeout`` (seconds) bounds every call: connecting, waiting for a pooled connection,
    each statement and lock wait, and the call as a whole.
    """
    return SqlSiteStore(url, timeout)


__all__ = ["LoadReport", "SiteStore", "SqlSiteStore", "StoredRules", "open_store"]
