"""synced job results

Revision ID: 0003_cron
Revises: 0002
Create Date: 2026-11-21 06:36:49.716981
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_cron"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "synced_job_results",
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("function", sa.String(length=200), nullable=False),
        sa.Column("queue", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("summary", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("export_seq", sa.BigInteger(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_synced_job_results")),
    )
    op.create_index(
        op.f("ix_synced_job_results_finished_at"),
        "synced_job_results",
        ["finished_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_synced_job_results_function"), "synced_job_results", ["function"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_synced_job_results_function"), table_name="synced_job_results")
    op.drop_index(op.f("ix_synced_job_results_finished_at"), table_name="synced_job_results")
    op.drop_table("synced_job_results")
