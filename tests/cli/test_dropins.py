"""Configuration drop-ins: ``khod.toml.d/*.toml`` next to the main file, merged in the
order of their names over it, key by key (as systemd and journald merge theirs)."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import urllib.request
from pathlib import Path

import pytest

from khod.config import Config, ConfigError, load_config
from khod.errors import KhodError
from tests.conftest import SysrootFactory
from tests.daemon_helpers import BIN, Running, free_port, running_daemon

BOOT = "76d14fe6-5764-46e9-a6d4-d1bfc29718ff"  # pstore-kho/step2
EX_CONFIG = 78  # sysexits.h; khod.service: RestartPreventExitStatus=78


def main_and_dir(tmp: Path, main: str | None = None) -> tuple[Path, Path]:
    conf = tmp / "khod.toml"
    if main is not None:
        conf.write_text(main)
    d = tmp / "khod.toml.d"
    d.mkdir()
    return conf, d


def test_a_drop_in_overrides_the_main_file_key_by_key(tmp_path: Path) -> None:
    conf, d = main_and_dir(
        tmp_path, '[daemon]\nlisten = "127.0.0.1:9100"\ntextfile = "/run/khod.prom"\n'
    )
    (d / "50-remote.toml").write_text('[daemon]\nlisten = "0.0.0.0:9733"\n')
    cfg = load_config(conf)
    assert cfg.listen == ("0.0.0.0", 9733)
    assert cfg.textfile == "/run/khod.prom"  # the rest of [daemon] is the main file's
    assert cfg.source == f"{conf}, {d / '50-remote.toml'}"


def test_durations_read_the_same_in_the_file_and_on_the_command_line(tmp_path: Path) -> None:
    """One duration parser: the units ``--since`` takes (weeks included) are the file's."""
    from khod.timespec import parse_time

    conf, _ = main_and_dir(tmp_path, '[retention]\nmax_age = "2w"\n[sync]\ninterval = "90"\n')
    cfg = load_config(conf)
    assert (cfg.max_age, cfg.sync_interval) == (14 * 86400, 90)
    assert parse_time("2w", now=10**7) == 10**7 - cfg.max_age
    with pytest.raises(KhodError):  # an age needs its unit: never a year taken as seconds
        parse_time("2026")


def test_drop_ins_are_merged_in_the_order_of_their_names(tmp_path: Path) -> None:
    conf, d = main_and_dir(tmp_path, "[retention]\nmax_boots = 1\n")
    for name, n in (("20-b.toml", 20), ("10-a.toml", 10), ("9-c.toml", 9)):  # made out of order
        (d / name).write_text(f"[retention]\nmax_boots = {n}\n")
    cfg = load_config(conf)
    assert cfg.max_boots == 9  # "9-c" sorts after "20-b"
    assert cfg.source == ", ".join(
        str(p) for p in (conf, d / "10-a.toml", d / "20-b.toml", d / "9-c.toml")
    )


def test_files_not_ending_in_toml_are_ignored(tmp_path: Path) -> None:
    conf, d = main_and_dir(tmp_path, "")
    (d / "50-remote.toml").write_text('[daemon]\nlisten = "0.0.0.0:9733"\n')
    for junk in ("50-remote.toml.dpkg-old", "50-remote.toml~", "50-remote.toml.swp", "README"):
        (d / junk).write_text('[daemon]\nlisten = "not an address"\n')
    (d / ".50-remote.toml").write_text("editor lock [")  # hidden, as systemd skips them
    cfg = load_config(conf)
    assert cfg.listen == ("0.0.0.0", 9733)
    assert cfg.source == f"{conf}, {d / '50-remote.toml'}"


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[retention]\nmax_bytes = 'lots'\n", "retention.max_bytes: expected a size like"),
        ("[daemon]\nlistn = '0.0.0.0:9733'\n", "daemon.listn: unknown key"),
        ("[daemon\n", "not valid TOML"),
    ],
)
def test_an_error_in_a_drop_in_names_that_file(tmp_path: Path, text: str, why: str) -> None:
    conf, d = main_and_dir(tmp_path, "[retention]\nmax_bytes = '2GiB'\n")
    (d / "10-good.toml").write_text("[retention]\nmax_boots = 5\n")
    bad = d / "20-bad.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(conf)
    assert str(e.value).startswith(f"{bad}: {why}"), str(e.value)
    assert "\n" not in str(e.value)


