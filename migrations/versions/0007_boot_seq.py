"""boots.seq: the order boots were recorded in on their machine (numbered by id here).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("boots") as batch:
        batch.add_column(sa.Column("seq", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE boots SET seq = o.n FROM (SELECT id, ROW_NUMBER() OVER "
        "(PARTITION BY machine_id ORDER BY id) AS n FROM boots) AS o WHERE boots.id = o.id"
    )


def downgrade() -> None:
    with op.batch_alter_table("boots") as batch:
        batch.drop_column("seq")
