"""A store error (a lock held by another connection, a failing store) during load or
retention is one line naming the database and what went wrong, exit 1: never
``internal error``, never a traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from tests.conftest import FIXTURES
from tests.pgserver import PostgresServer

BIN = Path(sys.executable).parent
ENV = {**os.environ, "KHOD_DB": ""}
STEP = str(FIXTURES / "kexec1/step1")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=120, env=ENV
    )


def assert_store_error(
    r: subprocess.CompletedProcess[str], prog: str, where: str, what: str
) -> None:
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert len(errors) == 1, r.stderr
    assert errors[0].startswith(f"{prog}: error: ") and where in errors[0], r.stderr
    assert what in errors[0], r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert "[SQL:" not in r.stderr  # SQLAlchemy's second line


@contextmanager
def pg_lock(server: PostgresServer, db: str, table: str) -> Iterator[None]:
    """Another connection holds ACCESS EXCLUSIVE on ``table``, as a long migration or
    a VACUUM FULL would."""
    with psycopg.connect(f"host=127.0.0.1 port={server.port} user=postgres dbname={db}") as conn:
        conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def test_locked_postgresql_store(pg_server: PostgresServer) -> None:
    name = pg_server.create_database()
    # lock_timeout: the short wait this store is given (a fleet database would set it)
    url = pg_server.url(name) + "?options=-c%20lock_timeout%3D300"
    where = pg_server.url(name)
    assert run(str(BIN / "khod"), "--once", "--sysroot", STEP, "--db", url).returncode == 0
    with pg_lock(pg_server, name, "boots"):  # load
        for cmd in (["history"], ["chain"], ["dmesg"], ["export"], ["report", "transitions"]):
            r = run(str(BIN / "khoctl"), *cmd, "--sysroot", STEP, "--db", url)
            assert_store_error(r, "khoctl", where, "lock timeout")
    with pg_lock(pg_server, name, "pstore_records"):  # retention (the boot is in)
        r = run(str(BIN / "khod"), "--once", "--sysroot", STEP, "--db", url, "--max-boots", "1")
        assert_store_error(r, "khod", where, "lock timeout")
        assert r.stderr.startswith(f"khod: error: database {where}"), r.stderr


def test_locked_sqlite_store(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    url = f"sqlite:///{db}"
    assert run(str(BIN / "khod"), "--once", "--sysroot", STEP, "--db", url).returncode == 0
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")  # no reader either, WAL or not
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("UPDATE boots SET release = release")
        r = run(str(BIN / "khoctl"), "history", "--sysroot", STEP, "--db", url)
        assert r.returncode == 1 and "Traceback" not in r.stderr
        assert r.stderr == f"khoctl: error: cannot open database {db}: database is locked\n"
    finally:
        conn.close()


def test_an_interrupt_during_a_statement_stays_an_interrupt(tmp_path: Path) -> None:
    """Ctrl-C while a query runs: the command ends as interrupted (130), not with an
    error the store's error tagging made of it."""
    import pytest
    from sqlalchemy import event, text

    from khod.cli.common import run_main
    from khod.store.db import open_store

    store = open_store(f"sqlite:///{tmp_path / 'k.db'}")

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    event.listen(store.engine, "before_cursor_execute", interrupt)

    def main(_argv: object) -> int:
        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return 0

    try:
        with pytest.raises(KeyboardInterrupt):
            main([])
        assert run_main("khoctl", main, []) == 130
    finally:
        store.dispose()
