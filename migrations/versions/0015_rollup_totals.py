"""Fleet rollups, the whole history's totals: per host and transition, and per
transition with its host counts, so that the whole-history report reads a row per
transition.

Migration 0013's rollups are per (30-day bucket, transition, machine): a report still
read a row per host and bucket and counted hosts from them (3.5 s at 1.6 million
boots). Two levels above them:

- ``fleet_rollup_host_boots`` / ``fleet_rollup_host_attempts``: per (transition,
  machine) the sums over every bucket: boots, crashes, and of the boots with a time
  (bucket -1 has none, the report never counts those as observed) the boots, crashes,
  logged and warned boots; warnings; the boots whose chain khod derived (from
  ``boots``: the buckets do not count them); for attempts the buckets' counts.
- ``fleet_rollup_transition_boots`` / ``fleet_rollup_transition_attempts``: per
  (transition, stripe) those sums and the hosts whose sum is above 0, for each count
  the report counts hosts by. The report sums the stripes.

Every change to the bucket rollups, whatever made it (a push, an import, a verdict, a
crash record, retention, a rewrite), and every boot whose chain khod derived, is summed
by its statement (a statement trigger, its transition tables) into an unlogged
``fleet_rollup_pending_*`` table; the transaction's first such statement inserts its
id into ``fleet_rollup_pending_tx``, whose deferred constraint trigger adds the
transaction's changes at its commit, in key order, to the host rows and, to the
stripe the transaction holds, the transitions' sums and host counts
(``khod_rollup_commit``). No lock on a total is held across statements (two writers of
the same machines in opposite orders do not deadlock), and a stripe is one of 64 rows
of ``fleet_rollup_stripes`` the commit locks, skipping those other transactions hold
(``khod_rollup_stripe``; not an advisory lock, which any role may take and hold), so
that the hosts landing the same transition at once (a kexec wave) do not queue behind
one row.

The functions are the owner's (``SECURITY DEFINER``) as 0013's: a host reads and writes
none of it, ``khod_report`` reads the totals. The first and last boot of a transition
are not kept (retention takes the first away): two indexes on the bucket rollups let
the report take them per transition. Backfilled from the bucket rollups and the boots;
``schema_compat.min_writer`` stays 0011 (the hosts' writes are unchanged). SQLite keeps
no rollups: the tables are made, empty.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

STRIPES = 64

# per kind: the bucket table's flag, the sums kept per host (as SQL over a bucket row,
# its bucket -1 taken into account) and the host counts kept per transition (a host
# counts when the sum of those of its sums is above 0)
_BOOT_SUMS = {
    "boots": "boots",
    "crashes": "crashes",
    "observed_boots": "CASE WHEN bucket = -1 THEN 0 ELSE boots END",
    "observed_crashes": "CASE WHEN bucket = -1 THEN 0 ELSE crashes END",
    "logged_boots": "CASE WHEN bucket = -1 THEN 0 ELSE logged_boots END",
    "warned_boots": "CASE WHEN bucket = -1 THEN 0 ELSE warned_boots END",
    "warnings": "warnings",
    "derived_boots": "0",  # from the boots themselves (khod_rollup_derived)
}
_BOOT_HOSTS: dict[str, tuple[str, ...]] = {
    "hosts": ("boots",),
    "observed_hosts": ("observed_boots",),
    "observed_crash_hosts": ("observed_crashes",),
    "logged_hosts": ("logged_boots",),
    "warned_hosts": ("warned_boots",),
    "crash_hosts": ("crashes",),
}
_ATTEMPT_SUMS = {
    c: c for c in ("attempts", "landed", "failed_to_land", "rejected", "without_handover")
}
_ATTEMPT_HOSTS: dict[str, tuple[str, ...]] = {
    "hosts": ("attempts",),
    "failed_hosts": ("failed_to_land", "rejected"),
}
KINDS: dict[str, tuple[str, dict[str, str], dict[str, tuple[str, ...]]]] = {
    "boots": ("cold", _BOOT_SUMS, _BOOT_HOSTS),
    "attempts": ("has_prev", _ATTEMPT_SUMS, _ATTEMPT_HOSTS),
}


def _stripe_function(schema: str) -> str:
    return f"""
