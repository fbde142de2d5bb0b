"""Benchmarks, each printed as a ratio against a baseline measured in the same run.

    python bench/run.py [--runs N]

once: ``khod --once`` on a fixture sysroot with an existing, migrated SQLite DB,
against the bare interpreter start (``python -c pass``) of the same venv.
Target: <= 15x.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests/data/fixtures/pstore-kho/step2"
PY = sys.executable
KHOD = str(Path(PY).parent / "khod")


def timed(argv: list[str], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out.append(time.perf_counter() - t0)
    return out


def bench_once(runs: int) -> tuple[float, float]:
    tmp = Path(tempfile.mkdtemp(prefix="khod-bench-"))
    try:
        db = f"sqlite:///{tmp / 'khod.db'}"
        cmd = [KHOD, "--once", "--sysroot", str(FIXTURE), "--db", db]
        subprocess.run(cmd, check=True, capture_output=True)  # create + migrate once
        base: list[float] = []
        khod: list[float] = []
        for _ in range(runs):  # interleaved, so drift hits both alike
            base += timed([PY, "-c", "pass"], 1)
            khod += timed(cmd, 1)
        return statistics.median(base), statistics.median(khod)
    finally:
        shutil.rmtree(tmp)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=int(os.environ.get("KHOD_BENCH_RUNS", "15")))
    args = ap.parse_args()
    base, khod = bench_once(args.runs)
    ratio = khod / base
    print(
        f"once: khod --once on a migrated DB {khod * 1000:.1f} ms, "
        f"bare interpreter {base * 1000:.1f} ms, ratio {ratio:.1f}x (target <= 15x) "
        f"[median of {args.runs}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
