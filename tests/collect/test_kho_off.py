"""A ``kho=off`` kernel entered by a KHO kexec (KERNEL-INTERFACES.md section 10): the
kernel logs ``KHO: found kexec handover data.``, still revives the ``reserve_mem`` region
named on its command line (``Revived memory reservation 'oops' from KHO``), takes no
kexec-metadata, and its debugfs has no ``kho/``. KHO is off in it, whether debugfs is
mounted or not; the attempt that kexec'd into it landed, refused by configuration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from khod.ingest.snapshot import compute_snapshot
from khod.metrics import SnapshotCollector, exposition, make_registry
from khod.parse import proc
from khod.store.db import open_store
from tests import variants
from tests.builders import boot_row, write_export
from tests.checks.test_kexec import ctl, fakebin, image  # noqa: F401 (fixtures)
from tests.collect.test_kernel_word import history, khod_once
from tests.conftest import SysrootFactory
from tests.fleet.test_fleet import ctl as fleet_ctl
from tests.fleet.test_report import T0, attempt_obj

PSTORE_MACHINE = "84ce2d5daaed6b971052fc40dfcd0a30"


def kho_off_after_kho(root: Path, *, debugfs_mounted: bool) -> None:
    """pstore/step1 (a KHO kexec with ramoops in reserve_mem 'oops') as the same kernel
    shows it booted with ``kho=off`` appended to its command line: no ``kho/`` and no
    ``exec from`` line; ``kho_scratch=`` is still parsed (its ``scratch areas`` line),
    the handover still found, the region still revived."""
    variants.remove(root, variants.KHO)
    variants.drop_kmsg_lines(root, b"KHO: exec from")
    cmdline = (root / "proc/cmdline").read_bytes().rstrip(b"\n") + b" kho=off\n"
    variants.replace(root, "proc/cmdline", cmdline)
    variants.replace(root, "proc/sys/kernel/bootloader_type", b"208\n")
    variants.remove(root, "sys/kernel/debug")
    if debugfs_mounted:
        (root / "sys/kernel/debug/tracing").mkdir(parents=True)


@pytest.mark.parametrize("debugfs_mounted", [True, False], ids=["debugfs", "no-debugfs"])
def test_a_kho_off_kernel_after_a_handover_is_kho_off_and_its_attempt_landed_kho_off(
    sysroot: SysrootFactory,
    image: Path,  # noqa: F811
    fakebin: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    debugfs_mounted: bool,
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    step0, step1 = sysroot("pstore/step0"), sysroot("pstore/step1")
    kho_off_after_kho(step1, debugfs_mounted=debugfs_mounted)
    khod_once(step0, db)
    rc, _, err = ctl(capsys, "kexec", "--sysroot", str(step0), "--kernel", str(image), "--db", db)
    assert rc == 0, err
    khod_once(step1, db)

    got = history(capsys, db)[0]
    assert (got["kind"], got["kho"]["enabled"], got["verdict"]) == (
        "kexec-rejected",
        False,
        "landed-kho-off",
    ), got
    assert "KHO is off" in got["kind_reason"] and "'oops'" in got["kind_reason"], got
    assert got["pstore_records"] > 0  # what the revived region kept is recorded

    rc, status, err = ctl(capsys, "status", "--json", "--sysroot", str(step1), "--db", db)
    assert rc == 0, err
    assert (status["kind"], status["kho"]["enabled"]) == ("kexec-rejected", False), status

    snap = compute_snapshot(
        open_store(db), PSTORE_MACHINE, got["boot_id"], ingested_at=0, duration=0
    )
    c = SnapshotCollector()
    c.set(snap)
    text = exposition(make_registry(c)).decode()
    assert "khod_kho_enabled 0.0" in text
    assert 'khod_kexec_attempts_total{verdict="landed-kho-off"} 1.0' in text


def test_the_fleet_report_counts_landed_kho_off_as_landed_without_handover(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five hosts kexec 7.0 -> 7.1 with kho=off: every attempt landed (refused by
    configuration), none failed to land, none was rejected for its ABI."""
    objs: list[dict[str, Any]] = []
    for i in range(5):
        m = f"f{i:031x}"
        objs.append(boot_row(m, f"f{i}-0", "7.0", None, T0))
        off = boot_row(m, f"f{i}-1", "7.1", None, T0 + 100)
        off |= {
            "kind": "kexec-rejected",
            "kind_reason": "KHO: found kexec handover data. (KHO is off; nothing revived)",
            "kho_enabled": False,
            "kho_abi": None,
        }
        objs.append(off)
        objs.append(attempt_obj(m, i + 1, f"f{i}-0", "7.0", "7.1", "landed-kho-off", f"f{i}-1"))
    f = write_export(tmp_path / "fleet.jsonl", objs)
    rc, out, err = fleet_ctl(capsys, "import", str(f), "--db", db_url, "--json")
    assert rc == 0, err
    assert json.loads(out)["new"] == {"boot": 10, "attempt": 5}
    rc, out, err = fleet_ctl(capsys, "report", "transitions", "--db", db_url, "--json")
    assert rc == 0, err
    row = {(r["previous_release"], r["release"]): r for r in json.loads(out)}[("7.0", "7.1")]
    got = {k: row[k] for k in ("attempts", "landed", "failed_to_land", "rejected")}
    assert got == {"attempts": 5, "landed": 0, "failed_to_land": 0, "rejected": 0}, row
    assert row["without_handover"] == 5
    assert row["rates"]["land_failure"]["count"] == 0, row["rates"]


@pytest.mark.parametrize(
    ("cmdline", "setting"),
    [
        ("kho=on kho=off", False),
        ("kho=Off", False),
        ("kho=nope", False),  # kstrtobool reads the first character
        ("kho=t", True),
        ("kho=on kho=maybe", True),  # an invalid value is ignored: the earlier one holds
        ("kho=o", None),
        ("nokho", None),
    ],
)
def test_kho_on_the_command_line_is_read_as_the_kernel_reads_it(
    cmdline: str, setting: bool | None
) -> None:
    assert proc.kho_cmdline_setting(cmdline) is setting
