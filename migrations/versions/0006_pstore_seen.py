"""pstore_seen: the record hashes a machine has seen, which retention does not delete.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pstore_seen",
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("machine_id", "sha256", name=op.f("pk_pstore_seen")),
    )
    op.execute(
        "INSERT INTO pstore_seen (machine_id, sha256, first_seen) "
        "SELECT machine_id, sha256, MIN(collected_at) FROM pstore_records "
        "GROUP BY machine_id, sha256"
    )


def downgrade() -> None:
    op.drop_table("pstore_seen")
