"""The site registry: sites, their latest load reports, and the registry revision.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sites",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("base_url", sa.String(2048), nullable=False),
        sa.Column("pool", sa.String(63), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("drained", sa.Boolean(), nullable=False),
        sa.Column("check", sa.JSON(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_sites")),
    )
    op.create_table(
        "site_loads",
        sa.Column("site", sa.String(63), nullable=False),
        sa.Column("load", sa.Float(), nullable=False),
        sa.Column("connections", sa.Integer(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["site"],
            ["sites.name"],
            name=op.f("fk_site_loads_site_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("site", name=op.f("pk_site_loads")),
    )
    op.create_table(
        "registry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("seeded", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry")),
    )
    op.execute(sa.text("INSERT INTO registry (id, revision, seeded) VALUES (1, 0, false)"))


def downgrade() -> None:
    op.drop_table("registry")
    op.drop_table("site_loads")
    op.drop_table("sites")
