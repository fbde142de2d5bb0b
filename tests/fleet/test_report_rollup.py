"""The transition report from the rollups (PostgreSQL, migration 0013) is the report
counted again from every boot and attempt (``--recompute``; the only way on SQLite):
on the hand-computed fleet of test_report.py, and on a seeded random fleet through
imports, verdicts filled in later, deletes by retention, boots rewritten and re-syncs,
for windows that
cut the rollups' 30-day buckets anywhere. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from khod.fleet.report import transitions
from khod.fleet.rollup import BUCKET
from khod.fleet.stats import Thresholds
from khod.store.db import open_store
from khod.store.handle import Store
from khod.store.retention import retention
from khod.store.schema import boots
from tests.builders import boot_row, pstore_row, write_export
from tests.fleet.test_fleet import ctl
from tests.fleet.test_report import T0, attempt_obj, fleet

RELEASES = ("6.8", "6.9", "7.0", "7.1", "7.2")
VERDICTS = (
    "landed",
    "landed",
    "landed",
    "cold-boot",
    "mismatch",
    "abi-mismatch",
    "landed-without-handover",
    "superseded",
    None,
)


def reports(store: Store, since: float | None, until: float | None, now: float) -> Any:
    th = Thresholds(min_n=2)
    out = []
    for recompute in (False, True):
        rows = transitions(
            store, since, include_cold=True, thresholds=th, now=now, until=until,
            recompute=recompute,
        )  # fmt: skip
        out.append([t.as_json() for t in rows])
    return out


def check_windows(store: Store, rnd: random.Random, lo: int, hi: int, n: int = 12) -> int:
    """The two reports agree for the whole history and for windows at random; return
    how many rows the whole history's report had."""
    rows = 0
    for i in range(n):
        if i < 3:  # the whole history, every boot observed, some, none
            since, until = None, None
            now = (float(hi + 2 * 86400), rnd.uniform(lo, hi), float(lo))[i]
        else:
            a, b = sorted(rnd.uniform(lo - BUCKET, hi + BUCKET) for _ in range(2))
            since = None if rnd.random() < 0.25 else a
            until = None if rnd.random() < 0.25 else b
            now = rnd.uniform(lo, hi + 3 * 86400)
        rollup, full = reports(store, since, until, now)
        assert rollup == full, (since, until, now)
        rows = rows or len(full)
    return rows