def test_drop_ins_without_a_main_file(tmp_path: Path) -> None:
    conf, d = main_and_dir(tmp_path)  # --config names a file that is not there
    (d / "50-remote.toml").write_text('[daemon]\nlisten = "0.0.0.0:9733"\n')
    assert load_config(conf, required=True).listen == ("0.0.0.0", 9733)
    (d / "50-remote.toml").unlink()
    with pytest.raises(ConfigError, match="not found"):
        load_config(conf)  # neither the file nor a drop-in: as before


def test_an_empty_drop_in_dir_changes_nothing(tmp_path: Path) -> None:
    conf, _ = main_and_dir(tmp_path, "")
    assert load_config(conf) == Config()


def khod_without_listen(root: Path, tmp: Path, conf: Path) -> tuple[subprocess.Popen[str], Running]:
    """The real daemon with no --listen (running_daemon always passes one)."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify.sock"))
    db = f"sqlite:///{tmp / 'khod.db'}"
    argv = [str(BIN / "khod"), "--sysroot", str(root), "--db", db, "--config", str(conf)]
    proc = subprocess.Popen(
        [*argv, "--state-dir", str(tmp / "state"), "--no-watch-modules"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock"), "KHOD_DB": ""},
    )
    return proc, Running(proc, 0, notify, tmp / "state", db)


def test_daemon_listens_where_a_drop_in_says(sysroot: SysrootFactory, tmp_path: Path) -> None:
    """The fleet host scraped from elsewhere: daemon.listen in a drop-in, not the conffile."""
    port = free_port()
    conf, d = main_and_dir(tmp_path, '[daemon]\nlisten = "127.0.0.1:1"\n')
    (d / "50-remote.toml").write_text(f'[daemon]\nlisten = "127.0.0.1:{port}"\n')
    proc, run = khod_without_listen(sysroot("pstore-kho/step2"), tmp_path, conf)
    try:
        run.wait_for("READY=1")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"khod_" in r.read()
    finally:
        proc.terminate()
        proc.wait(10)
        run.notify.close()


@pytest.mark.parametrize("broken", ["main", "drop-in"])
def test_a_config_that_does_not_parse_stops_khod_and_the_capture_waits(
    sysroot: SysrootFactory, tmp_path: Path, broken: str
) -> None:
    """One line naming the file, exit status 78 (EX_CONFIG: khod.service does not restart
    on it, so a broken file is not retried every RestartSec); the boot captured first is
    recorded once the configuration is fixed, from that capture's spool (consumed, not
    left behind)."""
    conf, d = main_and_dir(tmp_path, "[retention]\nmax_boots = 100\n")
    bad = conf if broken == "main" else d / "10-local.toml"
    bad.write_text("[retention\nmax_boots = 100\n")
    root = sysroot("pstore-kho/step2")
    state, db = tmp_path / "state", tmp_path / "khod.db"
    r = subprocess.run(
        [
            str(BIN / "khod"),
            "--config",
            str(conf),
            "--sysroot",
            str(root),
            "--db",
            f"sqlite:///{db}",
            "--state-dir",
            str(state),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--no-watch-modules",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert r.returncode == EX_CONFIG
    assert r.stderr.startswith(f"khod: error: {bad}: not valid TOML: "), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert [p.name for p in (state / "spool").iterdir()] == [f"{BOOT}.spool"]
    assert not db.exists()
    bad.write_text("[retention]\nmax_boots = 100\n")  # fixed
    with running_daemon(root, tmp_path, "--config", str(conf)) as k:
        k.wait_for("READY=1")
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT boot_id FROM boots").fetchall() == [(BOOT,)]
    assert list((state / "spool").iterdir()) == []


def test_sighup_reads_the_drop_ins_again(sysroot: SysrootFactory, tmp_path: Path) -> None:
    conf, d = main_and_dir(tmp_path, "[retention]\nmax_boots = 5\n")
    textfile = tmp_path / "khod.prom"
    with running_daemon(sysroot("kexec1/step1"), tmp_path, "--config", str(conf)) as k:
        k.wait_for("READY=1")
        (d / "50-textfile.toml").write_text(f'[daemon]\ntextfile = "{textfile}"\n')
        k.proc.send_signal(signal.SIGHUP)
        k.wait_for("RELOADING=1", timeout=10)
        k.wait_for("READY=1", timeout=30)
        assert textfile.read_text() == k.scrape()
        k.proc.terminate()
        assert k.proc.wait(10) == 0
        log = k.proc.stdout.read() if k.proc.stdout else ""
    assert f"configuration reloaded from {conf}, {d / '50-textfile.toml'}" in log, log
