"""A boot's warning count grows after its first push (the daemon's later ingests,
``khoctl kexec`` at its end): the next push raises it in the fleet database (migration
0017), through the host's own role, and the report counts it; a push into a database
that does not let it (older than 0017) fails nothing and stays quiet, and the count goes
in with the next push after the owner upgrades; a host may only raise its own boots'
count; an import raises it too (SQLite, PostgreSQL in bulk and line by line).
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from khod.store import migrate
from khod.store.db import open_store
from tests import pgserver
from tests.fleet.test_fleet_trust import CHAIN, A, B, Fleet, ctl, ingest, refused, root_of, sync
from tests.variants import append_kmsg

WARN = b"WARNING: CPU: 0 PID: 1 at drivers/base/core.c:42 device_add+0x1/0x2"
REPORT = ("report", "transitions", "--json", "--include-cold", "--window", "0s")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("warnings")
    with pgserver.running_server(tls=True) as server:
        db = server.create_database()
        fleet = Fleet(server, db, server.url(db), tmp, {}, {})
        rc, _, err = ctl("fleet", "init", "--db", fleet.owner, "--json")
        assert rc == 0, err
        a = fleet.enroll(A)  # A's first two boots pushed
        for step in CHAIN[:2]:
            ingest(tmp, a.local, step)
        fleet.synced["a1"] = pushed(a)
        yield fleet


def fleet_warnings(fleet: Fleet, machine: str) -> list[str]:
    """The machine's boots' warning counts in the fleet database, oldest first."""
    q = (
        "SELECT coalesce(warnings::text, '-') FROM boots "
        f"WHERE machine_id = '{machine}' ORDER BY id"
    )
    return fleet.server.psql(q, fleet.db).splitlines()


def local_warnings(local: str) -> list[str]:
    with sqlite3.connect(local.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("SELECT warnings FROM boots ORDER BY id").fetchall()
    return ["-" if w is None else str(w) for (w,) in rows]


def warn_again(tmp: Path, local: str, step: str, n: int = 1) -> None:
    """The running boot logs ``n`` more kernel warnings and khod ingests it again."""
    append_kmsg(root_of(tmp, step), *[WARN] * n)
    ingest(tmp, local, step)


def pushed(host: Any) -> dict[str, Any]:
    rc, out, err = sync(host, "--json")
    assert rc == 0 and err == "", err
    return dict(json.loads(out))


def report(fleet: Fleet) -> list[dict[str, Any]]:
    rc, rolled, err = ctl(*REPORT, "--db", fleet.owner)
    assert rc == 0, err
    rc, full, err2 = ctl(*REPORT, "--db", fleet.owner, "--recompute")
    assert rc == 0, err2
    assert json.loads(rolled) == json.loads(full)
    return list(json.loads(rolled))


def warned(rows: list[dict[str, Any]]) -> dict[tuple[Any, Any], tuple[int, int]]:
    return {(r["previous_release"], r["release"]): (r["warned_boots"], r["warnings"]) for r in rows}


def test_a_warning_count_grown_after_its_push_reaches_the_fleet(fleet: Fleet) -> None:
    a = fleet.hosts[A]
    assert fleet.synced["a1"]["new"]["boot"] == 2
    first = fleet_warnings(fleet, A)
    assert first == local_warnings(a.local)
    before = warned(report(fleet))
    assert pushed(a)["sent"] == {}  # nothing new: no push

    warn_again(fleet.tmp, a.local, CHAIN[1], 2)
    grown = local_warnings(a.local)
    assert grown[0] == first[0] and grown[1] == str(int(first[1]) + 2)
    said = pushed(a)
    assert said["sent"] == {"boot": 1} and said["new"]["boot"] == 0
    assert said["raised_warnings"] == 1
    assert fleet_warnings(fleet, A) == grown
    after = warned(report(fleet))
    (key,) = [k for k in after if after[k] != before.get(k)]
    assert after[key][1] == before.get(key, (0, 0))[1] + 2 and after[key][0] >= 1
    assert pushed(a)["sent"] == {}  # sent: quiet again

    # the next boot's push carries the last count of the boot before it (said in words)
    warn_again(fleet.tmp, a.local, CHAIN[1])
    ingest(fleet.tmp, a.local, CHAIN[2])
    rc, out, err = sync(a)
    assert rc == 0 and out.startswith("synced 2 boots (1 new, 1 with more warnings), "), err
    assert fleet_warnings(fleet, A) == local_warnings(a.local)
    report(fleet)


def test_a_host_may_only_raise_its_own_boots_count(fleet: Fleet) -> None:
    a = fleet.hosts[A]
    ids = fleet.server.psql(
        f"SELECT id FROM boots WHERE machine_id = '{A}' ORDER BY id", fleet.db
    ).split()
    fleet.server.psql(  # its newest boot has 3 warnings at least
        f"UPDATE boots SET warnings = greatest(warnings, 3) WHERE id = {ids[-1]}", fleet.db
    )
    cols = fleet.server.psql(
        "SELECT string_agg(quote_ident(column_name), ', ') FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'boots' "
        "AND column_name NOT IN ('id', 'machine_id')",
        fleet.db,
    ).strip()
    fleet.server.psql(  # another machine's boot, as the operator copies one
        f"INSERT INTO boots (machine_id, {cols}) SELECT '{B}', {cols} FROM boots "
        f"WHERE id = {ids[0]}",
        fleet.db,
    )
    before = fleet_warnings(fleet, A), fleet_warnings(fleet, B)
    with psycopg.connect(a.conninfo(fleet), autocommit=True) as conn:
        lower = refused(conn, f"UPDATE boots SET warnings = 0 WHERE id = {ids[-1]}")
        assert lower.startswith(f"khod fleet: host {A} may only raise the warnings of boot ")
        none = refused(conn, f"UPDATE boots SET warnings = NULL WHERE id = {ids[-1]}")
        assert none.startswith(f"khod fleet: host {A} may only raise"), none
        other = conn.execute(f"UPDATE boots SET warnings = 99 WHERE machine_id = '{B}'")
        assert other.rowcount == 0  # not its own: not even seen
        for col in ("release", "previous_release", "machine_id", "booted_at"):
            answer = refused(conn, f"UPDATE boots SET {col} = NULL WHERE id = {ids[-1]}")
            assert answer == "permission denied for table boots", (col, answer)
    assert (fleet_warnings(fleet, A), fleet_warnings(fleet, B)) == before
    fleet.server.psql(f"DELETE FROM boots WHERE machine_id = '{B}'", fleet.db)
    report(fleet)


def test_a_database_without_the_grant_takes_the_count_after_its_upgrade(fleet: Fleet) -> None:
    """Into a 0016 database: the push goes through without the raised count and is not
    pending again for it; once the owner upgrades, the next push carries it."""
    b = fleet.enroll(B)
    steps = ["kexec1/step0", "kexec1/step1"]
    ingest(fleet.tmp, b.local, steps[0])
    assert pushed(b)["new"]["boot"] == 1
    owner = open_store(fleet.owner, migrate=False)
    try:
        migrate.downgrade(owner, "0016")
        try:
            warn_again(fleet.tmp, b.local, steps[0], 3)
            held = fleet_warnings(fleet, B)
            assert held != local_warnings(b.local)
            said = pushed(b)
            assert said["sent"] == {} and said["new"] == {} and said["raised_warnings"] == 0
            assert fleet_warnings(fleet, B) == held
            assert pushed(b)["sent"] == {}  # quiet: no push for a count it cannot raise
            rc, out, err = sync(b, "--full", "--json")  # all again: nothing raised either
            assert rc == 0 and json.loads(out)["sent"]["boot"] == 1, err
            assert fleet_warnings(fleet, B) == held
        finally:
            migrate.upgrade(owner, "0016", "head")
    finally:
        owner.dispose()
    ingest(fleet.tmp, b.local, steps[1])
    said = pushed(b)
    assert said["sent"]["boot"] == 2 and said["new"]["boot"] == 1
    assert said["raised_warnings"] == 1
    assert fleet_warnings(fleet, B) == local_warnings(b.local)
    report(fleet)


@pytest.mark.parametrize("where", ["sqlite", "postgresql-bulk", "postgresql-lines"])
def test_an_import_raises_a_count_the_store_holds_lower(
    fleet: Fleet, tmp_path: Path, where: str
) -> None:
    """A later export of the same boot, given twice: its count raised, nothing new, no
    error. ``postgresql-lines``: 250 more boots and a bad line in the same chunk, which
    goes line by line (a staged COPY of its boots)."""
    local = f"sqlite:///{tmp_path / 'host.db'}"
    ingest(tmp_path, local, "kexec1/step0")
    early, late = tmp_path / "early.jsonl.gz", tmp_path / "late.jsonl.gz"
    assert ctl("export", "--db", local, "-o", str(early))[0] == 0
    warn_again(tmp_path, local, "kexec1/step0", 2)
    assert ctl("export", "--db", local, "-o", str(late))[0] == 0
    lines = gzip.decompress(late.read_bytes()).splitlines(keepends=True)
    (boot,) = [x for x in lines if json.loads(x)["object"] == "boot"]
    want = json.loads(boot)["warnings"]
    assert want == int(local_warnings(local)[0]) and want >= 2
    more = []
    if where == "postgresql-lines":
        obj = json.loads(boot)
        for i in range(250):
            more.append(
                (json.dumps({**obj, "boot_id": f"{i:032x}", "warnings": 0}) + "\n").encode()
            )
        more.append(b'{"object": "boot", "machine_id": 5}\n')
    at = lines.index(boot)
    plain = tmp_path / "late.jsonl"
    plain.write_bytes(b"".join([*lines[: at + 1], boot, *more, *lines[at + 1 :]]))
    if where == "sqlite":
        target = f"sqlite:///{tmp_path / 'fleet.db'}"
    else:
        target = fleet.server.url(fleet.server.create_database())
    assert ctl("import", str(early), "--db", target)[0] == 0
    rc, out, err = ctl("import", str(plain), "--db", target, "--json")
    said = json.loads(out)
    assert (rc, said["bad"]) == ((1, 1) if more else (0, 0)), err
    assert said["new"]["boot"] == 250 * bool(more) and said["raised_warnings"] == 1
    assert said["read"]["boot"] == 2 + 250 * bool(more)
    if where != "sqlite":
        lined = int(where == "postgresql-lines")
        assert said["chunks"] == {"bulk": 1 - lined, "line_by_line": lined}, said
    store = open_store(target, migrate=False)
    try:
        with store.engine.connect() as conn:
            got = conn.execute(
                text("SELECT warnings FROM boots WHERE boot_id = :b"),
                {"b": json.loads(boot)["boot_id"]},
            ).scalar_one()
    finally:
        store.dispose()
    assert got == want


def test_an_import_that_inserts_and_raises_does_not_deadlock_a_raise(
    fleet: Fleet, tmp_path: Path
) -> None:
    """An import of a new boot of A's and a higher count of another, in bulk, while
    another writer raises a count of A's: it holds A's rollup lock, then needs A's rollup
    row. The import's raise waits for it, after its insert committed (which held the
    row); raised in the insert's transaction, each waited for the other (deadlock)."""
    dsn = fleet.owner.replace("postgresql+psycopg", "postgresql")
    ids = fleet.server.psql(
        f"SELECT id FROM boots WHERE machine_id = '{A}' ORDER BY id", fleet.db
    ).split()
    lines = [json.dumps({"object": "header", "format": "khod-export", "version": 1})]
    dump = tmp_path / "a.jsonl"
    assert ctl("export", "--db", fleet.hosts[A].local, "-o", str(dump))[0] == 0
    header, *objs = dump.read_text().splitlines()
    boots_of_a = [json.loads(x) for x in objs if json.loads(x)["object"] == "boot"]
    newest = boots_of_a[-1]
    lines = [
        header,
        json.dumps({**newest, "boot_id": "deadlock-probe"}),  # new: the same rollup row
        json.dumps({**newest, "warnings": (newest["warnings"] or 0) + 50}),  # raised
    ]
    dump.write_text("\n".join(lines) + "\n")
    done: list[tuple[int, str, str]] = []
    errors: list[str] = []
    with psycopg.connect(dsn) as other, psycopg.connect(dsn, autocommit=True) as watch:
        other.execute("SELECT khod_rollup_lock(%s)", (A,))  # a raise of A's, under way
        t = threading.Thread(
            target=lambda: done.append(ctl("import", str(dump), "--db", fleet.owner, "--json"))
        )
        t.start()
        for _ in range(600):  # until the import waits for A's lock
            waiting = watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database()"
            ).fetchone()
            if not t.is_alive() or (waiting and waiting[0]):
                break
            time.sleep(0.05)
        try:  # the raise goes on: A's rollup rows
            other.execute("UPDATE fleet_rollup_boots SET boots = boots WHERE machine_id = %s", (A,))
            other.commit()
        except psycopg.Error as e:
            errors.append(str(e).splitlines()[0])
            other.rollback()
        t.join(60)
    assert errors == []
    ((rc, out, err),) = done
    said = json.loads(out)
    assert rc == 0 and said["chunks"] == {"bulk": 1, "line_by_line": 0}, (err, said)
    assert said["new"]["boot"] == 1 and said["raised_warnings"] == 1
    assert fleet_warnings(fleet, A)[len(ids) - 1] == str((newest["warnings"] or 0) + 50)
    fleet.server.psql("DELETE FROM boots WHERE boot_id = 'deadlock-probe'", fleet.db)
    report(fleet)
