"""generations: a restored Response database's files outrank what the restore undid

Every synced row, ledger row, stream and snapshot mark now records the Response database's
generation it belongs to (0, the first, for everything before). The ledger's key takes the
generation too: a new generation numbers its files on from the restored database's last number,
so the same number may come back in a newer generation. ``sync_generations`` lists the
generations seen here, the newest being the one applied.

``sync_stream_stats`` also records how far the ledger was pruned per stream, and the newest
export time among the pruned rows: a file at or below that place and exported no later was
applied (or superseded) and its row is gone, a duplicate; one exported later is a conflict.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 17:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = (
    "synced_users",
    "synced_settings",
    "synced_profile_types",
    "import_ledger",
    "sync_streams",
    "snapshot_marks",
    "sync_stream_stats",
    "sync_gaps",
)


def upgrade() -> None:
    op.create_table(
        "sync_generations",
        sa.Column("generation", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_file", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("generation", name=op.f("pk_sync_generations")),
    )
    for table in _TABLES:
        op.add_column(
            table, sa.Column("generation", sa.BigInteger(), server_default="0", nullable=False)
        )
    for column in ("pruned_generation", "pruned_seq"):
        op.add_column(
            "sync_stream_stats",
            sa.Column(column, sa.BigInteger(), server_default="0", nullable=False),
        )
    op.add_column(
        "sync_stream_stats",
        sa.Column("pruned_exported_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.drop_constraint("pk_import_ledger", "import_ledger", type_="primary")
    op.create_primary_key("pk_import_ledger", "import_ledger", ["stream", "generation", "seq"])
    op.drop_constraint("pk_sync_gaps", "sync_gaps", type_="primary")
    op.create_primary_key("pk_sync_gaps", "sync_gaps", ["stream", "generation", "first_seq"])


def downgrade() -> None:
    op.drop_constraint("pk_sync_gaps", "sync_gaps", type_="primary")
    op.create_primary_key("pk_sync_gaps", "sync_gaps", ["stream", "first_seq"])
    for column in ("pruned_exported_at", "pruned_seq", "pruned_generation"):
        op.drop_column("sync_stream_stats", column)
    op.drop_constraint("pk_import_ledger", "import_ledger", type_="primary")
    op.create_primary_key("pk_import_ledger", "import_ledger", ["stream", "seq"])
    for table in reversed(_TABLES):
        op.drop_column(table, "generation")
    op.drop_table("sync_generations")
