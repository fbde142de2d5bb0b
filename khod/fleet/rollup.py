"""The transition report from the rollups (migration 0013), on PostgreSQL.

The rollups hold, per 30-day bucket, transition and machine, what
``khod.fleet.report.transitions_query`` and ``attempts_query`` count, kept by triggers
as rows arrive. A report over ``[since, until]`` reads:

- the rollup rows of the buckets wholly inside the window (every bucket when there is
  none; the bucket of boots without a time then too), every boot counted as observed;
- minus the boots of those buckets that began after ``observed_before`` (their window
  is not over: the last day by default), read from ``boots`` by time;
- plus the boots and attempts of the buckets the window cuts (its edges), read from
  ``boots`` and ``kexec_attempts`` as the full query reads them.

The per-host sums are then counted into hosts per transition in the database, so the
report takes one row per transition: its output is the full recomputation's
(``tests/fleet/test_report_rollup.py``). SQLite keeps no rollups: the full query there.

The whole history (no ``since``, no ``until``: the default, the timer's, Grafana's)
reads migration 0015's totals instead, a row per transition and stripe: their sums and
host counts, minus the boots whose window is not over and the hosts those were the
only observed boots of (each such host's total row says), and the first and last boot
per transition from the bucket rollups' indexes. What it costs is the number of
transitions and the boots of the last window, not the hosts or the history.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from khod.records import (
    CRASH_REASONS,
    FAILED_TO_LAND,
    RAN,
    REJECTED,
    THROUGH_KEXEC,
    WITHOUT_HANDOVER,
    Verdict,
)

BUCKET = 30 * 86400  # the migration's khod_bucket()
SINCE_REVISION = "0013"  # the first schema revision that keeps the rollups
_BIG = 2**62


def sql_list(values: tuple[Any, ...]) -> str:
    """``values`` as an SQL list of string literals: ``('a', 'b')``."""
    return "(" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + ")"


_CRASHED = (
    "EXISTS (SELECT 1 FROM pstore_records p WHERE p.describes = b.id "
    f"AND p.reason IN {sql_list(CRASH_REASONS)})"
)
# a bucket wholly in the window; :all: no window at all (the bucket of no time too)
_WHOLE_B = "(({k} <> -1 AND {k} >= :since_i AND {k} + {w} - 1 <= :until_i) OR ({k} = -1 AND :all))"
# a transition's boot (khod.records.THROUGH_KEXEC, as khod.fleet.report reads it)
THROUGH_B = f"(b.kind IN {sql_list(THROUGH_KEXEC)} AND b.previous_release IS NOT NULL)"
_KEY_B = f"CASE WHEN {THROUGH_B} THEN b.previous_release END"
_KNOWN_B = "(b.kind <> 'kexec' OR b.previous_release IS NOT NULL)"

BOOTS_SQL = f"""
WITH u AS (
  SELECT CASE WHEN r.cold THEN NULL ELSE r.previous_release END AS prev, r.release,
         r.machine_id, r.boots, r.crashes,
         CASE WHEN r.bucket = -1 THEN 0 ELSE r.boots END AS ob,
         CASE WHEN r.bucket = -1 THEN 0 ELSE r.crashes END AS oc,
         CASE WHEN r.bucket = -1 THEN 0 ELSE r.logged_boots END AS lb,
         CASE WHEN r.bucket = -1 THEN 0 ELSE r.warned_boots END AS wb,
         r.warnings, r.first_booted_at AS first, r.last_booted_at AS last
  FROM fleet_rollup_boots r WHERE {_WHOLE_B.format(k="r.bucket", w=BUCKET)}
  UNION ALL  -- the whole buckets' boots whose window is not over
  SELECT {_KEY_B}, b.release, b.machine_id, 0, 0, -1, -({_CRASHED})::int,
         -(b.warnings IS NOT NULL)::int, -(b.warnings > 0)::int, 0, NULL, NULL
  FROM boots b
  WHERE b.booted_at > :before AND {_KNOWN_B}
    AND {_WHOLE_B.format(k="khod_bucket(b.booted_at)", w=BUCKET)}
  UNION ALL  -- the edges: the buckets the window cuts
  SELECT {_KEY_B}, b.release, b.machine_id, 1, c.crashed::int,
         (b.booted_at <= :before)::int, (c.crashed AND b.booted_at <= :before)::int,
         (b.warnings IS NOT NULL AND b.booted_at <= :before)::int,
         (b.warnings > 0 AND b.booted_at <= :before)::int, coalesce(b.warnings, 0),
         b.booted_at, b.booted_at
  FROM boots b CROSS JOIN LATERAL (SELECT {_CRASHED} AS crashed) c
  WHERE NOT :all AND b.booted_at >= :since_i AND b.booted_at <= :until_i AND {_KNOWN_B}
    AND NOT {_WHOLE_B.format(k="khod_bucket(b.booted_at)", w=BUCKET)}
), h AS (
  SELECT prev, release, machine_id, sum(boots) AS boots, sum(crashes) AS crashes,
         sum(ob) AS ob, sum(oc) AS oc, sum(lb) AS lb, sum(wb) AS wb,
         sum(warnings) AS warnings, min(first) AS first, max(last) AS last
  FROM u GROUP BY prev, release, machine_id
)
SELECT prev, release, sum(boots), sum(crashes), sum(ob), sum(oc), sum(lb), sum(wb),
       sum(warnings), min(first), max(last),
       count(*) FILTER (WHERE boots > 0), count(*) FILTER (WHERE ob > 0),
       count(*) FILTER (WHERE oc > 0), count(*) FILTER (WHERE lb > 0),
       count(*) FILTER (WHERE wb > 0), count(*) FILTER (WHERE crashes > 0)
