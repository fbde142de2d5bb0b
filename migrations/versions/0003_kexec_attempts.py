"""kexec attempts and their verdicts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kexec_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("from_boot", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("target_image", sa.Text(), nullable=True),
        sa.Column("target_release", sa.Text(), nullable=True),
        sa.Column("target_abi", sa.Text(), nullable=True),
        sa.Column("initrd", sa.Text(), nullable=True),
        sa.Column("cmdline", sa.Text(), nullable=True),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("argv", sa.JSON(), nullable=False),
        sa.Column("expected_previous_release", sa.Text(), nullable=False),
        sa.Column("expected_kexec_count", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("verdict_boot", sa.Integer(), nullable=True),
        sa.Column("verdict_detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["from_boot"],
            ["boots.id"],
            name=op.f("fk_kexec_attempts_from_boot_boots"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["verdict_boot"],
            ["boots.id"],
            name=op.f("fk_kexec_attempts_verdict_boot_boots"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kexec_attempts")),
    )
    with op.batch_alter_table("kexec_attempts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_kexec_attempts_machine_id"), ["machine_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_kexec_attempts_from_boot"), ["from_boot"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_kexec_attempts_verdict_boot"), ["verdict_boot"], unique=False
        )


def downgrade() -> None:
    op.drop_table("kexec_attempts")
