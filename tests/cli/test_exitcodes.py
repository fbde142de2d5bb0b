"""Exit statuses: only a closed stdout exits quietly; a broken pipe anywhere else, or a
first-ingest child that dies of an exception, is an error that says what it was, and a
daemon that never recorded its boot does not exit 0 (Restart=on-failure must see it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests import daemon_helpers
from tests.conftest import FIXTURES, SysrootFactory

BIN = Path(sys.executable).parent
# block-buffered stdout, as an operator's shell runs it: the write fails at the last flush
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | {"KHOD_DB": ""}


def test_closed_stdout_exits_quietly_with_the_sigpipe_status(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    r = subprocess.run(
        [str(BIN / "khod"), "--once", "--sysroot", str(FIXTURES / "kexec1/step1"), "--db", db],
        capture_output=True, text=True, check=False, timeout=60, env=ENV,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)  # `khoctl history | head -c0`: the reader is gone before any write
    try:
        r = subprocess.run(
            [str(BIN / "khoctl"), "history", "--all", "--db", db],
            stdout=write_end, stderr=subprocess.PIPE, text=True, check=False, timeout=60,
            env=ENV,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert r.stderr == ""
    assert r.returncode == 128 + 13  # as a program killed by SIGPIPE shows in a shell


def test_broken_pipe_on_a_socket_is_an_error(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import socket, sys
        from khod.cli.common import run_main

        def main(argv):
            a, b = socket.socketpair()
            b.close()
            a.sendall(b"x" * 65536)  # the peer is gone: EPIPE
            return 0

        sys.exit(run_main("khoctl", main, []))
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert r.returncode == 1, r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("khoctl: error: ") and "Broken pipe" in line, line


def test_first_ingest_child_that_dies_says_why(tmp_path: Path) -> None:
    """A job the child cannot even load (another khod's): one line, its status 1."""
    script = textwrap.dedent(
        """
        import sys
        from khod.daemon.first_ingest import FirstIngest

        first = FirstIngest.fork()
        first.send_data(b'{"version": 0, "cfg": {}}')
        print(first.wait_ready(), first.wait())
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert r.stdout == "False 1\n", r.stdout + r.stderr
    (line,) = r.stderr.splitlines()
    assert line == (
        "khod: error: ingest job from the daemon: version 0, this khod reads version 1"
    ), line


def test_daemon_that_never_recorded_its_boot_exits_failed(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("")
    db = tmp_path / "file" / "khod.db"  # its directory is a file: every ingest fails
    conf = tmp_path / "khod.toml"
    conf.write_text('[daemon]\nretry_interval = "1s"\n')
    with daemon_helpers.running_daemon(
        sysroot("kexec1/step1"), tmp_path, "--config", str(conf), "--db", f"sqlite:///{db}"
    ) as d:
        d.wait_for("READY=1")  # /metrics is served meanwhile
        d.wait_for("STATUS=ingest failed; retrying in 1s")
        d.proc.terminate()
        rc = d.proc.wait(10)
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert f"khod: error: cannot create database {db}: {db.parent} is not a directory" in log
    assert "ingest failed; retrying in 1s" in log
    assert rc == 1, log
    assert "khod: first ingest failed (exit status 1)" in log
    assert "khod: stopping with this boot not recorded: exit status 1" in log, log
    assert "Traceback" not in log
