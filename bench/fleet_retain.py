"""The fleet database's retention (`khoctl fleet retain`), each figure against a baseline
measured in the same run.

    python bench/fleet_retain.py [--boots 200000] [--hosts 2000] [--pstore 20000] [--days 10]
                                 [--batch 5000]

bench/fleetgen.py's fleet (every host boots once a day, --boots / --hosts days in all,
with pstore records and a kexec attempt per boot after a host's first) is imported with
`khoctl import` into a PostgreSQL database (timed: what taking the rows in cost), which
is then copied (``CREATE DATABASE ... TEMPLATE``) so that two deletes start from the
same rows (two copies of it, neither in PostgreSQL's cache). Then, on the first copy
`khoctl fleet retain --max-age`, on the second the same boots deleted by hand in one
statement (``DELETE FROM boots WHERE booted_at < ...``:
the foreign keys' cascades and the rollup triggers, as the command's deletes), twice:

1. the first retention of a fleet that never had one: the first --days days go;
2. the day after: one more day of boots goes (a daily timer's steady state).

Each prints the boots deleted (asserted equal on both sides), the command's time against
the hand delete's, boots/s, and that the rollups still agree with the rows (`khoctl
fleet rollups --check` on the command's database).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fleetgen import KHOCTL, generate
from tests import pgserver

DAY = 86400
T0 = 1_780_000_000  # bench/fleetgen.py's first day (host h boots at T0 + 7 h + i days)


def khoctl(*argv: str) -> tuple[float, str]:
    t = time.perf_counter()
    r = subprocess.run([KHOCTL, *argv], capture_output=True, text=True, check=False)
    took = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"khoctl {argv[0]} failed: {r.stdout.strip()} {r.stderr.strip()}")
    return took, r.stdout


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=200_000)
    ap.add_argument("--hosts", type=int, default=2_000)
    ap.add_argument("--pstore", type=int, default=20_000)
    ap.add_argument("--days", type=int, default=10, help="days the first retention deletes")
    ap.add_argument("--batch", type=int, default=5000, help="khoctl fleet retain --batch")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="khod-fleet-retain-"))
    try:
        export, attempts = tmp / "fleet.jsonl", tmp / "attempts.jsonl"
        made = generate(export, a.boots, a.hosts, a.pstore, attempts_path=attempts)
        print(
            f"generated {made['boots']:,} boots over {a.hosts:,} hosts "
            f"({a.boots // a.hosts} days), {made['pstore']:,} pstore records, "
            f"{made['attempts']:,} attempts",
            flush=True,
        )
        with pgserver.running_server(durable=True) as pg:
            db = pg.create_database()
            url = pg.url(db)
            took = sum(
                khoctl("import", str(p), "--db", url, "--json", "--quiet")[0]
                for p in (export, attempts)
            )
            rows = made["boots"] + made["pstore"] + made["attempts"]
            print(
                f"khoctl import: {took:.1f} s, {made['boots'] / took:,.0f} boots/s "
                f"({rows / took:,.0f} rows/s)",
                flush=True,
            )
            pg.psql("VACUUM ANALYZE", db)
            cmd_db, hand_db = "cmd_" + db, "hand_" + db  # two copies, neither in the cache
            for copy in (cmd_db, hand_db):
                pg.psql(f"CREATE DATABASE {copy} TEMPLATE {db}")
            url = pg.url(cmd_db)
            steps = (("first retention", a.days), ("the day after", a.days + 1))
            for k, (step, days) in enumerate(steps):
                # an hour before day `days`' first boot: the boots of the days before go
                cutoff = T0 + days * DAY - 3600
                hand_first = k % 2 == 1  # in turn: the second to run may find more cached

                def by_hand(cutoff: int = cutoff) -> tuple[float, int]:
                    t = time.perf_counter()
                    n = pg.psql(
                        f"WITH d AS (DELETE FROM boots WHERE booted_at < {cutoff} RETURNING 1) "
                        "SELECT count(*) FROM d",
                        hand_db,
                    )
                    return time.perf_counter() - t, int(n)

                if hand_first:
                    t_hand, hand = by_hand()
                now = float(pg.psql("SELECT extract(epoch FROM clock_timestamp())", db))
                max_age = int(now - cutoff) + 5  # the command starts within 5 s
                t_cmd, out = khoctl(
                    "fleet", "retain", "--db", url, "--max-age", f"{max_age}s", "--json",
                    "--batch", str(a.batch),
                )  # fmt: skip
                said = json.loads(out)
                if not hand_first:
                    t_hand, hand = by_hand()
                n = said["deleted"]["boots"]
                if n != hand:
                    raise SystemExit(f"{step}: khoctl deleted {n} boots, by hand {hand}")
                check, _ = khoctl("fleet", "rollups", "--check", "--db", url)
                print(
                    f"{step}: {n:,} boots ({said['deleted']['blobs']:,} blobs, "
                    f"{said['deleted']['pstore_records']:,} pstore records, "
                    f"{said['deleted']['kexec_attempts']:,} attempts) in {said['batches']} "
                    f"batches: khoctl fleet retain {t_cmd:.2f} s ({n / t_cmd:,.0f} boots/s); "
                    f"by hand in one DELETE {t_hand:.2f} s ({n / t_hand:,.0f} boots/s); "
                    f"ratio {t_cmd / t_hand:.2f}x ({'by hand' if hand_first else 'khoctl'} "
                    f"first); rollups agree (checked in {check:.1f} s)",
                    flush=True,
                )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
