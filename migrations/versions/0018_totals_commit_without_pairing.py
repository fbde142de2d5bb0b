"""The commit of a transaction's changes to the whole history's totals pairs each host
row with its change by grouping, not by a join (PostgreSQL only).

Migration 0015's ``khod_rollup_commit`` upserts a transaction's changes into the host
rows (``u``, the rows after) and, to count the hosts whose sums crossed 0, joined each
row after with its change (``d``) on the four key columns. Both sides are CTEs, whose
row counts the planner takes from the statistics of ``fleet_rollup_pending_*``: once
autovacuum's ANALYZE has seen such a table with pages and no live row (every commit
takes its own rows out), it expects one row on each side and joins them in a nested
loop, comparing every row after with every change. A push changes a few hosts; an
import's chunk, a retention batch or a rebuild changes thousands: 6,485 hosts took
4.9 s a commit (42 million comparisons), and a million-boot import 3.06x the time of a
hand COPY loader into the same tables (1.13x at 100,000 boots, before the statistics
turned).

Here the rows after and the changes are stacked (``UNION ALL``) and grouped by the key:
each key once, in a hash or a sort, whatever the planner expects. The upsert gives
exactly one row after for each change (the changes are grouped by the key, and the
upsert has no condition), so the sums and host counts are the join's.

The host rows a commit leaves with nothing (a retention's or any delete's) were deleted
by their keys, joined with arrays of them: the planner, told by the statistics that no
host row is empty, scanned the host rows for the empty ones and compared each with
every key (1,641 rows of a retention batch: 2.7 million comparisons, 0.65 s of each
batch of 5,000 boots). They are now deleted by the row ids the upsert returned
(``ctid = ANY``: a TID scan for a few rows, a scan of the host rows with a hashed
filter when they are more than a percent or two of them, linear either way; this
transaction holds those rows since the upsert, so the ids stand).

Nothing else changes: no table, column, trigger or grant; ``schema_compat.min_writer``
stays 0011.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

from importlib import import_module

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

m0015 = import_module("khod.migrations.versions.0015_rollup_totals")


def _apply(kind: str) -> str:
    """0015's ``_apply`` with the rows after and the changes grouped (``j``), not joined,
    and the host rows left with nothing deleted by their row ids."""
    _, sums, hosts = m0015.KINDS[kind]
    keys = m0015._key(kind)
    key, tkey = ", ".join(keys), ", ".join(m0015._key(kind, False))

    def after(cols: tuple[str, ...]) -> str:
        return " + ".join(f"j.a_{c}" for c in cols)

    def before(cols: tuple[str, ...]) -> str:
        return " + ".join(f"(j.a_{c} - j.d_{c})" for c in cols)

    crossings = ", ".join(
        f"sum(({after(e)} > 0)::int - ({before(e)} > 0)::int)" for e in hosts.values()
    )

    def zero(t: str) -> str:  # a host row with nothing left (its derived boots too)
        return " AND ".join(f"{t}.{c} = 0" for c in sums)

    stacked_u = ", ".join(
        [*(f"u.{k}" for k in keys), *(f"u.{c}" for c in sums), *("0" for _ in sums)]
    )
    stacked_d = ", ".join(
        [*(f"d.{k}" for k in keys), *("0" for _ in sums), *(f"d.{c}" for c in sums)]
    )
    names = ", ".join([*keys, *(f"a_{c}" for c in sums), *(f"d_{c}" for c in sums)])
    return f"""
  WITH p AS (
    DELETE FROM fleet_rollup_pending_{kind} WHERE xid = txid_current() RETURNING *
  ), d AS (
    SELECT {key}, {", ".join(f"sum({c}) AS {c}" for c in sums)}
    FROM p GROUP BY {key} HAVING {" OR ".join(f"sum({c}) <> 0" for c in sums)}
  ), u AS (
    INSERT INTO fleet_rollup_host_{kind} AS h SELECT * FROM d ORDER BY {key}
    ON CONFLICT ({key}) DO UPDATE SET {", ".join(f"{c} = h.{c} + excluded.{c}" for c in sums)}
    RETURNING h.*, h.ctid AS at
  ), j AS (  -- each host row after (a_) beside its change (d_): one group per key
    SELECT {key}, {", ".join(f"sum(a_{c}) AS a_{c}" for c in sums)},
           {", ".join(f"sum(d_{c}) AS d_{c}" for c in sums)}
    FROM (SELECT {stacked_u} FROM u UNION ALL SELECT {stacked_d} FROM d) x({names})
    GROUP BY {key}
  ), tr AS (
    INSERT INTO fleet_rollup_transition_{kind} AS t
    SELECT {tkey}, s, {", ".join(f"sum(j.d_{c})" for c in sums)}, {crossings}
    FROM j GROUP BY {tkey} ORDER BY {tkey}
    ON CONFLICT ({tkey}, stripe) DO UPDATE SET
      {", ".join(f"{c} = t.{c} + excluded.{c}" for c in (*sums, *hosts))}
  )
  SELECT array_agg(u.at) INTO gone FROM u WHERE {zero("u")};
  -- (this transaction holds those rows since its upsert: their row ids stand)
  DELETE FROM fleet_rollup_host_{kind} h WHERE h.ctid = ANY(gone) AND {zero("h")};"""


def _commit_function(schema: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION khod_rollup_commit() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = {schema}, pg_temp AS $$
DECLARE
  s integer;
  gone tid[];
BEGIN
  DELETE FROM fleet_rollup_pending_tx WHERE xid = NEW.xid;
  s := khod_rollup_stripe();{_apply("boots")}{_apply("attempts")}
  RETURN NULL;
END $$;
"""


def _schema() -> str:
    return str(op.get_bind().execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one())


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_commit_function(_schema()))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # 0015's function again (CREATE OR REPLACE keeps its owner and grants)
    op.execute(
        m0015._commit_function(_schema()).replace(
            "CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1
        )
    )
