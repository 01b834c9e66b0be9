"""snapshot marks per entity type: what a snapshot covers of the changes stream

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21 09:40:00
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
        "snapshot_marks",
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("changes_seq", sa.BigInteger(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("entity", name=op.f("pk_snapshot_marks")),
    )


def downgrade() -> None:
    op.drop_table("snapshot_marks")
