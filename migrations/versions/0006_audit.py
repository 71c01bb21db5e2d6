"""The audit trail: every change made through the admin API, and every reload.

One row per change (``id`` grows; the API pages on it), written in the transaction of the
change itself. Old rows are pruned after ``audit_retention``. On PostgreSQL the table gets
the write-deadline trigger of 0003, as every table the dispatcher writes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("token", sa.String(63), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("object", sa.String(127), nullable=False),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
    )
    op.create_index(op.f("ix_audit_at"), "audit", ["at"])
    op.create_index(op.f("ix_audit_object"), "audit", ["object"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE CONSTRAINT TRIGGER webfarm_write_deadline AFTER INSERT OR UPDATE OR DELETE"
            " ON audit DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            " EXECUTE FUNCTION webfarm_write_deadline()"
        )


def downgrade() -> None:
    op.drop_index(op.f("ix_audit_object"), table_name="audit")
    op.drop_index(op.f("ix_audit_at"), table_name="audit")
    op.drop_table("audit")  # its trigger goes with it
