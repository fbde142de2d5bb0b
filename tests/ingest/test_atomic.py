"""khod.atomic: the one way khod writes a file whole (spool, snapshot, textfile, exports)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from khod import atomic


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic.atomic_file(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("stopped mid-write")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_no_descriptor_is_left_open_when_the_file_object_cannot_be_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A daemon writes its snapshot after every ingest for months: a descriptor lost
    on each failure (out of memory making the file object) would run it out of fds.
    (os.fdopen failing cannot be provoked for real here, so it is made to fail.)"""

    def no_memory(*_: object, **__: object) -> None:
        raise MemoryError

    before = _open_fds()
    monkeypatch.setattr(os, "fdopen", no_memory)
    with pytest.raises(MemoryError):
        atomic.write_file(tmp_path / "snapshot", b"data")
    monkeypatch.undo()
    assert _open_fds() == before
    assert os.listdir(tmp_path) == []


def test_the_mode_is_set_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic.write_file(tmp_path / "khod.prom", b"x 1\n", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "khod.prom").stat().st_mode & 0o777 == 0o644


def test_only_a_temporary_file_no_live_process_holds_is_removed_as_stale(tmp_path: Path) -> None:
    """The next start removes what a killed writer left, never a file being written."""
    stale = tmp_path / ".abc.spool.0123456789ab.tmp"
    stale.write_bytes(b"x" * 1000)  # no writer holds it: a killed capture's
    other = tmp_path / ".khod.prom.0123456789ab.tmp"  # another target's: not this cleaner's
    other.write_bytes(b"y")
    with atomic.atomic_file(tmp_path / "def.spool", lock=True) as f:
        f.write(b"being written")
        assert atomic.remove_stale_temps(tmp_path, ".spool") == [(stale.name, 1000)]
        (live,) = [p for p in tmp_path.iterdir() if p.name.startswith(".def.spool.")]
    assert not live.exists() and (tmp_path / "def.spool").read_bytes() == b"being written"
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "def.spool"]