FROM h GROUP BY prev, release HAVING sum(boots) > 0
"""

_REL_A = (
    f"coalesce(a.target_release, CASE WHEN a.verdict <> '{Verdict.COLD_BOOT}' THEN j.release END)"
)
_WHOLE_A = "({k} >= :since AND {k} + {w} <= :until)"

ATTEMPTS_SQL = f"""
WITH u AS (
  SELECT CASE WHEN r.has_prev THEN r.previous_release END AS prev, r.release,
         r.machine_id, r.attempts, r.landed, r.failed_to_land, r.rejected,
         r.without_handover
  FROM fleet_rollup_attempts r WHERE {_WHOLE_A.format(k="r.bucket", w=BUCKET)}
  UNION ALL
  SELECT a.expected_previous_release, {_REL_A}, a.machine_id, 1,
         (a.verdict = '{Verdict.LANDED}')::int, (a.verdict IN {sql_list(FAILED_TO_LAND)})::int,
         (a.verdict IN {sql_list(REJECTED)})::int, (a.verdict IN {sql_list(WITHOUT_HANDOVER)})::int
  FROM kexec_attempts a LEFT JOIN boots j ON j.id = a.verdict_boot
  WHERE NOT :all AND a.created_at >= :since AND a.created_at <= :until
    AND a.verdict IN {sql_list(RAN)}
    AND NOT {_WHOLE_A.format(k="khod_bucket(a.created_at)", w=BUCKET)}
), h AS (
  SELECT prev, release, machine_id, sum(attempts) AS attempts, sum(landed) AS landed,
         sum(failed_to_land) AS ftl, sum(rejected) AS rej, sum(without_handover) AS wh
  FROM u WHERE release IS NOT NULL GROUP BY prev, release, machine_id
)
SELECT prev, release, sum(attempts), sum(landed), sum(ftl), sum(rej), sum(wh),
       count(*) FILTER (WHERE attempts > 0), count(*) FILTER (WHERE ftl + rej > 0)
FROM h GROUP BY prev, release HAVING sum(attempts) > 0
"""


# The whole history (migration 0015): the transitions' totals, their stripes summed;
# minus, for the boots whose window is not over (after :before), their counts and the
# hosts that had no other observed boot of the transition (their host row says how many
# they had); the first and last boot from the bucket rollups' indexes.
_KEY_COLD_B = f"NOT {THROUGH_B} AND b.kind <> 'kexec'"
TOTAL_BOOTS_SQL = f"""
WITH t AS (
  SELECT cold, previous_release, release, sum(boots) AS boots, sum(crashes) AS crashes,
         sum(observed_boots) AS ob, sum(observed_crashes) AS oc, sum(logged_boots) AS lb,
         sum(warned_boots) AS wb, sum(warnings) AS warnings, sum(hosts) AS hosts,
         sum(observed_hosts) AS hob, sum(observed_crash_hosts) AS hoc,
         sum(logged_hosts) AS hlb, sum(warned_hosts) AS hwb, sum(crash_hosts) AS hc
  FROM fleet_rollup_transition_boots GROUP BY cold, previous_release, release
  HAVING sum(boots) > 0
), n AS (  -- the boots whose window is not over, per host
  SELECT {_KEY_COLD_B} AS cold, coalesce({_KEY_B}, '') AS previous_release, b.release,
         b.machine_id, count(*) AS ob, count(x.crashed) AS oc,
         count(b.warnings) AS lb, count(*) FILTER (WHERE b.warnings > 0) AS wb
  FROM boots b LEFT JOIN LATERAL (  -- (LIMIT: a lookup per boot, not a pass over pstore)
    SELECT true AS crashed FROM pstore_records p
    WHERE p.describes = b.id AND p.reason IN {sql_list(CRASH_REASONS)} LIMIT 1) x ON true
  WHERE b.booted_at > :before AND {_KNOWN_B}
  GROUP BY 1, 2, 3, 4
), c AS (
  SELECT n.cold, n.previous_release, n.release, sum(n.ob) AS ob, sum(n.oc) AS oc,
         sum(n.lb) AS lb, sum(n.wb) AS wb,
         count(*) FILTER (WHERE h.observed_boots > 0 AND h.observed_boots <= n.ob) AS hob,
         count(*) FILTER (WHERE h.observed_crashes > 0 AND h.observed_crashes <= n.oc) AS hoc,
         count(*) FILTER (WHERE h.logged_boots > 0 AND h.logged_boots <= n.lb) AS hlb,
         count(*) FILTER (WHERE h.warned_boots > 0 AND h.warned_boots <= n.wb) AS hwb
  FROM n CROSS JOIN LATERAL (  -- (LIMIT: a lookup per host, not a pass over every host)
    SELECT h.observed_boots, h.observed_crashes, h.logged_boots, h.warned_boots
    FROM fleet_rollup_host_boots h WHERE h.cold = n.cold
      AND h.previous_release = n.previous_release AND h.release = n.release
      AND h.machine_id = n.machine_id LIMIT 1) h
  GROUP BY 1, 2, 3
)
SELECT CASE WHEN t.cold THEN NULL ELSE t.previous_release END, t.release, t.boots,
       t.crashes, t.ob - coalesce(c.ob, 0), t.oc - coalesce(c.oc, 0),
       t.lb - coalesce(c.lb, 0), t.wb - coalesce(c.wb, 0), t.warnings,
       (SELECT r.first_booted_at FROM fleet_rollup_boots r WHERE r.cold = t.cold
          AND r.previous_release = t.previous_release AND r.release = t.release
          AND r.first_booted_at IS NOT NULL ORDER BY r.first_booted_at LIMIT 1),
       (SELECT r.last_booted_at FROM fleet_rollup_boots r WHERE r.cold = t.cold
          AND r.previous_release = t.previous_release AND r.release = t.release
          AND r.last_booted_at IS NOT NULL ORDER BY r.last_booted_at DESC LIMIT 1),
       t.hosts, t.hob - coalesce(c.hob, 0), t.hoc - coalesce(c.hoc, 0),
       t.hlb - coalesce(c.hlb, 0), t.hwb - coalesce(c.hwb, 0), t.hc
