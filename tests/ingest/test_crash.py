"""Crash consistency: khod --once --own-pstore killed with SIGKILL at 200 random points
(khod/faults.py: every SQL statement and commit, both sides of each pstore unlink),
then started again: the store passes PRAGMA integrity_check, holds no duplicate and
loses no record, and no pstore file was ever gone before its row was committed."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from khod.cli import khod_main
from khod.cli.common import run_main
from tests import daemon_helpers
from tests.conftest import FIXTURES, SysrootFactory, restore_pstore_mtimes

pytestmark = pytest.mark.slow

STEPS = ["pstore-kho/step0", "pstore-kho/step1", "pstore-kho/step2", "pstore/step1"]
TRIALS = 200
SEED = 20261124


def khod_once(root: Path, db: Path, state: Path, kill_at: int | None = None) -> int:
    """Run khod --once in a forked child; its exit status, or -signal."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover  (the child)
        try:
            if kill_at is not None:
                os.environ["KHOD_FAULT_KILL_AT"] = str(kill_at)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            argv = ["--once", "--own-pstore", "--sysroot", str(root), "--db", f"sqlite:///{db}"]
            rc = run_main("khod", khod_main.main, [*argv, "--state-dir", str(state)])
        finally:
            os._exit(rc if "rc" in locals() else 99)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def fresh_roots(tmp: Path) -> list[Path]:
    roots = []
    for step in STEPS:
        dst = tmp / step.replace("/", "-")
        shutil.copytree(FIXTURES / step, dst)
        restore_pstore_mtimes(dst)
        roots.append(dst)
    return roots


def pstore_files(root: Path) -> dict[str, str]:
    d = root / "sys/fs/pstore"
    if not d.is_dir():
        return {}
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in d.iterdir()}


def snapshot(db: Path) -> dict[str, Any]:
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        keys = {
            pk: (m, b) for pk, m, b in conn.execute("SELECT id, machine_id, boot_id FROM boots")
        }
        out = {
            "boots": sorted(
                conn.execute(
                    "SELECT machine_id, boot_id, kind, previous_release, kexec_count FROM boots"
                )
            ),
            "blobs": sorted(
                (keys[b], d, n, s)
                for b, d, n, s in conn.execute("SELECT boot_pk, direction, name, sha256 FROM blobs")
            ),
            "pstore": sorted(
                (m, s, keys[c], keys.get(d))
                for m, s, c, d in conn.execute(
                    "SELECT machine_id, sha256, collected_by, describes FROM pstore_records"
                )
            ),
            "events": sorted(
                (keys[b], k, f)
                for b, k, f in conn.execute("SELECT boot_pk, kind, fingerprint FROM events")
            ),
        }
    return out


def test_sigkill_at_200_points_loses_and_doubles_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the reference: every step once, no fault; and how many fault points each has
    ref_dir = tmp_path / "ref"
    roots = fresh_roots(ref_dir)
    points = []
    for i, root in enumerate(roots):
        trace = tmp_path / f"trace-{i}"
        os.environ["KHOD_FAULT_TRACE"] = str(trace)
        try:
            assert khod_once(root, ref_dir / "k.db", ref_dir / "state") == 0
        finally:
            del os.environ["KHOD_FAULT_TRACE"]
        points.append(len(trace.read_text().splitlines()))
    reference = snapshot(ref_dir / "k.db")
    assert len(reference["boots"]) == 4 and len(reference["pstore"]) >= 5
    everywhere = [(i, k) for i, n in enumerate(points) for k in range(1, n + 1)]
    trials = random.Random(SEED).sample(everywhere, min(TRIALS, len(everywhere)))
    assert len(trials) == TRIALS
    unlink_kills = 0
    for t, (step, k) in enumerate(trials):
        work = tmp_path / f"t{t}"
        roots = fresh_roots(work)
        db, state = work / "k.db", work / "state"
        for root in roots[:step]:
            assert khod_once(root, db, state) == 0
        before = pstore_files(roots[step])
        assert khod_once(roots[step], db, state, kill_at=k) == -signal.SIGKILL, (step, k)
        gone = {n: h for n, h in before.items() if n not in pstore_files(roots[step])}
        if db.exists():
            with sqlite3.connect(db) as conn:
                assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], (step, k)
                tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
                stored = (
                    {s for (s,) in conn.execute("SELECT sha256 FROM pstore_records")}
                    if "pstore_records" in tables
                    else set()  # killed while creating the schema: it rolled back
                )
            # a file is gone only once its row is in: unlink comes after the commit
            assert set(gone.values()) <= stored, (step, k, gone)
        else:
            assert not gone
        unlink_kills += bool(gone)
        for root in roots[step:]:  # start again, and go on
            assert khod_once(root, db, state) == 0, (step, k)
        got = snapshot(db)
        for table in ("boots", "blobs", "pstore"):
            assert got[table] == reference[table], (step, k, table)
        # the one thing a kill may cost: the note that a file was unlinked, when the
        # kill fell between the unlink and that note (the file is gone, its row is in)
        missing = set(reference["events"]) - set(got["events"])
        assert all(kind == "pstore-unlinked" for _, kind, _ in missing), (step, k, missing)
        assert len(got["events"]) == len(set(got["events"]))
        shutil.rmtree(work)
    with capsys.disabled():
        print(
            f"\ncrash: {TRIALS} SIGKILLs among {len(everywhere)} fault points over "
            f"{len(STEPS)} ingests ({unlink_kills} after a pstore unlink): 0 duplicates, "
            "0 lost records, integrity_check ok every time"
        )


def test_a_capture_killed_mid_write_leaves_no_temporary_file_after_the_next_start(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """The daemon SIGKILLed while its boot capture writes the spool (the fault point
    between the bytes and the rename): the next start removes the temporary file, records
    the boot, and leaves nothing behind in the spool directory."""
    root = sysroot("pstore-kho/step1")
    state, db = tmp_path / "state", f"sqlite:///{tmp_path / 'k.db'}"
    where = ("--state-dir", str(state), "--db", db)
    killed = tmp_path / "killed"
    killed.mkdir()
    with daemon_helpers.running_daemon(
        root, killed, *where, state_dir=False, env={"KHOD_FAULT_KILL_AT": "1"}
    ) as d:
        assert d.proc.wait(30) == -signal.SIGKILL
    left = [p.name for p in (state / "spool").iterdir()]
    assert len(left) == 1 and left[0].endswith(".tmp"), left  # the kill left it
    clean = tmp_path / "clean"
    clean.mkdir()
    with daemon_helpers.running_daemon(root, clean, *where, state_dir=False) as d:
        d.wait_for("READY=1")
        assert metric_value(d.scrape(), "khod_kexecs_since_cold_boot") == 1.0
        deadline = time.monotonic() + 30  # the spool goes right after READY=1
        while left := sorted(p.name for p in (state / "spool").iterdir()):
            assert time.monotonic() < deadline, left
            time.sleep(0.1)
    with sqlite3.connect(tmp_path / "k.db") as conn:
        boots = [b for (b,) in conn.execute("SELECT boot_id FROM boots")]
    assert boots == ["f3d7c587-29b6-4fdf-91fe-146df8164692"]


def metric_value(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
