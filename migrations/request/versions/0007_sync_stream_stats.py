"""per-stream counters of applied files, kept in the applying transaction

GET /api/v1/sync/status read them from a scan of the whole import ledger (17 ms at 37,500 rows,
growing with it); one row per stream answers in constant time. Filled here from the ledger once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 13:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_stream_stats",
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("files_applied", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_exported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_sync_stream_stats")),
    )
    # an importer of the previous version still running would claim files the fill misses:
    # hold its claims (SHARE conflicts with their inserts) until the counters are filled
    op.execute("LOCK TABLE import_ledger IN SHARE MODE")
    op.execute(
        """
        INSERT INTO sync_stream_stats
        SELECT last.stream, counts.files, last.seq, last.exported_at, counts.applied_at
        FROM (
            SELECT DISTINCT ON (stream) stream, seq, exported_at
            FROM import_ledger ORDER BY stream, seq DESC
        ) AS last
        JOIN (
            SELECT stream, count(*) AS files, max(applied_at) AS applied_at
            FROM import_ledger GROUP BY stream
        ) AS counts USING (stream)
        """
    )


def downgrade() -> None:
    op.drop_table("sync_stream_stats")
