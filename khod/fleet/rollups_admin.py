"""``khoctl fleet rollups --check | --rebuild``: whether the rollups (migration 0013)
still hold what the rows say, and making them so again, with the owner's role.

The rollups are kept by triggers; they drift when those do not run (an owner's bulk
load or fix-up with the triggers disabled, one table restored) or count wrongly. What
each rollup row must hold is counted again from ``boots``, ``pstore_records`` and
``kexec_attempts`` with a copy of migration 0013's backfill (``_BOOTS_SUM``,
``_ATTEMPTS_SUM``: a migration is frozen, so the copy lives here;
tests/fleet/test_rollups_admin.py shows copy and triggers agree) into temporary tables,
then compared with the rollups both ways: a row missing, one too many, one different.

A rebuild takes a SHARE lock on the three tables the triggers read (every host's push,
the owner's retention and imports wait until it commits; reports read on), deletes both
rollup tables' rows and refills them from the same counts, in one transaction.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import KhodError, StoreError
from khod.fleet.report import DERIVED_SOURCES
from khod.fleet.rollup import THROUGH_B, keeps_totals
from khod.fleet.rollup import sql_list as _in
from khod.records import CRASH_REASONS, FAILED_TO_LAND, RAN, REJECTED, WITHOUT_HANDOVER, Verdict
from khod.store.handle import Store, describe_db_error

SAMPLE = 20  # differing keys a --json check lists
LOCK_TIMEOUT_S = 60  # as a migration's lock (khod.store.migrate)
KEYS = {
    "boots": ("bucket", "cold", "previous_release", "release", "machine_id"),
    "attempts": ("bucket", "has_prev", "previous_release", "release", "machine_id"),
}
COUNTS = {
    "boots": (
        "boots", "crashes", "logged_boots", "warned_boots", "warnings", "first_booted_at",
        "last_booted_at",
    ),
    "attempts": ("attempts", "landed", "failed_to_land", "rejected", "without_handover"),
}  # fmt: skip


_THROUGH = THROUGH_B  # a transition's boot, as the report reads it
_COLD = f"(b.kind <> 'kexec' AND NOT {_THROUGH})"
_CRASH = _in(CRASH_REASONS)

# migration 0013's backfill (_BOOTS_SUM over boots, crashes counted), as one row per key
WANT_BOOTS = f"""
SELECT khod_bucket(b.booted_at), {_COLD},
       CASE WHEN {_THROUGH} THEN b.previous_release WHEN {_COLD} THEN '' END, b.release,
       b.machine_id, count(*),
       count(*) FILTER (WHERE EXISTS (
         SELECT 1 FROM pstore_records p WHERE p.describes = b.id AND p.reason IN {_CRASH})),
       count(b.warnings), count(*) FILTER (WHERE b.warnings > 0), coalesce(sum(b.warnings), 0),
       min(b.booted_at), max(b.booted_at)
FROM boots b WHERE b.kind <> 'kexec' OR b.previous_release IS NOT NULL
GROUP BY 1, 2, 3, 4, 5
"""
# and _ATTEMPTS_SUM over kexec_attempts
WANT_ATTEMPTS = f"""
SELECT khod_bucket(a.created_at), a.expected_previous_release IS NOT NULL,
       coalesce(a.expected_previous_release, ''), r.release, a.machine_id, count(*),
       count(*) FILTER (WHERE a.verdict = '{Verdict.LANDED}'),
       count(*) FILTER (WHERE a.verdict IN {_in(FAILED_TO_LAND)}),
       count(*) FILTER (WHERE a.verdict IN {_in(REJECTED)}),
       count(*) FILTER (WHERE a.verdict IN {_in(WITHOUT_HANDOVER)})
FROM kexec_attempts a LEFT JOIN boots j ON j.id = a.verdict_boot
CROSS JOIN LATERAL (SELECT coalesce(a.target_release,
                    CASE WHEN a.verdict <> '{Verdict.COLD_BOOT}' THEN j.release END) AS release) r
