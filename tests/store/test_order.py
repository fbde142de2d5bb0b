"""A boot's predecessor is the boot recorded before it on the same machine, whatever the
wall clock said: pstore records and kexec verdicts attach to the right boot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from khod.cli import khoctl
from khod.cli.common import run_main
from tests import variants
from tests.conftest import HostFactory

MACHINE = "84ce2d5daaed6b971052fc40dfcd0a30"
STEP0, STEP1, BOOT2 = "e7da0b67", "6d78f400", "c8be1a8f"


def khoctl_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert run_main("khoctl", khoctl.main, list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def run_scenario(host: HostFactory, db_url: str, btimes: tuple[int, int, int]) -> None:
    """The pstore scenario in the order it happened, each boot's btime replaced; a kexec
    attempt recorded in step0 (to step1) and one in step1 (step0-boot2 came up cold)."""
    for step, btime in zip(("step0", "step1", "step0-boot2"), btimes, strict=True):
        h = host(f"pstore/{step}", db_url, ingest=False)
        variants.replace(h.root, "proc/stat", f"btime {btime}\n".encode())
        h.ingest()
        if step != "step0-boot2":
            assert h.khoctl("record-kexec").rc == 0


def check_links(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    for boot, prev in ((STEP1, STEP0), (BOOT2, STEP1)):
        out = khoctl_json(capsys, "dmesg", boot, "--json", "--db", db_url)
        assert isinstance(out, dict)
        assert (out["previous_boot_id"] or "-")[:8] == prev
    rows = khoctl_json(capsys, "history", "--json", "--all", "--db", db_url)
    assert isinstance(rows, list)
    got = {r["boot_id"][:8]: (r["pstore_records"], r["verdict"]) for r in rows}
    assert got == {STEP0: (0, None), STEP1: (3, "landed"), BOOT2: (4, "cold-boot")}


def test_two_boots_in_the_same_second(
    host: HostFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_scenario(host, db_url, (1795481183, 1795481183, 1795481183))
    check_links(db_url, capsys)


def test_a_clock_stepped_back_before_ntp(
    host: HostFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # step1's clock was a minute ahead, step0-boot2's RTC an hour behind
    run_scenario(host, db_url, (1795481183, 1795481253, 1795477605))
    check_links(db_url, capsys)


def test_chain_and_history_follow_the_recorded_order(
    host: HostFactory, db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_scenario(host, db_url, (1795481183, 1795481253, 1795477605))
    rows = khoctl_json(capsys, "history", "--json", "--machine", MACHINE, "--db", db_url)
    assert isinstance(rows, list)
    assert [r["boot_id"][:8] for r in rows] == [BOOT2, STEP1, STEP0]
    step1 = rows[1]["boot_id"]
    chain = khoctl_json(
        capsys, "chain", "--json", "--machine", MACHINE, "--boot", step1, "--db", db_url
    )
    assert isinstance(chain, list)
    assert [(b["boot_id"][:8], b["link"]) for b in chain] == [(STEP0, "start"), (STEP1, "ok")]


@pytest.mark.parametrize("old_export", [False, True])
def test_an_import_keeps_the_hosts_recorded_order(
    host: HostFactory,
    db_url: str,
    sqlite_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    old_export: bool,
) -> None:
    run_scenario(host, sqlite_url, (1795481183, 1795481253, 1795477605))
    out = tmp_path / "host.jsonl"
    assert run_main("khoctl", khoctl.main, ["export", "-o", str(out), "--db", sqlite_url]) == 0
    lines = out.read_text().splitlines()
    assert all('"seq":' in line for line in lines if '"object":"boot"' in line)
    if old_export:  # written before seq existed: boots order as they are imported
        objs = [json.loads(line) for line in lines]
        for o in objs:
            o.pop("seq", None)
        out.write_text("".join(json.dumps(o) + "\n" for o in objs))
    assert run_main("khoctl", khoctl.main, ["import", str(out), "--db", db_url]) == 0
    rows = khoctl_json(capsys, "history", "--json", "--machine", MACHINE, "--db", db_url)
    assert isinstance(rows, list)
    assert [r["boot_id"][:8] for r in rows] == [BOOT2, STEP1, STEP0]
