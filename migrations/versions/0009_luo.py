"""boots: bootloader_type and the incoming LUO state; kexec_attempts.verdict widened
for landed-without-handover.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("boots") as batch:
        batch.add_column(sa.Column("bootloader_type", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("luo_compatible", sa.Text(), nullable=True))
        batch.add_column(sa.Column("liveupdate_num", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("luo_sessions", sa.Boolean(), nullable=True))
    with op.batch_alter_table("kexec_attempts") as batch:
        batch.alter_column(
            "verdict", existing_type=sa.String(length=16), type_=sa.String(length=32)
        )


def downgrade() -> None:
    # a verdict an older khod has no name for (and no room for) is not guessed: the
    # attempt shows no verdict, its detail says what happened
    op.execute("UPDATE kexec_attempts SET verdict = NULL WHERE LENGTH(verdict) > 16")
    with op.batch_alter_table("kexec_attempts") as batch:
        batch.alter_column(
            "verdict", existing_type=sa.String(length=32), type_=sa.String(length=16)
        )
    with op.batch_alter_table("boots") as batch:
        batch.drop_column("luo_sessions")
        batch.drop_column("liveupdate_num")
        batch.drop_column("luo_compatible")
        batch.drop_column("bootloader_type")