WHERE a.verdict IN {_in(RAN)} AND r.release IS NOT NULL
GROUP BY 1, 2, 3, 4, 5
"""
_WANT = {"boots": WANT_BOOTS, "attempts": WANT_ATTEMPTS}

# migration 0015's totals: per (transition, machine) the sums over the buckets (the
# bucket rows' expressions), per transition the sums and the hosts above 0 (a copy, as
# above; the migration's own backfill builds them from the bucket rollups as these do)
HOST_SUMS = {
    "boots": {
        "boots": "boots",
        "crashes": "crashes",
        "observed_boots": "CASE WHEN bucket = -1 THEN 0 ELSE boots END",
        "observed_crashes": "CASE WHEN bucket = -1 THEN 0 ELSE crashes END",
        "logged_boots": "CASE WHEN bucket = -1 THEN 0 ELSE logged_boots END",
        "warned_boots": "CASE WHEN bucket = -1 THEN 0 ELSE warned_boots END",
        "warnings": "warnings",
        "derived_boots": "0",  # from the boots: DERIVED_HOSTS
    },
    "attempts": {c: c for c in COUNTS["attempts"]},
}
HOSTS = {
    "boots": {
        "hosts": "boots",
        "observed_hosts": "observed_boots",
        "observed_crash_hosts": "observed_crashes",
        "logged_hosts": "logged_boots",
        "warned_hosts": "warned_boots",
        "crash_hosts": "crashes",
    },
    "attempts": {"hosts": "attempts", "failed_hosts": "failed_to_land + rejected"},
}


# the boots through a kexec whose chain khod derived, per host (report.derived_query's)
_DERIVED = f"({_THROUGH} AND coalesce(b.metadata_source, '') IN {_in(DERIVED_SOURCES)})"
DERIVED_HOSTS = f"""
UPDATE khod_want_host_boots h SET derived_boots = x.n FROM (
  SELECT b.previous_release, b.release, b.machine_id, count(*) AS n FROM boots b
  WHERE {_DERIVED} GROUP BY 1, 2, 3) x
WHERE NOT h.cold AND (h.previous_release, h.release, h.machine_id) =
  (x.previous_release, x.release, x.machine_id)
"""


def _want_totals(kind: str) -> list[str]:
    """Fill ``khod_want_host_*`` and ``khod_want_transition_*`` from ``khod_want_*``."""
    key = ", ".join(KEYS[kind][1:])
    tkey = ", ".join(KEYS[kind][1:-1])
    sums = HOST_SUMS[kind]
    first = next(iter(sums))
    return [
        f"INSERT INTO khod_want_host_{kind} SELECT {key}, "
        + ", ".join(f"sum({e})" for e in sums.values())
        + f" FROM khod_want_{kind} GROUP BY {key} HAVING sum({first}) > 0",
        *([DERIVED_HOSTS] if kind == "boots" else []),
        f"INSERT INTO khod_want_transition_{kind} SELECT {tkey}, 0, "
        + ", ".join(f"sum({c})" for c in sums)
        + ", "
        + ", ".join(f"count(*) FILTER (WHERE {e} > 0)" for e in HOSTS[kind].values())
        + f" FROM khod_want_host_{kind} GROUP BY {tkey}",
    ]


def _stripes_summed(table: str, kind: str) -> str:
    """A transition table with its stripes summed; transitions all at 0 left out (what
    is left of one whose every boot was deleted)."""
    tkey = ", ".join(KEYS[kind][1:-1])
    counts = (*HOST_SUMS[kind], *HOSTS[kind])
    return (
        f"(SELECT {tkey}, {', '.join(f'sum({c})::bigint AS {c}' for c in counts)} FROM {table} "
        f"GROUP BY {tkey} HAVING {' OR '.join(f'sum({c}) <> 0' for c in counts)})"
    )


def _diff(keys: tuple[str, ...], counts: tuple[str, ...], want: str, found: str) -> str:
    """The keys where the counted rows (``want``, w) and the kept ones (``found``, r)
    differ, and how."""
    on = " AND ".join(f"w.{k} = r.{k}" for k in keys)
    cols = ", ".join(f"coalesce(w.{k}, r.{k}) AS {k}" for k in keys)
    wv, rv = (", ".join(f"{t}.{c}" for c in counts) for t in "wr")
    return f"""
SELECT CASE WHEN r.release IS NULL THEN 'missing' WHEN w.release IS NULL THEN 'extra'
            ELSE 'different' END AS how, {cols},
       CASE WHEN w.release IS NOT NULL THEN json_build_object(
         {", ".join(f"'{c}', w.{c}" for c in counts)}) END AS want,
       CASE WHEN r.release IS NOT NULL THEN json_build_object(
         {", ".join(f"'{c}', r.{c}" for c in counts)}) END AS found
