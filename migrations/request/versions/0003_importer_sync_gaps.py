"""sync gaps, stream marks, ignored names recorded once

Revision ID: 0003_importer
Revises: 0002
Create Date: 2026-11-21 06:35:14.750723
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_importer"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sync_gaps",
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream", "first_seq", name=op.f("pk_sync_gaps")),
    )
    op.create_table(
        "sync_streams",
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("high_seq", sa.BigInteger(), nullable=False),
        sa.Column("healed_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream", name=op.f("pk_sync_streams")),
    )
    op.create_index(
        "uq_quarantined_files_ignored_name",
        "quarantined_files",
        ["file_name"],
        unique=True,
        postgresql_where=sa.text("reason = 'not_an_export_name'"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_quarantined_files_ignored_name",
        table_name="quarantined_files",
        postgresql_where=sa.text("reason = 'not_an_export_name'"),
    )
    op.drop_table("sync_streams")
    op.drop_table("sync_gaps")
