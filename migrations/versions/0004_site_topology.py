"""Where a site is: region, country and coordinates (all optional).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("region", sa.String(63)),
    ("country", sa.String(2)),
    ("latitude", sa.Float()),
    ("longitude", sa.Float()),
)


def upgrade() -> None:
    # plain ADD COLUMN (nullable, no default) on both backends: no table copy on SQLite,
    # so site_loads' foreign key and its ON DELETE CASCADE are never disturbed
    for name, kind in COLUMNS:
        op.add_column("sites", sa.Column(name, kind, nullable=True))


def downgrade() -> None:
    for name, _kind in reversed(COLUMNS):
        op.drop_column("sites", name)
