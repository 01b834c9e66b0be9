"""cron ticks, monitoring, daily stats, exported results

Revision ID: 0003_cron
Revises: 0002
Create Date: 2026-11-21 06:36:47.857241
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
        "cron_ticks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("tick_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("name", "tick_at", name=op.f("pk_cron_ticks")),
    )
    op.create_table(
        "daily_stats",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column(
            "computed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_daily_stats")),
    )
    op.create_table(
        "exported_results",
        sa.Column("job_id", sa.String(length=200), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("record", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("export_seq", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_exported_results")),
    )
    op.create_index(
        op.f("ix_exported_results_finished_at"), "exported_results", ["finished_at"], unique=False
    )
    op.create_index(
        op.f("ix_exported_results_export_seq"), "exported_results", ["export_seq"], unique=False
    )
    op.create_table(
        "system_samples",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column(
            "taken_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.Column("stale", sa.Boolean(), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_system_samples")),
    )
    op.create_index(
        op.f("ix_system_samples_taken_at"), "system_samples", ["taken_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_system_samples_taken_at"), table_name="system_samples")
    op.drop_table("system_samples")
    op.drop_index(op.f("ix_exported_results_export_seq"), table_name="exported_results")
    op.drop_index(op.f("ix_exported_results_finished_at"), table_name="exported_results")
    op.drop_table("exported_results")
    op.drop_table("daily_stats")
    op.drop_table("cron_ticks")
