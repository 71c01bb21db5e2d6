"""The dispatcher's schema as SQLAlchemy 2 models. Alembic's ``migrations/`` owns changes."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class SiteRow(Base):
    """A registered site. ``check`` holds the health check's settings as JSON; ``region``,
    ``country``, ``latitude`` and ``longitude`` where it is, ``addresses`` the addresses the
    DNS front answers for it (``NULL``: not configured)."""

    __tablename__ = "sites"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    base_url: Mapped[str] = mapped_column(String(2048))
    pool: Mapped[str] = mapped_column(String(63))
    weight: Mapped[int] = mapped_column(Integer)
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    check: Mapped[dict[str, object]] = mapped_column(JSON)
    position: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    region: Mapped[str | None] = mapped_column(String(63), nullable=True)
    country: Mapped[str | None] = mapped_column(String(2), nullable=True)
    latitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    longitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    addresses: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)


class LoadRow(Base):
    """The latest load report of a site (one row per site, replaced on every report)."""

    __tablename__ = "site_loads"

    site: Mapped[str] = mapped_column(
        String(63), ForeignKey("sites.name", ondelete="CASCADE"), primary_key=True
    )
    load: Mapped[float] = mapped_column(Float)
    connections: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reported_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class RegistryRow(Base):
    """One row: ``revision`` grows with every change to the sites; replicas poll it."""

    __tablename__ = "registry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)
    seeded: Mapped[bool] = mapped_column(Boolean)


class RulesRow(Base):
    """The rewrite rules in force (one row, ``id`` 1), shared by every replica.

    ``origin`` says where the text came from (the rule file's path, or ``admin API``);
    ``file_digest`` is the SHA-256 of the rule file when it was last adopted, so that an
    edited file wins over older API changes at the next start, and an unchanged one does not.
    """

    __tablename__ = "rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    origin: Mapped[str] = mapped_column(String(2048))
    file_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class RttRow(Base):
    """A site's latest table of learned client-network RTTs (one row per site, replaced
    with every report that carries one). ``entries`` is ``[[network, rtt, samples], ...]``;
    ``networks`` their number, to read without the table."""

    __tablename__ = "site_rtt"

    site: Mapped[str] = mapped_column(
        String(63), ForeignKey("sites.name", ondelete="CASCADE"), primary_key=True
    )
    reported_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    networks: Mapped[int] = mapped_column(Integer)
    entries: Mapped[list[list[object]]] = mapped_column(JSON)


class AuditRow(Base):
    """One change made through the admin API or by a reload: when, by which token (its
    name, never its value), what was done to which object, and the object before and after
    as JSON (rules: their digest and count, never their text). Kept ``audit_retention``."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    token: Mapped[str] = mapped_column(String(63))
    action: Mapped[str] = mapped_column(String(32))
    object: Mapped[str] = mapped_column(String(127), index=True)
    before: Mapped[Any] = mapped_column(JSON, nullable=True)
    after: Mapped[Any] = mapped_column(JSON, nullable=True)
