"""The addresses the DNS front answers for a site (IPv4 and IPv6; a JSON array, optional).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a plain ADD COLUMN (nullable, no default): no table copy on SQLite, so site_loads'
    # foreign key and its ON DELETE CASCADE are never disturbed; NULL reads as no addresses
    op.add_column("sites", sa.Column("addresses", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("sites", "addresses")
