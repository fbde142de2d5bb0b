"""The command-line contract: JSON keys, tables, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from khod.cli import khoctl
from khod.cli.common import run_main
from khod.store.schema import HEAD_REVISION
from tests import variants
from tests.builders import Host
from tests.conftest import FIXTURES, SysrootFactory

BIN = Path(sys.executable).parent
CONTRACT_KEYS = {"boot_id", "release", "kind", "previous_release", "kexec_count", "kho"}


def khoctl_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert run_main("khoctl", khoctl.main, [*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def ingest_chain(db_url: str, scenario: str) -> list[Path]:
    steps = sorted(p for p in (FIXTURES / scenario).iterdir() if p.is_dir())
    for step in steps:
        assert Host(step, db_url).once().rc == 0
    return steps


def test_history_of_the_pstore_kho_chain(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    steps = ingest_chain(db_url, "pstore-kho")
    rows = khoctl_json(capsys, "history", "--sysroot", str(steps[-1]), "--db", db_url)
    assert isinstance(rows, list)
    assert [(r["kind"], r["kexec_count"], r["previous_release"]) for r in rows] == [
        ("kexec", 3, "7.3.4-khlab-pk"),
        ("kexec", 2, "7.3.4-khlab-pk"),
        ("kexec", 1, "7.3.4-khlab-pk"),
        ("cold", 0, None),
    ]
    for r in rows:
        assert CONTRACT_KEYS | {"booted_at"} <= set(r)
        assert set(r["kho"]) == {"enabled", "abi", "abi_base", "abi_tags", "subtrees"}
        assert set(r["luo"]) == {"compatible", "liveupdate_num", "sessions"}
        assert {"metadata_source", "bootloader_type"} <= set(r)
    assert rows[0]["kho"]["subtrees"] == [
        {"name": "kexec-metadata", "size": 73},
        {"name": "pstore-kho", "size": 262192},
    ]


def test_chain_ends_at_this_boot_and_starts_at_the_cold_boot(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    steps = ingest_chain(db_url, "pstore-kho")
    rows = khoctl_json(capsys, "chain", "--sysroot", str(steps[2]), "--db", db_url)
    assert isinstance(rows, list)
    assert [(r["kexec_count"], r["link"]) for r in rows] == [(0, "start"), (1, "ok"), (2, "ok")]


def test_chain_marks_a_missing_boot_as_a_gap(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for step in ("step0", "step1", "step3"):
        assert Host(FIXTURES / "pstore-kho" / step, db_url).once().rc == 0
    rows = khoctl_json(
        capsys, "chain", "--sysroot", str(FIXTURES / "pstore-kho/step3"), "--db", db_url
    )
    assert isinstance(rows, list)
    assert [(r["kexec_count"], r["link"]) for r in rows] == [(0, "start"), (1, "ok"), (3, "gap")]


def test_chain_restarts_after_a_cold_boot(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    steps = ingest_chain(db_url, "nokho")
    rows = khoctl_json(capsys, "chain", "--sysroot", str(steps[-1]), "--db", db_url)
    assert isinstance(rows, list)
    assert [r["boot_id"] for r in rows] == ["d52b91fc-1b58-443e-882b-95e3e707a7c3"]


def test_status_is_live_and_says_whether_recorded(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    step = str(FIXTURES / "kexec1/step1")
    d = khoctl_json(capsys, "status", "--sysroot", step, "--db", db_url)
    assert isinstance(d, dict)
    assert set(d) >= CONTRACT_KEYS and d["recorded"] is False
    assert (d["previous_release"], d["kexec_count"], d["kho"]["abi"]) == (
        "7.3.4-khlab-a",
        1,
        "kho-v4",
    )
    assert Host(Path(step), db_url).once().rc == 0
    d = khoctl_json(capsys, "status", "--sysroot", step, "--db", db_url)
    assert isinstance(d, dict) and d["recorded"] is True


def test_tables_without_json(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    steps = ingest_chain(db_url, "kexec1")
    capsys.readouterr()
    assert (
        run_main("khoctl", khoctl.main, ["history", "--sysroot", str(steps[-1]), "--db", db_url])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "BOOTED",
        "BOOT",
        "RELEASE",
        "KIND",
        "FROM",
        "COUNT",
        "ABI",
        "LIVEUPDATE",
        "PSTORE",
        "VERDICT",
    ]
    assert out[1].split()[4:] == [  # date, time and zone, then the boot id
        "7.3.4-khlab-a",
        "kexec",
        "7.3.4-khlab-a",
        "1",
        "kho-v4",
        "-",
        "0",
        "-",
    ]
    assert (
        run_main("khoctl", khoctl.main, ["status", "--sysroot", str(steps[-1]), "--db", db_url])
        == 0
    )
    assert "previous release:  7.3.4-khlab-a" in capsys.readouterr().out


def test_db_upgrade_and_current(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main("khoctl", khoctl.main, ["db", "upgrade", "--db", db_url]) == 0
    assert f"schema empty -> {HEAD_REVISION} (head)" in capsys.readouterr().out
    assert run_main("khoctl", khoctl.main, ["db", "current", "--db", db_url]) == 0
    assert f"schema {HEAD_REVISION} (head)" in capsys.readouterr().out


def test_read_commands_do_not_create_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "none.db"
    assert run_main("khoctl", khoctl.main, ["history", "--db", f"sqlite:///{db}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("khoctl: error: no database at") and err.count("\n") == 1
    assert not db.exists()


# --- the installed scripts, run once for real ---

# root without the capabilities that bypass permission bits: files owned by another
# user are then as unwritable (or unreadable) to it as they would be to that user
UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
NOBODY = 65534


def run(*argv: str, unprivileged: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = UNPRIVILEGED if unprivileged else []
    return subprocess.run(
        [*prefix, *argv],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
        env={**os.environ, "KHOD_DB": ""},
    )


def test_installed_scripts(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    r = run(str(BIN / "khod"), "--once", "--sysroot", str(FIXTURES / "kexec1/step1"), "--db", db)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("khod: recorded boot 30341bb4-f2be-44ce-9dc1-bc1efbab050a")
    r = run(str(BIN / "khoctl"), "history", "--all", "--json", "--db", db)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["kexec_count"] == 1


def assert_one_line_error(r: subprocess.CompletedProcess[str], prog: str, text: str) -> None:
    assert r.returncode == 1
    lines = [ln for ln in r.stderr.splitlines() if ": error: " in ln]
    assert lines == [ln for ln in r.stderr.splitlines() if ln.startswith(f"{prog}: error")]
    assert len(lines) == 1 and text in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_corrupt_db_from_the_command_line(tmp_path: Path) -> None:
    """khoctl refuses a garbage store in one line; khod moves it aside and starts a new
    one (tests/store/test_powerloss.py has the rest)."""
    db = tmp_path / "k.db"
    garbage = os.urandom(8192)
    db.write_bytes(garbage)
    r = run(str(BIN / "khoctl"), "history", "--db", f"sqlite:///{db}")
    assert_one_line_error(r, "khoctl", "is unusable: file is not a database")
    r = run(
        str(BIN / "khod"),
        "--once",
        "--sysroot",
        str(FIXTURES / "cold/step0"),
        "--db",
        f"sqlite:///{db}",
    )
    assert r.returncode == 0, r.stderr
    (warning,) = r.stderr.splitlines()
    assert warning.startswith(f"khod: warning: database {db} was damaged (not an SQLite")
    (aside,) = tmp_path.glob("k.db.damaged-*")
    assert aside.read_bytes() == garbage


def test_missing_boot_identity_from_the_command_line(sysroot: SysrootFactory) -> None:
    root = sysroot("cold/step0")
    variants.remove(root, "proc/sys/kernel/osrelease")
    r = run(str(BIN / "khod"), "--once", "--sysroot", str(root), "--db", "sqlite://")
    assert_one_line_error(r, "khod", "cannot identify this boot")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="drops capabilities as root")


@needs_root
def test_unwritable_db_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chown(state, NOBODY, NOBODY)  # another user's directory
    db = state / "sub" / "khod.db"
    step = str(FIXTURES / "kexec1/step1")
    r = run(
        str(BIN / "khod"), "--once", "--sysroot", step, "--db", f"sqlite:///{db}", unprivileged=True
    )
    assert_one_line_error(r, "khod", "cannot create database directory")
    assert "Permission denied" in r.stderr
    (state / "sub").mkdir(mode=0o755)
    os.chown(state / "sub", NOBODY, NOBODY)
    r = run(
        str(BIN / "khod"), "--once", "--sysroot", step, "--db", f"sqlite:///{db}", unprivileged=True
    )
    assert_one_line_error(r, "khod", "is not writable")


@needs_root
def test_permission_denied_on_a_kho_file_is_an_event(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("kexec1/step1")
    fdt = root / "sys/kernel/debug/kho/in/fdt"
    fdt.chmod(0o400)  # as in debugfs, but owned by someone else
    os.chown(fdt, NOBODY, NOBODY)
    r = run(
        str(BIN / "khod"),
        "--once",
        "--sysroot",
        str(root),
        "--db",
        f"sqlite:///{tmp_path / 'k.db'}",
        unprivileged=True,
    )
    assert r.returncode == 0, r.stderr
    assert "khod: error: /sys/kernel/debug/kho/in/fdt: permission denied" in r.stderr
    assert "kexec from 7.3.4-khlab-a, count 1" in r.stdout
    assert "Traceback" not in r.stderr


def test_status_shows_the_live_update_the_loader_and_the_compat_tags(
    db_url: str, sysroot: SysrootFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.fdtbuild import kho_root, v3_subtree
    from tests.parse.test_parse_luo import luo_ser

    root = sysroot("kexec1/step1")
    kho = "sys/kernel/debug/kho"
    variants.replace(root, f"{kho}/in/sub_fdts/LUO", luo_ser("luo-v5", 2, sessions_pa=0x1000))
    variants.replace(root, "proc/sys/kernel/bootloader_type", b"208\n")
    variants.replace(
        root,
        f"{kho}/in/fdt",
        kho_root("kho-v4;radix-v1;vmalloc-v1", 0x1000, [v3_subtree("kexec-metadata", 0x2000, 73)]),
    )
    d = khoctl_json(capsys, "status", "--sysroot", str(root), "--db", db_url)
    assert isinstance(d, dict)
    assert d["luo"] == {"compatible": "luo-v5", "liveupdate_num": 2, "sessions": True}
    assert (d["bootloader_type"], d["metadata_source"]) == (0xD0, "kho")
    assert (d["kho"]["abi"], d["kho"]["abi_base"], d["kho"]["abi_tags"]) == (
        "kho-v4;radix-v1;vmalloc-v1",
        "kho-v4",
        ["radix-v1", "vmalloc-v1"],
    )
    assert Host(root, db_url).once().rc == 0
    rows = khoctl_json(capsys, "history", "--sysroot", str(root), "--db", db_url)
    assert isinstance(rows, list) and rows[0]["luo"]["liveupdate_num"] == 2
    capsys.readouterr()
    assert run_main("khoctl", khoctl.main, ["status", "--sysroot", str(root), "--db", db_url]) == 0
    out = capsys.readouterr().out
    assert "live update (LUO): luo-v5, liveupdate number 2, sessions handed over" in out
    assert "loaded by:         0xd0 (kexec)" in out
