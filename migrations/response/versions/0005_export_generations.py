"""export generations: a restored database numbers its files in a new generation

A Response database restored from a backup hands out sequence numbers and entity versions the
Request Network already holds. Each stream now carries the generation it numbers in and the last
number of the previous one (``generation_base``); every file records both, so a file published
again carries the header it was first allocated with. ``export_generations`` lists the
generations this database began, and why.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 17:30:00
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
        "export_generations",
        sa.Column("generation", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("generation", name=op.f("pk_export_generations")),
    )
    for table in ("export_streams", "export_files"):
        op.add_column(
            table, sa.Column("generation", sa.BigInteger(), server_default="0", nullable=False)
        )
    op.add_column(
        "export_streams",
        sa.Column("generation_base", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "export_files",
        sa.Column("since_seq", sa.BigInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("export_files", "since_seq")
    op.drop_column("export_streams", "generation_base")
    for table in ("export_files", "export_streams"):
        op.drop_column(table, "generation")
    op.drop_table("export_generations")
