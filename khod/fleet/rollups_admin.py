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
from khod.fleet.rollup import THROUGH_B
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


def _diff(kind: str) -> str:
    """The keys where the counted rows (w) and the rollups (r) differ, and how."""
    keys, counts = KEYS[kind], COUNTS[kind]
    on = " AND ".join(f"w.{k} = r.{k}" for k in keys)
    cols = ", ".join(f"coalesce(w.{k}, r.{k}) AS {k}" for k in keys)
    wv, rv = (", ".join(f"{t}.{c}" for c in counts) for t in "wr")
    return f"""
SELECT CASE WHEN r.machine_id IS NULL THEN 'missing' WHEN w.machine_id IS NULL THEN 'extra'
            ELSE 'different' END AS how, {cols},
       CASE WHEN w.machine_id IS NOT NULL THEN json_build_object(
         {", ".join(f"'{c}', w.{c}" for c in counts)}) END AS want,
       CASE WHEN r.machine_id IS NOT NULL THEN json_build_object(
         {", ".join(f"'{c}', r.{c}" for c in counts)}) END AS found
FROM khod_want_{kind} w FULL JOIN fleet_rollup_{kind} r ON {on}
WHERE w.machine_id IS NULL OR r.machine_id IS NULL OR ({wv}) IS DISTINCT FROM ({rv})
"""


def _counted(conn: Connection) -> None:
    """What the rollups must hold, into this transaction's temporary tables (the
    rollups' own column types: what the triggers store)."""
    for kind, want in _WANT.items():
        conn.execute(text(f"DROP TABLE IF EXISTS khod_want_{kind}"))
        conn.execute(
            text(f"CREATE TEMP TABLE khod_want_{kind} (LIKE fleet_rollup_{kind}) ON COMMIT DROP")
        )
        conn.execute(text(f"INSERT INTO khod_want_{kind} {want}"))


def _compare(conn: Connection) -> dict[str, Any]:
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
        d = _diff(kind)
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
    union = " UNION ".join(diffs)
    n, first = conn.execute(
        text(
            f"SELECT count(*), (SELECT array_agg(machine_id) FROM (SELECT machine_id FROM "
            f"({union}) f ORDER BY 1 LIMIT {SAMPLE}) s) FROM ({union}) m"
        )
    ).one()
    out["triggers_off"] = _triggers_off(conn)
    out["agree"] = not n and not out["triggers_off"]
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


def _triggers_off(conn: Connection) -> list[str]:
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
    return [f"{rel}.{name}" for rel, name in TRIGGERS if (rel, name) not in firing]


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
            _counted(conn)
            return _compare(conn)
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
            conn.execute(
                text("LOCK TABLE fleet_rollup_boots, fleet_rollup_attempts IN EXCLUSIVE MODE")
            )
            _counted(conn)
            before = _compare(conn)
            written = {}
            for kind in KEYS:
                conn.execute(text(f"DELETE FROM fleet_rollup_{kind}"))
                n = conn.execute(
                    text(f"INSERT INTO fleet_rollup_{kind} SELECT * FROM khod_want_{kind}")
                ).rowcount
                written[f"{kind[:-1]}_rows"] = int(n)
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
        "machines": before["machines"],
        "differing_machines": before["differing_machines"],
    }
