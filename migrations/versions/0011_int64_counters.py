"""64-bit ids and kernel-sized integers; running totals (``counters``) for the metrics
that are counters; the attempts' sync watermark sent again from the start.

- PostgreSQL: every row id a fleet fills (boots, blobs, events, pstore_records,
  kexec_attempts), their sequences and every reference to boots.id become bigint, and so
  do the values whose kernel type passes an int32: boots.kexec_count and
  out_kexec_count (u32), boots.seq, pstore_records.count and part (10 digits),
  kexec_attempts.expected_kexec_count, sync_state.last_id. Row-level security policies
  name these columns, so they are dropped and made again as they were (read from
  pg_policies). SQLite: nothing to alter, its INTEGER is 64-bit already.
- ``counters``: what khod_kexec_attempts_total counts, by machine and verdict, bumped by
  a trigger on kexec_attempts in the transaction that gives the verdict (or imports
  it), never lowered by retention; seeded from the attempts there are. A later
  migration that rebuilds kexec_attempts on SQLite (batch mode) must make the triggers
  again.
- sync_state: a sync before this one moved the attempts' watermark past attempts it
  never sent; the next sync sends every attempt again (the import keeps what it has).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

INT32_MAX = 2**31 - 1
# table -> its row id (with a sequence) and the other columns that become bigint
IDS = ("boots", "blobs", "events", "pstore_records", "kexec_attempts")
WIDENED = {
    "boots": ("id", "seq", "kexec_count", "out_kexec_count"),
    "blobs": ("id", "boot_pk"),
    "events": ("id", "boot_pk"),
    "pstore_records": ("id", "collected_by", "describes", "part", "count"),
    "kexec_attempts": ("id", "from_boot", "verdict_boot", "expected_kexec_count"),
    "sync_state": ("last_id",),
}
# on the way down: what cannot be made small again without losing a row is refused;
# a value an int32 cannot hold becomes unknown (NULL), as an older khod would have it
REFUSED = {
    "boots": ("id",),
    "blobs": ("id",),
    "events": ("id",),
    "pstore_records": ("id",),
    "kexec_attempts": ("id", "expected_kexec_count"),
}
NULLED = {
    "boots": ("seq", "kexec_count", "out_kexec_count"),
    "pstore_records": ("part", "count"),
}

_COUNT_PG = r"""
CREATE FUNCTION khod_count_attempt() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
    IF NEW.verdict IS NOT NULL AND (TG_OP = 'INSERT'
            OR OLD.verdict IS DISTINCT FROM NEW.verdict
            OR OLD.machine_id IS DISTINCT FROM NEW.machine_id) THEN
        INSERT INTO counters AS c (machine_id, name, label, value)
        VALUES (NEW.machine_id, 'kexec_attempts', NEW.verdict, 1)
        ON CONFLICT (machine_id, name, label) DO UPDATE SET value = c.value + 1;
    END IF;
    RETURN NULL;
