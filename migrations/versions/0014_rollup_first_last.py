"""Fleet rollups: a boot taken out recounts its bucket's first and last boot after it
holds the rollup row, not before.

Migration 0013's ``khod_rollup_boot`` (a boot deleted by retention, or rewritten)
recounted the bucket's first and last ``booted_at`` from the boots it could see, then
updated the rollup row. A push of the same machine, transition and bucket that had
counted its boot into that row and not committed yet held the row: the update waited
for it, then wrote the first and last it had counted before, without the pushed boot
(the report's ``first_booted_at``/``last_booted_at`` went back in time; the counts were
right). Now the counts are taken out first, which waits for any push holding the row,
and the first and last boot are recounted by a statement that starts after it: one
that sees every boot committed by then, while a push that comes later waits for this
row and widens it as it always did (``least``/``greatest``). No lock is held across
statements, so writers of several machines at once cannot deadlock on it.

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

BUCKET = 30 * 86400  # migration 0013's, frozen


def _through(x: str) -> str:
    """As migration 0013's (frozen): a boot through a kexec from a known release."""
    kinds = "('kexec', 'kexec-no-handover', 'kexec-rejected')"
    return f"({x}.kind IN {kinds} AND {x}.previous_release IS NOT NULL)"


def _cold(x: str) -> str:
    return f"({x}.kind <> 'kexec' AND NOT {_through(x)})"


_COUNTS_OUT = """
  UPDATE fleet_rollup_boots r SET boots = r.boots - 1, crashes = r.crashes - crashed::int,
    logged_boots = r.logged_boots - (b.warnings IS NOT NULL)::int,
    warned_boots = r.warned_boots - (coalesce(b.warnings, 0) > 0)::int,
    warnings = r.warnings - coalesce(b.warnings, 0)@FIRST_LAST@
  WHERE @ROW@;"""
_RECOUNT = """
  IF k <> -1 THEN  -- the bucket's first and last boot but this one
    SELECT min(x.booted_at), max(x.booted_at) INTO lo, hi FROM boots x
    WHERE x.machine_id = b.machine_id AND x.booted_at >= k AND x.booted_at < k + @BUCKET@
      AND x.id <> b.id AND x.release = b.release AND @COLD_X@ = c
      AND (c OR x.previous_release = p);
  END IF;"""


def _function(recount_after: bool, schema: str) -> str:
    """``khod_rollup_boot``: 0013's (the recount before the update) or this revision's
    (after it, then the first and last written by a statement of their own)."""
    row = (
        "r.bucket = k AND r.cold = c AND r.previous_release = p AND r.release = b.release "
        "AND r.machine_id = b.machine_id"
    )
    if recount_after:
        out = (
            _COUNTS_OUT.replace("@FIRST_LAST@", "")
            + _RECOUNT
            + "\n  UPDATE fleet_rollup_boots r SET first_booted_at = lo, last_booted_at = hi"
            "\n  WHERE @ROW@;"
        )
    else:
        out = _RECOUNT + _COUNTS_OUT.replace(
            "@FIRST_LAST@", ",\n    first_booted_at = lo, last_booted_at = hi"
        )
    text = f"""
CREATE OR REPLACE FUNCTION khod_rollup_boot(b boots, sign integer, crashed boolean)
RETURNS void LANGUAGE plpgsql SET search_path = @SCHEMA@, pg_temp AS $$
DECLARE
  k bigint := khod_bucket(b.booted_at);
  c boolean := @COLD_B@;
  p text := @PREV_B@;
  lo bigint;
  hi bigint;
BEGIN
  IF p IS NULL THEN RETURN; END IF;  -- a kexec without metadata: not in the report
  IF sign > 0 THEN
    INSERT INTO fleet_rollup_boots AS r VALUES (k, c, p, b.release, b.machine_id, 1,
      crashed::int, (b.warnings IS NOT NULL)::int, (coalesce(b.warnings, 0) > 0)::int,
      coalesce(b.warnings, 0), b.booted_at, b.booted_at)
    ON CONFLICT (bucket, cold, previous_release, release, machine_id) DO UPDATE SET
      boots = r.boots + 1, crashes = r.crashes + excluded.crashes,
      logged_boots = r.logged_boots + excluded.logged_boots,
      warned_boots = r.warned_boots + excluded.warned_boots,
      warnings = r.warnings + excluded.warnings,
      first_booted_at = least(r.first_booted_at, excluded.first_booted_at),
      last_booted_at = greatest(r.last_booted_at, excluded.last_booted_at);
    RETURN;
  END IF;
  PERFORM khod_rollup_lock(b.machine_id);{out}
  DELETE FROM fleet_rollup_boots r WHERE @ROW@ AND r.boots <= 0;
END $$;
"""
    for k, v in {
        "@ROW@": row,
        "@COLD_B@": _cold("b"),
        "@COLD_X@": _cold("x"),
        "@PREV_B@": f"CASE WHEN {_through('b')} THEN b.previous_release "
        f"WHEN {_cold('b')} THEN '' END",
        "@BUCKET@": str(BUCKET),
        "@SCHEMA@": schema,
    }.items():
        text = text.replace(k, v)
    return text


def _replace(recount_after: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(_function(recount_after, schema))


def upgrade() -> None:
    _replace(recount_after=True)


def downgrade() -> None:
    _replace(recount_after=False)
