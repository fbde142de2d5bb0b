"""pstore records: every dmesg/console/pmsg record the previous kernel left.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pstore_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("collected_by", sa.Integer(), nullable=False),
        sa.Column("describes", sa.Integer(), nullable=True),
        sa.Column("location", sa.String(length=8), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("backend", sa.String(length=64), nullable=False),
        sa.Column("record_id", sa.BigInteger(), nullable=True),
        sa.Column("part", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("count", sa.Integer(), nullable=True),
        sa.Column("record_time", sa.Float(), nullable=True),
        sa.Column("compressed", sa.Boolean(), nullable=False),
        sa.Column("inflate_status", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("release", sa.Text(), nullable=True),
        sa.Column("dump_key", sa.Text(), nullable=False),
        sa.Column("collected_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["collected_by"],
            ["boots.id"],
            name=op.f("fk_pstore_records_collected_by_boots"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["describes"],
            ["boots.id"],
            name=op.f("fk_pstore_records_describes_boots"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pstore_records")),
        sa.UniqueConstraint("machine_id", "sha256", name=op.f("uq_pstore_records_machine_id")),
    )
    with op.batch_alter_table("pstore_records", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_pstore_records_collected_by"), ["collected_by"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_pstore_records_describes"), ["describes"], unique=False
        )


def downgrade() -> None:
    op.drop_table("pstore_records")
