"""journalctl's habits in khoctl: ``-b``/``-b -1``/a boot id prefix on every command
that takes a boot, ``khoctl show``, ``--since``/``--until`` in journalctl's syntax,
local time unless ``--utc``, ``--no-legend``, a pager on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from khod.cli import khoctl, khod_main
from khod.cli.common import run_main
from tests.builders import Host
from tests.conftest import FIXTURES

BIN = Path(sys.executable).parent
STEPS = sorted(p for p in (FIXTURES / "pstore-kho").iterdir() if p.is_dir())
# the chain's boot times (btime), UTC: 2026-11-24 00:46:56, 00:47:10, 00:47:32, 00:47:55


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('habits') / 'khod.db'}"
    for step in STEPS:
        assert Host(step, url).once().rc == 0
    return url


def khoctl_out(capsys: pytest.CaptureFixture[str], store: str, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = run_main("khoctl", khoctl.main, [*argv, "--sysroot", str(STEPS[-1]), "--db", store])
    out, err = capsys.readouterr()
    return rc, out, err


def boot_ids(capsys: pytest.CaptureFixture[str], store: str) -> list[str]:
    """Oldest first."""
    rc, out, _ = khoctl_out(capsys, store, "history", "--json")
    assert rc == 0
    return [r["boot_id"] for r in json.loads(out)][::-1]


def test_relative_boots_on_chain(capsys: pytest.CaptureFixture[str], store: str) -> None:
    ids = boot_ids(capsys, store)
    rc, out, err = khoctl_out(capsys, store, "chain", "-b", "-1", "--json")
    assert rc == 0, err
    assert [r["boot_id"] for r in json.loads(out)] == ids[:3]
    rc, out, _ = khoctl_out(capsys, store, "chain", "--boot", ids[1][:8], "--json")
    assert [r["boot_id"] for r in json.loads(out)] == ids[:2]
    rc, out, _ = khoctl_out(capsys, store, "chain", "-b", "--json")  # this boot
    assert [r["boot_id"] for r in json.loads(out)] == ids


def test_relative_boots_on_dmesg(capsys: pytest.CaptureFixture[str], store: str) -> None:
    ids = boot_ids(capsys, store)
    for spec, want in (("-1", ids[2]), ("2", ids[1]), ("0", ids[3]), (ids[2][:6], ids[2])):
        rc, out, err = khoctl_out(capsys, store, "dmesg", "-b", spec, "--json")
        assert rc == 0, err
        assert json.loads(out)["boot_id"] == want
    rc, out, _ = khoctl_out(capsys, store, "dmesg", "-1", "--json")  # as the BOOT argument
    assert json.loads(out)["boot_id"] == ids[2]


def test_a_boot_out_of_range_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    rc, out, err = khoctl_out(capsys, store, "show", "-b", "-7")
    assert rc == 1 and out == ""
    assert err == (
        "khoctl: error: boot -7 is not recorded: the store holds 4 boots of this machine "
        "(-3..0, or 1..4)\n"
    )


def test_show_has_everything_about_one_boot_events_included(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    ids = boot_ids(capsys, store)
    # the cold boot's ingest recorded a truncated outgoing FDT: an event no other
    # khoctl command shows
    rc, out, err = khoctl_out(capsys, store, "show", "-b", "1", "--json")
    assert rc == 0, err
    d = json.loads(out)
    assert d["boot_id"] == ids[0] and d["kind"] == "cold"
    assert "fdt-truncated" in [e["kind"] for e in d["events"]]
    assert d["cmdline"].endswith("khlab.step=0")
    rc, out, _ = khoctl_out(capsys, store, "show", ids[0][:8], "--utc", "--no-pager")
    assert f"boot:              {ids[0]}" in out
    assert "booted:            2026-11-24 00:46:56 UTC" in out
    assert any("fdt-truncated: " in line for line in out.splitlines())
    rc, out, _ = khoctl_out(capsys, store, "show", "--json")  # this boot: its dump
    d = json.loads(out)
    assert d["boot_id"] == ids[3] and len(d["dumps"]) == 1 and "text" not in d["dumps"][0]


def test_since_until_journalctl_syntax(capsys: pytest.CaptureFixture[str], store: str) -> None:
    ids = boot_ids(capsys, store)
    rc, out, err = khoctl_out(
        capsys,
        store,
        "history",
        "--utc",
        "--since",
        "2026-11-24 00:47:00",
        "--until",
        "2026-11-24 00:47:40",
        "--json",
    )
    assert rc == 0, err
    assert [r["boot_id"] for r in json.loads(out)] == [ids[2], ids[1]]
    rc, out, _ = khoctl_out(capsys, store, "chain", "-S", "2026-11-24 00:47:30 UTC", "--json")
    assert [r["boot_id"] for r in json.loads(out)] == ids[2:]
    rc, out, _ = khoctl_out(capsys, store, "history", "--since", "yesterday")
    assert (rc, out) == (0, "no boots recorded in that time\n")  # the fixtures are older
    rc, out, err = khoctl_out(capsys, store, "history", "--since", "last tuesday")
    assert rc == 1 and out == "" and err.count("\n") == 1 and "--since 'last tuesday'" in err


@pytest.fixture
def cet() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "CET-1"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_local_time_unless_utc(capsys: pytest.CaptureFixture[str], store: str, cet: None) -> None:
    ids = boot_ids(capsys, store)
    # local time: 01:47 CET is 00:47 UTC
    rc, out, _ = khoctl_out(capsys, store, "history", "--since", "2026-11-24 01:47:30")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("BOOTED ")
    assert lines[1].startswith(f"2026-11-24 01:47:55 CET  {ids[3]}")
    assert len(lines) == 3
    rc, out, _ = khoctl_out(capsys, store, "history", "--utc", "--no-legend", "-n", "1")
    assert out.splitlines() == [out.splitlines()[0]]
    assert out.startswith(f"2026-11-24 00:47:55 UTC  {ids[3]}")


def test_history_all_has_a_machine_column(capsys: pytest.CaptureFixture[str], store: str) -> None:
    _, out, _ = khoctl_out(capsys, store, "history", "--all", "--utc")
    head, first = out.splitlines()[:2]
    assert head.split()[:3] == ["BOOTED", "MACHINE", "BOOT"]
    assert first.split()[3] == "36523389201885c96b08f3a4f23394ad"


def test_history_limit_is_at_least_one(capsys: pytest.CaptureFixture[str], store: str) -> None:
    for bad in ("0", "-1"):
        with pytest.raises(SystemExit) as e:
            khoctl.parser().parse_args(["history", "--limit", bad])
        assert e.value.code == 2
    assert "expected a whole number from 1" in capsys.readouterr().err


def _on_a_terminal(store: str, *argv: str, env: dict[str, str]) -> str:
    """khoctl's output with stdout on a pseudo-terminal."""
    leader, follower = pty.openpty()
    cmd = [str(BIN / "khoctl"), *argv, "--sysroot", str(STEPS[-1]), "--db", store]
    with subprocess.Popen(cmd, stdout=follower, stderr=subprocess.PIPE, env=env) as p:
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
        assert p.wait() == 0
    os.close(leader)
    return b"".join(chunks).decode().replace("\r\n", "\n")