CREATE FUNCTION khod_rollup_stripe() RETURNS integer LANGUAGE plpgsql
SET search_path = {schema}, pg_temp AS $$
DECLARE
  s integer;
BEGIN
  -- the first stripe from this backend's that no other transaction holds (a row lock
  -- in a table only the owner reaches: an advisory lock any role may take and hold);
  -- one this transaction holds already is taken again; all held: wait for this
  -- backend's own
  SELECT stripe INTO s FROM fleet_rollup_stripes
  ORDER BY (stripe - pg_backend_pid() % {STRIPES} + {STRIPES}) % {STRIPES}
  LIMIT 1 FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    SELECT stripe INTO s FROM fleet_rollup_stripes
    WHERE stripe = pg_backend_pid() % {STRIPES} FOR UPDATE;
  END IF;
  RETURN s;
END $$;
"""


def _host_sum(cols: tuple[str, ...], now: str, change: str = "") -> str:
    """A host row's sum of ``cols`` after the change (``now``, the row written) or,
    given ``change`` (the change's row), before it."""
    if change:
        return " + ".join(f"({now}.{c} - {change}.{c})" for c in cols)
    return " + ".join(f"{now}.{c}" for c in cols)


def _key(kind: str, machine: bool = True) -> list[str]:
    return [KINDS[kind][0], "previous_release", "release", *(["machine_id"] if machine else [])]


def _apply(kind: str) -> str:
    """At commit: this transaction's changes (``fleet_rollup_pending_*``, taken out)
    added to the host rows in key order, and what they did to each transition's sums
    and host counts added to the stripe ``s``; the host rows left with nothing named in
    ``gone_*`` (deleted by the next statement)."""
    _, sums, hosts = KINDS[kind]
    key, tkey = ", ".join(_key(kind)), ", ".join(_key(kind, False))
    crossings = ", ".join(
        f"sum(({_host_sum(e, 'u')} > 0)::int - ({_host_sum(e, 'u', 'd')} > 0)::int)"
        for e in hosts.values()
    )

    def zero(t: str) -> str:  # a host row with nothing left (its derived boots too)
        return " AND ".join(f"{t}.{c} = 0" for c in sums)

    return f"""
  WITH p AS (
    DELETE FROM fleet_rollup_pending_{kind} WHERE xid = txid_current() RETURNING *
  ), d AS (
    SELECT {key}, {", ".join(f"sum({c}) AS {c}" for c in sums)}
    FROM p GROUP BY {key} HAVING {" OR ".join(f"sum({c}) <> 0" for c in sums)}
  ), u AS (
    INSERT INTO fleet_rollup_host_{kind} AS h SELECT * FROM d ORDER BY {key}
    ON CONFLICT ({key}) DO UPDATE SET {", ".join(f"{c} = h.{c} + excluded.{c}" for c in sums)}
    RETURNING h.*
  ), tr AS (
    INSERT INTO fleet_rollup_transition_{kind} AS t
    SELECT {", ".join(f"u.{k}" for k in _key(kind, False))}, s,
           {", ".join(f"sum(d.{c})" for c in sums)}, {crossings}
    FROM u JOIN d USING ({key}) GROUP BY {tkey} ORDER BY {tkey}
    ON CONFLICT ({tkey}, stripe) DO UPDATE SET
      {", ".join(f"{c} = t.{c} + excluded.{c}" for c in (*sums, *hosts))}
  )
  SELECT array_agg(u.{KINDS[kind][0]}), array_agg(u.previous_release), array_agg(u.release),
         array_agg(u.machine_id)
  INTO gone_f, gone_p, gone_r, gone_m FROM u WHERE {zero("u")};
  DELETE FROM fleet_rollup_host_{kind} h
  USING unnest(gone_f, gone_p, gone_r, gone_m) AS k(f, p, r, m)
  WHERE (h.{KINDS[kind][0]}, h.previous_release, h.release, h.machine_id) = (k.f, k.p, k.r, k.m)
    AND {zero("h")};"""


def _commit_function(schema: str) -> str:
    return f"""
CREATE FUNCTION khod_rollup_commit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {schema}, pg_temp AS $$
DECLARE
  s integer;
  gone_f boolean[];
  gone_p text[];
  gone_r text[];
  gone_m text[];
BEGIN
  DELETE FROM fleet_rollup_pending_tx WHERE xid = NEW.xid;
  s := khod_rollup_stripe();{_apply("boots")}{_apply("attempts")}
  RETURN NULL;
END $$;
"""


def _signed(kind: str, table: str, sign: str) -> str:
    _, sums, _ = KINDS[kind]
    return (
        f"SELECT {', '.join(_key(kind))}, "
        + ", ".join(f"{sign}({e}) AS {c}" for c, e in sums.items())
        + f" FROM {table}"
    )


def _pending_function(kind: str, schema: str) -> str:
    """A statement's changes to the bucket rollups, summed by (transition, machine),
    kept for the commit; the first of a transaction's marks it for ``khod_rollup_commit``."""
    _, sums, _ = KINDS[kind]
    key = ", ".join(_key(kind))

    def pend(source: str) -> str:
        return f"""
    INSERT INTO fleet_rollup_pending_{kind}
    SELECT {key}, {", ".join(f"sum({c})" for c in sums)}, txid_current() FROM ({source}) x
    GROUP BY {key} HAVING {" OR ".join(f"sum({c}) <> 0" for c in sums)};"""

    new, old = _signed(kind, "khod_new", ""), _signed(kind, "khod_old", "-")
    return _pending_trigger_function(f"khod_rollup_pending_{kind}", schema, pend, new, old)


def _pending_trigger_function(
    name: str, schema: str, pend: Callable[[str], str], new: str, old: str
) -> str:
    """A statement trigger's function: ``pend`` of the rows it inserted (``new``),
    changed (both, the old ones signed -1) or deleted (``old``); the transaction marked
    for ``khod_rollup_commit`` when it pended any."""
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = {schema}, pg_temp AS $$
DECLARE
  n bigint;
BEGIN
  IF TG_OP = 'INSERT' THEN{pend(new)}
  ELSIF TG_OP = 'UPDATE' THEN{pend(new + " UNION ALL " + old)}
  ELSE{pend(old)}
  END IF;
  GET DIAGNOSTICS n = ROW_COUNT;
  IF n > 0 THEN
    INSERT INTO fleet_rollup_pending_tx VALUES (txid_current()) ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END $$;
"""


# a boot through a kexec whose chain khod derived (khod.fleet.report.derived_query)
_THROUGH = (
    "(b.kind IN ('kexec', 'kexec-no-handover', 'kexec-rejected') "
    "AND b.previous_release IS NOT NULL)"
)
_DERIVED = f"({_THROUGH} AND coalesce(b.metadata_source, '') IN ('attempt', 'derived'))"


def _derived_function(schema: str) -> str:
    """The boots a statement inserted, deleted or changed whose chain khod derived,
    counted for the commit as the bucket rollups' changes are (they carry no such
    count)."""
    zeros = ", ".join("0" for c in _BOOT_SUMS if c != "derived_boots")

    def pend(source: str) -> str:
        return f"""
    INSERT INTO fleet_rollup_pending_boots
    SELECT false, b.previous_release, b.release, b.machine_id, {zeros}, sum(b.sign),
           txid_current()
    FROM ({source}) b WHERE {_DERIVED}
    GROUP BY 2, 3, 4 HAVING sum(b.sign) <> 0;"""

    new = "SELECT n.*, 1 AS sign FROM khod_new n"
    old = "SELECT o.*, -1 AS sign FROM khod_old o"
    return _pending_trigger_function("khod_rollup_derived", schema, pend, new, old)


def _triggers(kind: str) -> list[str]:
    fn = f"khod_rollup_pending_{kind}()"
    table = f"fleet_rollup_{kind}"
    if kind == "derived":
        fn, table = "khod_rollup_derived()", "boots"
    return [
        f"CREATE TRIGGER khod_totals_insert AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS khod_new FOR EACH STATEMENT EXECUTE FUNCTION {fn}",
        f"CREATE TRIGGER khod_totals_update AFTER UPDATE ON {table} "
        "REFERENCING OLD TABLE AS khod_old NEW TABLE AS khod_new "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}",
        f"CREATE TRIGGER khod_totals_delete AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS khod_old FOR EACH STATEMENT EXECUTE FUNCTION {fn}",
    ]


def backfill(kind: str) -> list[str]:
    """The host rows from the bucket rollups (and the boots, for the derived ones), then
    the transitions' rows (stripe 0) from those."""
    flag, sums, hosts = KINDS[kind]
    key = f"{flag}, previous_release, release, machine_id"
    tkey = f"{flag}, previous_release, release"
    derived = [  # (every such boot is counted in a bucket row: its host row is there)
        "UPDATE fleet_rollup_host_boots h SET derived_boots = x.n FROM (SELECT "
        f"b.previous_release, b.release, b.machine_id, count(*) AS n FROM boots b "
        f"WHERE {_DERIVED} GROUP BY 1, 2, 3) x WHERE NOT h.cold "
        "AND (h.previous_release, h.release, h.machine_id) = "
        "(x.previous_release, x.release, x.machine_id)"
    ]
    return [
        f"INSERT INTO fleet_rollup_host_{kind} SELECT {key}, "
        + ", ".join(f"sum({e})" for e in sums.values())
        + f" FROM fleet_rollup_{kind} b GROUP BY {key} HAVING sum({next(iter(sums))}) > 0",
        *(derived if kind == "boots" else []),
        f"INSERT INTO fleet_rollup_transition_{kind} SELECT {tkey}, 0, "
        + ", ".join(f"sum({c})" for c in sums)
        + ", "
        + ", ".join(f"count(*) FILTER (WHERE {' + '.join(e)} > 0)" for e in hosts.values())
        + f" FROM fleet_rollup_host_{kind} GROUP BY {tkey}",
    ]


