"""JSON and lines for a person never carry C1 controls (U+0080-U+009F: CSI, OSC, ST) or
DEL raw: json.dumps(ensure_ascii=False) escapes C0 only, and a terminal obeys C1 too.
The JSON still decodes to the exact text."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from tests import variants
from tests.cli.test_terminal import on_pipe, on_pty
from tests.conftest import SysrootFactory

BIN = Path(sys.executable).parent
# CSI, OSC ... ST, DEL, and a C1 in the middle of a word
C1 = "\x9b2J\x9d0;pwned\x9c\x7f\x85x"
RAW = re.compile("[\x7f-\x9f]")


def test_dmesg_json_escapes_c1_and_del_on_a_terminal_and_in_a_pipe(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("pstore/step1")
    text = f"user wrote {C1} then\n"
    variants.replace(root, "sys/fs/pstore/pmsg-ramoops-0", text.encode())
    db = f"sqlite:///{tmp_path / 'k.db'}"
    r = on_pipe(str(BIN / "khod"), "--once", "--sysroot", str(root), "--db", db)
    assert r.returncode == 0, r.stderr
    argv = (str(BIN / "khoctl"), "dmesg", "--type", "pmsg", "--sysroot", str(root), "--db", db)
    rc, shown = on_pty(*argv, "--json")
    assert rc == 0
    assert not RAW.search(shown), RAW.findall(shown)
    assert "\\u009b2J\\u009d0;pwned\\u009c\\u007f\\u0085x" in shown
    assert json.loads(shown)["dumps"][0]["text"] == text
    r = on_pipe(*argv, "--json")  # always, not only on a terminal: `| less -R`, a log
    assert r.returncode == 0 and not RAW.search(r.stdout)
    assert json.loads(r.stdout)["dumps"][0]["text"] == text


def test_every_json_and_table_escapes_c1_of_an_imported_row(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("kexec1/step1")
    src = f"sqlite:///{tmp_path / 'src.db'}"
    db = f"sqlite:///{tmp_path / 'k.db'}"
    assert on_pipe(str(BIN / "khod"), "--once", "--sysroot", str(root), "--db", src).returncode == 0
    dump = tmp_path / "x.jsonl"
    assert on_pipe(str(BIN / "khoctl"), "export", "--db", src, "-o", str(dump)).returncode == 0
    lines = []
    for line in dump.read_text().splitlines():
        obj = json.loads(line)
        if obj["object"] == "boot":
            obj["release"] = f"7.3{C1}"
            obj["kind_reason"] = f"why{C1}"
        lines.append(json.dumps(obj))
    dump.write_text("\n".join(lines) + "\n")
    r = on_pipe(str(BIN / "khoctl"), "import", str(dump), "--db", db)
    assert r.returncode == 0, r.stderr
    for cmd in (["history"], ["chain"], ["report", "transitions"]):
        argv = (str(BIN / "khoctl"), *cmd, "--sysroot", str(root), "--db", db)
        rc, shown = on_pty(*argv)
        assert rc == 0 and not RAW.search(shown), (cmd, RAW.findall(shown))
        r = on_pipe(*argv, "--json")
        assert r.returncode == 0 and not RAW.search(r.stdout), (cmd, RAW.findall(r.stdout))
        assert json.loads(r.stdout)[0]["release"] == f"7.3{C1}"
    # the export itself: JSON Lines on stdout
    r = on_pipe(str(BIN / "khoctl"), "export", "--db", db)
    assert r.returncode == 0 and not RAW.search(r.stdout)
    assert any(json.loads(x).get("release") == f"7.3{C1}" for x in r.stdout.splitlines())
