"""``khoctl fleet rollups --check | --rebuild`` on a real PostgreSQL: the rollups the
triggers keep agree with the rows counted again, and a rebuild of them changes no row
(the copy of migration 0013's backfill and the triggers count alike); rollups that
drifted for real (an import with the triggers disabled, a delete with them disabled,
an owner's UPDATE of a rollup row) are found, named by machine, and rebuilt until the
report from them is the report counted from every row again. Only the owner may run
it; SQLite keeps no rollups."""

from __future__ import annotations

import json
import random
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from khod.fleet import rollups_admin
from khod.store.db import open_store
from khod.store.retention import retention
from tests.builders import boot_row, write_export
from tests.fleet.test_fleet import ctl
from tests.fleet.test_report import T0, fleet
from tests.fleet.test_report_rollup import random_fleet
from tests.pgserver import PostgresServer

ROLLUPS = ("fleet_rollup_boots", "fleet_rollup_attempts")


def rollup_rows(pg: PostgresServer, db: str) -> dict[str, list[str]]:
    """Every rollup row, as the server renders it, in key order."""
    return {
        t: pg.psql(f"SELECT row_to_json(r)::text FROM {t} r ORDER BY 1", db).splitlines()
        for t in ROLLUPS
    }


def new_fleet(pg: PostgresServer, tmp_path: Path, capsys: Any, objs: list[Any]) -> tuple[str, str]:
    db = pg.create_database()
    url = pg.url(db)
    rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / "f.jsonl", objs)), "--db", url)
    assert rc == 0, err
    return db, url


def reports_agree(capsys: Any, url: str) -> bool:
    args = ("report", "transitions", "--db", url, "--json", "--include-cold", "--window", "0s")
    rc, rolled, err = ctl(capsys, *args)
    assert rc == 0, err
    rc, full, err = ctl(capsys, *args, "--recompute")
    assert rc == 0, err
    assert json.loads(full)
    return bool(json.loads(rolled) == json.loads(full))


