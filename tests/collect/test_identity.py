"""One boot, one row: a boot ingested while /etc/machine-id is still ``uninitialized``
(first boot, an early unit) is recorded under a provisional identity, and adopted by
the real machine id at a later ingest of the same boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from khod.cli import khoctl, khod_main
from khod.cli.common import run_main
from khod.store.db import open_store
from khod.store.reads import load_boots, load_events, load_pstore
from tests.builders import Host
from tests.conftest import SysrootFactory

BOOT = "76d14fe6-5764-46e9-a6d4-d1bfc29718ff"  # pstore-kho/step2
EARLIER = "f3d7c587-29b6-4fdf-91fe-146df8164692"  # pstore-kho/step1


def ingest(root: Path, db: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    rc = Host(root, db).once().rc
    out = capsys.readouterr()
    assert rc == 0, out.err
    return out.err


def history(root: Path, db: str, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    capsys.readouterr()
    argv = ["history", "--all", "--json", "--sysroot", str(root), "--db", db]
    assert run_main("khoctl", khoctl.main, argv) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


@pytest.mark.parametrize("early", ["uninitialized\n", "", None])
def test_a_boot_ingested_before_and_after_its_machine_id_is_one_row(
    sysroot: SysrootFactory,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    early: str | None,
) -> None:
    ingest(sysroot("pstore-kho/step1"), db_url, capsys)  # the machine's boot before
    root = sysroot("pstore-kho/step2")
    machine_id = root / "etc" / "machine-id"
    real = machine_id.read_text().strip()
    if early is None:
        machine_id.unlink()
    else:
        machine_id.write_text(early)
    err = ingest(root, db_url, capsys)
    assert "Traceback" not in err
    assert [b["boot_id"] for b in history(root, db_url, capsys)].count(BOOT) == 1
    machine_id.write_text(real + "\n")
    ingest(root, db_url, capsys)
    rows = history(root, db_url, capsys)
    assert [(b["boot_id"], b["machine_id"]) for b in rows] == [(BOOT, real), (EARLIER, real)]
    store = open_store(db_url)
    try:
        this, before = load_boots(store)
        assert this.id is not None and before.id is not None
        (record,) = load_pstore(store, this.id)  # what step1 left: kept, and now
        assert record["machine_id"] == real  # linked to the boot it describes
        assert record["describes"] == before.id
        kinds = [e["kind"] for e in load_events(store, this.id)]
        assert "machine-id-adopted" in kinds
    finally:
        store.dispose()


def test_a_boot_recorded_under_its_machine_id_stays_there_when_the_id_is_gone(
    sysroot: SysrootFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sysroot("pstore-kho/step2")
    real = (root / "etc" / "machine-id").read_text().strip()
    ingest(root, db_url, capsys)
    (root / "etc" / "machine-id").write_text("uninitialized\n")
    ingest(root, db_url, capsys)
    assert [(b["boot_id"], b["machine_id"]) for b in history(root, db_url, capsys)] == [
        (BOOT, real)
    ]


def test_an_adopted_boot_comes_after_the_machines_earlier_boots(
    sysroot: SysrootFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Adoption puts the boot where it was recorded: after every boot the machine had,
    so its predecessor (the boot its pstore records and verdict belong to) is the last
    of them, not the first."""
    step0 = sysroot("pstore-kho/step0")
    ingest(step0, db_url, capsys)
    ingest(sysroot("pstore-kho/step1"), db_url, capsys)
    root = sysroot("pstore-kho/step2")
    machine_id = root / "etc" / "machine-id"
    real = machine_id.read_text().strip()
    machine_id.write_text("uninitialized\n")
    ingest(root, db_url, capsys)
    machine_id.write_text(real + "\n")
    ingest(root, db_url, capsys)
    capsys.readouterr()
    argv = ["history", "--json", "--sysroot", str(root), "--db", db_url]
    assert run_main("khoctl", khoctl.main, argv) == 0
    rows = json.loads(capsys.readouterr().out)
    first = history(step0, db_url, capsys)[-1]["boot_id"]
    assert [b["boot_id"] for b in rows] == [BOOT, EARLIER, first]
    store = open_store(db_url)
    try:
        this, before, _ = load_boots(store)
        assert this.boot_id == BOOT and before.boot_id == EARLIER and this.id is not None
        (record,) = load_pstore(store, this.id)
        assert record["describes"] == before.id
    finally:
        store.dispose()


@pytest.mark.parametrize("broken", [None, "not a machine id\n"], ids=["missing", "garbage"])
def test_boots_of_a_host_without_a_usable_machine_id_are_one_machine(
    sysroot: SysrootFactory,
    db_url: str,
    capsys: pytest.CaptureFixture[str],
    broken: str | None,
) -> None:
    """No /etc/machine-id at all (or garbage): no later ingest will bring the real one,
    so every boot of the host is one machine (``unknown``), as before: its chain, its
    retention and its pstore records' predecessor stay whole."""
    roots = [sysroot("pstore-kho/step1"), sysroot("pstore-kho/step2")]
    for root in roots:
        if broken is None:
            (root / "etc" / "machine-id").unlink()
        else:
            (root / "etc" / "machine-id").write_text(broken)
        ingest(root, db_url, capsys)
    rows = history(roots[1], db_url, capsys)
    assert [(b["boot_id"], b["machine_id"]) for b in rows] == [
        (BOOT, "unknown"),
        (EARLIER, "unknown"),
    ]
    store = open_store(db_url)
    try:
        this, before = load_boots(store)
        assert this.id is not None
        (record,) = load_pstore(store, this.id)
        assert record["describes"] == before.id
    finally:
        store.dispose()


def test_a_late_pstore_backend_finds_a_boot_recorded_before_its_machine_id(
    sysroot: SysrootFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A module loads (a late pstore backend) after /etc/machine-id was initialized, the
    boot still under its provisional identity: the rescan adds to that boot."""
    root = sysroot("pstore-kho/step2")
    machine_id = root / "etc" / "machine-id"
    real = machine_id.read_text()
    machine_id.write_text("uninitialized\n")
    ingest(root, db_url, capsys)
    machine_id.write_text(real)
    capsys.readouterr()
    argv = ["--once", "--pstore-rescan", "--sysroot", str(root), "--db", db_url]
    rc = run_main("khod", khod_main.main, argv)
    out = capsys.readouterr()
    assert (rc, out.err) == (0, "")
    assert "pstore rescan: 0 new records" in out.out
