"""Output paths (khoctl export -o, report transitions --textfile, khod --textfile: all
through khod.atomic) write through to a character device, a FIFO or stdout, and rename
a temporary file only over a regular file or nothing: a device node is never replaced.
Run as root (device nodes, a private /dev in a mount namespace)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from khod.cli import khoctl
from khod.cli.common import run_main
from tests import daemon_helpers
from tests.builders import Host
from tests.conftest import SysrootFactory


@pytest.fixture
def db(sysroot: SysrootFactory, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'k.db'}"
    for step in ("pstore-kho/step0", "pstore-kho/step1"):
        assert Host(sysroot(step), url).once().rc == 0
    return url


def char_device(path: Path) -> Path:
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # as /dev/null is
    os.chmod(path, 0o666)  # whatever the umask
    return path


def assert_still_the_device(path: Path) -> None:
    st = os.lstat(path)
    assert stat.S_ISCHR(st.st_mode), f"{path} is no longer a character device: {st}"
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (1, 3)
    assert st.st_mode & 0o777 == 0o666


@pytest.mark.parametrize(
    "argv",
    [["export", "-o"], ["report", "transitions", "--textfile"]],
    ids=["export", "transitions"],
)
def test_a_character_device_is_written_through_not_replaced(
    db: str, tmp_path: Path, argv: list[str]
) -> None:
    node = char_device(tmp_path / "null")
    assert run_main("khoctl", khoctl.main, [*argv, str(node), "--db", db]) == 0
    assert_still_the_device(node)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".null")) == []


def test_a_fifo_reader_gets_the_export(db: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = tmp_path / "received"
    with open(received, "wb") as sink:  # a file: the reader never waits for its own reader
        reader = subprocess.Popen(["cat", str(fifo)], stdout=sink)
    try:
        rc = run_main("khoctl", khoctl.main, ["export", "-o", str(fifo), "--db", db])
        reader.wait(30)
    finally:
        if reader.poll() is None:  # never written to: the FIFO was replaced
            reader.kill()
            reader.wait()
    got = received.read_bytes()
    assert rc == 0
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    lines = [json.loads(line) for line in got.splitlines()]
    assert len([r for r in lines if r.get("object") == "boot"]) == 2, len(lines)


def _khoctl_with_private_dev(
    *argv: str, stdout: int | None = None
) -> subprocess.CompletedProcess[str]:
    """khoctl in a mount namespace of its own with a fresh /dev (stdout, null): what it
    does to /dev/stdout cannot touch the host's."""
    script = (
        "mount -t tmpfs khod-dev /dev && ln -s /proc/self/fd/1 /dev/stdout "
        '&& mknod -m 666 /dev/null c 1 3 && "$@"; rc=$?; ls -l /dev/stdout >&2; exit $rc'
    )
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         str(daemon_helpers.BIN / "khoctl"), *argv],
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, check=False,
    )  # fmt: skip


def test_dev_stdout_is_stdout_a_pipe_or_a_file(db: str, tmp_path: Path) -> None:
    r = _khoctl_with_private_dev("export", "-o", "/dev/stdout", "--db", db)
    assert r.returncode == 0, r.stderr
    assert "/dev/stdout -> /proc/self/fd/1" in r.stderr, r.stderr  # the link left as it was
    assert len([line for line in r.stdout.splitlines() if '"object":"boot"' in line]) == 2
    out = tmp_path / "out.jsonl"
    with open(out, "w") as f:  # stdout redirected to a file: still the link, not a rename
        r = _khoctl_with_private_dev("export", "-o", "/dev/stdout", "--db", db, stdout=f.fileno())
    assert r.returncode == 0, r.stderr
    assert "/dev/stdout -> /proc/self/fd/1" in r.stderr, r.stderr
    assert len([line for line in out.read_text().splitlines() if '"object":"boot"' in line]) == 2


@pytest.mark.parametrize(
    "argv",
    [["export", "-o"], ["report", "transitions", "--textfile"]],
    ids=["export", "transitions"],
)
def test_a_directory_is_neither_replaced_nor_written(
    db: str, tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "dir"
    target.mkdir()
    capsys.readouterr()
    assert run_main("khoctl", khoctl.main, [*argv, str(target), "--db", db]) == 1
    err = capsys.readouterr().err
    why = "not a regular file, a character device or a pipe"
    assert err == f"khoctl: error: cannot write {target}: {why}\n"
    assert target.is_dir() and list(target.iterdir()) == []