def test_trigger_kept_rollups_agree_and_a_rebuild_changes_no_row(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A random fleet through imports, late verdicts, retention and a re-sync: what the
    triggers kept is what the rows say, row for row."""
    rnd = random.Random(28)
    open_, judged = random_fleet(rnd, hosts=10)
    db, url = new_fleet(pg_server, tmp_path, capsys, open_)
    rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / "j.jsonl", judged)), "--db", url)
    assert rc == 0, err
    store = open_store(url, create=False)
    try:
        rows = pg_server.psql("SELECT machine_id, max(id) FROM boots GROUP BY 1", db)
        newest = {m: int(i) for m, i in (line.split("|") for line in rows.splitlines())}
        for m in sorted(newest)[::2]:
            assert retention(store, m, newest[m], max_boots=6, max_age=0, max_bytes=0).deleted
    finally:
        store.dispose()
    pg_server.psql("UPDATE boots SET release = '7.9', warnings = 2 WHERE id % 5 = 0", db)
    known = int(
        pg_server.psql(
            "SELECT count(*) FROM boots WHERE kind <> 'kexec' OR previous_release IS NOT NULL", db
        )
    )
    rc, out, err = ctl(capsys, "fleet", "rollups", "--db", url)
    assert (rc, err) == (0, "")
    assert out.startswith(f"rollups agree with {known} boots and ") and out.count("\n") == 1
    before = rollup_rows(pg_server, db)
    assert before[ROLLUPS[0]] and before[ROLLUPS[1]]
    rc, out, err = ctl(capsys, "fleet", "rollups", "--rebuild", "--db", url, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["agree"] and res["rebuilt"]["changed_boot_rows"] == 0
    assert res["rebuilt"]["changed_attempt_rows"] == 0 and res["rebuilt"]["machines"] == []
    assert res["rebuilt"]["boot_rows"] == len(before[ROLLUPS[0]])
    assert rollup_rows(pg_server, db) == before


def test_drifted_rollups_are_named_and_rebuilt(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objs = fleet()
    db, url = new_fleet(pg_server, tmp_path, capsys, objs)
    machines = sorted({o["machine_id"] for o in objs if "machine_id" in o})
    loaded, deleted, edited = machines[0], machines[1], machines[2]
    # a bulk load with the triggers off: one more 7.0 -> 7.1 boot of `loaded`
    pg_server.psql("ALTER TABLE boots DISABLE TRIGGER USER", db)
    more = [boot_row(loaded, str(uuid.UUID(int=7)), "7.1", "7.0", T0 + 5 * 86400)]
    rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / "m.jsonl", more)), "--db", url)
    assert rc == 0, err
    # a fix-up with them off: a boot of `deleted` gone
    pg_server.psql(
        f"DELETE FROM boots WHERE id = (SELECT max(id) FROM boots WHERE machine_id = '{deleted}' "
        "AND kind = 'kexec')", db,
    )  # fmt: skip
    pg_server.psql("ALTER TABLE boots ENABLE TRIGGER USER", db)
    # the owner's hand on the rollups: a row changed, one of a machine with no boots
    pg_server.psql(
        f"UPDATE fleet_rollup_attempts SET landed = landed + 1 WHERE machine_id = '{edited}'", db
    )
    ghost = "f" * 32
    pg_server.psql(
        "INSERT INTO fleet_rollup_boots VALUES "
        f"(0, false, '6.0', '6.1', '{ghost}', 5, 5, 5, 0, 0, 0, 0)", db,
    )  # fmt: skip
    named = sorted((loaded, deleted, edited, ghost))
    assert not reports_agree(capsys, url)  # the drift is one a reader sees
    rc, out, err = ctl(capsys, "fleet", "rollups", "--check", "--db", url)
    assert (rc, err) == (1, "")
    assert out.startswith("rollups differ: ") and out.count("\n") == 1
    assert f"(machines {', '.join(named)}: run khoctl fleet rollups --rebuild)\n" in out
    rc, out, err = ctl(capsys, "fleet", "rollups", "--db", url, "--json")
    res = json.loads(out)
    assert rc == 1 and not res["agree"] and res["machines"] == named
    assert res["differing_boot_rows"] >= 3 and res["differing_attempt_rows"] >= 1
    seen = {(d["table"], d["machine_id"], d["how"]) for d in res["differing"]}
    assert ("fleet_rollup_attempts", edited, "different") in seen
    assert ("fleet_rollup_boots", ghost, "extra") in seen
    rc, out, err = ctl(capsys, "fleet", "rollups", "--rebuild", "--db", url)
    assert rc == 0, err
    first, second = out.splitlines()
    assert first.startswith("rebuilt the rollups: ") and "had differed" in first
    assert second.startswith("rollups agree with ")
    assert reports_agree(capsys, url)
    rc, out, _ = ctl(capsys, "fleet", "rollups", "--db", url)
    assert rc == 0 and out.startswith("rollups agree with ")


def test_a_rebuild_waits_for_a_push_under_way_and_counts_it(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A push that has written boots but not committed when the rebuild starts: the
    rebuild waits for it (its SHARE lock), then counts its boots; none is lost."""
    import psycopg

    db, url = new_fleet(pg_server, tmp_path, capsys, fleet())
    known = "SELECT count(*) FROM boots WHERE kind <> 'kexec' OR previous_release IS NOT NULL"
    n0 = int(pg_server.psql(known, db))
    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={db} user=postgres"
    out: dict[str, Any] = {}
    store = open_store(url, create=False, migrate=False)
    with psycopg.connect(dsn) as push, psycopg.connect(dsn, autocommit=True) as watch:
        push.execute(  # a kexec boot copied under a new boot id, as a push inserts it
            "CREATE TEMP TABLE b AS SELECT * FROM boots WHERE kind = 'kexec' LIMIT 1; "
            "UPDATE b SET id = nextval(pg_get_serial_sequence('boots', 'id')), "
            "boot_id = gen_random_uuid()::text; INSERT INTO boots SELECT * FROM b"
        )
        worker = threading.Thread(target=lambda: out.update(rollups_admin.rebuild(store)))
        worker.start()
        waits: list[Any] = []
        while not waits and worker.is_alive():  # until the rebuild waits for a lock
            waits = watch.execute(
                "SELECT l.locktype, c.relname, l.mode FROM pg_locks l "
                "LEFT JOIN pg_class c ON c.oid = l.relation WHERE NOT l.granted"
            ).fetchall()
        assert waits == [("relation", "boots", "ShareLock")] and not out
        assert worker.is_alive()
        push.commit()
        worker.join()
    store.dispose()
    assert out["boots"] == n0 + 1 == int(pg_server.psql(known, db))
    rc, said, _ = ctl(capsys, "fleet", "rollups", "--db", url)
    assert rc == 0 and said.startswith(f"rollups agree with {n0 + 1} boots")


def test_a_fleet_whose_rollups_all_drifted_is_named_in_a_line(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every machine's rollups wrong (a restore of the rollup tables from another day):
    the line named every machine, one line of a million ids on a fleet that size. It
    names the first 20 in order and says how many more; --json too."""
    machines = [f"{i:032x}" for i in range(1, 31)]
    objs = [boot_row(m, str(uuid.UUID(int=i + 1)), "7.0", None, T0 + i) for i, m in
            enumerate(machines)]  # fmt: skip
    db, url = new_fleet(pg_server, tmp_path, capsys, objs)
    pg_server.psql("UPDATE fleet_rollup_boots SET warnings = warnings + 1", db)
    rc, out, _ = ctl(capsys, "fleet", "rollups", "--db", url)
    assert rc == 1 and len(out.splitlines()) == 1
    assert f"(machines {', '.join(machines[:20])} and 10 more: run" in out
    rc, out, _ = ctl(capsys, "fleet", "rollups", "--db", url, "--json")
    res = json.loads(out)
    assert (rc, res["machines"], res["differing_machines"]) == (1, machines[:20], 30)
    assert res["differing_boot_rows"] == 30 and len(res["differing"]) == 20


@pytest.mark.parametrize("action", ["--check", "--rebuild"])
def test_rollups_that_agree_today_but_whose_triggers_are_off_are_not_well(
    action: str, pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bulk-load path is: triggers off, import, triggers on, --rebuild. An owner who
    forgot "triggers on" was told the rollups agree (exit 0), and the next push went
    uncounted. Now the triggers that do not fire are named, and the exit status is 1."""
    db, url = new_fleet(pg_server, tmp_path, capsys, fleet())
    pg_server.psql("ALTER TABLE boots DISABLE TRIGGER USER", db)
    pg_server.psql("ALTER TABLE pstore_records DISABLE TRIGGER khod_rollup", db)
    rc, out, err = ctl(capsys, "fleet", "rollups", action, "--db", url)
    assert rc == 1, (out, err)
    assert (
        "rollup triggers not firing: boots.khod_rollup, boots.khod_rollup_delete, "
        "boots.khod_rollup_insert, pstore_records.khod_rollup, boots.khod_totals_insert, "
        "boots.khod_totals_update, boots.khod_totals_delete: the rollups miss every "
        "write until they do (ALTER TABLE ... ENABLE TRIGGER USER on boots, "
        "pstore_records; then khoctl fleet rollups --rebuild)"
    ) in out
    rc, out, _ = ctl(capsys, "fleet", "rollups", "--db", url, "--json")
    res = json.loads(out)
    assert (rc, res["agree"], len(res["triggers_off"]), res["differing_machines"]) == (
        1, False, 7, 0,
    )  # fmt: skip
    pg_server.psql("ALTER TABLE boots ENABLE TRIGGER USER", db)
    pg_server.psql("ALTER TABLE pstore_records ENABLE TRIGGER USER", db)
    rc, out, _ = ctl(capsys, "fleet", "rollups", "--db", url)
    assert rc == 0 and out.startswith("rollups agree with "), out


def test_a_database_at_0013_is_checked(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """0013 keeps the rollups as 0014 does: checked, not refused as "not at head"."""
    from khod.store import migrate

    _, url = new_fleet(pg_server, tmp_path, capsys, fleet())
    store = open_store(url, create=False)
    migrate.downgrade(store, "0013")
    store.dispose()
    rc, out, err = ctl(capsys, "fleet", "rollups", "--db", url)
    assert rc == 0 and out.startswith("rollups agree with "), (out, err)


def test_a_rebuild_gives_up_on_a_transaction_that_holds_the_boots(
    pg_server: PostgresServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A transaction that keeps writing boots open (a stuck import, a session left in a
    transaction): the rebuild waited for it without end, and every host's push queued
    behind the rebuild's lock. It gives up after LOCK_TIMEOUT_S in one line, and the
    rollups are as they were."""
    import psycopg

    db, url = new_fleet(pg_server, tmp_path, capsys, fleet())
    before = rollup_rows(pg_server, db)
    monkeypatch.setattr(rollups_admin, "LOCK_TIMEOUT_S", 1)
    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={db} user=postgres"
    with psycopg.connect(dsn) as stuck:
        stuck.execute("UPDATE boots SET warnings = warnings WHERE false")  # ROW EXCLUSIVE
        rc, _, err = ctl(capsys, "fleet", "rollups", "--rebuild", "--db", url)
        stuck.rollback()
    assert rc == 1 and len(err.strip().splitlines()) == 1, err
    assert "cannot rebuild the rollups" in err and "lock timeout" in err
    assert rollup_rows(pg_server, db) == before


@pytest.mark.parametrize("group", ["khod_host", "khod_report"])
@pytest.mark.parametrize("action", ["--check", "--rebuild"])
def test_only_the_owner_checks_or_rebuilds(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    group: str, action: str,
) -> None:  # fmt: skip
    """A host's role (reads no rollup) or the reporting role (writes none): one line,
    exit 1, the rollups as they were, drift and all."""
    db, _ = new_fleet(pg_server, tmp_path, capsys, fleet())
    pg_server.psql("UPDATE fleet_rollup_boots SET boots = boots + 1 WHERE bucket <> -1", db)
    role = ("host_" if group == "khod_host" else "reader_") + uuid.uuid4().hex
    pg_server.psql(f"CREATE ROLE {role} LOGIN IN ROLE {group}")
    before = rollup_rows(pg_server, db)
    as_role = f"postgresql+psycopg://{role}@127.0.0.1:{pg_server.port}/{db}"
    rc, out, err = ctl(capsys, "fleet", "rollups", action, "--db", as_role)
    assert (rc, out) == (1, "") and err.count("\n") == 1, err
    assert err.startswith(f"khoctl: error: fleet rollups {action}: role {role} does not own")
    assert rollup_rows(pg_server, db) == before


def test_sqlite_keeps_no_rollups(
    sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / "f.jsonl", fleet())),
                     "--db", sqlite_url)  # fmt: skip
    assert rc == 0, err
    for action in ("--check", "--rebuild"):
        rc, out, err = ctl(capsys, "fleet", "rollups", action, "--db", sqlite_url)
        assert (rc, out, err) == (
            0, "a SQLite store keeps no rollups: the report counts every row\n", "",
        )  # fmt: skip
    rc, out, err = ctl(capsys, "fleet", "rollups", "--db", sqlite_url, "--json")
    assert rc == 0 and json.loads(out)["kept"] is False


def test_a_database_the_owner_has_not_upgraded_is_left_so(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 0012 (no rollups yet): one line, exit 1, the database not migrated."""
    from khod.store import migrate
    from khod.store.db import current_revision

    _, url = new_fleet(pg_server, tmp_path, capsys, fleet())
    store = open_store(url, create=False)
    try:
        migrate.downgrade(store, "0012")
        for action in ("--check", "--rebuild"):
            rc, out, err = ctl(capsys, "fleet", "rollups", action, "--db", url)
            assert (rc, out) == (1, "") and err.count("\n") == 1, err
            assert "is at schema revision 0012" in err and "khoctl db upgrade" in err
        assert current_revision(store) == "0012"
    finally:
        store.dispose()