FROM {want} w FULL JOIN {found} r ON {on}
WHERE w.release IS NULL OR r.release IS NULL OR ({wv}) IS DISTINCT FROM ({rv})
"""


def _bucket_diff(kind: str) -> str:
    return _diff(KEYS[kind], COUNTS[kind], f"khod_want_{kind}", f"fleet_rollup_{kind}")


def _host_diff(kind: str) -> str:
    counts = tuple(HOST_SUMS[kind])
    return _diff(KEYS[kind][1:], counts, f"khod_want_host_{kind}", f"fleet_rollup_host_{kind}")


def _transition_diff(kind: str) -> str:
    counts = (*HOST_SUMS[kind], *HOSTS[kind])
    return _diff(
        KEYS[kind][1:-1],
        counts,
        _stripes_summed(f"khod_want_transition_{kind}", kind),
        _stripes_summed(f"fleet_rollup_transition_{kind}", kind),
    )


def _counted(conn: Connection, totals: bool) -> None:
    """What the rollups must hold, into this transaction's temporary tables (the
    rollups' own column types: what the triggers store); with ``totals``, migration
    0015's too."""
    for kind, want in _WANT.items():
        tables = [kind] + ([f"host_{kind}", f"transition_{kind}"] if totals else [])
        for t in tables:
            conn.execute(text(f"DROP TABLE IF EXISTS khod_want_{t}"))
            conn.execute(
                text(f"CREATE TEMP TABLE khod_want_{t} (LIKE fleet_rollup_{t}) ON COMMIT DROP")
            )
        conn.execute(text(f"INSERT INTO khod_want_{kind} {want}"))
        for stmt in _want_totals(kind) if totals else ():
            conn.execute(text(stmt))


def _compare(conn: Connection, totals: bool) -> dict[str, Any]:
    """The counts, and where the rollups differ: how many rows and machines, the first
    ``SAMPLE`` machines and keys (a fleet whose rollups all drifted is a million
    machines: never all of them in one line or one document)."""
    out: dict[str, Any] = {}
    sample: list[dict[str, Any]] = []
    diffs: list[str] = []
    for kind, keys in KEYS.items():
        total, rows = conn.execute(
            text(f"SELECT coalesce(sum({kind}), 0), count(*) FROM khod_want_{kind}")
        ).one()
        out[kind], out[f"{kind[:-1]}_rows"] = int(total), int(rows)
        d = _bucket_diff(kind)
        diffs.append(f"SELECT machine_id FROM ({d}) d{len(diffs)}")
        out[f"differing_{kind[:-1]}_rows"] = int(
            conn.execute(text(f"SELECT count(*) FROM ({d}) d")).scalar_one()
        )
        order = ", ".join(keys)
        for row in conn.execute(
            text(f"SELECT * FROM ({d}) d ORDER BY machine_id, {order} LIMIT {SAMPLE}")
        ).mappings():
            key = {k: row[k] for k in keys}
            where = {"table": f"fleet_rollup_{kind}", "how": row["how"], **key}
            sample.append(where | {"want": row["want"], "found": row["found"]})
    out["differing_host_rows"] = out["differing_transition_rows"] = 0
    for kind in KEYS if totals else ():
        d = _host_diff(kind)
        diffs.append(f"SELECT machine_id FROM ({d}) d{len(diffs)}")
        out["differing_host_rows"] += int(
            conn.execute(text(f"SELECT count(*) FROM ({d}) d")).scalar_one()
        )
        out["differing_transition_rows"] += int(
            conn.execute(text(f"SELECT count(*) FROM ({_transition_diff(kind)}) d")).scalar_one()
        )
    union = " UNION ".join(diffs)
    n, first = conn.execute(
        text(
            f"SELECT count(*), (SELECT array_agg(machine_id) FROM (SELECT machine_id FROM "
            f"({union}) f ORDER BY 1 LIMIT {SAMPLE}) s) FROM ({union}) m"
        )
    ).one()
    out["triggers_off"] = _triggers_off(conn, totals)
    out["agree"] = not n and not out["differing_transition_rows"] and not out["triggers_off"]
    out["differing_machines"] = int(n)
    out["machines"] = list(first or ())
    out["differing"] = sample[:SAMPLE]  # the first of each table's, boots first
    return out


# migration 0013's triggers: while one is disabled (or dropped), the rollups miss writes
TRIGGERS = (
    ("boots", "khod_rollup"),
    ("boots", "khod_rollup_delete"),
    ("boots", "khod_rollup_insert"),
    ("kexec_attempts", "khod_rollup"),
    ("kexec_attempts", "khod_rollup_insert"),
    ("pstore_records", "khod_rollup"),
    ("pstore_records", "khod_rollup_insert"),
)


