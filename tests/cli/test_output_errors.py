"""A stdout that cannot be written (closed, on /dev/full) and a number out of range end
in one line on stderr and a status (1; a usage error 2), never in "internal error". The
installed scripts, run as an operator's shell runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES

BIN = Path(sys.executable).parent
STEP = str(FIXTURES / "kexec1/step1")
# block-buffered stdout, as an operator's shell runs it
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"KHOD_DB": ""}


def run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    r: subprocess.CompletedProcess[str] = subprocess.run(
        argv,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        timeout=120,
        env=ENV,
        **kw,  # type: ignore[call-overload]
    )
    return r


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    r = run([str(BIN / "khod"), "--once", "--sysroot", STEP, "--db", url], stdout=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    return url


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "internal error" not in lines[0] and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["history", "--limit", "99999999999999999999"],
        ["history", "--limit", "-1"],
        ["report", "transitions", "--min-boots", "99999999999999999999"],
        ["report", "transitions", "--min-evidence", "-5"],
        ["report", "transitions", "--alpha", "nan"],
        ["report", "transitions", "--bad-rate", "inf"],
    ],
)
def test_a_number_out_of_range_is_a_usage_error(db: str, argv: list[str]) -> None:
    r = run([str(BIN / "khoctl"), *argv, "--db", db, "--sysroot", STEP], stdout=subprocess.PIPE)
    line = r.stderr.splitlines()[-1]
    assert r.returncode == 2, r.stderr
    assert line.startswith("khoctl ") and "error: argument" in line, line
    assert r.stdout == ""


def test_khod_number_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    argv = [str(BIN / "khod"), "--once", "--sysroot", STEP, "--db", db]
    r = run([*argv, "--max-boots", "99999999999999999999"], stdout=subprocess.PIPE)
    assert r.returncode == 2, r.stderr
    assert "--max-boots" in r.stderr.splitlines()[-1]


def test_khoctl_with_stdout_closed_says_so(db: str) -> None:
    r = run([str(BIN / "khoctl"), "history", "--db", db, "--sysroot", STEP], stdout=None,
            pass_fds=(), preexec_fn=lambda: os.close(1))  # fmt: skip
    assert r.returncode == 1
    assert one_line(r) == "khoctl: error: cannot write output: Bad file descriptor"


def test_khoctl_with_stdout_on_dev_full_says_so(db: str) -> None:
    for cmd in (["history"], ["history", "--json"], ["dmesg", "--json"], ["export"]):
        with open("/dev/full", "w") as full:
            r = run([str(BIN / "khoctl"), *cmd, "--db", db, "--sysroot", STEP], stdout=full)
        assert r.returncode == 1, (cmd, r.stderr)
        assert one_line(r) == "khoctl: error: cannot write output: No space left on device", cmd


def test_khod_once_with_stdout_on_dev_full_or_closed_records_the_boot_and_says_so(
    tmp_path: Path,
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    argv = [str(BIN / "khod"), "--once", "--sysroot", STEP, "--db", db]
    with open("/dev/full", "w") as full:
        r = run(argv, stdout=full)
    assert r.returncode == 1
    assert one_line(r) == "khod: error: cannot write output: No space left on device"
    r = run([str(BIN / "khoctl"), "history", "--json", "--db", db, "--sysroot", STEP],
            stdout=subprocess.PIPE)  # fmt: skip
    assert r.returncode == 0 and '"boot_id"' in r.stdout  # the boot was recorded all the same
    r = run([str(BIN / "khod"), "--once", "--sysroot", str(FIXTURES / "kexec1/step0"), "--db", db],
            preexec_fn=lambda: os.close(1))  # fmt: skip
    assert r.returncode == 1
    assert one_line(r) == "khod: error: cannot write output: Bad file descriptor"
    r = run([str(BIN / "khoctl"), "history", "--all", "--json", "--db", db],
            stdout=subprocess.PIPE)  # fmt: skip
    assert r.stdout.count('"boot_id"') == 2


@pytest.mark.parametrize("prog", ["khoctl", "khod"])
@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_on_dev_full_say_so(prog: str, flag: str) -> None:
    """argparse prints --help and --version and exits: the output that could not be
    written is one line and status 1, not the interpreter's traceback at exit."""
    with open("/dev/full", "w") as full:
        r = run([str(BIN / prog), flag], stdout=full)
    assert r.returncode == 1, r.stderr
    assert one_line(r) == f"{prog}: error: cannot write output: No space left on device"