def test_the_hand_computed_fleet_reads_the_same_from_the_rollups(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write_export(tmp_path / "fleet.jsonl", fleet())
    assert ctl(capsys, "import", str(f), "--db", db_url)[0] == 0
    store = open_store(db_url, create=False)
    try:
        assert check_windows(store, random.Random(5), T0 - BUCKET, T0 + 86400) >= 4
    finally:
        store.dispose()
    for extra in ((), ("--include-cold", "--window", "0s"), ("--since", "@1789999000")):
        args = ("report", "transitions", "--db", db_url, "--json", *extra)
        rc, rolled, err = ctl(capsys, *args)
        assert rc == 0, err
        rc, full, err = ctl(capsys, *args, "--recompute")
        assert rc == 0, err
        assert json.loads(rolled) == json.loads(full) and json.loads(full)


def random_fleet(rnd: random.Random, hosts: int = 14) -> tuple[list[Any], list[Any]]:
    """Boots over ~300 days (several buckets), every kind of boot the report tells
    apart, crash records (several for one boot, some describing nothing), attempts of
    every verdict; the first list has the attempts still open, the second judged."""
    open_, judged = [], []
    n = 0
    for h in range(hosts):
        machine = f"{h:02x}" + "e" * 30
        t = T0 + rnd.randrange(0, 40 * 86400)
        rel = rnd.choice(RELEASES)
        prev_boot: str | None = None
        for i in range(rnd.randrange(8, 26)):
            boot = f"{machine[:8]}-0000-4000-8000-{i:012x}"
            t += rnd.randrange(3600, 25 * 86400)
            new = rnd.choice(RELEASES)
            kind = rnd.choice(
                ("kexec", "kexec", "kexec", "cold", "kexec-no-handover", "kexec-rejected", "nometa")
            )
            chained = kind == "kexec" or (kind != "cold" and rnd.random() < 0.5)
            o = boot_row(machine, boot, new, rel if chained else None, t)
            if kind == "nometa":  # a kexec without metadata: not in the report
                o.update(kind="kexec", kexec_count=None, previous_release=None)
            elif kind.startswith("kexec-"):  # a transition with a chain khod derived, or baseline
                o.update(kind=kind, metadata_source="derived" if chained else None)
            o["warnings"] = rnd.choice((None, 0, 0, 0, 1, 3))
            if rnd.random() < 0.04:
                o["booted_at"] = None
            open_.append(o)
            judged.append(o)
            if prev_boot is not None:
                for part in range(rnd.choice((0, 0, 1, 1, 2))):
                    reason = rnd.choice(("Panic", "Oops", "Shutdown"))
                    describes = None if rnd.random() < 0.1 else prev_boot
                    p = pstore_row(machine, boot, describes, reason, part + 1, salt=str(n))
                    open_.append(p)
                    judged.append(p)
                n += 1
                verdict = rnd.choice(VERDICTS)
                target = None if rnd.random() < 0.3 else new
                created = (t if o["booted_at"] is not None else T0) - 60
                a = attempt_obj(machine, n, prev_boot, rel, target, verdict, boot)
                a["created_at"] = float(created) + rnd.random()
                if verdict is None:
                    a["verdict_boot"] = None
                judged.append(a)
                open_.append({**a, "verdict": None, "verdict_boot": None})
            prev_boot = boot
            rel = new
    return open_, judged


def test_random_imports_verdicts_retention_and_resyncs_read_the_same(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rnd = random.Random(20261206)
    open_, judged = random_fleet(rnd)
    times = [o["booted_at"] for o in judged if o.get("booted_at")]
    lo, hi = min(times), max(times)
    cut = len(open_) // 2

    def load(objs: list[Any], name: str) -> None:
        rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / name, objs)), "--db", db_url)
        assert rc == 0, err

    load(open_[:cut], "a.jsonl")  # half the fleet, its attempts open
    store = open_store(db_url, create=False)
    try:
        assert check_windows(store, rnd, lo, hi)
        load(open_, "b.jsonl")  # all of it, the first half again
        check_windows(store, rnd, lo, hi)
        load(judged, "c.jsonl")  # the verdicts come in
        assert check_windows(store, rnd, lo, hi) >= 10
        machines = sorted({o["machine_id"] for o in judged})
        with store.engine.connect() as conn:
            newest = dict(
                conn.execute(select(boots.c.machine_id, boots.c.id).order_by(boots.c.id)).all()
            )
        for m in machines[::2]:  # retention: the oldest boots go, with what hangs off them
            assert retention(store, m, newest[m], max_boots=5, max_age=0, max_bytes=0).deleted
        check_windows(store, rnd, lo, hi)
        for m in machines[1::3]:  # and by age
            retention(store, m, newest[m], max_boots=0, max_age=120 * 86400, max_bytes=0,
                      now=hi)  # fmt: skip
        check_windows(store, rnd, lo, hi)
        with store.writer.begin() as conn:  # boots rewritten (a release, warnings read late)
            for pk in list(newest.values())[::3]:
                conn.execute(
                    update(boots).where(boots.c.id == pk).values(release="7.9", warnings=2)
                )
        check_windows(store, rnd, lo, hi)
        load(judged, "d.jsonl")  # a full re-sync brings the deleted rows back
        assert check_windows(store, rnd, lo, hi) >= 10
        if store.engine.dialect.name == "postgresql":  # the rollups did the counting
            from khod.fleet import rollups_admin

            kept = rollups_admin.check(store)  # every level of them, row for row
            assert kept["agree"] and kept["differing_host_rows"] == 0, kept["differing"]
            with store.engine.connect() as conn:
                n = conn.execute(text("SELECT sum(boots) FROM fleet_rollup_boots")).scalar()
                known = conn.execute(
                    text("SELECT count(*) FROM boots WHERE kind <> 'kexec' "
                         "OR previous_release IS NOT NULL")
                ).scalar()  # fmt: skip
            assert n == known
    finally:
        store.dispose()