TOTALS_TRIGGERS = (
    ("fleet_rollup_boots", "khod_totals_insert"),
    ("fleet_rollup_boots", "khod_totals_update"),
    ("fleet_rollup_boots", "khod_totals_delete"),
    ("fleet_rollup_attempts", "khod_totals_insert"),
    ("fleet_rollup_attempts", "khod_totals_update"),
    ("fleet_rollup_attempts", "khod_totals_delete"),
    ("fleet_rollup_pending_tx", "khod_totals_commit"),
    ("boots", "khod_totals_insert"),
    ("boots", "khod_totals_update"),
    ("boots", "khod_totals_delete"),
)  # migration 0015's


def _triggers_off(conn: Connection, totals: bool) -> list[str]:
    """The rollup triggers that do not fire on an ordinary write: disabled (``ALTER
    TABLE ... DISABLE TRIGGER``, for a bulk load), set to fire on replicas only, or
    gone. Rollups that agree with the rows today are wrong after the next push then."""
    firing = {
        (rel, name)
        for rel, name in conn.execute(
            text(
                "SELECT c.relname, t.tgname FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid "
                "WHERE c.relnamespace = to_regnamespace(current_schema()) "
                "AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A')"
            )
        )
    }
    every = TRIGGERS + (TOTALS_TRIGGERS if totals else ())
    return [f"{rel}.{name}" for rel, name in every if (rel, name) not in firing]


def _owner(conn: Connection, store: Store, action: str) -> None:
    """Only the rollups' owner (or a member of it): a host reads none of them, the
    reporting role writes none."""
    me, ok = conn.execute(
        text(
            "SELECT current_user, pg_has_role(current_user, c.relowner, 'USAGE') "
            "FROM pg_class c WHERE c.oid = 'fleet_rollup_boots'::regclass"
        )
    ).one()
    if not ok:
        raise KhodError(
            f"fleet rollups {action}: role {me} does not own the rollups of {store.location}: "
            "run it with the owner's --db"
        )


def check(store: Store) -> dict[str, Any]:
    """The rollups against the rows, counted again in one snapshot."""
    try:
        engine = store.writer.execution_options(isolation_level="REPEATABLE READ")
        with engine.connect() as conn:  # one snapshot; rolled back: nothing written
            _owner(conn, store, "--check")
            totals = keeps_totals(conn)
            _counted(conn, totals)
            return _compare(conn, totals)
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot check the rollups of {store.location}: {describe_db_error(e)}"
        ) from None


def rebuild(store: Store) -> dict[str, Any]:
    """Both rollup tables emptied and refilled from the rows, with the hosts' writes
    held off (SHARE locks) until it commits; what it replaced."""
    try:
        with store.writer.begin() as conn:
            _owner(conn, store, "--rebuild")
            # the tables in the order a push writes them: a push already under way
            # finishes first; a transaction that holds them longer ends the rebuild
            # (one line) instead of queueing every host's push behind it
            conn.execute(
                text("SELECT set_config('lock_timeout', :t, true)"),
                {"t": f"{LOCK_TIMEOUT_S * 1000}ms"},
            )
            conn.execute(text("LOCK TABLE boots, pstore_records, kexec_attempts IN SHARE MODE"))
            totals = keeps_totals(conn)
            kept = [
                f"fleet_rollup_{level}{kind}"
                for level in ("", *(("host_", "transition_") if totals else ()))
                for kind in KEYS
            ]
            conn.execute(text(f"LOCK TABLE {', '.join(kept)} IN EXCLUSIVE MODE"))
            _counted(conn, totals)
            before = _compare(conn, totals)
            written = {}
            for t in kept:  # the bucket rows first: their triggers pend changes to the rest
                conn.execute(text(f"DELETE FROM {t}"))
                name = t.removeprefix("fleet_rollup_")
                n = conn.execute(text(f"INSERT INTO {t} SELECT * FROM khod_want_{name}")).rowcount
                if name in KEYS:
                    written[f"{name[:-1]}_rows"] = int(n)
            if totals:  # those pending changes: counted in the refilled totals already
                for kind in KEYS:
                    conn.execute(text(f"DELETE FROM fleet_rollup_pending_{kind}"))
                conn.execute(text("DELETE FROM fleet_rollup_pending_tx"))
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot rebuild the rollups of {store.location}: {describe_db_error(e)}"
        ) from None
    return {
        **written,
        "boots": before["boots"],
        "attempts": before["attempts"],
        "changed_boot_rows": before["differing_boot_rows"],
        "changed_attempt_rows": before["differing_attempt_rows"],
        "changed_host_rows": before["differing_host_rows"],
        "changed_transition_rows": before["differing_transition_rows"],
        "machines": before["machines"],
        "differing_machines": before["differing_machines"],
    }
