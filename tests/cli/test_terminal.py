"""Text from the kernel or from users reaches the operator's terminal escaped: a pstore
record (pmsg, a task's comm) or an imported row holding ESC/OSC/CSI sequences must not
retitle or clear it. Not on a terminal (a pipe, --json), the bytes stay exact."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests import variants
from tests.conftest import SysrootFactory

BIN = Path(sys.executable).parent
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x9b31m\r"
ESCAPED = "\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x0d"


def on_pty(*argv: str) -> tuple[int, str]:
    """Run with stdout on a pseudo-terminal; return the status and what it showed."""
    primary, secondary = os.openpty()
    seen = b""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=secondary,
            stderr=subprocess.DEVNULL,
            # no pager: what khoctl itself writes to the terminal (less adds its own codes)
            env={**os.environ, "KHOD_DB": "", "PAGER": "cat", "SYSTEMD_PAGER": "cat"},
        )
        os.close(secondary)
        secondary = -1
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
        rc = proc.wait(timeout=60)
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    return rc, seen.decode("utf-8").replace("\r\n", "\n")  # the tty's ONLCR


def on_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run with stdout on a pipe; the output decoded as is (no newline translation)."""
    r = subprocess.run(
        list(argv), capture_output=True, check=False, timeout=60, env={**os.environ, "KHOD_DB": ""}
    )
    return subprocess.CompletedProcess(
        r.args, r.returncode, r.stdout.decode("utf-8"), r.stderr.decode("utf-8")
    )


def test_dmesg_escapes_a_hostile_pmsg_on_a_terminal(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("pstore/step1")
    text = f"user wrote {HOSTILE} then\tmore\n"
    variants.replace(root, "sys/fs/pstore/pmsg-ramoops-0", text.encode())
    db = f"sqlite:///{tmp_path / 'k.db'}"
    r = on_pipe(str(BIN / "khod"), "--once", "--sysroot", str(root), "--db", db)
    assert r.returncode == 0, r.stderr
    argv = (str(BIN / "khoctl"), "dmesg", "--type", "pmsg", "--sysroot", str(root), "--db", db)
    rc, shown = on_pty(*argv)
    assert rc == 0
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert f"user wrote {ESCAPED} then\tmore\n" in shown  # tab and newline kept
    # not a terminal: the exact text; --json: the exact text too
    r = on_pipe(*argv)
    assert r.returncode == 0 and f"user wrote {HOSTILE} then\tmore\n" in r.stdout
    r = on_pipe(*argv, "--json")
    assert r.returncode == 0
    assert json.loads(r.stdout)["dumps"][0]["text"] == text
    rc, shown = on_pty(*argv, "--json")
    assert rc == 0 and json.loads(shown)["dumps"][0]["text"] == text


def test_tables_escape_imported_strings_on_a_terminal(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """A fleet export is anyone's file: its release and kind_reason reach the tables."""
    root = sysroot("kexec1/step1")
    src = f"sqlite:///{tmp_path / 'src.db'}"
    db = f"sqlite:///{tmp_path / 'k.db'}"
    assert on_pipe(str(BIN / "khod"), "--once", "--sysroot", str(root), "--db", src).returncode == 0
    dump = tmp_path / "x.jsonl"
    r = on_pipe(str(BIN / "khoctl"), "export", "--db", src, "-o", str(dump))
    assert r.returncode == 0, r.stderr
    lines = []
    for line in dump.read_text().splitlines():
        obj = json.loads(line)
        if obj["object"] == "boot":
            obj["release"] = f"7.3{HOSTILE}"
        lines.append(json.dumps(obj))
    dump.write_text("\n".join(lines) + "\n")
    r = on_pipe(str(BIN / "khoctl"), "import", str(dump), "--db", db)
    assert r.returncode == 0, r.stderr
    for cmd in (["history"], ["chain"], ["report", "transitions"]):
        argv = (str(BIN / "khoctl"), *cmd, "--sysroot", str(root), "--db", db)
        rc, shown = on_pty(*argv)
        assert rc == 0
        assert "\x1b" not in shown and "\x07" not in shown, (cmd, shown)
        assert f"7.3{ESCAPED}" in shown
        r = on_pipe(*argv)
        assert f"7.3{HOSTILE}" in r.stdout
        r = on_pipe(*argv, "--json")
        assert json.loads(r.stdout)[0]["release"] == f"7.3{HOSTILE}"