def test_a_judging_boot_deleted_leaves_its_attempt_counted_once(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two 7.0 -> 7.1 attempts that name their target, on one machine; retention
    deletes the boot that judged the first. The attempt stays (its judging boot
    forgotten), and so do its counts: the rollups took it out twice (the boot's delete,
    then the attempt's own update), 1 attempt against 2."""
    m = "d" * 32
    bid = [f"dddddddd-0000-4000-8000-{i:012x}" for i in range(4)]
    objs: list[Any] = [
        boot_row(m, bid[0], "7.0", None, T0),
        boot_row(m, bid[1], "7.1", "7.0", T0 + 3600),
        boot_row(m, bid[2], "7.0", None, T0 + 7200),
        boot_row(m, bid[3], "7.1", "7.0", T0 + 9000),
        attempt_obj(m, 1, bid[0], "7.0", "7.1", "landed", bid[1]),
        attempt_obj(m, 2, bid[2], "7.0", "7.1", "landed", bid[3]),
    ]
    rc, _, err = ctl(
        capsys, "import", str(write_export(tmp_path / "a.jsonl", objs)), "--db", db_url
    )
    assert rc == 0, err
    store = open_store(db_url, create=False)
    try:
        with store.engine.connect() as conn:
            pk = {b: i for b, i in conn.execute(select(boots.c.boot_id, boots.c.id))}
        with store.writer.begin() as conn:
            conn.execute(boots.delete().where(boots.c.id == pk[bid[1]]))
        rollup, full = reports(store, None, None, float(T0 + 10 * 86400))
        attempts = {(r["previous_release"], r["release"]): r["attempts"] for r in full}
        assert attempts[("7.0", "7.1")] == 2
        assert rollup == full
    finally:
        store.dispose()


def test_a_boot_dated_out_of_range_does_not_break_the_report(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row written past khod's checks (a host's own SQL, an old database) with a
    booted_at past any bucket, or an attempt created at NaN: the report still reads
    (it failed with "bigint out of range"), the row counted as one of no time."""
    m = "e" * 32
    b0, b1 = (f"eeeeeeee-0000-4000-8000-{i:012x}" for i in range(2))
    objs: list[Any] = [boot_row(m, b0, "7.0", None, T0), boot_row(m, b1, "7.1", "7.0", T0 + 60)]
    rc, _, err = ctl(
        capsys, "import", str(write_export(tmp_path / "a.jsonl", objs)), "--db", db_url
    )
    assert rc == 0, err
    store = open_store(db_url, create=False)
    try:
        with store.writer.begin() as conn:
            conn.execute(update(boots).where(boots.c.boot_id == b1).values(booted_at=2**62))
        rollup, full = reports(store, None, None, float(T0 + 86400))
        assert rollup == full
        assert {(r["previous_release"], r["release"]) for r in full} >= {("7.0", "7.1")}
        rc, _, err = ctl(capsys, "report", "transitions", "--db", db_url, "--since", "30d")
        assert rc == 0, err
    finally:
        store.dispose()


def test_the_report_reads_an_older_fleet_database_and_leaves_it_so(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fleet database its owner has not upgraded yet (0012: no rollups): the report
    counts every row, says so in one line, and migrates nothing (it did: a reader's
    report upgraded the fleet database, or failed on a reader's rights)."""
    from khod.store import migrate
    from khod.store.db import current_revision

    rc, _, err = ctl(
        capsys, "import", str(write_export(tmp_path / "f.jsonl", fleet())), "--db", db_url
    )
    assert rc == 0, err
    store = open_store(db_url, create=False)
    try:
        full, _ = reports(store, None, None, float(T0 + 86400))
        migrate.downgrade(store, "0012")
        rc, out, err = ctl(
            capsys, "report", "transitions", "--db", db_url, "--json", "--include-cold",
            "--window", "0s",
        )  # fmt: skip
        assert rc == 0, err
        assert current_revision(store) == "0012"
        assert "counting every boot" in err and len(err.strip().splitlines()) == 1, err
        got = {(r["previous_release"], r["release"]): r["boots"] for r in json.loads(out)}
        assert got == {(r["previous_release"], r["release"]): r["boots"] for r in full}
    finally:
        store.dispose()


def test_no_role_can_hold_a_hosts_rollups_locked(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Any role may take any advisory lock: one with no grant at all held the key the
    rollups' triggers serialise a machine on, and the owner's write of that machine's
    boots (retention, a rewrite) and every push of its crash records waited on it. The
    triggers lock a row only the owner can touch."""
    import psycopg

    dbname = pg_server.create_database()
    url = pg_server.url(dbname)
    m = "f" * 32
    b = [f"ffffffff-0000-4000-8000-{i:012x}" for i in range(3)]
    objs = [boot_row(m, b[0], "7.0", None, T0), boot_row(m, b[1], "7.1", "7.0", T0 + 3600)]
    rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / "a.jsonl", objs)), "--db", url)
    assert rc == 0, err
    pg_server.psql("CREATE ROLE nobody_in_particular LOGIN", database=dbname)
    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={dbname}"
    with psycopg.connect(f"{dsn} user=nobody_in_particular", autocommit=True) as evil:
        evil.execute("SELECT pg_advisory_lock(1802006372, hashtext(%s))", (m,))
        with psycopg.connect(f"{dsn} user=postgres", autocommit=True) as owner:
            owner.execute("SET statement_timeout = '5s'")
            owner.execute("UPDATE boots SET warnings = 1 WHERE boot_id = %s", (b[1],))
        crash = [boot_row(m, b[2], "7.1", None, T0 + 7200), pstore_row(m, b[2], b[1], "Panic")]
        os_env = {"PGOPTIONS": "-c statement_timeout=5s"}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in os_env.items():
                mp.setenv(k, v)
            rc, _, err = ctl(
                capsys, "import", str(write_export(tmp_path / "b.jsonl", crash)), "--db", url
            )
        assert rc == 0, err


def test_the_triggers_count_the_kinds_the_report_counts() -> None:
    """Migration 0013 spells the kinds of a transition's boot itself (a migration is
    frozen); should ``THROUGH_KEXEC`` gain a kind, the rollups would miss its boots
    while ``--recompute`` counted them."""
    import importlib.util
    import re

    from khod.records import THROUGH_KEXEC, BootKind

    path = Path(__file__).parents[2] / "migrations/versions/0013_fleet_rollups.py"
    spec = importlib.util.spec_from_file_location("khod_migration_0013", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    kinds = set(re.findall(r"'([a-z-]+)'", mod._through("b")))
    assert kinds == {str(k) for k in THROUGH_KEXEC}
    assert str(BootKind.COLD) not in kinds


def test_a_push_beside_retention_keeps_the_first_and_last_boot(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A host pushes a boot while the owner's retention deletes an older one of the same
    machine, transition and bucket. The delete recounts the bucket's first and last boot
    from the rows it can see; the push's boot, not committed yet, was not among them,
    and once the push committed the rollup's last boot was the deleted one's neighbour:
    the report's ``last_booted`` went back in time (``--recompute`` had it right)."""
    import threading

    import psycopg

    dbname = pg_server.create_database()
    url = pg_server.url(dbname)
    m = "c" * 32
    b = [f"cccccccc-0000-4000-8000-{i:012x}" for i in range(4)]
    t = (T0 // BUCKET) * BUCKET + 86400  # all in one bucket
    objs = [
        boot_row(m, b[0], "7.0", None, t),
        boot_row(m, b[1], "7.1", "7.0", t + 3600),
        boot_row(m, b[2], "7.1", "7.0", t + 7200),
    ]
    rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / "a.jsonl", objs)), "--db", url)
    assert rc == 0, err
    cols = [c.name for c in boots.columns if c.name not in ("id", "boot_id", "booted_at", "seq")]
    push = (
        f"INSERT INTO boots (boot_id, booted_at, seq, {', '.join(cols)}) "
        f"SELECT %s, %s, seq + 10, {', '.join(cols)} FROM boots WHERE boot_id = %s"
    )
    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={dbname} user=postgres"
    with psycopg.connect(dsn) as host, psycopg.connect(dsn, autocommit=True) as watch:
        host.execute(push, (b[3], t + 9000, b[2]))  # not committed yet
        with psycopg.connect(dsn, autocommit=True) as owner:
            pid = owner.info.backend_pid
            done: list[BaseException | None] = []

            def retention() -> None:
                try:
                    owner.execute("DELETE FROM boots WHERE boot_id = %s", (b[2],))
                    done.append(None)
                except BaseException as e:  # reported by the assertion below
                    done.append(e)

            worker = threading.Thread(target=retention)
            worker.start()
            for _ in range(600):  # until the delete waits on the push (a lock), or ends
                row = watch.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
                ).fetchone()
                if done or (row and row[0] == "Lock"):
                    break
                threading.Event().wait(0.05)
            host.commit()
            worker.join(60)
            assert done == [None]
    store = open_store(url, create=False)
    try:
        rollup, full = reports(store, None, None, float(t + 10 * 86400))
        row = next(r for r in full if (r["previous_release"], r["release"]) == ("7.0", "7.1"))
        assert (row["boots"], row["last_booted_at"]) == (2, t + 9000)
        assert rollup == full
    finally:
        store.dispose()


