"""--db, --sysroot and --debug are accepted before the command as after it (operators
type them there from habit: systemctl, kubectl, git), with the same result."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from khod.cli import khoctl
from khod.cli.common import run_main
from tests.builders import Host
from tests.conftest import FIXTURES
from tests.kimagebuild import bzimage

BIN = Path(sys.executable).parent
STEP = FIXTURES / "pstore/step1"


@pytest.fixture
def pristine(tmp_path: Path) -> Path:
    """A store holding the pstore chain, and an export of it."""
    db = tmp_path / "pristine.db"
    for step in ("step0", "step1"):
        root = str(FIXTURES / "pstore" / step)
        assert Host(Path(root), f"sqlite:///{db}").once().rc == 0
    import sqlite3

    conn = sqlite3.connect(db)  # fold the WAL in: copying the file copies the store
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return db


def commands(tmp_path: Path) -> list[list[str]]:
    image = tmp_path / "vmlinuz"
    image.write_bytes(bzimage("7.3.4-khlab-b"))
    dump = tmp_path / "dump.jsonl"
    fleet = f"sqlite:///{tmp_path / 'fleet.db'}"
    return [
        ["status"],
        ["status", "--json"],
        ["history"],
        ["history", "--json"],
        ["chain", "--json"],
        ["dmesg", "--json"],
        ["dmesg"],
        ["check", "--kernel", str(image), "--json"],
        ["kexec", "--kernel", str(image), "--dry-run", "--json"],
        ["record-kexec"],
        ["export", "-o", str(dump)],
        ["import", str(dump), "--json"],
        ["sync", "--to", fleet, "--json"],
        ["report", "transitions", "--json", "--include-cold"],
        ["db", "current"],
    ]


def normalise(text: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)?", "T", text)


def test_every_subcommand_takes_the_options_on_both_sides(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "k.db"
    common = ["--db", f"sqlite:///{db}", "--sysroot", str(STEP)]
    for cmd in commands(tmp_path):
        results = []
        for argv in ([*cmd, *common], [*common, *cmd], [*common[:2], *cmd, *common[2:]]):
            for stale in tmp_path.glob("fleet.db*"):
                stale.unlink()
            shutil.copy(pristine, db)
            capsys.readouterr()
            try:
                rc = run_main("khoctl", khoctl.main, argv)
            except SystemExit as e:  # a usage error
                rc = int(str(e.code))
            out, err = capsys.readouterr()
            results.append((rc, normalise(out), normalise(err)))
        assert results[0][0] == 0, (cmd, results[0])
        assert results[1] == results[0], cmd
        assert results[2] == results[0], cmd


def test_the_value_after_the_command_wins(
    pristine: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = f"sqlite:///{pristine}"
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    capsys.readouterr()
    argv = ["--db", missing, "--sysroot", "/nonexistent", "history", "--json"]
    assert run_main("khoctl", khoctl.main, [*argv, "--db", good, "--sysroot", str(STEP)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["boot_id"][:8] for r in rows] == ["6d78f400", "e7da0b67"]
    assert run_main("khoctl", khoctl.main, ["--db", good, "history", "--db", missing]) == 1
    assert f"no database at {tmp_path / 'none.db'}" in capsys.readouterr().err


def test_installed_script_takes_options_before_the_command(pristine: Path, tmp_path: Path) -> None:
    env = {**os.environ, "KHOD_DB": ""}
    db = f"sqlite:///{pristine}"
    before = subprocess.run(
        [str(BIN / "khoctl"), "--db", db, "--sysroot", str(STEP), "history", "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    after = subprocess.run(
        [str(BIN / "khoctl"), "history", "--json", "--db", db, "--sysroot", str(STEP)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert before.returncode == 0, before.stderr
    assert before.stdout == after.stdout and len(json.loads(before.stdout)) == 2
    # --debug before the command still shows the traceback
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"\x01" * 8192)
    r = subprocess.run(
        [str(BIN / "khoctl"), "--debug", "--db", f"sqlite:///{bad}", "history"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=env,
    )
    assert r.returncode == 1 and "Traceback" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("khoctl: error: ")