def upgrade() -> None:
    bind = op.get_bind()
    pg = bind.dialect.name == "postgresql"

    def n(name: str) -> sa.Column[object]:
        return sa.Column(name, sa.BigInteger(), nullable=False)

    def key(flag: str) -> list[sa.Column[object]]:
        return [
            sa.Column(flag, sa.Boolean(), nullable=False),
            sa.Column("previous_release", sa.Text(), nullable=False),
            sa.Column("release", sa.Text(), nullable=False),
        ]

    for kind, (flag, sums, hosts) in KINDS.items():
        op.create_table(
            f"fleet_rollup_host_{kind}",
            *key(flag),
            sa.Column("machine_id", sa.String(length=64), nullable=False),
            *(n(c) for c in sums),
            sa.PrimaryKeyConstraint(
                flag, "previous_release", "release", "machine_id",
                name=op.f(f"pk_fleet_rollup_host_{kind}"),
            ),
        )  # fmt: skip
        op.create_table(
            f"fleet_rollup_transition_{kind}",
            *key(flag),
            sa.Column("stripe", sa.Integer(), nullable=False),
            *(n(c) for c in (*sums, *hosts)),
            sa.PrimaryKeyConstraint(
                flag, "previous_release", "release", "stripe",
                name=op.f(f"pk_fleet_rollup_transition_{kind}"),
            ),
        )  # fmt: skip
        # a transaction's changes until it commits (unlogged: no row outlives one)
        op.create_table(
            f"fleet_rollup_pending_{kind}",
            *key(flag),
            sa.Column("machine_id", sa.String(length=64), nullable=False),
            *(n(c) for c in sums),
            n("xid"),
            prefixes=["UNLOGGED"] if pg else [],
        )
        op.create_index(
            op.f(f"ix_fleet_rollup_pending_{kind}_xid"), f"fleet_rollup_pending_{kind}", ["xid"]
        )
    op.create_table(  # the stripes a commit claims (a row each, locked to its end)
        "fleet_rollup_stripes",
        sa.Column("stripe", sa.Integer(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("stripe", name=op.f("pk_fleet_rollup_stripes")),
    )
    op.execute(
        sa.text(
            "INSERT INTO fleet_rollup_stripes (stripe) "
            f"VALUES {', '.join(f'({i})' for i in range(STRIPES))}"
        )
    )
    op.create_table(
        "fleet_rollup_pending_tx",
        sa.Column("xid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("xid", name=op.f("pk_fleet_rollup_pending_tx")),
        prefixes=["UNLOGGED"] if pg else [],
    )
    # a transition's first and last boot, one index entry away
    for end in ("first", "last"):
        op.create_index(
            op.f(f"ix_fleet_rollup_boots_{end}"),
            "fleet_rollup_boots",
            ["cold", "previous_release", "release", f"{end}_booted_at"],
        )
    if not pg:
        return
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(_stripe_function(schema))
    op.execute(_commit_function(schema))
    op.execute(
        "CREATE CONSTRAINT TRIGGER khod_totals_commit AFTER INSERT ON fleet_rollup_pending_tx "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION khod_rollup_commit()"
    )
    op.execute(_derived_function(schema))
    for stmt in _triggers("derived"):  # (it locks boots against writes)
        op.execute(stmt)
    for kind in KINDS:
        op.execute(_pending_function(kind, schema))
        for stmt in _triggers(kind):  # (they lock the bucket rollups against writes)
            op.execute(stmt)
        for stmt in backfill(kind):
            op.execute(stmt)
    for f in ("stripe()", "commit()", "pending_boots()", "pending_attempts()", "derived()"):
        op.execute(f"REVOKE ALL ON FUNCTION khod_rollup_{f} FROM PUBLIC")
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'khod_report') "
        "THEN GRANT SELECT ON fleet_rollup_host_boots, fleet_rollup_host_attempts, "
        "fleet_rollup_transition_boots, fleet_rollup_transition_attempts TO khod_report; "
        "END IF; END $$"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for kind in KINDS:
            for trg in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER khod_totals_{trg} ON fleet_rollup_{kind}")
            op.execute(f"DROP FUNCTION khod_rollup_pending_{kind}()")
        for trg in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER khod_totals_{trg} ON boots")
        op.execute("DROP FUNCTION khod_rollup_derived()")
        op.execute("DROP TRIGGER khod_totals_commit ON fleet_rollup_pending_tx")
        op.execute("DROP FUNCTION khod_rollup_commit()")
        op.execute("DROP FUNCTION khod_rollup_stripe()")
    for end in ("last", "first"):
        op.drop_index(op.f(f"ix_fleet_rollup_boots_{end}"), table_name="fleet_rollup_boots")
    op.drop_table("fleet_rollup_pending_tx")
    op.drop_table("fleet_rollup_stripes")
    for kind in reversed(KINDS):
        op.drop_index(
            op.f(f"ix_fleet_rollup_pending_{kind}_xid"), table_name=f"fleet_rollup_pending_{kind}"
        )
        op.drop_table(f"fleet_rollup_pending_{kind}")
        op.drop_table(f"fleet_rollup_transition_{kind}")
        op.drop_table(f"fleet_rollup_host_{kind}")
