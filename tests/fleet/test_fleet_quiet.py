"""A quiet fleet: a host with nothing past its watermarks opens no connection to the
fleet database, and the pushes and retries of many hosts are spread over time.

Connections are counted by the server itself (``log_connections``: one "connection
authorized" line per session, written before the session answers its client) on a
real TLS PostgreSQL, each host through its own role and certificate.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from khod.daemon import syncplan
from tests import daemon_helpers, pgserver
from tests.fleet.test_fleet_trust import (
    CHAIN,
    B,
    Fleet,
    Host,
    ctl,
    ingest,
    machine_of,
    root_of,
    sync,
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with pgserver.running_server(tls=True) as server:
        server.psql("ALTER SYSTEM SET log_connections = on")
        server.psql("SELECT pg_reload_conf()")
        tmp = tmp_path_factory.mktemp("quiet")
        db = server.create_database()
        fleet = Fleet(server, db, server.url(db), tmp, {}, {})
        rc, _, err = ctl("fleet", "init", "--db", fleet.owner)
        assert rc == 0, err
        yield fleet


def connections(fleet: Fleet, host: Host) -> int:
    """Sessions the server has let the host's role open so far."""
    log = fleet.server.log.read_text(errors="replace")
    return log.count(f"connection authorized: user={host.role} ")


def test_a_host_with_nothing_new_opens_no_connection(fleet: Fleet) -> None:
    """Ticks with nothing new: no connection at all; a new boot: one push, one
    connection; an attempt sent while open: no connection until its verdict comes."""
    host = fleet.enroll(B)
    ingest(fleet.tmp, host.local, "kexec1/step0")
    argv = ["record-kexec", "--sysroot", str(root_of(fleet.tmp, "kexec1/step0"))]
    assert ctl(*argv, "--db", host.local)[0] == 0
    rc, out, err = sync(host, "--json")
    assert rc == 0 and json.loads(out)["new"]["attempt"] == 1, (out, err)
    first = connections(fleet, host)
    assert first >= 1
    for _ in range(5):  # the attempt is still open: nothing of it changed
        rc, out, err = sync(host, "--json")
        assert rc == 0 and json.loads(out)["sent"] == {}, (out, err)
    assert connections(fleet, host) == first
    ingest(fleet.tmp, host.local, "kexec1/step1")  # a new boot: the attempt's verdict
    rc, out, err = sync(host, "--json")
    assert rc == 0 and json.loads(out)["new"]["boot"] == 1, (out, err)
    assert connections(fleet, host) == first + 1
    for _ in range(5):
        assert json.loads(sync(host, "--json")[1])["sent"] == {}
    assert connections(fleet, host) == first + 1
    (attempt,) = fleet.owner_rows(B)["kexec_attempts"]
    assert json.loads(attempt)["verdict"] == "landed"


def ticks(d: daemon_helpers.Running, n: int) -> None:
    """Wait for ``n`` more successful sync ticks of the daemon (its last-success
    timestamp in /metrics moving ``n`` times)."""
    last = "khod_sync_last_success_timestamp_seconds "
    seen: set[str] = set()
    deadline = time.monotonic() + 90
    while len(seen) < n:
        assert time.monotonic() < deadline and d.proc.poll() is None, d.scrape()
        line = next((ln for ln in d.scrape().splitlines() if ln.startswith(last)), "nan")
        if "nan" not in line.lower():
            seen.add(line)
        time.sleep(0.1)


def something_new(db: str) -> None:
    """A new event in the newest boot of the store at ``db`` (a SQLite URL)."""
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(events)") if r[1] != "id"]
        picked = ", ".join("'fresh-event'" if c == "fingerprint" else c for c in cols)
        conn.execute(
            f"INSERT INTO events ({', '.join(cols)}) SELECT {picked} FROM events "
            "WHERE boot_pk IS NOT NULL ORDER BY id DESC LIMIT 1"
        )


