"""The whole history's report from the transitions' totals (PostgreSQL, migration
0015): a row per transition and stripe, not a row per host and bucket. What it says is
the report counted from every row (test_report_rollup.py, for every cut of the last
window); here: that it reads the totals, that hosts landing the same transition at
once do not queue behind one row, that a database at 0014 gets its totals from its
rollups, and that drifted totals are found and rebuilt."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from khod.fleet import rollups_admin
from khod.store import migrate
from khod.store.db import open_store
from khod.store.schema import boots
from tests.builders import attempt_row, boot_row, write_export
from tests.fleet.test_fleet import ctl
from tests.fleet.test_report import T0, fleet
from tests.pgserver import PostgresServer

ARGS = ("report", "transitions", "--json", "--include-cold", "--window", "0s")


def imported(pg: PostgresServer, tmp_path: Path, capsys: Any, objs: list[Any]) -> tuple[str, str]:
    db = pg.create_database()
    url = pg.url(db)
    rc, _, err = ctl(capsys, "import", str(write_export(tmp_path / "f.jsonl", objs)), "--db", url)
    assert rc == 0, err
    return db, url


def totals_agree(url: str) -> bool:
    """``khoctl fleet rollups --check``'s verdict: the rollups and totals are the rows'."""
    store = open_store(url, create=False)
    try:
        return bool(rollups_admin.check(store)["agree"])
    finally:
        store.dispose()


def report(capsys: Any, url: str, *extra: str) -> list[dict[str, Any]]:
    rc, out, err = ctl(capsys, *ARGS, "--db", url, *extra)
    assert (rc, err) == (0, "")
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


def test_the_whole_history_reads_the_transition_totals(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mark only the totals carry shows in the whole history's report and in no
    windowed one (those still read the buckets): the report read the totals, not the
    per-host rows or the boots."""
    db, url = imported(pg_server, tmp_path, capsys, fleet())
    full = report(capsys, url, "--recompute")
    assert report(capsys, url) == full
    pg_server.psql(
        "UPDATE fleet_rollup_transition_boots SET warnings = warnings + 1000 "
        "WHERE previous_release = '7.0' AND release = '7.1' AND stripe = "
        "(SELECT min(stripe) FROM fleet_rollup_transition_boots "
        " WHERE previous_release = '7.0' AND release = '7.1')",
        db,
    )
    marked = {(r["previous_release"], r["release"]): r["warnings"] for r in report(capsys, url)}
    want = {(r["previous_release"], r["release"]): r["warnings"] for r in full}
    assert marked.pop(("7.0", "7.1")) == want.pop(("7.0", "7.1")) + 1000
    assert marked == want
    windowed = report(capsys, url, "--since", f"@{T0 - 86400}")
    assert windowed == report(capsys, url, "--since", f"@{T0 - 86400}", "--recompute")
    rc, said, _ = ctl(capsys, "fleet", "rollups", "--db", url)
    assert rc == 1 and said.startswith("rollups differ: 0 boot rows, 0 attempt rows, "), said
    assert "1 transition totals (run khoctl fleet rollups --rebuild)" in said
    rc, _, err = ctl(capsys, "fleet", "rollups", "--rebuild", "--db", url)
    assert rc == 0, err
    assert report(capsys, url) == full