def test_pager_on_a_terminal_only(store: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PAGER", "SYSTEMD_PAGER", "LESS")}
    paged = _on_a_terminal(store, "history", env={**env, "PAGER": "sed s/^/paged:/"})
    assert paged.splitlines() and all(x.startswith("paged:") for x in paged.splitlines())
    # $SYSTEMD_PAGER over $PAGER; LESS set as journalctl sets it
    shown = _on_a_terminal(store, "history", env={**env, "PAGER": "cat", "SYSTEMD_PAGER": "env"})
    assert "LESS=FRSXMK" in shown.splitlines()
    plain = _on_a_terminal(store, "history", "--no-pager", env={**env, "PAGER": "sed s/^/p:/"})
    assert not any(x.startswith("p:") for x in plain.splitlines())
    piped = subprocess.run(
        [str(BIN / "khoctl"), "history", "--sysroot", str(STEPS[-1]), "--db", store],
        capture_output=True,
        text=True,
        env={**env, "PAGER": "sed s/^/p:/"},
        check=True,
    )
    assert piped.stdout.startswith("BOOTED")


def test_one_is_singular(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'khod.db'}"
    for step in STEPS[:2]:
        argv = ["--once", "--sysroot", str(step), "--db", url]
        assert run_main("khod", khod_main.main, argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].endswith(f"; 1 new pstore record in {tmp_path / 'khod.db'}")


def _stderr_on_a_terminal(argv: list[str]) -> tuple[int, str]:
    leader, follower = pty.openpty()
    with subprocess.Popen(
        [str(BIN / "khoctl"), *argv], stdout=subprocess.DEVNULL, stderr=follower
    ) as p:
        os.close(follower)
        chunks = []
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not data:
                break
            chunks.append(data)
        rc = p.wait()
    os.close(leader)
    return rc, b"".join(chunks).decode()


def test_export_and_sync_show_progress_on_a_terminal(store: str, tmp_path: Path) -> None:
    dump = tmp_path / "x.jsonl"
    rc, err = _stderr_on_a_terminal(["export", "--db", store, "-o", str(dump)])
    assert rc == 0 and "\rexport " in err and " rows, " in err and "\r\x1b[K" in err
    rc, err = _stderr_on_a_terminal(["export", "--db", store, "-o", str(dump), "--quiet"])
    assert rc == 0 and "\rexport" not in err and "rows, " not in err
    fleet = f"sqlite:///{tmp_path / 'fleet.db'}"
    rc, err = _stderr_on_a_terminal(["sync", "--db", store, "--to", fleet])
    assert rc == 0 and "\rsync " in err and " rows, " in err and "\r\x1b[K" in err


def test_export_and_report_take_until(
    capsys: pytest.CaptureFixture[str], store: str, tmp_path: Path
) -> None:
    dump = tmp_path / "part.jsonl"
    window = ["--utc", "--since", "2026-11-24 00:47:00", "--until", "2026-11-24 00:47:40"]
    rc, _, err = khoctl_out(capsys, store, "export", *window, "-o", str(dump))
    assert rc == 0, err
    objs = [json.loads(line) for line in dump.read_text().splitlines()]
    assert sorted(o["booted_at"] for o in objs if o["object"] == "boot") == [
        1795481230,
        1795481252,
    ]
    rc, out, err = khoctl_out(capsys, store, "report", "transitions", "--json", *window)
    assert rc == 0, err
    assert sum(r["boots"] for r in json.loads(out)) == 2
    rc, out, _ = khoctl_out(capsys, store, "report", "transitions", "--json")
    assert sum(r["boots"] for r in json.loads(out)) == 3  # the kexecs; the cold boot is not one


def test_a_cold_boot_with_reserve_mem_prints_nothing_about_its_short_fdt(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A cold boot's outgoing FDT is cut short whenever reserve_mem is used (the kernel
    sizes out/fdt before the subtrees grow it): recorded, shown by ``khoctl show``, and
    not a line on stderr at every boot."""
    url = f"sqlite:///{tmp_path / 'khod.db'}"
    capsys.readouterr()
    assert Host(STEPS[0], url).once().rc == 0
    out, err = capsys.readouterr()
    assert "recorded boot" in out and err == ""
    rc = run_main(
        "khoctl", khoctl.main, ["show", "--json", "--sysroot", str(STEPS[0]), "--db", url]
    )
    assert rc == 0
    assert "fdt-truncated" in [e["kind"] for e in json.loads(capsys.readouterr().out)["events"]]


def test_a_boot_id_as_journalctl_writes_it(capsys: pytest.CaptureFixture[str], store: str) -> None:
    """journalctl --list-boots writes 32 hex digits; khod stores the dashed form: a
    prefix of either names the boot."""
    ids = boot_ids(capsys, store)
    for spec in (ids[1].replace("-", ""), ids[1].replace("-", "")[:12], ids[1][:13]):
        rc, out, err = khoctl_out(capsys, store, "show", spec, "--json")
        assert rc == 0, (spec, err)
        assert json.loads(out)["boot_id"] == ids[1]


def test_since_takes_a_negative_offset_as_its_own_argument(
    capsys: pytest.CaptureFixture[str], store: str
) -> None:
    """--since -2h as journalctl takes it, not only --since=-2h."""
    for argv in (["--since", "-200000d"], ["-S", "-200000d"], ["--since=-200000d"]):
        rc, out, err = khoctl_out(capsys, store, "history", *argv, "--json")
        assert rc == 0, (argv, err)
        assert len(json.loads(out)) == len(STEPS)


def test_an_offset_is_refused_when_a_boot_of_the_machine_cannot_be_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A row the readers skip would shift every offset past it: -b -1 would name the
    boot before the one meant. Named by id it is still shown."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'khod.db'}"
    for step in STEPS:
        assert Host(step, url).once().rc == 0
    with sqlite3.connect(tmp_path / "khod.db") as conn:
        conn.execute("UPDATE boots SET subtrees = '[1]' WHERE seq = 2")
    ids = boot_ids(capsys, url)
    capsys.readouterr()
    rc = run_main(
        "khoctl", khoctl.main, ["show", "-b", "-1", "--sysroot", str(STEPS[-1]), "--db", url]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "cannot be read, so an offset could name the wrong one: name the boot by its id" in err
    rc = run_main("khoctl", khoctl.main, ["show", ids[-1], "--json", "--db", url])
    assert rc == 0 and json.loads(capsys.readouterr().out)["boot_id"] == ids[-1]


def test_times_in_journalctls_forms() -> None:
    from khod.errors import KhodError
    from khod.timespec import parse_time

    assert parse_time("2026-11-01T08:00:00 UTC") == parse_time("2026-11-01 08:00:00", utc=True)
    assert parse_time("@1700000000") == 1700000000.0
    for bad in ("@nan", "@inf", "@1e400"):
        with pytest.raises(KhodError):
            parse_time(bad)
