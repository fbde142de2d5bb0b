"""Security checks: what khod listens on, how it runs commands, the modes of what it
creates, escaping of hostile strings in JSON, and symlinks planted to redirect a write."""

from __future__ import annotations

import ast
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from khod.config import Config
from tests import variants
from tests.conftest import REPO, SysrootFactory

BIN = Path(sys.executable).parent
HOSTILE = 'rel"ease\\with\nnewline\t</script>\x7f'


def test_metrics_listen_on_loopback_by_default() -> None:
    assert Config().listen == ("127.0.0.1", 9733)
    anywhere = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d./])|\[::\]")
    for f in [REPO / "packaging" / "khod.toml", *(REPO / "systemd").glob("*.service")]:
        assert not anywhere.search(f.read_text()), f


def test_every_subprocess_runs_an_argv_list_without_a_shell() -> None:
    """An AST pass over khod/: subprocess calls take a list (never a string, never
    shell=True); no os.system, os.popen or os.exec* with a string command."""
    calls = 0
    for py in (REPO / "khod").rglob("*.py"):
        tree = ast.parse(py.read_text(), str(py))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                continue
            owner = node.func.value
            name = node.func.attr
            where = f"{py.relative_to(REPO)}:{node.lineno}"
            if isinstance(owner, ast.Name) and owner.id == "os":
                assert name not in ("system", "popen", "execl", "execlp"), where
            if isinstance(owner, ast.Name) and owner.id == "subprocess":
                calls += 1
                for kw in node.keywords:
                    if kw.arg == "shell":
                        assert isinstance(kw.value, ast.Constant) and kw.value.value is False, where
                if node.args:
                    assert not isinstance(node.args[0], (ast.Constant, ast.JoinedStr)), where
    assert (
        calls >= 3
    )  # kexec, systemctl, the daemon's children (one Popen: khod.daemon.child.Child)


def test_created_files_are_private(sysroot: SysrootFactory, tmp_path: Path) -> None:
    root = sysroot("pstore-kho/step1")
    state = tmp_path / "state"
    db = tmp_path / "db" / "khod.db"
    r = subprocess.run(
        [str(BIN / "khod"), "--once", "--sysroot", str(root), "--db", f"sqlite:///{db}",
         "--state-dir", str(state), "--snapshot", str(state / "metrics.json")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700
    for f in (db, state / "metrics.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    out = tmp_path / "export.jsonl"
    r = subprocess.run(
        [str(BIN / "khoctl"), "export", "--db", f"sqlite:///{db}", "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0 and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_hostile_release_strings_survive_json(sysroot: SysrootFactory, db_url: str) -> None:
    """A release with a quote, a backslash, a newline, a tab, markup and DEL comes out
    of khoctl --json as valid JSON holding the same string."""
    root = sysroot("kexec1/step1")
    variants.replace(root, "proc/sys/kernel/osrelease", HOSTILE.encode() + b"\xff\n")
    r = subprocess.run(
        [str(BIN / "khod"), "--once", "--sysroot", str(root), "--db", db_url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [str(BIN / "khoctl"), "history", "--json", "--all", "--db", db_url],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    (boot,) = json.loads(r.stdout)
    # control characters and bytes that are not UTF-8 are shown as \xNN; the quote,
    # the backslash and the markup come through as they are
    assert boot["release"] == 'rel"ease\\with\\x0anewline\\x09</script>\\x7f\\xff'


def test_a_symlinked_database_is_not_followed(tmp_path: Path, sysroot: SysrootFactory) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "khod.db").symlink_to(target)
    r = subprocess.run(
        [str(BIN / "khod"), "--once", "--sysroot", str(sysroot("cold/step0")),
         "--db", f"sqlite:///{tmp_path / 'state' / 'khod.db'}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert r.stderr.strip().endswith("khod.db is a symbolic link: refusing to follow it")
    assert target.read_bytes() == b"precious"


def test_a_symlinked_spool_is_not_followed(tmp_path: Path, sysroot: SysrootFactory) -> None:
    """The daemon's first write (the boot spool) into a state dir where someone planted
    spool -> elsewhere: nothing lands elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "spool").symlink_to(elsewhere)
    r = subprocess.run(
        [str(BIN / "khod"), "--capture-only", "--sysroot", str(sysroot("kexec1/step1")),
         "--state-dir", str(state)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 1
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("name", ["metrics.json", "khod.prom"])
def test_a_symlink_at_an_output_is_replaced_not_followed(
    tmp_path: Path, sysroot: SysrootFactory, name: str
) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    out = tmp_path / name
    out.symlink_to(target)
    flag = "--snapshot" if name == "metrics.json" else "--textfile"
    argv = [
        str(BIN / "khod"),
        "--once",
        "--sysroot",
        str(sysroot("kexec1/step1")),
        "--db",
        f"sqlite:///{tmp_path / 'k.db'}",
        "--state-dir",
        str(tmp_path / "s"),
    ]
    if flag == "--snapshot":
        argv += ["--snapshot", str(out)]
    else:  # the textfile is the daemon's: write it through its module, as it does
        from prometheus_client import CollectorRegistry

        from khod.metrics import write_textfile

        write_textfile(str(out), CollectorRegistry())
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert target.read_bytes() == b"precious"
    assert not out.is_symlink()
    os.unlink(out)
