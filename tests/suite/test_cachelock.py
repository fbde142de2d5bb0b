"""What the suite caches is built once when several processes want it at the same time
(pytest-xdist's workers, the background kernel build of `make test`): tests/cachelock.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cachelock import locked
from tests.conftest import REPO

ROOT = REPO
# check the cache, build if missing (the build announces itself, then takes a while)
BUILDER = """
import sys, time
from pathlib import Path
from tests.cachelock import locked
cache = Path(sys.argv[1])
with locked(cache / "thing.lock"):
    if not (cache / "thing").exists():
        with open(cache / "builds", "a") as f:
            f.write("built\\n")
        time.sleep(1)
        (cache / "thing").write_text("done")
print((cache / "thing").read_text())
"""


def test_two_processes_wanting_the_same_cache_entry_build_it_once(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert [o.strip() for o, _ in outs] == ["done"] * 3, outs
    assert (tmp_path / "builds").read_text() == "built\n"


def test_a_lock_is_free_again_after_its_holder_is_done(tmp_path: Path) -> None:
    with locked(tmp_path / "a.lock"):
        pass
    with locked(tmp_path / "a.lock"):  # would block forever if the first kept it
        (tmp_path / "ok").write_text("")
    assert (tmp_path / "ok").exists()
