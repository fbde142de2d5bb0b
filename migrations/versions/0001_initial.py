"""Initial schema: boots, blobs, events.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "boots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("boot_id", sa.String(length=64), nullable=False),
        sa.Column("booted_at", sa.BigInteger(), nullable=True),
        sa.Column("release", sa.Text(), nullable=False),
        sa.Column("cmdline", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("kind_reason", sa.Text(), nullable=True),
        sa.Column("kho_enabled", sa.Boolean(), nullable=False),
        sa.Column("kho_abi", sa.Text(), nullable=True),
        sa.Column("memory_map_handed", sa.Boolean(), nullable=True),
        sa.Column("previous_release", sa.Text(), nullable=True),
        sa.Column("previous_release_raw", sa.LargeBinary(), nullable=True),
        sa.Column("kexec_count", sa.Integer(), nullable=True),
        sa.Column("metadata_source", sa.String(length=8), nullable=True),
        sa.Column("subtrees", sa.JSON(), nullable=False),
        sa.Column("out_subtrees", sa.JSON(), nullable=False),
        sa.Column("out_release", sa.Text(), nullable=True),
        sa.Column("out_kexec_count", sa.Integer(), nullable=True),
        sa.Column("scratch", sa.JSON(), nullable=False),
        sa.Column("ingested_at", sa.Float(), nullable=False),
        sa.Column("khod_version", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_boots")),
        sa.UniqueConstraint("machine_id", "boot_id", name=op.f("uq_boots_machine_id")),
    )
    with op.batch_alter_table("boots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_boots_machine_id"), ["machine_id"], unique=False)

    op.create_table(
        "blobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("boot_pk", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["boot_pk"], ["boots.id"], name=op.f("fk_blobs_boot_pk_boots"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blobs")),
        sa.UniqueConstraint("boot_pk", "direction", "name", name=op.f("uq_blobs_boot_pk")),
    )
    with op.batch_alter_table("blobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_blobs_boot_pk"), ["boot_pk"], unique=False)

    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("boot_pk", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(length=8), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["boot_pk"], ["boots.id"], name=op.f("fk_events_boot_pk_boots"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("boot_pk", "fingerprint", name=op.f("uq_events_boot_pk")),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_events_boot_pk"), ["boot_pk"], unique=False)


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("blobs")
    op.drop_table("boots")
