"""The resident daemon, for real: sd_notify over a datagram socket, /metrics over HTTP on
loopback, promtool, signals, config errors, the spool."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from khod.paths import HostPaths
from khod.sources.capture import capture
from tests.conftest import FIXTURES, SysrootFactory
from tests.daemon_helpers import BIN, running_daemon


def promtool_check(exposition: str) -> None:
    r = subprocess.run(
        ["promtool", "check", "metrics"],
        input=exposition,
        text=True,
        capture_output=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_ready_comes_after_the_boot_is_stored_and_watchdog_keeps_coming(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("pstore-kho/step2")
    with running_daemon(root, tmp_path, env={"WATCHDOG_USEC": "400000"}) as d:
        d.wait_for("READY=1")
        db = d.db.removeprefix("sqlite:///")
        with sqlite3.connect(db) as conn:  # READY=1 means: the boot is in the store
            assert conn.execute(
                "SELECT kind, kexec_count FROM boots WHERE boot_id=?",
                ("76d14fe6-5764-46e9-a6d4-d1bfc29718ff",),
            ).fetchall() == [("kexec", 2)]
        t0 = time.monotonic()
        for _ in range(3):
            d.wait_for("WATCHDOG=1", timeout=5)
        assert time.monotonic() - t0 < 3
        assert any(m.startswith("STATUS=boot recorded") for m in d.messages)
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        d.wait_for("STOPPING=1", timeout=5)


def test_the_resident_process_keeps_neither_the_parsers_nor_the_boot(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """The boot is collected in a child: libfdt (C, fed the previous kernel's blobs) is
    never loaded into the process that stays up, and costs it no memory."""
    root = sysroot("pstore-kho/step2")
    with running_daemon(root, tmp_path) as d:
        d.wait_for("READY=1")
        maps = Path(f"/proc/{d.proc.pid}/maps").read_text()
        assert d.scrape().count("khod_kexecs_since_cold_boot 2.0") == 1
    assert "libfdt" not in maps


def test_metrics_over_http_are_valid_and_right(sysroot: SysrootFactory, tmp_path: Path) -> None:
    root = sysroot("pstore/step1")
    with running_daemon(root, tmp_path) as d:
        d.wait_for("READY=1")
        text = d.scrape()
    promtool_check(text)
    assert "khod_kexecs_since_cold_boot 1.0" in text
    assert (
        'khod_boot_info{kho_abi="kho-v4",kind="kexec",previous_release="7.3.4-khlab-a",'
        'release="7.3.4-khlab-b"} 1.0'
    ) in text
    assert 'khod_pstore_records{backend="ramoops",type="dmesg"} 1.0' in text
    assert "khod_kho_scratch_bytes 1.00663296e+08" in text  # 16M + 64M + 16M


def test_metrics_bind_loopback_by_default(tmp_path: Path) -> None:
    r = subprocess.run([str(BIN / "khod"), "--help"], capture_output=True, text=True, check=True)
    assert "127.0.0.1:9733" in r.stdout


def test_textfile_and_sighup_reload(sysroot: SysrootFactory, tmp_path: Path) -> None:
    root = sysroot("kexec1/step1")
    conf = tmp_path / "khod.toml"
    conf.write_text("[retention]\nmax_boots = 5\n")
    textfile = tmp_path / "khod.prom"
    with running_daemon(root, tmp_path, "--config", str(conf)) as d:
        d.wait_for("READY=1")
        assert not textfile.exists()
        conf.write_text(f'[daemon]\ntextfile = "{textfile}"\n')
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("RELOADING=1", timeout=10)
        d.wait_for("READY=1", timeout=30)
        assert textfile.read_text() == d.scrape()  # the same snapshot, the same exposition
        assert textfile.stat().st_mode & 0o777 == 0o644
        promtool_check(textfile.read_text())
        assert "khod_kexecs_since_cold_boot 1.0" in textfile.read_text()
        # the temp file was renamed: nothing beside the textfile holds its name
        assert [p.name for p in tmp_path.iterdir() if "khod.prom" in p.name] == ["khod.prom"]
        conf.write_text("[retention]\nmax_age = 'soon'\n")
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert d.proc.poll() is None  # a bad reload keeps the old configuration
        assert "khod_kexecs_since_cold_boot 1.0" in d.scrape()


def test_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "khod.toml"
    for body, key in (
        ("[retention]\nmax_age = 'soon'\n", "retention.max_age"),
        ("[daemon]\nlisten = '9733'\n", "daemon.listen"),
        ("[pstore]\nownn = true\n", "pstore.ownn: unknown key"),
        ("[store\n", "not valid TOML"),
    ):
        conf.write_text(body)
        r = subprocess.run(
            [
                str(BIN / "khod"),
                "--once",
                "--config",
                str(conf),
                "--sysroot",
                str(FIXTURES / "cold/step0"),
                "--db",
                "sqlite://",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and key in r.stderr, r.stderr
        assert r.stderr.startswith(f"khod: error: {conf}: ")


def test_port_in_use_is_one_line(sysroot: SysrootFactory, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            [
                str(BIN / "khod"),
                "--sysroot",
                str(FIXTURES / "cold/step0"),
                "--db",
                f"sqlite:///{tmp_path / 'k.db'}",
                "--state-dir",
                str(tmp_path / "s"),
                "--listen",
                f"127.0.0.1:{port}",
                "--no-watch-modules",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    assert r.returncode == 1
    assert f"khod: error: cannot listen on 127.0.0.1:{port}: Address already in use" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_boot_left_in_the_spool_is_ingested_at_the_next_start(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    # boot A was captured, then the host died before the ingest finished
    a = sysroot("pstore-kho/step1")
    capture(HostPaths(a), str(tmp_path / "state" / "spool"))
    b = sysroot("pstore-kho/step2")
    with running_daemon(b, tmp_path) as d:
        d.wait_for("READY=1")
    with sqlite3.connect(d.db.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("SELECT boot_id, kexec_count FROM boots ORDER BY booted_at").fetchall()
        pstore = conn.execute("SELECT record_time FROM pstore_records ORDER BY id").fetchall()
    assert rows == [
        ("f3d7c587-29b6-4fdf-91fe-146df8164692", 1),
        ("76d14fe6-5764-46e9-a6d4-d1bfc29718ff", 2),
    ]
    assert pstore[0][0] == pytest.approx(1795481223.659409180)  # mtime kept by the spool
    assert list((tmp_path / "state" / "spool").iterdir()) == []


def test_a_file_over_the_capture_limit_is_left_out_whole_not_cut(
    sysroot: SysrootFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spool holds each file whole or not at all: a cut pstore record would be
    ingested at the next start as if it were the whole dump."""
    from khod.sources import capture as cap

    root = sysroot("pstore-kho/step1")
    big = root / "sys/fs/pstore/dmesg-ramoops-9"
    big.write_bytes(b"x" * (3 << 20))
    monkeypatch.setattr(cap, "FILE_LIMIT", 1 << 20)
    spool = cap.capture(HostPaths(root), str(tmp_path / "spool"))
    assert spool is not None
    cap.unpack(spool, str(tmp_path / "tree"))
    got = {p.name: p.stat().st_size for p in (tmp_path / "tree/sys/fs/pstore").iterdir()}
    want = {p.name: p.stat().st_size for p in (root / "sys/fs/pstore").iterdir() if p != big}
    assert got == want  # the others whole, the big one not there at all


def test_capture_only_writes_a_durable_spool(sysroot: SysrootFactory, tmp_path: Path) -> None:
    root = sysroot("kexec1/step1")
    r = subprocess.run(
        [str(BIN / "khod"), "--capture-only", "--sysroot", str(root), "--state-dir", str(tmp_path)],
        check=False,
    )
    assert r.returncode == 0
    (spool,) = (tmp_path / "spool").iterdir()
    assert spool.name == "30341bb4-f2be-44ce-9dc1-bc1efbab050a.spool"
    assert spool.stat().st_mode & 0o777 == 0o600


# what the boot capture must not wait for: the store, the exporter, and the modules that
# only help, JSON or a traceback need (each costs the capture milliseconds at every boot)
NOT_BEFORE_CAPTURE = {
    "sqlalchemy",
    "prometheus_client",
    "khod.config",
    "khod.cli.common",
    "khod.store",
    "json",
    "traceback",
    "shutil",
    "typing",
}


def test_the_boot_capture_loads_nothing_it_does_not_need(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """The daemon spools this boot's state first, so a kernel that dies again within
    seconds still leaves its handover behind; what the interpreter loads before that
    is the capture's cost (bench/run.py capture). Compared with a bare interpreter in
    the same environment, so a module that environment loads anyway is not counted."""
    show = "import atexit, sys; atexit.register(lambda: print(' '.join(sys.modules)))"
    bare = subprocess.run(
        [str(BIN / "python"), "-c", show], check=False, capture_output=True, text=True
    )
    argv = [
        "khod",
        "--capture-only",
        "--sysroot",
        str(sysroot("kexec1/step1")),
        "--state-dir",
        str(tmp_path),
    ]
    run = f"{show}; sys.argv = {argv!r}; from khod.cli.khod_main import run; run()"
    r = subprocess.run(
        [str(BIN / "python"), "-c", run], check=False, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "spool").iterdir())) == 1
    loaded = set(r.stdout.split()) - set(bare.stdout.split())
    assert "khod.sources.capture" in loaded
    heavy = [m for m in loaded for n in NOT_BEFORE_CAPTURE if m == n or m.startswith(n + ".")]
    assert sorted(heavy) == []


