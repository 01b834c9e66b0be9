"""sign-in throttle counters: limits' fixed windows, shared by every Request API replica

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:50:00
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
        "sign_in_throttle",
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sign_in_throttle")),
    )
    op.create_index("ix_sign_in_throttle_expires_at", "sign_in_throttle", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_sign_in_throttle_expires_at", table_name="sign_in_throttle")
    op.drop_table("sign_in_throttle")