def test_two_writers_of_several_machines_each_do_not_deadlock(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two transactions that each write boots, then crash records, of several machines
    (two imports at once, or an import's chunk beside another): neither waits for the
    other across statements. (A first form of migration 0014 held each inserted boot's
    machine lock to commit: these two deadlocked, and PostgreSQL aborted one.)"""
    import threading

    import psycopg

    a, b, c = ("a" * 32, "b" * 32, "c" * 32)
    objs = [boot_row(m, f"{i:08x}-0000-4000-8000-000000000000", "7.0", None, T0 + i)
            for i, m in enumerate((a, b, c))]  # fmt: skip
    dbname = pg_server.create_database()
    url = pg_server.url(dbname)
    rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / "a.jsonl", objs)), "--db", url)
    assert rc == 0, err
    cols = [c.name for c in boots.columns if c.name not in ("id", "boot_id", "booted_at", "seq")]

    def boots_of(machines: tuple[str, ...], n: int) -> str:  # a later bucket: no shared row
        return (
            f"INSERT INTO boots (boot_id, booted_at, seq, {', '.join(cols)}) "
            f"SELECT substr(machine_id, 1, 8) || '-{n:04d}-4000-8000-000000000000', "
            f"booted_at + 100 * 86400, seq, {', '.join(cols)} FROM boots "
            f"WHERE machine_id IN ({', '.join(repr(m) for m in machines)}) "
            f"AND booted_at < {T0 + 86400}"
        )

    def crash_of(m: str) -> str:  # a crash record of the machine's first boot
        return (
            "INSERT INTO pstore_records (machine_id, sha256, collected_by, describes, "
            "location, path, name, type, backend, reason, compressed, inflate_status, size, "
            "raw, dump_key, collected_at) SELECT machine_id, md5(machine_id) || md5('x'), id, "
            "id, 'pstore', 'p', 'n', 't', 'b', 'Panic', false, 'none', 1, '\\x00', 'k', 1 "
            f"FROM boots WHERE machine_id = '{m}' AND booted_at < {T0 + 86400}"
        )

    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={dbname} user=postgres"
    errors: list[str] = []
    with (
        psycopg.connect(dsn) as one,
        psycopg.connect(dsn) as two,
        psycopg.connect(dsn, autocommit=True) as watch,
    ):
        one.execute(boots_of((a, c), 1))
        two.execute(boots_of((b,), 2))

        def then(s: Any, sql: str) -> None:
            try:
                s.execute(sql)
                s.commit()
            except psycopg.Error as e:
                errors.append(str(e).splitlines()[0])
                s.rollback()

        pid = one.info.backend_pid
        worker = threading.Thread(target=then, args=(one, crash_of(b)))
        worker.start()
        for _ in range(600):  # until it waits on a lock, or is done
            row = watch.execute(
                "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
            ).fetchone()
            if not worker.is_alive() or (row and row[0] == "Lock"):
                break
            threading.Event().wait(0.05)
        then(two, crash_of(c))
        worker.join(60)
    assert errors == []
    store = open_store(url, create=False)
    try:
        rollup, full = reports(store, None, None, float(T0 + 200 * 86400))
        assert rollup == full
    finally:
        store.dispose()


def test_the_report_reads_the_rollups_of_a_database_at_0013(
    pg_server: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fleet database at 0013 (database-first is the recommended order, but a khoctl
    may be upgraded before it): it keeps the rollups this khoctl reads; the report read
    them, not every row, without a note (it counted every row, saying the database was
    older than this khoctl's)."""
    from khod.store import migrate

    db_url = pg_server.url(pg_server.create_database())
    rc, _, err = ctl(
        capsys, "import", str(write_export(tmp_path / "f.jsonl", fleet())), "--db", db_url
    )
    assert rc == 0, err
    store = open_store(db_url, create=False)
    try:
        migrate.downgrade(store, "0013")
        with store.writer.begin() as conn:  # a mark only the rollups carry
            conn.execute(text("UPDATE fleet_rollup_boots SET warnings = warnings + 1000"))
    finally:
        store.dispose()
    args = ("report", "transitions", "--db", db_url, "--json", "--include-cold")
    rc, out, err = ctl(capsys, *args)
    assert (rc, err) == (0, "")
    rc, full, _ = ctl(capsys, *args, "--recompute")
    assert rc == 0
    assert sum(r["warnings"] for r in json.loads(out)) >= 1000 + sum(
        r["warnings"] for r in json.loads(full)
    )
    rc, said, err = ctl(capsys, "fleet", "rollups", "--db", db_url)
    assert rc == 1 and said.startswith("rollups differ: "), (said, err)
