"""PostgreSQL: a write transaction past its client's deadline cannot commit.

Each write transaction of the dispatcher sets ``webfarm.deadline`` (a timestamp, local to
the transaction) to when its client gives up. A deferred constraint trigger on every
table the dispatcher writes checks it at COMMIT: a COMMIT that reaches a server that was
stopped, and resumed after that time, fails instead of applying a change whose client was
told it failed. Transactions that do not set it (an operator's psql) are not affected.
SQLite needs none of this: it runs inside the dispatcher's own process.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("registry", "sites", "site_loads", "rules")

FUNCTION = """
CREATE FUNCTION webfarm_write_deadline() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    deadline text := current_setting('webfarm.deadline', true);
BEGIN
    IF deadline IS NOT NULL AND deadline <> '' AND clock_timestamp() > deadline::timestamptz
    THEN
        RAISE EXCEPTION 'webfarm: write past its client''s deadline (%), not committed',
            deadline USING ERRCODE = 'query_canceled';
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(FUNCTION)
    for table in TABLES:
        op.execute(
            f"CREATE CONSTRAINT TRIGGER webfarm_write_deadline AFTER INSERT OR UPDATE OR DELETE"
            f" ON {table} DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
            f" EXECUTE FUNCTION webfarm_write_deadline()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"DROP TRIGGER webfarm_write_deadline ON {table}")
    op.execute("DROP FUNCTION webfarm_write_deadline()")
