"""``khoctl fleet retain --max-age D`` on a real fleet store (PostgreSQL and SQLite): the
boots older than D by the database's clock go with what hangs off them, each machine's
newest stays, and the age of a boot follows the order its machine recorded it in, not
a clock set back or years ahead; the report read from the rollups is still the report
counted from every row, and the rollups agree with the rows."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from khod.store.db import open_store
from tests.builders import boot_row, pstore_row, write_export
from tests.fleet.test_fleet import ctl, stderr_on_a_terminal
from tests.fleet.test_report import T0
from tests.fleet.test_report_rollup import random_fleet
from tests.fleet.test_rollups_admin import reports_agree

DAY = 86400
# a machine's boots, locked as a host may lock its own
MINE = "SELECT id FROM boots WHERE machine_id = %s FOR UPDATE"
# each row naming a boot, by the column that names it
HANGING = (
    ("blobs", "boot_pk"),
    ("events", "boot_pk"),
    ("pstore_records", "describes"),
    ("pstore_records", "collected_by"),
    ("kexec_attempts", "verdict_boot"),
    ("kexec_attempts", "from_boot"),
)
MAX_AGE = 200 * DAY


def blob(machine: str, boot: str, name: str) -> dict[str, Any]:
    data = f"{boot}/{name}".encode()
    return {
        "object": "blob", "machine_id": machine, "boot_id": boot, "direction": "in",
        "name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
        "data": base64.b64encode(data).decode(),
    }  # fmt: skip


def event(machine: str, boot: str, now: float) -> dict[str, Any]:
    return {
        "object": "event", "machine_id": machine, "boot_id": boot, "created_at": now,
        "kind": "parse-error", "source": "/sys/kernel/debug/kho/in/fdt", "severity": "error",
        "message": "truncated", "fingerprint": hashlib.sha256(boot.encode()).hexdigest(),
        "origin": "kho",
    }  # fmt: skip


def machine(name: str) -> str:
    return name.encode().hex().ljust(32, "0")[:32]


# machines whose clocks did what hosts' clocks do: (name, boot times in the order the
# host recorded them, in days before now (negative: ahead), the boots expected to go)
CLOCKS: list[tuple[str, list[int | None], set[int]]] = [
    ("set-back", [500, 100, 600, 10], {0}),  # the 3rd is as old as the 2nd: kept
    ("ahead-once", [500, -3000, 450, 300, 5], {0, 2, 3}),  # the boot ahead stays, ages none
    ("silent", [900, 800], {0}),  # the newest is kept, however old
    ("alone", [900], set()),
    ("untimed-first", [None, 700, None, 20], {1, 2}),  # no time before it: no age
    ("all-future", [-10, -20], set()),
]


def history(name: str, now: float, days: list[float | None]) -> list[dict[str, Any]]:
    """A machine's boots in the order it recorded them, ``days`` before ``now`` each
    (negative: ahead of the clock; None: no time)."""
    m = machine(name)
    return [
        boot_row(m, f"{m[:8]}-0000-4000-8000-{i:012x}", "7.3.4", None, 0)
        | {"seq": i + 1, "booted_at": None if d is None else int(now - d * DAY)}
        for i, d in enumerate(days)
    ]


def clock_fleet(now: float) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for name, days, _ in CLOCKS:
        m = machine(name)
        for i, d in enumerate(days):
            boot = f"{m[:8]}-0000-4000-8000-{i:012x}"
            t = None if d is None else int(now - d * DAY)
            objs.append(boot_row(m, boot, "7.3.4", None, 0, booted_at=t, seq=i + 1))
            objs.append(blob(m, boot, "fdt"))
            objs.append(event(m, boot, now))
            if i:
                prev = f"{m[:8]}-0000-4000-8000-{i - 1:012x}"
                objs.append(pstore_row(m, boot, prev, "Panic", salt=name))
    return objs


def shifted_random_fleet(now: float) -> list[dict[str, Any]]:
    """tests/fleet/test_report_rollup.py's random fleet (~650 days from T0, crash records,
    attempts of every verdict), moved so that it began 300 days ago: boots on both sides
    of the cutoff and some ahead of the clock."""
    _, judged = random_fleet(random.Random(20261206), hosts=10)
    delta = int(now - 300 * DAY) - T0
    for o in judged:
        if o["object"] == "boot" and o["booted_at"] is not None:
            o["booted_at"] += delta
        if o["object"] == "attempt":
            o["created_at"] += delta
    return judged


def expected_doomed(url: str, now: float) -> set[int]:
    """The rule worked out again in Python, from the rows: per machine in recorded order,
    a boot's age is the latest time up to it that is not ahead of ``now``; a boot goes
    when its age is before the cutoff, it is not ahead itself and not the newest."""
    store = open_store(url, create=False, migrate=False)
    try:
        with store.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, machine_id, booted_at FROM boots "
                    "ORDER BY machine_id, coalesce(seq, 0), id"
                )
            ).all()
    finally:
        store.dispose()
    by_machine: dict[str, list[tuple[int, float | None]]] = {}
    for pk, m, t in rows:
        by_machine.setdefault(m, []).append((pk, t))
    out: set[int] = set()
    for boots_ in by_machine.values():
        age: float | None = None
        for pk, t in boots_[:-1]:
            if t is not None and t <= now:
                age = t if age is None else max(age, t)
            if age is not None and age < now - MAX_AGE and (t is None or t <= now):
                out.add(pk)
    return out


def counts(url: str) -> dict[str, int]:
    store = open_store(url, create=False, migrate=False)
    try:
        with store.engine.connect() as conn:
            return {
                t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
                for t in ("boots", "blobs", "events", "pstore_records", "kexec_attempts")
            }
    finally:
        store.dispose()


def boot_ids(url: str) -> set[int]:
    store = open_store(url, create=False, migrate=False)
    try:
        with store.engine.connect() as conn:
            return set(conn.execute(text("SELECT id FROM boots")).scalars())
    finally:
        store.dispose()


def load(capsys: pytest.CaptureFixture[str], tmp: Path, url: str, objs: list[Any]) -> bool:
    rc, _, err = ctl(capsys, "import", str(write_export(tmp / "f.jsonl", objs)), "--db", url)
    assert rc == 0, err
    return True


def clock_db(
    pg_server: Any, tmp: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[str, str, set[int]]:
    """A new PostgreSQL database with ``clock_fleet``: its name, URL and the boots to go."""
    db = pg_server.create_database()
    url = pg_server.url(db)
    now = time.time()
    assert load(capsys, tmp, url, clock_fleet(now))
    return db, url, expected_doomed(url, now)


def retain(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> dict[str, Any]:
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", url, "--max-age", "200d", "--json", *argv)
    assert rc == 0, err
    return dict(json.loads(out))


@contextmanager
def holding(pg_server: Any, db: str, sql: str, *params: Any) -> Iterator[list[Any]]:
    """A session that runs ``sql`` (a lock: rows FOR UPDATE, a table) and holds what it
    took until the block ends (20 s at most: never a hang), with the fleet retain's lock
    timeout a second meanwhile; the rows ``sql`` returned."""
    import psycopg

    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={db} user=postgres"
    with psycopg.connect(dsn) as holder:
        holder.execute("SET idle_in_transaction_session_timeout = '20s'")
        cur = holder.execute(sql, params or None)
        yield cur.fetchall() if cur.description else []
        holder.rollback()


def count_batches(monkeypatch: Any) -> list[int]:
    """The transactions fleet retain tries (each a wait, when a lock holds it)."""
    from khod.fleet import retain as fleet_retain

    monkeypatch.setattr(fleet_retain, "LOCK_TIMEOUT_S", 1)
    tried: list[int] = []
    batch = fleet_retain._batch

    def counted(*a: Any, **k: Any) -> Any:
        tried.append(1)
        return batch(*a, **k)

    monkeypatch.setattr(fleet_retain, "_batch", counted)
    return tried


def test_old_boots_go_by_the_order_their_machine_recorded_them(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = time.time()
    objs = shifted_random_fleet(now) + clock_fleet(now)
    rc, _, err = ctl(
        capsys, "import", str(write_export(tmp_path / "f.jsonl", objs)), "--db", db_url
    )
    assert rc == 0, err
    before, ids = counts(db_url), boot_ids(db_url)
    want = expected_doomed(db_url, now + 3600)  # the command runs within the hour
    assert want == expected_doomed(db_url, now), "a boot within an hour of the cutoff"
    assert 20 < len(want) < len(ids) - 20  # both sides of the cutoff
    for name, _, gone in CLOCKS:  # the hand-made machines, by their boots' order
        m = machine(name)
        store = open_store(db_url, create=False, migrate=False)
        with store.engine.connect() as conn:
            seqs = {
                int(pk): int(s) - 1
                for pk, s in conn.execute(
                    text("SELECT id, seq FROM boots WHERE machine_id = :m"), {"m": m}
                )
            }
        store.dispose()
        assert {seqs[pk] for pk in want if pk in seqs} == gone, name

    dry = retain(capsys, db_url, "--dry-run")
    assert dry["dry_run"] is True and dry["deleted"]["boots"] == len(want)
    assert counts(db_url) == before  # nothing deleted
    done = retain(capsys, db_url, "--batch", "7")
    assert done["deleted"] == dry["deleted"]
    assert done["batches"] == -(-len(want) // 7)
    assert boot_ids(db_url) == ids - want
    after = counts(db_url)
    assert {t: before[t] - after[t] for t in before} == done["deleted"]
    assert done["deleted"]["blobs"] >= sum(1 for name, _, g in CLOCKS for _ in g)
    assert done["deleted"]["pstore_records"] and done["deleted"]["kexec_attempts"]
    # nothing hangs off a deleted boot; what named one forgot it
    store = open_store(db_url, create=False, migrate=False)
    with store.engine.connect() as conn:
        for t, c in HANGING:
            left = conn.execute(
                text(
                    f"SELECT count(*) FROM {t} t LEFT JOIN boots b ON b.id = t.{c} "
                    f"WHERE t.{c} IS NOT NULL AND b.id IS NULL"
                )
            )
            assert left.scalar_one() == 0, (t, c)
    store.dispose()
    assert reports_agree(capsys, db_url)
    if db_url.startswith("postgresql"):
        rc, out, err = ctl(capsys, "fleet", "rollups", "--check", "--db", db_url)
        assert rc == 0, out + err
    again = retain(capsys, db_url)
    assert again["deleted"]["boots"] == 0 and again["machines"] == 0


def test_a_fleet_silent_for_longer_than_max_age_is_refused_without_force(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing in the fleet booted within --max-age of the clock: every machine it would
    delete from is silent since the cutoff, none alive. The clock (or every host) is
    suspect, so nothing goes until the operator says --force; --dry-run counts all the
    same, with a warning."""
    now = time.time()
    objs = history("old", now, [700, 600, 500])
    assert load(capsys, tmp_path, db_url, objs)
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", db_url, "--max-age", "200d")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "fleet retain: 1 machines of " in err, err
    assert "have not booted since " in err and "more than the 0 that have" in err
    assert "is that clock right? Nothing deleted (--force deletes by it)" in err
    assert counts(db_url)["boots"] == 3
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", db_url, "--max-age", "200d", "--dry-run")
    assert rc == 0 and out.startswith("would delete 2 boots of 1 machines"), out + err
    assert err.startswith("khoctl: warning: fleet retain: 1 machines of ") and "--force" not in err
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", db_url, "--max-age", "200d", "--force")
    assert rc == 0, err
    assert out.startswith("deleted 2 boots of 1 machines older than ")
    assert counts(db_url)["boots"] == 1


