"""Fleet rollups: an insert of boots holds its machines' rollup lock.

Migration 0013's delete path recounts a bucket's first and last ``booted_at`` from
the boots it can see, under the machine's row lock in ``fleet_rollup_locks``; the
insert path (a push, an import: one statement trigger summing the new rows) took no
lock. A boot pushed, not yet committed, while the owner's retention deleted a boot of
the same machine, transition and bucket was not among the rows the delete saw, and
once both committed the rollup's first or last boot was the deleted one's neighbour,
not the pushed one (the report's ``first_booted_at``/``last_booted_at``; the counts
were right). Now an insert of boots takes the lock of each machine it writes, in
machine order as 0013's crash records do, in a statement trigger that fires before
0013's (PostgreSQL fires a relation's triggers of one event in name order), and holds
it to the end of its transaction: the delete then waits for the push and sees its
boot, or the push waits for the delete.

Nothing else changes: no table, no column; ``schema_compat.min_writer`` stays 0011
(docs/fleet-versions.md). SQLite keeps no rollups: nothing to do there.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# "khod_rollup_hold" < "khod_rollup_insert": fired first
_UP = """
CREATE FUNCTION khod_rollup_hold() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
  PERFORM khod_rollup_lock(m.machine_id)
  FROM (SELECT DISTINCT machine_id FROM khod_new_rows ORDER BY 1) m;
  RETURN NULL;
END $$;
CREATE TRIGGER khod_rollup_hold AFTER INSERT ON boots REFERENCING NEW TABLE AS khod_new_rows
FOR EACH STATEMENT EXECUTE FUNCTION khod_rollup_hold();
"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(_UP.replace("@SCHEMA@", schema))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER khod_rollup_hold ON boots")
    op.execute("DROP FUNCTION khod_rollup_hold()")
