"""Learned latency: each site's latest table of client-network RTTs, shared by replicas.

One row per site (deleted with the site), replaced by every load report that carries an
``rtt`` list. On PostgreSQL the table gets the write-deadline trigger of 0003, as every
table the dispatcher writes.

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-10
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "site_rtt",
        sa.Column("site", sa.String(63), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("networks", sa.Integer(), nullable=False),
        sa.Column("entries", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["site"],
            ["sites.name"],
            name=op.f("fk_site_rtt_site_sites"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("site", name=op.f("pk_site_rtt")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE CONSTRAINT TRIGGER webfarm_write_deadline AFTER INSERT OR UPDATE OR DELETE"
            " ON site_rtt DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            " EXECUTE FUNCTION webfarm_write_deadline()"
        )


def downgrade() -> None:
    op.drop_table("site_rtt")  # its trigger goes with it
