"""A store that holds only other machines' boots (a fleet database, an imported export):
the commands that filter by this machine say so on stderr, and how to see them; what
they print on stdout stays as it was."""

from __future__ import annotations

import json

import pytest

from khod.cli import khoctl
from khod.cli.common import run_main
from tests.builders import Host
from tests.conftest import FIXTURES

HERE = str(FIXTURES / "kexec1/step1")  # machine 65f7426a..., not in the store
NOTE = "khoctl: note: no boots of this machine (65f7426a2b95da889897ce107b775321) are recorded"
HOLDS = "the store holds 6 boots of 2 other machines"


@pytest.fixture
def fleet(db_url: str) -> str:
    for scenario, steps in (
        ("pstore", ("step0", "step1")),
        ("pstore-kho", ("step0", "step1", "step2", "step3")),
    ):
        for step in steps:
            assert Host(FIXTURES / scenario / step, db_url).once().rc == 0
    return db_url


def ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = run_main("khoctl", khoctl.main, list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_history_says_other_machines_are_there(
    fleet: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = ctl(capsys, "history", "--json", "--sysroot", HERE, "--db", fleet)
    assert rc == 0 and json.loads(out) == []
    (line,) = err.splitlines()
    assert line.startswith(f"{NOTE}; {HOLDS}: see them with --all, or --machine ID"), line
    rc, out, err = ctl(capsys, "history", "--sysroot", HERE, "--db", fleet)
    assert rc == 0 and out == "no boots recorded\n"
    assert err.startswith(f"{NOTE}; {HOLDS}")
    # --all shows them; with boots of this machine, no note
    rc, out, err = ctl(capsys, "history", "--all", "--json", "--sysroot", HERE, "--db", fleet)
    assert rc == 0 and len(json.loads(out)) == 6 and err == ""
    step = str(FIXTURES / "pstore/step1")
    rc, out, err = ctl(capsys, "history", "--json", "--sysroot", step, "--db", fleet)
    assert rc == 0 and len(json.loads(out)) == 2 and err == ""


def test_chain_and_status_say_it_too(fleet: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = ctl(capsys, "chain", "--json", "--sysroot", HERE, "--db", fleet)
    assert rc == 0 and json.loads(out) == []
    assert err.startswith(f"{NOTE}; {HOLDS}: see them with --machine ID"), err
    rc, out, err = ctl(capsys, "status", "--json", "--sysroot", HERE, "--db", fleet)
    assert rc == 0 and json.loads(out)["recorded"] is False
    assert err.startswith(f"{NOTE}; {HOLDS}"), err
    rc, out, err = ctl(capsys, "dmesg", "--sysroot", HERE, "--db", fleet)
    assert rc == 1
    assert f"{HOLDS}" in err and "khoctl: error: no boots recorded" in err
