"""Fleet rollups: the transition report's counts kept as rows arrive (docs/fleet.md).

- ``fleet_rollup_boots``: per (30-day bucket of ``booted_at``, cold or previous
  release, release, machine) the boots, crashed boots, boots whose warnings were
  counted, warned boots, warning lines, first and last ``booted_at``; bucket -1 holds
  boots without a ``booted_at``. ``fleet_rollup_attempts``: per (bucket of
  ``created_at``, expected previous release, release, machine) the attempts that ran
  and their outcomes, as ``khod.fleet.report.attempts_query`` counts them.
- PostgreSQL: kept by triggers in the inserting transaction, on ``boots``,
  ``pstore_records`` (a boot crashed once its first Panic/Oops record arrives) and
  ``kexec_attempts`` (a verdict filled in later), for inserts, updates and deletes
  (retention); a re-sync's ``ON CONFLICT DO NOTHING`` inserts nothing, so counts
  nothing. The trigger functions are the owner's (``SECURITY DEFINER``): a host
  writes counts only through rows row-level security let it insert, and reads none
  (no grant); ``khod_report`` reads them. Backfilled from the rows already there.
- SQLite: the tables are made (one schema for both), empty; the report reads the
  boots there (``khod.fleet.rollup``).
- An index on ``boots.booted_at`` and ``kexec_attempts.created_at``: the report reads
  the boots of the last window and of partial buckets by time.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from khod.records import CRASH_REASONS, FAILED_TO_LAND, RAN, REJECTED, WITHOUT_HANDOVER, Verdict

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BUCKET = 30 * 86400  # khod.fleet.rollup.BUCKET: the buckets of a database are fixed here
TIME_MAX = 253_402_300_799  # khod.fleet.format.TIME_MAX (9999-12-31T23:59:59Z), frozen here


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + ")"


_FUNCTIONS = r"""
CREATE FUNCTION khod_bucket(t double precision) RETURNS bigint LANGUAGE sql IMMUTABLE
AS $$ SELECT CASE WHEN t IS NULL THEN -1
              ELSE floor(least(greatest(t, 0), @TIME_MAX@) / @BUCKET@)::bigint * @BUCKET@ END $$;