FROM t LEFT JOIN c USING (cold, previous_release, release)
"""
TOTAL_ATTEMPTS_SQL = """
SELECT CASE WHEN has_prev THEN previous_release END, release, sum(attempts), sum(landed),
       sum(failed_to_land), sum(rejected), sum(without_handover), sum(hosts),
       sum(failed_hosts)
FROM fleet_rollup_transition_attempts GROUP BY has_prev, previous_release, release
HAVING sum(attempts) > 0
"""


TOTAL_DERIVED_SQL = """
SELECT previous_release, release, sum(derived_boots) FROM fleet_rollup_transition_boots
WHERE NOT cold GROUP BY previous_release, release HAVING sum(derived_boots) > 0
"""


def keeps_totals(conn: Connection) -> bool:
    """Whether the database keeps the whole history's totals (migration 0015)."""
    q = "SELECT to_regclass('fleet_rollup_transition_boots') IS NOT NULL"
    return bool(conn.execute(text(q)).scalar_one())


def read(
    conn: Connection, since: float | None, until: float | None, before: float
) -> tuple[list[Any], list[Any], dict[tuple[str, str], int] | None]:
    """The boots' and the attempts' rows per transition (``khod.fleet.verdicts.totals``)
    and, from the totals, the boots per transition whose chain khod derived (None: the
    caller counts them, ``khod.fleet.report.derived_counts_in``)."""
    if since is None and until is None and keeps_totals(conn):
        # milliseconds of work, which the server's estimate of the last window's crash
        # lookups can put past jit_above_cost: compiling it took 0.5 s of a 0.6 s report
        conn.execute(text("SELECT set_config('jit', 'off', true)"))
        p = {"before": int(before)}
        boot_rows = conn.execute(text(TOTAL_BOOTS_SQL), p).all()
        attempt_rows = conn.execute(text(TOTAL_ATTEMPTS_SQL)).all()
        derived = {(pr, r): int(n) for pr, r, n in conn.execute(text(TOTAL_DERIVED_SQL))}
        return list(boot_rows), list(attempt_rows), derived
    return (*read_buckets(conn, since, until, before), None)


def read_buckets(
    conn: Connection, since: float | None, until: float | None, before: float
) -> tuple[list[Any], list[Any]]:
    """``read`` from the bucket rollups (any window; the whole history before 0015)."""
    everything = since is None and until is None
    p = {
        "all": everything,
        "since_i": -_BIG if since is None else int(since),
        "until_i": _BIG if until is None else int(until),
        "since": -float(_BIG) if since is None else float(since),
        "until": float(_BIG) if until is None else float(until),
        "before": int(before),
    }
    boot_rows = conn.execute(text(BOOTS_SQL), p).all()
    attempt_rows = conn.execute(text(ATTEMPTS_SQL), p).all()
    return list(boot_rows), list(attempt_rows)
