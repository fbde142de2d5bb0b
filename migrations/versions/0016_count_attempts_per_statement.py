"""The attempts' running totals (``counters``, migration 0011) bumped once per
statement on PostgreSQL, not once per row.

0011's trigger ran for every kexec attempt inserted: an upsert of its machine's counter
per row. An import inserts its attempts in statements of thousands of rows, where that
was a quarter of the time (docs/benchmarks.md), and one statement of many attempts of
one machine and verdict updated the same counter row once per row in one transaction
(100,000 such rows: 95 to 134 s, against 4.7 to 6.0 s now). An insert now sums its
new rows by machine and verdict (the statement's transition table) and upserts each
sum once, in key order. A host's push inserts its attempts a row per statement: the
same work as before for it. An update of a verdict or a machine id stays per row, as in
0011 (a verdict given, a machine id learned, an import filling open verdicts with ON
CONFLICT DO UPDATE, whose updated rows are not in the insert's transition table). The
counts are the same; a host role still neither reads nor writes ``counters`` (the
functions are the owner's).

SQLite keeps 0011's triggers (its own, per row). ``schema_compat.min_writer`` stays
0011 (docs/fleet-versions.md): an older khod's insert is counted by the same trigger.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

_COUNT_INSERTED = """
CREATE FUNCTION khod_count_attempts_inserted() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
    INSERT INTO counters AS c (machine_id, name, label, value)
    SELECT machine_id, 'kexec_attempts', verdict, count(*) FROM khod_new_rows
    WHERE verdict IS NOT NULL GROUP BY machine_id, verdict ORDER BY machine_id, verdict
    ON CONFLICT (machine_id, name, label) DO UPDATE SET value = c.value + EXCLUDED.value;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(_COUNT_INSERTED.replace("@SCHEMA@", schema))
    op.execute("REVOKE ALL ON FUNCTION khod_count_attempts_inserted() FROM PUBLIC")
    op.execute("DROP TRIGGER khod_count_attempt ON kexec_attempts")
    op.execute(
        "CREATE TRIGGER khod_count_attempt AFTER UPDATE OF verdict, machine_id "
        "ON kexec_attempts FOR EACH ROW EXECUTE FUNCTION khod_count_attempt()"
    )
    op.execute(
        "CREATE TRIGGER khod_count_attempts_insert AFTER INSERT ON kexec_attempts "
        "REFERENCING NEW TABLE AS khod_new_rows FOR EACH STATEMENT "
        "EXECUTE FUNCTION khod_count_attempts_inserted()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER khod_count_attempts_insert ON kexec_attempts")
    op.execute("DROP FUNCTION khod_count_attempts_inserted()")
    op.execute("DROP TRIGGER khod_count_attempt ON kexec_attempts")
    op.execute(
        "CREATE TRIGGER khod_count_attempt AFTER INSERT OR UPDATE OF verdict, machine_id "
        "ON kexec_attempts FOR EACH ROW EXECUTE FUNCTION khod_count_attempt()"
    )