-- (a time no row may hold, written past khod's checks: in the first or the last bucket)

-- a machine's counts, one transaction at a time: a row lock in a table no role but the
-- owner reaches (an advisory lock, any role may take and hold)
CREATE FUNCTION khod_rollup_lock(m text) RETURNS void
LANGUAGE plpgsql SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
  INSERT INTO fleet_rollup_locks VALUES (m) ON CONFLICT DO NOTHING;
  PERFORM 1 FROM fleet_rollup_locks WHERE machine_id = m FOR UPDATE;
END $$;

CREATE FUNCTION khod_rollup_boot(b boots, sign integer, crashed boolean) RETURNS void
LANGUAGE plpgsql SET search_path = @SCHEMA@, pg_temp AS $$
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
  PERFORM khod_rollup_lock(b.machine_id);
  IF k <> -1 THEN  -- the bucket's first and last boot but this one
    SELECT min(x.booted_at), max(x.booted_at) INTO lo, hi FROM boots x
    WHERE x.machine_id = b.machine_id AND x.booted_at >= k AND x.booted_at < k + @BUCKET@
      AND x.id <> b.id AND x.release = b.release AND @COLD_X@ = c
      AND (c OR x.previous_release = p);
  END IF;
  UPDATE fleet_rollup_boots r SET boots = r.boots - 1, crashes = r.crashes - crashed::int,
    logged_boots = r.logged_boots - (b.warnings IS NOT NULL)::int,
    warned_boots = r.warned_boots - (coalesce(b.warnings, 0) > 0)::int,
    warnings = r.warnings - coalesce(b.warnings, 0),
    first_booted_at = lo, last_booted_at = hi
  WHERE r.bucket = k AND r.cold = c AND r.previous_release = p AND r.release = b.release
    AND r.machine_id = b.machine_id;
  DELETE FROM fleet_rollup_boots r
  WHERE r.bucket = k AND r.cold = c AND r.previous_release = p AND r.release = b.release
    AND r.machine_id = b.machine_id AND r.boots <= 0;
END $$;

CREATE FUNCTION khod_rollup_attempt(a kexec_attempts, sign integer, judged text)
RETURNS void LANGUAGE plpgsql SET search_path = @SCHEMA@, pg_temp AS $$
DECLARE
  k bigint := khod_bucket(a.created_at);
  hp boolean := a.expected_previous_release IS NOT NULL;
  p text := coalesce(a.expected_previous_release, '');
  rel text := coalesce(a.target_release,
                       CASE WHEN a.verdict <> '@COLD@' THEN judged END);
BEGIN
  IF a.verdict IS NULL OR a.verdict NOT IN @RAN@ OR rel IS NULL THEN RETURN; END IF;
  INSERT INTO fleet_rollup_attempts AS r VALUES (k, hp, p, rel, a.machine_id, sign,
    sign * (a.verdict = '@LANDED@')::int, sign * (a.verdict IN @FAILED@)::int,
    sign * (a.verdict IN @REJECTED@)::int, sign * (a.verdict IN @WITHOUT@)::int)
  ON CONFLICT (bucket, has_prev, previous_release, release, machine_id) DO UPDATE SET
    attempts = r.attempts + excluded.attempts, landed = r.landed + excluded.landed,
    failed_to_land = r.failed_to_land + excluded.failed_to_land,
    rejected = r.rejected + excluded.rejected,
    without_handover = r.without_handover + excluded.without_handover;
  IF sign < 0 THEN
    DELETE FROM fleet_rollup_attempts r WHERE r.bucket = k AND r.has_prev = hp
      AND r.previous_release = p AND r.release = rel AND r.machine_id = a.machine_id
      AND r.attempts <= 0;
  END IF;
END $$;

CREATE FUNCTION khod_crashed(boot bigint, but bigint) RETURNS boolean LANGUAGE sql STABLE
SET search_path = @SCHEMA@, pg_temp AS $$
SELECT EXISTS (SELECT 1 FROM pstore_records WHERE describes = boot AND id <> but
               AND reason IN @CRASH@) $$;

CREATE FUNCTION khod_rollup_crash(boot bigint) RETURNS void
LANGUAGE plpgsql SET search_path = @SCHEMA@, pg_temp AS $$
DECLARE
  b boots;
  k bigint;
  c boolean;
  p text;
BEGIN
  SELECT * INTO b FROM boots WHERE id = boot;
  IF NOT FOUND THEN RETURN; END IF;  -- the boot is being deleted: counted out already
  IF b.kind = 'kexec' AND b.previous_release IS NULL THEN RETURN; END IF;
  -- counted again, not by one: a statement's rows all precede its row triggers
  PERFORM khod_rollup_lock(b.machine_id);
  k := khod_bucket(b.booted_at);
  c := @COLD_B@;
  p := @PREV_B@;
  UPDATE fleet_rollup_boots r SET crashes = (
    SELECT count(*) FROM boots x WHERE x.machine_id = b.machine_id
      AND CASE WHEN k = -1 THEN x.booted_at IS NULL
               ELSE x.booted_at >= k AND x.booted_at < k + @BUCKET@ END
      AND x.release = b.release AND @COLD_X@ = c AND (c OR x.previous_release = p)
      AND khod_crashed(x.id, -1))
  WHERE r.bucket = k AND r.cold = c AND r.previous_release = p AND r.release = b.release
    AND r.machine_id = b.machine_id;
END $$;

CREATE FUNCTION khod_rollup_boots_trg() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
DECLARE
  a kexec_attempts;
  cr boolean;
BEGIN
  IF TG_OP = 'UPDATE' THEN
    IF (OLD.machine_id, OLD.booted_at, OLD.kind, OLD.previous_release, OLD.release,
        OLD.warnings) IS NOT DISTINCT FROM (NEW.machine_id, NEW.booted_at, NEW.kind,
        NEW.previous_release, NEW.release, NEW.warnings) THEN
      RETURN NULL;
    END IF;
    cr := khod_crashed(NEW.id, -1);
    PERFORM khod_rollup_boot(OLD, -1, cr);
    PERFORM khod_rollup_boot(NEW, 1, cr);
    IF OLD.release IS DISTINCT FROM NEW.release THEN
      FOR a IN SELECT * FROM kexec_attempts WHERE verdict_boot = NEW.id LOOP
        PERFORM khod_rollup_attempt(a, -1, OLD.release);
        PERFORM khod_rollup_attempt(a, 1, NEW.release);
      END LOOP;
    END IF;
    RETURN NULL;
  END IF;
  -- DELETE, before the row goes: its crash records and judged attempts still point here
  PERFORM khod_rollup_boot(OLD, -1, khod_crashed(OLD.id, -1));
  -- (an attempt that names its target keeps it: its own trigger recounts it as it
  -- loses its judging boot)
  FOR a IN SELECT * FROM kexec_attempts WHERE verdict_boot = OLD.id AND target_release IS NULL
  LOOP
    PERFORM khod_rollup_attempt(a, -1, OLD.release);
  END LOOP;
  RETURN OLD;
END $$;

CREATE FUNCTION khod_rollup_attempts_trg() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND (OLD.machine_id, OLD.created_at, OLD.verdict, OLD.verdict_boot,
      OLD.target_release, OLD.expected_previous_release) IS NOT DISTINCT FROM
      (NEW.machine_id, NEW.created_at, NEW.verdict, NEW.verdict_boot, NEW.target_release,
       NEW.expected_previous_release) THEN
    RETURN NULL;
  END IF;
  IF TG_OP <> 'INSERT' THEN  -- a judging boot gone: counted out by its delete (no target)
    PERFORM khod_rollup_attempt(OLD, -1, (SELECT release FROM boots WHERE id = OLD.verdict_boot));
  END IF;
  IF TG_OP <> 'DELETE' THEN
    PERFORM khod_rollup_attempt(NEW, 1, (SELECT release FROM boots WHERE id = NEW.verdict_boot));
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION khod_rollup_pstore_trg() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
DECLARE
  was_crash boolean := TG_OP <> 'INSERT' AND OLD.describes IS NOT NULL AND OLD.reason IN @CRASH@;
  is_new boolean := TG_OP <> 'DELETE' AND NEW.describes IS NOT NULL AND NEW.reason IN @CRASH@;
BEGIN
  IF was_crash AND is_new AND OLD.describes = NEW.describes THEN RETURN NULL; END IF;
  IF was_crash THEN PERFORM khod_rollup_crash(OLD.describes); END IF;
  IF is_new THEN PERFORM khod_rollup_crash(NEW.describes); END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER khod_rollup AFTER UPDATE ON boots
FOR EACH ROW EXECUTE FUNCTION khod_rollup_boots_trg();
CREATE TRIGGER khod_rollup_delete BEFORE DELETE ON boots
FOR EACH ROW EXECUTE FUNCTION khod_rollup_boots_trg();
CREATE TRIGGER khod_rollup AFTER UPDATE OR DELETE ON kexec_attempts
FOR EACH ROW EXECUTE FUNCTION khod_rollup_attempts_trg();
CREATE TRIGGER khod_rollup AFTER UPDATE OR DELETE ON pstore_records
FOR EACH ROW EXECUTE FUNCTION khod_rollup_pstore_trg();

-- inserts (every push, every import): once per statement, its rows summed by key
CREATE FUNCTION khod_rollup_boots_ins() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
  @BOOTS_SUM(khod_new_rows, false)@;
  RETURN NULL;
END $$;
CREATE FUNCTION khod_rollup_attempts_ins() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
  @ATTEMPTS_SUM(khod_new_rows)@;
  RETURN NULL;
END $$;
CREATE FUNCTION khod_rollup_pstore_ins() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = @SCHEMA@, pg_temp AS $$
BEGIN
  -- a machine's crash records one transaction at a time (in one order: no deadlock)
  PERFORM khod_rollup_lock(m.machine_id)
  FROM (SELECT DISTINCT b.machine_id FROM khod_new_rows n JOIN boots b ON b.id = n.describes
        WHERE n.reason IN @CRASH@ ORDER BY 1) m;
  -- an insert only makes boots crashed: those no earlier record said had crashed
  UPDATE fleet_rollup_boots r SET crashes = r.crashes + c.n
  FROM (SELECT khod_bucket(b.booted_at) AS bucket, @COLD_B@ AS cold,
               @PREV_B@ AS prev,
               b.release, b.machine_id, count(*) AS n
        FROM (SELECT DISTINCT describes FROM khod_new_rows
              WHERE describes IS NOT NULL AND reason IN @CRASH@) d
        JOIN boots b ON b.id = d.describes
        WHERE (b.kind <> 'kexec' OR b.previous_release IS NOT NULL)
          AND NOT EXISTS (SELECT 1 FROM pstore_records p
                          WHERE p.describes = d.describes AND p.reason IN @CRASH@
                            AND NOT EXISTS (SELECT 1 FROM khod_new_rows x WHERE x.id = p.id))
        GROUP BY 1, 2, 3, 4, 5) c
  WHERE r.bucket = c.bucket AND r.cold = c.cold AND r.previous_release = c.prev
    AND r.release = c.release AND r.machine_id = c.machine_id;
  RETURN NULL;
END $$;
CREATE TRIGGER khod_rollup_insert AFTER INSERT ON boots REFERENCING NEW TABLE AS khod_new_rows
FOR EACH STATEMENT EXECUTE FUNCTION khod_rollup_boots_ins();
CREATE TRIGGER khod_rollup_insert AFTER INSERT ON kexec_attempts
REFERENCING NEW TABLE AS khod_new_rows
FOR EACH STATEMENT EXECUTE FUNCTION khod_rollup_attempts_ins();
CREATE TRIGGER khod_rollup_insert AFTER INSERT ON pstore_records
REFERENCING NEW TABLE AS khod_new_rows
FOR EACH STATEMENT EXECUTE FUNCTION khod_rollup_pstore_ins();
"""

_HELPERS = (
    "khod_bucket(double precision)",  # the report's too: anyone's
    "khod_rollup_lock(text)",
    "khod_rollup_boot(boots, integer, boolean)",
    "khod_rollup_attempt(kexec_attempts, integer, text)",
    "khod_crashed(bigint, bigint)",
    "khod_rollup_crash(bigint)",
)

# the rows of a table (the backfill) or of a statement's transition table, summed by
# key into the rollups
_BOOTS_SUM = """
INSERT INTO fleet_rollup_boots AS r
SELECT khod_bucket(b.booted_at), @COLD_B@,
       @PREV_B@, b.release,
       b.machine_id, count(*),
       CASE WHEN {crashes} THEN count(*) FILTER (WHERE EXISTS (
         SELECT 1 FROM pstore_records p WHERE p.describes = b.id AND p.reason IN @CRASH@))
       ELSE 0 END,
       count(b.warnings), count(*) FILTER (WHERE b.warnings > 0), coalesce(sum(b.warnings), 0),
       min(b.booted_at), max(b.booted_at)
FROM {rows} b WHERE b.kind <> 'kexec' OR b.previous_release IS NOT NULL
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (bucket, cold, previous_release, release, machine_id) DO UPDATE SET
  boots = r.boots + excluded.boots, crashes = r.crashes + excluded.crashes,
  logged_boots = r.logged_boots + excluded.logged_boots,
  warned_boots = r.warned_boots + excluded.warned_boots,
  warnings = r.warnings + excluded.warnings,
  first_booted_at = least(r.first_booted_at, excluded.first_booted_at),
  last_booted_at = greatest(r.last_booted_at, excluded.last_booted_at)
"""
_ATTEMPTS_SUM = """
INSERT INTO fleet_rollup_attempts AS t
SELECT khod_bucket(a.created_at), a.expected_previous_release IS NOT NULL,
       coalesce(a.expected_previous_release, ''), r.release, a.machine_id, count(*),
       count(*) FILTER (WHERE a.verdict = '@LANDED@'),
       count(*) FILTER (WHERE a.verdict IN @FAILED@),
       count(*) FILTER (WHERE a.verdict IN @REJECTED@),
       count(*) FILTER (WHERE a.verdict IN @WITHOUT@)
FROM {rows} a LEFT JOIN boots j ON j.id = a.verdict_boot
CROSS JOIN LATERAL (SELECT coalesce(a.target_release,
                    CASE WHEN a.verdict <> '@COLD@' THEN j.release END) AS release) r
WHERE a.verdict IN @RAN@ AND r.release IS NOT NULL
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (bucket, has_prev, previous_release, release, machine_id) DO UPDATE SET
  attempts = t.attempts + excluded.attempts, landed = t.landed + excluded.landed,
  failed_to_land = t.failed_to_land + excluded.failed_to_land,
  rejected = t.rejected + excluded.rejected,
  without_handover = t.without_handover + excluded.without_handover
"""


def _through(x: str) -> str:
    """A boot through a kexec from a known release: a transition's (a KHO kexec, or on a
    fleet without KHO one without a handover or a refused one, its chain derived).
    Spelled here, not taken from ``khod.records.THROUGH_KEXEC``: a migration is frozen;
    tests/fleet/test_report_rollup.py checks the two agree."""
    kinds = _in(("kexec", "kexec-no-handover", "kexec-rejected"))
    return f"({x}.kind IN {kinds} AND {x}.previous_release IS NOT NULL)"


def _cold(x: str) -> str:
    """A boot of its release's baseline: no kexec from a known release, not a KHO kexec
    (one of those without a previous release is in no row)."""
    return f"({x}.kind <> 'kexec' AND NOT {_through(x)})"


def _sql(text: str, schema: str) -> str:
    text = text.replace(
        "@BOOTS_SUM(khod_new_rows, false)@",
        _BOOTS_SUM.format(rows="khod_new_rows", crashes="false").strip(),
    ).replace("@ATTEMPTS_SUM(khod_new_rows)@", _ATTEMPTS_SUM.format(rows="khod_new_rows").strip())
    for k, v in {
        "@COLD_B@": _cold("b"),
        "@COLD_X@": _cold("x"),
        "@PREV_B@": f"CASE WHEN {_through('b')} THEN b.previous_release "
        f"WHEN {_cold('b')} THEN '' END",
        "@SCHEMA@": schema,
        "@BUCKET@": str(BUCKET),
        "@TIME_MAX@": str(TIME_MAX),
        "@CRASH@": _in(tuple(str(r) for r in CRASH_REASONS)),
        "@RAN@": _in(tuple(str(v) for v in RAN)),
        "@FAILED@": _in(tuple(str(v) for v in FAILED_TO_LAND)),
        "@REJECTED@": _in(tuple(str(v) for v in REJECTED)),
        "@WITHOUT@": _in(tuple(str(v) for v in WITHOUT_HANDOVER)),
        "@LANDED@": str(Verdict.LANDED),
        "@COLD@": str(Verdict.COLD_BOOT),
    }.items():
        text = text.replace(k, v)
    return text


def upgrade() -> None:
    bind = op.get_bind()
    key = ("bucket", "previous_release", "release", "machine_id")

    def keycols(flag: str) -> list[sa.Column[object]]:
        return [
            sa.Column("bucket", sa.BigInteger(), nullable=False),
            sa.Column(flag, sa.Boolean(), nullable=False),
            sa.Column("previous_release", sa.Text(), nullable=False),
            sa.Column("release", sa.Text(), nullable=False),
            sa.Column("machine_id", sa.String(length=64), nullable=False),
        ]

    def n(name: str) -> sa.Column[object]:
        return sa.Column(name, sa.BigInteger(), nullable=False)

    op.create_table(
        "fleet_rollup_boots",
        *keycols("cold"),
        *(n(c) for c in ("boots", "crashes", "logged_boots", "warned_boots", "warnings")),
        sa.Column("first_booted_at", sa.BigInteger(), nullable=True),
        sa.Column("last_booted_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint(key[0], "cold", *key[1:], name=op.f("pk_fleet_rollup_boots")),
    )
    op.create_table(
        "fleet_rollup_attempts",
        *keycols("has_prev"),
        *(n(c) for c in ("attempts", "landed", "failed_to_land", "rejected", "without_handover")),
        sa.PrimaryKeyConstraint(
            key[0], "has_prev", *key[1:], name=op.f("pk_fleet_rollup_attempts")
        ),
    )
    op.create_table(
        "fleet_rollup_locks",
        sa.Column("machine_id", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("machine_id", name=op.f("pk_fleet_rollup_locks")),
    )
    op.create_index(op.f("ix_boots_booted_at"), "boots", ["booted_at"])
    op.create_index(op.f("ix_kexec_attempts_created_at"), "kexec_attempts", ["created_at"])
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT quote_ident(current_schema())")).scalar_one()
    op.execute(_sql(_FUNCTIONS, schema))
    for f in _HELPERS[1:]:  # callable from the triggers only (as their owner)
        op.execute(f"REVOKE ALL ON FUNCTION {f} FROM PUBLIC")
    op.execute(_sql(_BOOTS_SUM.format(rows="boots", crashes="true"), schema))
    op.execute(_sql(_ATTEMPTS_SUM.format(rows="kexec_attempts"), schema))
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'khod_report') "
        "THEN GRANT SELECT ON fleet_rollup_boots, fleet_rollup_attempts TO khod_report; "
        "END IF; END $$"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER khod_rollup ON boots")
        op.execute("DROP TRIGGER khod_rollup_delete ON boots")
        op.execute("DROP TRIGGER khod_rollup ON kexec_attempts")
        op.execute("DROP TRIGGER khod_rollup ON pstore_records")
        for table in ("boots", "kexec_attempts", "pstore_records"):
            op.execute(f"DROP TRIGGER khod_rollup_insert ON {table}")
        for f in ("boots", "attempts", "pstore"):
            op.execute(f"DROP FUNCTION khod_rollup_{f}_ins()")
        for f in ("boots_trg()", "attempts_trg()", "pstore_trg()"):
            op.execute(f"DROP FUNCTION khod_rollup_{f}")
        for f in reversed(_HELPERS):
            op.execute(f"DROP FUNCTION {f}")
    op.drop_index(op.f("ix_kexec_attempts_created_at"), table_name="kexec_attempts")
    op.drop_index(op.f("ix_boots_booted_at"), table_name="boots")
    op.drop_table("fleet_rollup_locks")
    op.drop_table("fleet_rollup_attempts")
    op.drop_table("fleet_rollup_boots")