def test_one_host_cannot_vouch_for_a_clock_ahead(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The database's clock jumped years ahead: 20 machines' histories would go. One
    host (a machine of its own: it writes no other) with a boot dated yesterday made the
    first form of the check (the fleet's newest boot within --max-age) pass, and 80 boots
    went; machines are counted now, and one alive is not 20 silent."""
    now = time.time()
    objs = [o for h in range(20) for o in history(f"old{h}", now, [700, 600, 500, 400, 300])]
    objs += history("fresh", now, [1])
    assert load(capsys, tmp_path, db_url, objs)
    before = counts(db_url)
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", db_url, "--max-age", "200d", "--dry-run")
    assert rc == 0 and out.startswith("would delete 80 boots of 20 machines"), out + err
    assert "20 machines of " in err and "more than the 1 that have" in err
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", db_url, "--max-age", "200d")
    assert rc == 1 and out == "" and "more than the 1 that have" in err, out + err
    assert counts(db_url) == before


def test_only_the_owner_deletes(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A role other than the owner: row-level security hides the rows from it, so it
    would find nothing to delete and say so; it is told, in one line, that it may not,
    and every row is still there, with or without a DELETE grant."""
    db = pg_server.create_database()
    url = pg_server.url(db)
    now = time.time()
    assert load(capsys, tmp_path, url, clock_fleet(now))
    before = counts(url)
    pg_server.psql(
        "CREATE ROLE khod_test_reader LOGIN; GRANT SELECT ON ALL TABLES IN SCHEMA public "
        "TO khod_test_reader",
        db,
    )
    reader = url.replace("postgres@", "khod_test_reader@", 1)
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", reader, "--max-age", "200d")
    assert rc == 1 and out == "", out + err
    assert err.count("\n") == 1, err
    assert "fleet retain: role khod_test_reader may not delete from" in err
    assert "row-level security" in err and "owner role" in err
    pg_server.psql("GRANT DELETE ON ALL TABLES IN SCHEMA public TO khod_test_reader", db)
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", reader, "--max-age", "200d")
    assert rc == 1 and out == "" and err.count("\n") == 1, out + err
    assert "may not delete" in err
    assert counts(url) == before


@pytest.mark.parametrize(
    ("age", "said"),
    [
        ("400", "expected a duration with its unit like '400d', got '400'"),
        ("0", "expected a duration with its unit like '400d', got '0'"),
        ("0d", "'0d' is less than a day: every boot but each machine's newest would go"),
        ("12h", "'12h' is less than a day: every boot but each machine's newest would go"),
    ],
)
def test_an_age_without_its_unit_or_under_a_day_deletes_nothing(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], age: str, said: str
) -> None:
    """``400`` (days meant, seconds read) or ``0`` (no limit in khod.toml) would delete
    every boot but each machine's newest: a usage error, nothing read or deleted."""
    assert load(capsys, tmp_path, sqlite_url, clock_fleet(time.time()))
    before = counts(sqlite_url)
    with pytest.raises(SystemExit) as exit_:
        ctl(capsys, "fleet", "retain", "--db", sqlite_url, "--max-age", age)
    out, err = capsys.readouterr()
    assert (exit_.value.code, out) == (2, "")
    assert err.splitlines()[-1] == f"khoctl fleet retain: error: argument --max-age: {said}"
    assert counts(sqlite_url) == before


def test_a_database_lost_midway_says_what_stayed_deleted(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The connection is cut after the first batch committed (the server ends the
    session, as a restart would): one line that says how many boots are gone for good;
    the rollups still agree with what is left, and the next run deletes the rest."""
    db = pg_server.create_database()
    url = pg_server.url(db)
    now = time.time()
    assert load(capsys, tmp_path, url, clock_fleet(now))
    want, ids = expected_doomed(url, now), boot_ids(url)
    # the second batch's delete of its boots ends the session (a statement trigger: the
    # foreign keys' cascades delete nothing from boots)
    pg_server.psql(
        "CREATE SEQUENCE cut_seq; CREATE FUNCTION cut() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN IF nextval('cut_seq') > 1 THEN PERFORM pg_terminate_backend(pg_backend_pid()); "
        "END IF; RETURN NULL; END $$; "
        "CREATE TRIGGER cut BEFORE DELETE ON boots FOR EACH STATEMENT EXECUTE FUNCTION cut()",
        db,
    )
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", url, "--max-age", "200d", "--batch", "1")
    assert rc == 1 and out == "" and err.count("\n") == 1, out + err
    assert "fleet retain: cannot delete from" in err
    assert "(after 1 boots deleted in 1 batches, which stay deleted)" in err
    assert len(want) > 1 and len(boot_ids(url)) == len(ids) - 1
    pg_server.psql("DROP TRIGGER cut ON boots", db)
    rc, out, err = ctl(capsys, "fleet", "rollups", "--check", "--db", url)
    assert rc == 0, out + err
    done = retain(capsys, url)  # the rest at the next run
    assert done["deleted"]["boots"] == len(want) - 1


def test_a_push_in_flight_beside_retention_of_its_machine(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host's push (a new boot and the crash record of the boot before it, not
    committed yet) while the owner's retention deletes the same machine's old boots: the
    retention waits for the push's lock, both commit, nothing of the push is lost, and
    the rollups and the report agree with the rows."""
    import threading

    import psycopg

    from khod.fleet import retain as fleet_retain

    db = pg_server.create_database()
    url = pg_server.url(db)
    now = time.time()
    m = machine("pushing")
    b = [f"{m[:8]}-0000-4000-8000-{i:012x}" for i in range(4)]
    objs = [
        boot_row(m, b[0], "7.0", None, int(now - 500 * DAY)) | {"seq": 1},
        boot_row(m, b[1], "7.1", "7.0", int(now - 400 * DAY)) | {"seq": 2},
        boot_row(m, b[2], "7.1", "7.0", int(now - DAY)) | {"seq": 3},
    ]
    assert load(capsys, tmp_path, url, objs)
    new = boot_row(m, b[3], "7.1", "7.0", int(now)) | {"seq": 4}
    crash = pstore_row(m, b[3], b[2], "Panic", salt="push")
    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={db} user=postgres"
    with psycopg.connect(dsn) as host, psycopg.connect(dsn, autocommit=True) as watch:
        cols = [c for c in new if c not in ("object", "machine_id", "boot_id", "seq")]
        host.execute(
            f"INSERT INTO boots (machine_id, boot_id, seq, {', '.join(cols)}) "
            f"SELECT machine_id, %s, 4, {', '.join(cols)} FROM boots WHERE boot_id = %s",
            (b[3], b[2]),
        )
        host.execute(
            "INSERT INTO pstore_records (machine_id, sha256, collected_by, describes, location,"
            " path, name, type, backend, reason, compressed, inflate_status, size, raw,"
            " dump_key, collected_at) SELECT %s, %s, n.id, d.id, 'pstore', 'p', 'p', 'dmesg',"
            " 'efi', 'Panic', false, 'plain', 1, '\\x00', 'k', 0 FROM boots n, boots d"
            " WHERE n.boot_id = %s AND d.boot_id = %s",
            (m, crash["sha256"], b[3], b[2]),
        )
        store = open_store(url, create=False, migrate=False)
        done: list[Any] = []

        def retention() -> None:
            try:
                done.append(fleet_retain.retain(store, MAX_AGE))
            except BaseException as e:  # reported by the assertion below
                done.append(e)

        worker = threading.Thread(target=retention)
        worker.start()
        waited = False
        for _ in range(600):  # until a delete waits on the push (a lock), or it ends
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND wait_event_type = 'Lock'",
                (db,),
            ).fetchone()
            if done or (row and row[0]):
                waited = not done
                break
            threading.Event().wait(0.05)
        host.commit()
        worker.join(60)
        store.dispose()
    assert len(done) == 1 and isinstance(done[0], fleet_retain.Outcome), done
    assert waited, "the retention did not wait for the push"
    assert done[0].deleted["boots"] == 2  # b0, b1: b2 booted a day ago, b3 is the newest
    left = {r for r in pg_server.psql("SELECT boot_id FROM boots", db).split()}
    assert left == {b[2], b[3]}
    assert pg_server.psql("SELECT count(*) FROM pstore_records", db).strip() == "1"
    rc, out, err = ctl(capsys, "fleet", "rollups", "--check", "--db", url)
    assert rc == 0, out + err
    assert reports_agree(capsys, url)


def test_a_batch_larger_than_a_statement_takes(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """PostgreSQL's protocol takes 65,535 parameters a statement: a --batch of 70,000
    boots failed in one line before deleting anything (``number of parameters must be
    between 0 and 65535``). A batch's statements now name at most PARAMS ids each, in
    one transaction: split small here, the same boots go."""
    from khod.fleet import retain as fleet_retain

    db = pg_server.create_database()
    url = pg_server.url(db)
    now = time.time()
    assert load(capsys, tmp_path, url, clock_fleet(now))
    want, ids = expected_doomed(url, now), boot_ids(url)
    store = open_store(url, create=False, migrate=False)
    try:
        no_such = list(range(10**9, 10**9 + 70_000))
        assert fleet_retain._batch(store, no_such, dry_run=False) == dict.fromkeys(
            fleet_retain.TABLES, 0
        )
        monkeypatch.setattr(fleet_retain, "PARAMS", 2)
        out = fleet_retain.retain(store, MAX_AGE, batch=5)
    finally:
        store.dispose()
    assert out.deleted["boots"] == len(want) > 5 and out.batches == -(-len(want) // 5)
    assert boot_ids(url) == ids - want
    assert out.deleted["blobs"] == out.deleted["events"] == len(want)


def test_a_progress_line_on_a_terminal_only(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A first retention of a large database takes a while: on a terminal, a line of
    the boots gone so far against those found, cleared at the end; not otherwise."""
    import subprocess
    import sys

    assert load(capsys, tmp_path, sqlite_url, clock_fleet(time.time()))
    khoctl_bin = str(Path(sys.executable).parent / "khoctl")
    argv = [khoctl_bin, "fleet", "retain", "--db", sqlite_url, "--max-age", "200d"]
    r, text = stderr_on_a_terminal([*argv, "--batch", "1", "--dry-run"])
    assert r.returncode == 0 and r.stdout.startswith("would delete 7 boots of 4 machines")
    assert "\rfleet retain [" in text and " rows, " in text
    assert text.endswith("\r\x1b[K")  # cleared at the end
    r = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("deleted 7 boots")


def test_a_batch_held_by_a_lock_is_left_and_the_rest_go(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """A session holds one doomed boot's row (a host may lock its own boots: it holds
    UPDATE on their warnings) and never lets go. Its batch gives up after the lock
    timeout (a second here), is run again machine by machine, and that machine's boots
    are left for the next run; the others go; exit 1 with one line that says so."""
    count_batches(monkeypatch)
    db, url, want = clock_db(pg_server, tmp_path, capsys)
    held = min(want)
    with holding(pg_server, db, "SELECT 1 FROM boots WHERE id = %s FOR UPDATE", held):
        rc, out, err = ctl(
            capsys, "fleet", "retain", "--db", url, "--max-age", "200d", "--batch", "1",
            "--json",
        )  # fmt: skip
    said = json.loads(out)
    store = open_store(url, create=False, migrate=False)
    with store.engine.connect() as conn:
        m = conn.execute(text("SELECT machine_id FROM boots WHERE id = :i"), {"i": held}).one()[0]
        mine = set(
            conn.execute(text("SELECT id FROM boots WHERE machine_id = :m"), {"m": m}).scalars()
        )
    store.dispose()
    assert rc == 1 and (said["held"], said["held_machines"]) == (len(want & mine), 1)
    assert said["deleted"]["boots"] == len(want - mine)
    assert err.count("\n") == 1 and f"{len(want & mine)} boots left for the next run" in err
    assert "a session held rows of 1 machines over 1 s" in err
    assert boot_ids(url) & want == want & mine
    rc, out, err = ctl(capsys, "fleet", "rollups", "--check", "--db", url)
    assert rc == 0, out + err
    assert retain(capsys, url)["deleted"]["boots"] == len(want & mine)  # the next run


def test_a_batch_aborted_for_a_deadlock_is_run_again(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """PostgreSQL aborts a batch for a deadlock (with a push, say): it is run again, up
    to three times, and counted in ``retried``; a fourth in a row ends the command in one
    line."""
    db, url, want = clock_db(pg_server, tmp_path, capsys)
    pg_server.psql(
        "CREATE SEQUENCE dl_seq; CREATE TABLE dl_limit (n bigint); INSERT INTO dl_limit "
        "VALUES (2); CREATE FUNCTION dl() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF nextval('dl_seq') <= (SELECT n FROM dl_limit) THEN RAISE EXCEPTION 'deadlock "
        "detected (made by the test)' USING ERRCODE = 'deadlock_detected'; END IF; "
        "RETURN NULL; END $$; CREATE TRIGGER dl BEFORE DELETE ON boots FOR EACH STATEMENT "
        "EXECUTE FUNCTION dl()",
        db,
    )
    said = retain(capsys, url)
    assert said["retried"] == 2 and said["deleted"]["boots"] == len(want)
    pg_server.psql("SELECT setval('dl_seq', 1, false); UPDATE dl_limit SET n = 1000", db)
    assert load(capsys, tmp_path, url, clock_fleet(time.time()))  # the deleted boots again
    before = counts(url)
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", url, "--max-age", "200d")
    assert rc == 1 and out == "" and err.count("\n") == 1, out + err
    assert "deadlock detected (made by the test)" in err
    assert counts(url) == before  # nothing deleted
    assert pg_server.psql("SELECT last_value FROM dl_seq", db).strip() == "4"


def test_finding_the_boots_reads_the_index_of_boot_times(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The machines with an old boot are found through a range of ``ix_boots_booted_at``:
    its entries before the cutoff, no more. The times were bound as floats at first:
    PostgreSQL cast every row's bigint time to compare it, so no range of the index
    could serve, and the whole table (or, with sequential scans off, the whole index)
    was read: a daily run at 10^6 hosts read every boot."""
    db = pg_server.create_database()
    url = pg_server.url(db)
    now = time.time()
    m = machine("set-back")  # 500, 100, 600 and 10 days old: two before the cutoff
    objs = [o for o in clock_fleet(now) if o.get("machine_id") == m]
    assert load(capsys, tmp_path, url, objs)
    pg_server.psql(f"ALTER DATABASE {db} SET enable_seqscan = off", db)
    q = (
        "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes "
        "WHERE indexrelname = 'ix_boots_booted_at'"
    )

    def read() -> tuple[int, int]:
        scans, tuples = pg_server.psql(q, db).strip().split("|")
        return int(scans), int(tuples)

    before = read()
    assert retain(capsys, url, "--dry-run")["deleted"]["boots"] == 1
    for _ in range(100):  # the server's statistics arrive within a second or so
        if read() != before:
            break
        time.sleep(0.1)
    after = read()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)


def test_it_names_its_database_or_runs_not(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """Without --db or KHOD_FLEET_DB it refuses in one line, whatever khod.toml or
    KHOD_DB (a host's own store, for every other command) name: it is never run by
    accident on a host's store; an empty --db is an error, not a fallback. KHOD_FLEET_DB,
    as the unit gives it (in the environment, not on a command line other users can
    read), names it."""
    assert load(capsys, tmp_path, sqlite_url, clock_fleet(time.time()))
    before = counts(sqlite_url)
    conf = tmp_path / "khod.toml"
    conf.write_text(f'[store]\ndb = "{sqlite_url}"\n')
    monkeypatch.setenv("KHOD_DB", sqlite_url)
    monkeypatch.delenv("KHOD_FLEET_DB", raising=False)
    rc, out, err = ctl(capsys, "fleet", "retain", "--config", str(conf), "--max-age", "200d")
    assert rc == 1 and out == "" and err.count("\n") == 1, out + err
    assert "fleet retain: name the fleet database with --db URL or KHOD_FLEET_DB" in err
    monkeypatch.setenv("KHOD_FLEET_DB", sqlite_url)
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", "", "--max-age", "200d")
    assert rc == 1 and out == "" and "fleet retain: --db is empty" in err, out + err
    assert counts(sqlite_url) == before
    rc, out, err = ctl(capsys, "fleet", "retain", "--max-age", "200d")
    assert rc == 0 and out.startswith("deleted 7 boots of 4 machines"), out + err


def test_a_table_lock_leaves_the_rest_without_waiting(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """A lock on the whole table (``fleet rollups --rebuild``'s SHARE lock on boots, a
    long migration): every batch would wait the lock timeout in turn (a first retention
    of 10^7 boots, 2,000 batches: 33 hours). A batch held, a look at the tables without
    waiting finds the lock, and the rest are left for the next run."""
    tried = count_batches(monkeypatch)
    db = pg_server.create_database()
    url = pg_server.url(db)
    assert load(capsys, tmp_path, url, clock_fleet(time.time()))
    before = counts(url)
    with holding(pg_server, db, "LOCK TABLE boots IN SHARE MODE"):
        rc, out, err = ctl(capsys, "fleet", "retain", "--db", url, "--max-age", "200d",
                           "--batch", "1", "--json")  # fmt: skip
    said = json.loads(out)
    assert rc == 1 and (said["held"], said["table_locked"], said["batches"]) == (7, True, 0)
    assert "7 boots left for the next run: a lock on a whole table" in err, err
    assert len(tried) == 1  # one lock timeout waited, then a look without waiting
    assert counts(url) == before


def test_machines_that_reboot_rarely_pass_the_clocks_check(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """20 servers patched in one campaign every 270 days (their boot 400 days old goes,
    the one 130 days old stays) beside 5 machines of a CI pool, none booted in the last
    month: a right clock. A first form of the check counted machines left with their
    newest boot only against those booted in the last 30 days and refused this every day
    until the next campaign; what counts now is whether a machine booted since the
    cutoff."""
    now = time.time()
    objs = [o for h in range(20) for o in history(f"srv{h}", now, [400.5, 130.5])]
    objs += [o for h in range(5) for o in history(f"ci{h}", now, [40])]
    assert load(capsys, tmp_path, db_url, objs)
    said = retain(capsys, db_url, "--max-age", "400d")
    assert said["deleted"]["boots"] == 20 and (said["silent"], said["alive"]) == (0, 0)


def test_a_clock_years_ahead_is_caught_with_untimed_or_future_boots_kept(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every boot older than --max-age, as a clock years ahead sees them, but each
    machine keeps a boot besides its newest (one without a time first, or one ahead of
    the clock): none is left with its newest only, so a first form of the check
    (machines left so) saw nothing and deleted 160 of 180 boots. Silent machines are
    counted whatever they keep."""
    now = time.time()
    objs = [
        o
        for h in range(10)
        for o in history(f"jump{h}", now, [None if h % 2 else -9000, 900, 800, 700])
    ]
    assert load(capsys, tmp_path, db_url, objs)
    before = counts(db_url)
    rc, out, err = ctl(capsys, "fleet", "retain", "--db", db_url, "--max-age", "200d")
    assert rc == 1 and out == "" and "10 machines of " in err and "than the 0 that have" in err
    assert counts(db_url) == before


def test_a_host_holding_its_rows_holds_up_no_other_machine(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """A host locks its own boots (it may: it holds UPDATE on their warnings) across the
    batches that reach them. A first form gave up after three held batches in a row,
    taking them for a lock on a table, and every machine after that host kept its old
    boots on every run. A held batch is run again machine by machine: that host's boots
    wait, the others go."""
    count_batches(monkeypatch)
    db, url, want = clock_db(pg_server, tmp_path, capsys)
    hostile = machine("ahead-once")  # 3 old boots, first in machine order
    with holding(pg_server, db, MINE, hostile) as locked:
        rc, out, err = ctl(capsys, "fleet", "retain", "--db", url, "--max-age", "200d",
                           "--batch", "1", "--json")  # fmt: skip
    said = json.loads(out)
    mine = {i for (i,) in locked}
    assert rc == 1 and (said["held"], said["held_machines"]) == (3, 1), out + err
    assert said["deleted"]["boots"] == len(want - mine) == 4
    assert boot_ids(url) & want == want & mine


def test_a_held_machine_inside_a_batch_of_several(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """One batch over every machine, one machine's rows held: the batch is run again
    machine by machine, that machine's boot waits, the six others go."""
    count_batches(monkeypatch)
    db, url, _ = clock_db(pg_server, tmp_path, capsys)
    with holding(pg_server, db, MINE, machine("set-back")):
        rc, out, err = ctl(capsys, "fleet", "retain", "--db", url, "--max-age", "200d",
                           "--batch", "10", "--json")  # fmt: skip
    said = json.loads(out)
    assert rc == 1 and (said["held"], said["held_machines"], said["table_locked"]) == (
        1, 1, False,
    ), out + err  # fmt: skip
    assert said["deleted"]["boots"] == 6 and said["batches"] == 3  # the other 3 machines


@pytest.mark.parametrize("lock", ["fleet_rollup_boots IN ACCESS EXCLUSIVE MODE",
                                  "fleet_rollup_locks IN EXCLUSIVE MODE"])  # fmt: skip
def test_a_lock_on_a_table_the_rollup_triggers_write(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any,
    lock: str,
) -> None:  # fmt: skip
    """A delete writes the rollups too: a lock on one of their tables (a migration's
    index, a VACUUM FULL) held every machine in turn, each taken for one whose rows a
    session held (every machine waited the lock timeout, then 'a session held rows of 4
    machines'). The look without waiting covers every table a batch writes."""
    tried = count_batches(monkeypatch)
    db, url, _ = clock_db(pg_server, tmp_path, capsys)
    with holding(pg_server, db, f"LOCK TABLE {lock}"):
        rc, out, err = ctl(capsys, "fleet", "retain", "--db", url, "--max-age", "200d",
                           "--batch", "10", "--json")  # fmt: skip
    said = json.loads(out)
    assert rc == 1 and (said["held"], said["held_machines"], said["table_locked"]) == (
        7, 0, True,
    ), out + err  # fmt: skip
    assert "a lock on a whole table" in err and len(tried) == 1


def test_sqlite_locked_past_its_busy_timeout(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """SQLite locks the whole database: a writer that does not let go past the busy
    timeout (half a second here) leaves every boot for the next run, in one line."""
    import sqlite3

    from khod.store import db as store_db

    assert load(capsys, tmp_path, sqlite_url, clock_fleet(time.time()))
    before = counts(sqlite_url)
    monkeypatch.setattr(store_db, "BUSY_TIMEOUT_MS", 500)
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        rc, out, err = ctl(
            capsys, "fleet", "retain", "--db", sqlite_url, "--max-age", "200d", "--json"
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    said = json.loads(out)
    assert rc == 1 and (said["held"], said["table_locked"], said["batches"]) == (7, True, 0)
    assert "the database stayed locked past its busy timeout" in err
    assert counts(sqlite_url) == before
