"""Readers open the store read-only (a store on a read-only filesystem can be read, and
is never created or migrated by a reader); a store newer than this khod is said so."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from khod.store.schema import HEAD_REVISION
from tests.builders import Host
from tests.conftest import SysrootFactory, mounted_tmpfs
from tests.fleet.test_fleet import ctl, host_store


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    yield from mounted_tmpfs(tmp_path, "8m")


def test_a_store_on_a_read_only_filesystem_can_be_read(
    sysroot: SysrootFactory, tmp_path: Path, small_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{small_fs / 'khod.db'}"
    host_store(sysroot, url, ["pstore-kho/step0", "pstore-kho/step1"])
    root = tmp_path / "roots" / "pstore-kho-step1"
    r = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, check=False
    )
    assert r.returncode == 0, r.stderr
    before = sorted(p.name for p in small_fs.iterdir())
    db = ("--db", url, "--sysroot", str(root))
    rc, out, err = ctl(capsys, "history", "--json", *db)
    assert rc == 0, err
    assert len(json.loads(out)) == 2
    rc, out, err = ctl(capsys, "chain", *db)
    assert rc == 0 and "ok" in out, err
    rc, out, err = ctl(capsys, "dmesg", "--json", *db)
    assert rc == 0 and json.loads(out)["dumps"], err
    rc, out, err = ctl(capsys, "status", "--json", *db)
    assert rc == 0 and json.loads(out)["recorded"] is True, err
    out_file = tmp_path / "x.jsonl"
    rc, _, err = ctl(capsys, "export", "-o", str(out_file), *db)
    assert rc == 0 and "exported 2 boots" in err, err
    assert sorted(p.name for p in small_fs.iterdir()) == before


def test_a_reader_creates_no_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = ctl(capsys, "history", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert rc == 1 and err.count("\n") == 1 and not (tmp_path / "none.db").exists(), err


def _older_store(sysroot: SysrootFactory, path: Path) -> str:
    """A real store, taken back to the schema the previous release wrote."""
    from khod.store import migrate
    from khod.store.db import open_store

    url = f"sqlite:///{path}"
    host_store(sysroot, url, ["pstore-kho/step0", "pstore-kho/step1"])
    store = open_store(url, migrate=False)
    migrate.downgrade(store, "0010")
    store.dispose()
    return url


def _revision(path: Path, immutable: bool = False) -> str:
    con = sqlite3.connect(f"file:{path}?mode=ro{'&immutable=1' if immutable else ''}", uri=True)
    try:
        return str(con.execute("SELECT version_num FROM alembic_version").fetchone()[0])
    finally:
        con.close()


def test_a_reader_brings_an_older_local_store_to_head(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a package upgrade, before khod has run again, khoctl reads the store the
    previous release wrote, as khod would at start."""
    url = _older_store(sysroot, tmp_path / "khod.db")
    rc, out, err = ctl(capsys, "history", "--json", "--db", url, "--sysroot", str(tmp_path))
    assert rc == 0, err
    assert len(json.loads(out)) == 2
    assert _revision(tmp_path / "khod.db") == HEAD_REVISION


def test_an_older_store_that_cannot_be_written_is_one_line(
    sysroot: SysrootFactory, tmp_path: Path, small_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _older_store(sysroot, small_fs / "khod.db")
    r = subprocess.run(
        ["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, check=False
    )
    assert r.returncode == 0, r.stderr
    rc, _, err = ctl(capsys, "history", "--db", url, "--sysroot", str(tmp_path))
    assert rc == 1 and err.count("\n") == 1, err
    assert "schema 0010 is older than this khod" in err and "khoctl db upgrade" in err, err
    assert _revision(small_fs / "khod.db", immutable=True) == "0010"


@pytest.fixture
def newer_store(sysroot: SysrootFactory, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'khod.db'}"
    host_store(sysroot, url, ["pstore-kho/step0"])
    con = sqlite3.connect(tmp_path / "khod.db")
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    # and, as a release that drops a column this khod writes would, takes pushes only
    # from its own release on (docs/fleet-versions.md)
    con.execute("UPDATE schema_compat SET min_writer = '9999'")
    con.commit()
    con.close()
    return url


NEWER = f"schema 9999 is newer than this khod (head {HEAD_REVISION}): upgrade khod"


@pytest.mark.parametrize("action", ["current", "upgrade"])
def test_a_store_newer_than_this_khod_is_said_so(
    newer_store: str, action: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = ctl(capsys, "db", action, "--db", newer_store)
    assert rc == 1 and out == "" and err.count("\n") == 1, (out, err)
    assert err.startswith("khoctl: error: ") and NEWER in err, err


def test_khod_and_sync_against_a_newer_store_say_so(
    sysroot: SysrootFactory, newer_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    root = sysroot("pstore-kho/step1")
    rc = Host(root, newer_store).once().rc
    err = capsys.readouterr().err
    assert rc == 1 and NEWER in err and err.count("\n") == 1, err
    host = f"sqlite:///{tmp_path / 'host.db'}"
    host_store(sysroot, host, ["pstore-kho/step2"])
    rc, _, err = ctl(capsys, "sync", "--db", host, "--to", newer_store)
    assert rc == 1 and NEWER in err and err.count("\n") == 1, err