END $$
"""

_BUMP_SQLITE = (
    "INSERT INTO counters (machine_id, name, label, value) "
    "VALUES (NEW.machine_id, 'kexec_attempts', NEW.verdict, 1) "
    "ON CONFLICT (machine_id, name, label) DO UPDATE SET value = value + 1;"
)
_COUNT_SQLITE = (
    "CREATE TRIGGER khod_count_attempt_insert AFTER INSERT ON kexec_attempts "
    f"WHEN NEW.verdict IS NOT NULL BEGIN {_BUMP_SQLITE} END",
    "CREATE TRIGGER khod_count_attempt_update AFTER UPDATE OF verdict, machine_id "
    "ON kexec_attempts WHEN NEW.verdict IS NOT NULL AND (OLD.verdict IS NULL "
    "OR OLD.verdict <> NEW.verdict OR OLD.machine_id <> NEW.machine_id) "
    f"BEGIN {_BUMP_SQLITE} END",
)


def _policies() -> list[str]:
    """CREATE POLICY for every policy on the widened tables, as they are now."""
    rows = op.get_bind().execute(
        sa.text(
            "SELECT tablename, policyname, permissive, roles, cmd, qual, with_check "
            "FROM pg_policies WHERE schemaname = current_schema() "
            "AND tablename = ANY(:tables) ORDER BY tablename, policyname"
        ),
        {"tables": list(WIDENED)},
    )
    out = []
    for table, name, permissive, roles, cmd, qual, check in rows:
        to = ", ".join(f'"{r}"' if r != "public" else r for r in roles)
        sql = f'CREATE POLICY "{name}" ON {table} AS {permissive} FOR {cmd} TO {to}'
        if qual is not None:
            sql += f" USING ({qual})"
        if check is not None:
            sql += f" WITH CHECK ({check})"
        out.append(sql)
    return out


def _retype(type_: str) -> None:
    """PostgreSQL: the widened columns (and the sequences of the ids) to ``type_``,
    with the policies that name them dropped and made again around it."""
    policies = _policies()
    for table in WIDENED:
        names = op.get_bind().execute(
            sa.text(
                "SELECT policyname FROM pg_policies "
                "WHERE schemaname = current_schema() AND tablename = :t"
            ),
            {"t": table},
        )
        for (name,) in names:
            op.execute(f'DROP POLICY "{name}" ON {table}')
    for table, cols in WIDENED.items():
        op.execute(
            f"ALTER TABLE {table} " + ", ".join(f"ALTER COLUMN {c} TYPE {type_}" for c in cols)
        )
    for table in IDS:
        op.execute(
            f"DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s AS {type_}', "
            f"pg_get_serial_sequence('{table}', 'id')); END $$"
        )
    for sql in policies:
        op.execute(sql)


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"
    op.create_table(
        "counters",
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("machine_id", "name", "label", name=op.f("pk_counters")),
    )
    op.execute(
        "INSERT INTO counters (machine_id, name, label, value) "
        "SELECT machine_id, 'kexec_attempts', verdict, count(*) FROM kexec_attempts "
        "WHERE verdict IS NOT NULL GROUP BY machine_id, verdict"
    )
    op.execute("DELETE FROM sync_state WHERE kind = 'attempt'")
    if not pg:
        for sql in _COUNT_SQLITE:
            op.execute(sql)
        return
    _retype("bigint")
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(_COUNT_PG.replace("@SCHEMA@", schema))
    op.execute(
        "CREATE TRIGGER khod_count_attempt AFTER INSERT OR UPDATE OF verdict, machine_id "
        "ON kexec_attempts FOR EACH ROW EXECUTE FUNCTION khod_count_attempt()"
    )
    # the fleet's reader reads them; a host neither reads nor writes them (the trigger
    # does, as the owner)
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'khod_report') "
        "THEN GRANT SELECT ON counters TO khod_report; END IF; END $$"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for table, cols in REFUSED.items():
            for col in cols:
                over = bind.execute(
                    sa.text(f"SELECT count(*) FROM {table} WHERE {col} > {INT32_MAX}")
                ).scalar_one()
                if over:
                    raise RuntimeError(
                        f"cannot downgrade below 0011: {over} rows of {table} have a {col} "
                        f"past {INT32_MAX}, which revision 0010 cannot hold"
                    )
        for table, cols in NULLED.items():
            for col in cols:
                op.execute(
                    f"UPDATE {table} SET {col} = NULL "
                    f"WHERE {col} > {INT32_MAX} OR {col} < {-INT32_MAX - 1}"
                )
        op.execute(f"UPDATE sync_state SET last_id = {INT32_MAX} WHERE last_id > {INT32_MAX}")
        op.execute("DROP TRIGGER IF EXISTS khod_count_attempt ON kexec_attempts")
        op.execute("DROP FUNCTION IF EXISTS khod_count_attempt()")
        _retype("integer")
    else:
        op.execute("DROP TRIGGER IF EXISTS khod_count_attempt_insert")
        op.execute("DROP TRIGGER IF EXISTS khod_count_attempt_update")
    op.drop_table("counters")
