"""boots.warnings: the kernel's own warning lines (WARNING, BUG, Oops, hung task, soft
lockup, MCE) in the boot's log; NULL for boots recorded before.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("boots") as batch:
        batch.add_column(sa.Column("warnings", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("boots") as batch:
        batch.drop_column("warnings")
