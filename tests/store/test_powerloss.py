"""Power loss: a store truncated, or with a torn page, is found when khod starts, moved
aside with a timestamp (never deleted), and a new store takes this boot, with an
event that says what happened."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from khod.store.db import open_store
from khod.store.reads import load_boots, load_events
from tests.builders import Host
from tests.conftest import SysrootFactory

STEPS = ["pstore-kho/step0", "pstore-kho/step1", "pstore-kho/step2"]


def khod_once(root: Path, db: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = Host(root, f"sqlite:///{db}").once().rc
    return rc, capsys.readouterr().err


def seeded(sysroot: SysrootFactory, db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for step in STEPS:
        assert khod_once(sysroot(step), db, capsys)[0] == 0
    with sqlite3.connect(db) as conn:  # everything in the main file, as after a checkpoint
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def page_size(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])


def torn_page(db: Path) -> None:
    """The second half of the boots table's b-tree page left as garbage: half a page
    written when the power went. (SQLite keeps no page checksums: garbage inside a
    blob's overflow page is not found this way; the blobs' sha256 columns are what
    would tell.)"""
    page = page_size(db)
    with sqlite3.connect(db) as conn:
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'boots'").fetchone()
    with open(db, "r+b") as f:
        f.seek((root - 1) * page + page // 2)
        f.write(os.urandom(page // 2))


def truncated_to_pages(db: Path) -> None:
    page = page_size(db)
    os.truncate(db, (db.stat().st_size // page // 2) * page)


def truncated_mid_page(db: Path) -> None:
    os.truncate(db, db.stat().st_size // 2 + 123)


@pytest.mark.parametrize("damage", [torn_page, truncated_to_pages, truncated_mid_page])
def test_damaged_store_is_moved_aside_and_a_new_one_takes_the_boot(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object
) -> None:
    db = tmp_path / "state" / "khod.db"
    seeded(sysroot, db, capsys)
    damage(db)  # type: ignore[operator]
    damaged_bytes = db.read_bytes()
    root = sysroot("pstore-kho/step3")
    rc, err = khod_once(root, db, capsys)
    assert rc == 0, err
    damaged = [line for line in err.splitlines() if "damaged" in line]
    assert len(damaged) == 1, err
    (warning,) = damaged
    assert warning.startswith(f"khod: warning: database {db} was damaged (")
    # the main file; its -wal and -shm, when SQLite left them, were moved beside it
    (aside,) = [
        p for p in db.parent.glob("khod.db.damaged-*") if not p.name.endswith(("-wal", "-shm"))
    ]
    assert f"moved aside to {aside}; a new one was created" in warning
    assert aside.read_bytes() == damaged_bytes  # kept as it was, byte for byte
    store = open_store(f"sqlite:///{db}")
    (boot,) = load_boots(store)  # the new store has this boot
    assert boot.boot_id.startswith("577f767f") and boot.id is not None
    (event,) = [e for e in load_events(store, boot.id) if e["kind"] == "store-damaged"]
    assert event["severity"] == "warning" and str(aside) in event["message"]
    store.dispose()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_a_healthy_store_is_left_alone(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "state" / "khod.db"
    seeded(sysroot, db, capsys)
    rc, err = khod_once(sysroot("pstore-kho/step3"), db, capsys)
    assert rc == 0 and "damaged" not in err
    assert not list(db.parent.glob("*.damaged-*"))
    store = open_store(f"sqlite:///{db}")
    assert len(load_boots(store)) == 4
    store.dispose()
