"""config_proposals.submitted_by: who proposed a change, for separation of duties

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 16:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: proposals made before this revision did not record it.
    with op.batch_alter_table("config_proposals") as batch_op:
        batch_op.add_column(sa.Column("submitted_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("config_proposals") as batch_op:
        batch_op.drop_column("submitted_by")
