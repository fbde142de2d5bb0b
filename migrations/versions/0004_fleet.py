"""Fleet: sync watermarks; attempts get a uid that survives sync and export; kernel-derived names
become unbounded text (PostgreSQL enforces VARCHAR lengths, SQLite never did).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# (table, column, old length, nullable)
WIDENED = (
    ("blobs", "name", 255, False),
    ("pstore_records", "name", 255, False),
    ("pstore_records", "type", 32, False),
    ("pstore_records", "backend", 64, False),
    ("pstore_records", "reason", 32, True),
)


def upgrade() -> None:
    op.create_table(
        "sync_state",
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("last_id", sa.Integer(), nullable=False),
        sa.Column("synced_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("target", "kind", name=op.f("pk_sync_state")),
    )
    for table in ("blobs", "pstore_records"):
        with op.batch_alter_table(table) as batch:
            for t, column, length, nullable in WIDENED:
                if t == table:
                    batch.alter_column(
                        column,
                        type_=sa.Text(),
                        existing_type=sa.String(length),
                        existing_nullable=nullable,
                    )
    with op.batch_alter_table("kexec_attempts") as batch:
        batch.add_column(sa.Column("uid", sa.String(length=36), nullable=True))
    attempts = sa.table("kexec_attempts", sa.column("id", sa.Integer), sa.column("uid"))
    conn = op.get_bind()
    for (pk,) in conn.execute(sa.select(attempts.c.id)).all():
        conn.execute(sa.update(attempts).where(attempts.c.id == pk).values(uid=str(uuid.uuid4())))
    with op.batch_alter_table("kexec_attempts") as batch:
        batch.alter_column("uid", existing_type=sa.String(length=36), nullable=False)
        batch.create_unique_constraint(batch.f("uq_kexec_attempts_uid"), ["uid"])


def downgrade() -> None:
    op.drop_table("sync_state")
    with op.batch_alter_table("kexec_attempts") as batch:
        batch.drop_constraint(batch.f("uq_kexec_attempts_uid"), type_="unique")
        batch.drop_column("uid")
    for table in ("pstore_records", "blobs"):
        with op.batch_alter_table(table) as batch:
            for t, column, length, nullable in WIDENED:
                if t == table:
                    batch.alter_column(
                        column,
                        type_=sa.String(length),
                        existing_type=sa.Text(),
                        existing_nullable=nullable,
                    )
