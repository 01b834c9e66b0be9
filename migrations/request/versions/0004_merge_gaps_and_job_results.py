"""Join the two branches of the Request schema: sequence gaps and the job-results audit trail.

Revision ID: 0004
Revises: 0003_importer, 0003_cron
"""

from collections.abc import Sequence

revision: str = "0004"
down_revision: str | tuple[str, ...] | None = ("0003_importer", "0003_cron")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