def test_the_daemon_starts_no_sync_worker_while_nothing_is_new(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The daemon's timer, every second: the boot pushed once, then tick after tick
    (each a success in /metrics) with no push process started and no connection; a
    new row is pushed at the next tick, then quiet again."""
    step = CHAIN[0]
    host = fleet.enroll(machine_of(step))
    conf = tmp_path / "khod.toml"
    conf.write_text(host.config.read_text() + 'interval = "1s"\n')
    with daemon_helpers.running_daemon(
        root_of(tmp_path, step), tmp_path, "--config", str(conf)
    ) as d:
        d.wait_for("READY=1")
        ticks(d, 8)  # the first push and seven ticks after it
        assert connections(fleet, host) == 1
        assert len(fleet.owner_rows(host.machine)["boots"]) == 1
        events = len(fleet.owner_rows(host.machine)["events"])
        something_new(d.db)
        deadline = time.monotonic() + 60
        while len(fleet.owner_rows(host.machine)["events"]) == events:
            assert time.monotonic() < deadline and d.proc.poll() is None
            time.sleep(0.2)
        ticks(d, 8)
        d.proc.terminate()
        d.proc.wait(10)
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert connections(fleet, host) == 2, log
    # every push process says one line: the two that sent something, and after each
    # at most one that found the store as it had left it
    pushes = [ln for ln in log.splitlines() if "synced " in ln or "error:" in ln]
    assert len(pushes) <= 4, log
    assert sum("nothing new" not in ln for ln in pushes) == 2, log


def test_hosts_push_at_their_own_stable_slot_spread_over_the_interval() -> None:
    """1,000 machine ids that booted in the same second: their pushes fall over the
    whole interval (no tenth of it gets more than twice its share), each host at the
    same offset every interval and after every restart."""
    rng = random.Random(28)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(1000)]
    interval, now = 300.0, 1_780_000_000.0
    delays = [syncplan.next_slot(now, syncplan.splay(m), interval) for m in ids]
    assert all(0 < d <= interval for d in delays)
    tenths = [0] * 10
    for d in delays:
        tenths[min(9, int(d / interval * 10))] += 1
    assert max(tenths) <= 200 and min(tenths) >= 50, tenths
    for m, d in zip(ids[:50], delays[:50], strict=True):
        later = now + d + 0.5  # just after its push: the next is one interval on
        assert syncplan.next_slot(later, syncplan.splay(m), interval) == pytest.approx(
            interval - 0.5
        )
    firsts = [syncplan.first_delay(syncplan.splay(m), interval) for m in ids]
    assert max(firsts) <= syncplan.FIRST_WINDOW and len({round(f) for f in firsts}) > 50


def test_hosts_that_failed_together_do_not_retry_together() -> None:
    """1,000 hosts whose pushes failed in the same second (the database away): their
    retries spread out (no second holds more than 5% of them), every delay between
    the first retry's and the interval, and growing on the whole while it lasts."""
    rng = random.Random(5)
    interval = 300.0
    times: list[list[float]] = []
    for _ in range(1000):
        t, last, own = 0.0, None, []
        for _ in range(6):
            last = syncplan.retry_delay(last, interval, rng)
            assert syncplan.FIRST_RETRY <= last <= interval
            t += last
            own.append(t)
        times.append(own)
    for k in range(6):
        per_second: dict[int, int] = {}
        for own in times:
            per_second[int(own[k])] = per_second.get(int(own[k]), 0) + 1
        assert max(per_second.values()) <= 50, (k, max(per_second.values()))
    gaps = [sorted(own[k] - (own[k - 1] if k else 0) for own in times) for k in range(6)]
    medians = [g[len(g) // 2] for g in gaps]
    assert medians == sorted(medians) and medians[-1] > 3 * medians[0], medians


def test_only_a_sqlite_store_is_looked_at_without_opening_it(tmp_path: Path) -> None:
    """The daemon's look at the local store: a SQLite file's stamp changes with a write
    and not with a read; a PostgreSQL store (or none yet) has none, so every tick
    starts a push, which itself connects only with something new."""
    db = f"sqlite:///{tmp_path / 'khod.db'}"
    assert syncplan.store_stamp(db) is None  # not made yet
    with sqlite3.connect(tmp_path / "khod.db") as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
    before = syncplan.store_stamp(db)
    assert before is not None
    with sqlite3.connect(tmp_path / "khod.db") as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert syncplan.store_stamp(db) == before
    with sqlite3.connect(tmp_path / "khod.db") as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    assert syncplan.store_stamp(db) != before
    assert syncplan.store_stamp("postgresql+psycopg://host_x@fleet/khod") is None