def test_snapshot_is_private(sysroot: SysrootFactory, tmp_path: Path) -> None:
    with running_daemon(sysroot("cold/step0"), tmp_path) as d:
        d.wait_for("READY=1")
    snap = d.state / "metrics.json"
    assert snap.stat().st_mode & 0o777 == 0o600
    assert json.loads(snap.read_text())["boot"]["kind"] == "cold"
    assert oct(d.state.stat().st_mode & 0o777) == oct(0o700)
    assert os.stat(d.db.removeprefix("sqlite:///")).st_mode & 0o777 == 0o600


def test_bad_config_in_daemon_mode_is_one_line_too(tmp_path: Path) -> None:
    # the first ingest is forked before the config is read: it must exit quietly
    conf = tmp_path / "khod.toml"
    conf.write_text("[retention]\nmax_bytes = 'lots'\n")
    r = subprocess.run(
        [
            str(BIN / "khod"),
            "--config",
            str(conf),
            "--sysroot",
            str(FIXTURES / "cold/step0"),
            "--db",
            f"sqlite:///{tmp_path / 'k.db'}",
            "--state-dir",
            str(tmp_path / "s"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert r.returncode == 78  # EX_CONFIG: khod.service does not restart on it
    assert r.stderr == (
        f"khod: error: {conf}: retention.max_bytes: expected a size like '16MiB', got 'lots'\n"
    )
    assert not (tmp_path / "k.db").exists()  # nothing was stored with a config it rejects


@pytest.mark.parametrize("how", ["another version", "cut short", "garbage"])
def test_a_snapshot_left_by_another_khod_is_one_line_and_metrics_are_served(
    sysroot: SysrootFactory, tmp_path: Path, how: str
) -> None:
    """khod upgraded, the old daemon's snapshot still on disk (or a newer khod's, or one
    cut short): the daemon says so in one line, serves none until its first ingest has
    ended, then this boot's."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    snap = state / "metrics.json"
    good = {"version": 1, "machine_id": "m", "boot": None, "boots_by_kind": {}, "pstore": []}
    good |= {"attempts_by_verdict": {}, "source_errors": {}}
    good |= {"last_ingest": 1.0, "ingest_duration": 0.1}
    snap.write_bytes(
        {
            "another version": json.dumps({**good, "version": 2, "kexecs": 3}).encode(),
            "cut short": json.dumps(good).encode()[:40],
            "garbage": b"\x00\xff" * 64,
        }[how]
    )
    with running_daemon(sysroot("kexec1/step1"), tmp_path) as d:
        d.wait_for("READY=1")
        text = d.scrape()
        d.proc.terminate()
        assert d.proc.wait(10) == 0
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert "khod_kexecs_since_cold_boot 1.0" in text  # this boot's, from the first ingest
    lines = [ln for ln in log.splitlines() if "metrics.json" in ln]
    assert len(lines) == 1, log
    assert lines[0].startswith(f"khod: error: metrics snapshot {snap}: "), log
    assert lines[0].endswith("; serving no snapshot yet (empty)"), log
    why = {"another version": ": version 2, this khod reads version 1;"}.get(how, ": not JSON")
    assert why in lines[0], log
    assert "Traceback" not in log
    assert json.loads(snap.read_text())["version"] == 1  # replaced by this khod's