def test_hosts_landing_the_same_transition_at_once_do_not_wait_for_each_other(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kexec wave: many hosts' first boots of the same transition commit at once.
    One whose commit is under way (its totals written, not committed) holds its stripe
    of the transition, not the transition: a second host's boot of it commits beside
    it, within a lock timeout of 2 s, and both are counted."""
    a, b = "a" * 32, "b" * 32
    objs = [boot_row(m, f"{m[:8]}-0000-4000-8000-000000000000", "7.0", None, T0) for m in (a, b)]
    db, url = imported(pg_server, tmp_path, capsys, objs)
    cols = [c.name for c in boots.columns if c.name not in ("id",)]

    def kexec_of(m: str) -> str:  # 7.0 -> 7.1, a day later
        vals = {c: c for c in cols} | {
            "boot_id": "substr(machine_id, 1, 8) || '-0001-4000-8000-000000000000'",
            "booted_at": "booted_at + 86400",
            "seq": "seq + 1",
            "kind": "'kexec'",
            "release": "'7.1'",
            "previous_release": "'7.0'",
            "kexec_count": "1",
        }
        return (
            f"INSERT INTO boots ({', '.join(cols)}) SELECT {', '.join(vals[c] for c in cols)} "
            f"FROM boots WHERE machine_id = '{m}'"
        )

    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={db} user=postgres"
    with psycopg.connect(dsn) as one, psycopg.connect(dsn) as two:
        one.execute(kexec_of(a))
        one.execute("SET CONSTRAINTS ALL IMMEDIATE")  # its commit's work, done now
        held = one.execute(
            "SELECT count(*) FROM fleet_rollup_transition_boots "
            "WHERE previous_release = '7.0' AND release = '7.1'"
        ).fetchone()
        assert held == (1,)
        two.execute("SET lock_timeout = '2s'")
        two.execute(kexec_of(b))
        two.commit()  # (before the stripes: waited for one's row, then lock timeout)
        one.commit()
    rows = {(r["previous_release"], r["release"]): r for r in report(capsys, url)}
    assert rows[("7.0", "7.1")]["boots"] == 2 and rows[("7.0", "7.1")]["hosts"] == 2
    assert report(capsys, url) == report(capsys, url, "--recompute")
    assert totals_agree(url)


def test_a_database_at_0014_gets_its_totals_from_its_rollups(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner upgrades a fleet database with history: migration 0015 fills the
    totals from the bucket rollups; the report from them is the report from every row,
    and the totals agree with a count from the rows. Hosts keep pushing meanwhile
    (one at 0014, counted in its bucket rollups only, is in the totals)."""
    db, url = imported(pg_server, tmp_path, capsys, fleet())
    full = report(capsys, url, "--recompute")
    store = open_store(url, create=False)
    try:
        migrate.downgrade(store, "0014")
        assert pg_server.psql("SELECT to_regclass('fleet_rollup_host_boots')", db).strip() == ""
        cols = [c.name for c in boots.columns if c.name not in ("id", "machine_id", "boot_id")]
        pg_server.psql(  # a push at 0014: the bucket rollups only
            f"INSERT INTO boots (machine_id, boot_id, {', '.join(cols)}) "
            f"SELECT repeat('f', 32), 'ffffffff' || substr(boot_id, 9), {', '.join(cols)} "
            "FROM boots WHERE release = '7.1' AND previous_release = '7.0' LIMIT 1",
            db,
        )
        assert migrate.upgrade(store, "0014", "0015") == "0015"
        kept = rollups_admin.check(store)
        assert kept["agree"] and kept["differing_transition_rows"] == 0
    finally:
        store.dispose()
    now = report(capsys, url)
    assert now == report(capsys, url, "--recompute") and now != full


def test_two_transactions_commit_their_totals_without_deadlock(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two imports at once, each of several machines' boots of the same transitions,
    written in opposite orders: the totals are added at commit, in key order, so
    neither waits for the other across statements and none is aborted."""
    ms = [f"{c}" * 32 for c in "abcd"]
    objs = [boot_row(m, f"{m[:8]}-0000-4000-8000-000000000000", "7.0", None, T0) for m in ms]
    db, url = imported(pg_server, tmp_path, capsys, objs)
    cols = [c.name for c in boots.columns if c.name not in ("id",)]

    def boot_of(m: str, rel: str, n: int) -> str:
        vals = {c: c for c in cols} | {
            "boot_id": f"substr(machine_id, 1, 8) || '-{n:04d}-4000-8000-000000000000'",
            "booted_at": f"booted_at + {n} * 86400",
            "seq": f"seq + {n}",
            "kind": "'kexec'",
            "release": f"'{rel}'",
            "previous_release": "'7.0'",
            "kexec_count": "1",
        }
        return (
            f"INSERT INTO boots ({', '.join(cols)}) SELECT {', '.join(vals[c] for c in cols)} "
            f"FROM boots WHERE machine_id = '{m}' AND seq = 1"
        )

    dsn = f"host=127.0.0.1 port={pg_server.port} dbname={db} user=postgres"
    errors: list[str] = []

    def run(order: list[str], rels: tuple[str, str], start: threading.Barrier) -> None:
        try:
            with psycopg.connect(dsn) as c:
                for i, m in enumerate(order):
                    c.execute(boot_of(m, rels[i % 2], 1 + i))
                start.wait(10)
                c.commit()
        except psycopg.Error as e:
            errors.append(str(e).splitlines()[0])

    start = threading.Barrier(2)
    t1 = threading.Thread(target=run, args=(ms, ("7.1", "7.2"), start))
    t2 = threading.Thread(target=run, args=(ms[::-1], ("7.2", "7.1"), start))
    t1.start()
    t2.start()
    t1.join(60)
    t2.join(60)
    assert errors == []
    assert report(capsys, url) == report(capsys, url, "--recompute")


def test_a_chain_khod_derived_later_is_counted_in_the_totals(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A boot's ``metadata_source`` rewritten (no release, time or count changes: the
    bucket rollups do not move): the whole history's ``derived_boots`` follows, as the
    report counted from every row says, and the totals agree with the rows."""
    db, url = imported(pg_server, tmp_path, capsys, fleet())
    before = {
        (r["previous_release"], r["release"]): r["derived_boots"] for r in report(capsys, url)
    }
    pg_server.psql(
        "UPDATE boots SET metadata_source = 'derived' WHERE kind = 'kexec' AND release = "
        "'7.1' AND (previous_release = '7.0' AND id % 2 = 0 OR previous_release = '6.9')",
        db,
    )
    after = report(capsys, url)
    assert after == report(capsys, url, "--recompute")
    changed = {(r["previous_release"], r["release"]): r["derived_boots"] for r in after}
    assert changed[("7.0", "7.1")] > before[("7.0", "7.1")]
    # a client that has the totals added after each statement (its right): a derived
    # boot moved is taken out of its host row, then counted in again, and the row keeps
    # its derived boots (it was deleted with them once its boots were 0: 6.9 -> 7.1 has
    # one boot a host)
    pg_server.psql(
        "BEGIN; SET CONSTRAINTS ALL IMMEDIATE; UPDATE boots SET booted_at = booted_at + 1 "
        "WHERE metadata_source = 'derived'; COMMIT",
        db,
    )
    assert report(capsys, url) == report(capsys, url, "--recompute")
    assert totals_agree(url)


def commit_plans(
    pg: PostgresServer, db: str, run: Any, marker: str = "INTO fleet_rollup_transition_"
) -> list[dict[str, Any]]:
    """The plans (auto_explain, EXPLAIN ANALYZE's figures) of the statements whose text
    holds ``marker`` that ``run()`` ran: by default those the commits ran to add their
    changes to the totals."""
    pg.psql(
        f"ALTER DATABASE {db} SET session_preload_libraries = 'auto_explain'; "
        f"ALTER DATABASE {db} SET auto_explain.log_min_duration = 0; "
        f"ALTER DATABASE {db} SET auto_explain.log_nested_statements = on; "
        f"ALTER DATABASE {db} SET auto_explain.log_analyze = on; "
        f"ALTER DATABASE {db} SET auto_explain.log_format = 'json'"
    )
    start = pg.log.stat().st_size
    try:
        run()
    finally:
        pg.psql(f"ALTER DATABASE {db} RESET ALL")
    with pg.log.open("rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    plans = []
    for part in text.split("plan:\n")[1:]:
        # up to the log's next line: tests/pgserver.py keeps the default
        # log_line_prefix, which starts with the date (each message is one write)
        body = part.split("\n20")[0]
        plan = json.loads(body)
        if marker in plan["Query Text"]:
            plans.append(plan)
    return plans


def rows_compared_and_dropped(node: dict[str, Any]) -> int:
    """The rows a plan's nodes compared and threw away: by its joins, and by the nodes
    run more than once (a nested loop's inner side) over all their runs. EXPLAIN gives
    each per run; a node run once filtering a table is linear and not counted."""
    loops = int(node.get("Actual Loops", 1))
    n = int(node.get("Rows Removed by Join Filter", 0)) * loops
    if loops > 1:
        n += int(node.get("Rows Removed by Filter", 0)) * loops
    return n + sum(rows_compared_and_dropped(c) for c in node.get("Plans", []))


def test_a_commit_of_many_hosts_adds_its_totals_without_comparing_every_pair(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An import of 3,000 new hosts' boots and attempts commits its totals in work that
    grows with the hosts, not with their square. (The commit paired each host's row
    after the change with the change in a join the planner, told by the statistics of
    the pending changes, empty when last analysed, that each side had one row, made a
    nested loop: 18 million comparisons here, 4.9 s a commit of 6,485 hosts and a
    million-boot import 3.06x the hand loader's time.)"""

    def hosts(first: int, n: int) -> list[dict[str, Any]]:
        objs: list[dict[str, Any]] = []
        for i in range(first, first + n):
            m, b = f"{i:032x}", f"{i:08x}-0000-4000-8000-000000000000"
            objs.append(boot_row(m, b, "7.1", "7.0", T0))
            objs.append(
                attempt_row(
                    m, f"{i:08x}-a", from_boot=b, prev="7.1", target="7.2",
                    verdict="cold-boot", verdict_boot=None, created_at=float(T0 + 10),
                )
            )  # fmt: skip
        return objs

    db, url = imported(pg_server, tmp_path, capsys, hosts(0, 100))
    # what autovacuum's ANALYZE finds between commits: the pending changes' tables have
    # pages and no live row (each commit takes its own out)
    pg_server.psql(
        "ANALYZE fleet_rollup_pending_boots, fleet_rollup_pending_attempts, "
        "fleet_rollup_pending_tx",
        db,
    )
    path = write_export(tmp_path / "more.jsonl", hosts(100, 3000))

    def run() -> None:
        rc, _, err = ctl(capsys, "import", str(path), "--db", url)
        assert rc == 0, err

    plans = commit_plans(pg_server, db, run)
    tables = {p["Query Text"].split("INTO fleet_rollup_transition_")[1].split()[0] for p in plans}
    assert tables == {"boots", "attempts"}
    dropped = sum(rows_compared_and_dropped(p["Plan"]) for p in plans)
    assert dropped < 3000, dropped  # 17,994,000 before
    rows = {(r["previous_release"], r["release"]): r for r in report(capsys, url)}
    assert rows[("7.0", "7.1")]["hosts"] == 3100
    assert rows[("7.1", "7.2")]["attempts"] == 3100
    assert report(capsys, url) == report(capsys, url, "--recompute")
    assert totals_agree(url)


def test_a_delete_of_many_hosts_takes_their_emptied_totals_out_without_comparing_every_pair(
    pg_server: PostgresServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A delete that leaves 1,500 hosts' rows of a transition with nothing (retention's
    batches do) takes those rows out in work that grows with them, not with their
    square. (They were deleted by their keys joined with arrays of them, and the
    planner, told by the statistics that no host row was empty, compared each empty row
    with every key: 2,248,500 comparisons here; 2.7 million, 0.65 s, in each batch of
    5,000 boots of a retention.)"""
    objs: list[dict[str, Any]] = []
    for i in range(3000):  # each host: a cold 7.0, then kexecs to 7.1 .. 7.10
        m = f"{i:032x}"
        objs.append(boot_row(m, f"{i:08x}-0000-4000-8000-000000000000", "7.0", None, T0))
        for k in range(1, 11):
            b = f"{i:08x}-{k:04x}-4000-8000-000000000000"
            objs.append(boot_row(m, b, f"7.{k}", f"7.{k - 1}", T0 + k * 86400))
    db, url = imported(pg_server, tmp_path, capsys, objs)
    pg_server.psql("ANALYZE", db)  # what autovacuum finds: no host row is empty

    def run() -> None:
        said = pg_server.psql(
            f"DELETE FROM boots WHERE booted_at < {T0 + 1} AND machine_id < '{1500:032x}'", db
        )
        assert said.strip() == "DELETE 1500", said

    plans = commit_plans(pg_server, db, run, "DELETE FROM fleet_rollup_host_")
    tables = {p["Query Text"].split("DELETE FROM fleet_rollup_host_")[1].split()[0] for p in plans}
    assert tables == {"boots", "attempts"}
    dropped = sum(rows_compared_and_dropped(p["Plan"]) for p in plans)
    assert dropped < 1500, dropped  # 2,248,500 before
    left = pg_server.psql("SELECT count(*) FROM fleet_rollup_host_boots", db)
    assert int(left) == 31500  # ten kexecs a host, and the cold 7.0 of those kept
    assert report(capsys, url) == report(capsys, url, "--recompute")
    assert totals_agree(url)
