"""khoctl kexec on a 7.0 host (kho-v1, no kexec-metadata, out/finalize): it finalizes
KHO itself before the load, says so in --dry-run, and a kexec that was not finalized is
named in the next boot's verdict."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from khod.cli import khod_main
from khod.cli.common import run_main
from tests import variants
from tests.checks.test_kexec import KHO, attempt_then_boot, calls, ctl, fakebin, seven_oh
from tests.conftest import SysrootFactory
from tests.fdtbuild import kho_root
from tests.kimagebuild import bzimage

__all__ = ["fakebin"]  # the fixture, used by name


@pytest.fixture
def image70(tmp_path: Path) -> Path:
    p = tmp_path / "vmlinuz-7.0.3"
    p.write_bytes(bzimage("7.0.3", abi="kho-v1"))
    return p


def test_dry_run_says_it_would_finalize_and_writes_nothing(
    sysroot: SysrootFactory,
    image70: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = sysroot("kexec1/step0")
    seven_oh(root, b"0\n")
    argv = ["kexec", "--dry-run", "--sysroot", str(root), "--kernel", str(image70)]
    rc, _, err = ctl(capsys, *argv, "--json", "--db", f"sqlite:///{tmp_path / 'k.db'}")
    assert rc == 0, err
    rc, out, _ = ctl(capsys, *argv, "--db", f"sqlite:///{tmp_path / 'k.db'}")
    assert rc == 0 and "would finalize KHO: echo 1 > /sys/kernel/debug/kho/out/finalize" in str(out)
    assert (root / KHO / "out/finalize").read_bytes() == b"0\n" and calls(fakebin) == []


def test_kexec_finalizes_before_loading(
    sysroot: SysrootFactory,
    image70: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = sysroot("kexec1/step0")
    seven_oh(root, b"0\n")
    rc, plan, err = ctl(
        capsys,
        "kexec",
        "--json",
        "--sysroot",
        str(root),
        "--kernel",
        str(image70),
        "--db",
        f"sqlite:///{tmp_path / 'k.db'}",
    )
    assert rc == 0, err
    assert plan["finalize"] == "/sys/kernel/debug/kho/out/finalize"
    assert (root / KHO / "out/finalize").read_bytes() == b"1"
    assert [c[:2] for c in calls(fakebin)] == [["kexec", "-s"], ["systemctl", "kexec"]]


def test_a_kexec_not_finalized_is_named_in_the_verdict(
    sysroot: SysrootFactory,
    image70: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The next kernel logs "disabling KHO revival: -2" (section 11): the handover was
    refused because the kexec was not finalized, not for a foreign ABI."""
    after = sysroot("kexec1/step1")
    variants.strip_handover(after)
    variants.append_kmsg(after, b"KHO: disabling KHO revival: -2")
    rows = attempt_then_boot(
        sysroot,
        image70,
        f"sqlite:///{tmp_path / 'k.db'}",
        "kexec1/step0",
        after,
        capsys,
        "--force",
    )
    got = rows[0]
    assert got["kind"] == "kexec-rejected"
    assert got["verdict"] == "abi-mismatch"
    with sqlite3.connect(tmp_path / "k.db") as conn:
        (detail,) = conn.execute("SELECT verdict_detail FROM kexec_attempts").fetchone()
    assert "was not finalized" in detail, detail


def test_a_finalized_kexec_into_7_0_lands(
    sysroot: SysrootFactory,
    image70: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """7.0 hands over no kexec-metadata: the next boot took the handover (kind kexec)
    and its kernel names no previous kernel. Nothing contradicts khoctl's attempt: it
    landed (and the chain comes from it), not a "mismatch" with a kernel that said
    nothing."""
    before = sysroot("kexec1/step0")
    seven_oh(before, b"0\n")  # khoctl kexec finalizes it
    after = sysroot("kexec1/step1")
    variants.replace(after, "proc/sys/kernel/osrelease", b"7.0.3\n")
    variants.replace(after, f"{KHO}/in/fdt", kho_root("kho-v1", 0x1000, []))
    variants.remove(after, f"{KHO}/in/sub_fdts/kexec-metadata")
    variants.remove(after, f"{KHO}/out/sub_fdts/kexec-metadata")
    variants.drop_kmsg_lines(after, b"KHO: exec from")
    db = f"sqlite:///{tmp_path / 'k.db'}"
    for root in (before, after):
        argv = ["--once", "--sysroot", str(root), "--db", db, "--state-dir", str(tmp_path / "st")]
        assert run_main("khod", khod_main.main, argv) == 0
        if root == before:
            argv = ["kexec", "--sysroot", str(root), "--kernel", str(image70), "--db", db]
            rc, _, err = ctl(capsys, *argv)
            assert rc == 0, err
    _, rows, _ = ctl(capsys, "history", "--json", "--all", "--db", db)
    got = rows[0]
    assert (got["kind"], got["previous_release"], got["kexec_count"]) == ("kexec", "7.0.2", 1)
    assert got["metadata_source"] == "attempt"
    assert got["verdict"] == "landed", got
