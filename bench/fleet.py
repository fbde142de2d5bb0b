"""Fleet-scale benchmarks, each printed against a baseline measured in the same run.

    python bench/fleet.py [--boots 1000000] [--hosts 20000] [--pstore 100000]

A generated fleet (N boots over H hosts, kexec chains across a dozen releases, P pstore
records, one transition made crash-prone) is written as a khod export, then:

sizes    (bench/fleet_import.py) at each of --import-sizes boots (default 10^5 and
         10^6, in the same run): `khoctl import` of boots and kexec attempts against a
         hand-written loader (json.loads per line, COPY / executemany of both), in
         rows/s and their ratio, on PostgreSQL and SQLite; --baseline-src times an
         earlier khod's import beside them
import   `khoctl import` of the fleet (boots, pstore records, kexec attempts) into
         PostgreSQL (a durable cluster: fsync on) and into SQLite, against the hand
         loader of its boots and attempts; peak RSS of the import, and of importing a
         tenth of the file (bounded: the same, whatever the size)
report   `report transitions` (khod.fleet.report: on PostgreSQL from the rollups,
         khod.fleet.rollup; on SQLite its two SQLAlchemy Core queries over every boot
         and attempt) against the same report counted again from every row
         (`--recompute`, identical output, asserted) and against the per-host queries
         written by hand on the bare driver (psycopg, sqlite3); peak RSS of
         `khoctl report transitions --json`.
trust    (bench/fleet_trust.py) the first --trust-hosts hosts push their part through their
         own roles over TLS, and the reporting role runs the report: with and without the
         row-level security policies and the quota trigger, and the ratio
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleetgen import BAD, KHOCTL, PY, generate  # noqa: E402
from tests import pgserver  # noqa: E402


def head(path: Path, dst: Path, fraction: float) -> None:
    """A smaller export: the first boots (and no pstore records)."""
    lines = sum(1 for _ in path.open())
    keep = int(lines * fraction)
    with path.open() as src, dst.open("w") as out:
        for i, line in enumerate(src):
            if i > keep or '"object":"pstore"' in line:
                break
            out.write(line)


# Runs the command and writes its peak RSS (KiB) to argv[1]. A child's ru_maxrss
# starts at its parent's RSS at fork time (Linux keeps the old mm's high-water mark
# at exec), so the measured command is forked from this small process, not from the
# benchmark holding the generated fleet.
RSS_WRAPPER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(p.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measured_child(argv: list[str]) -> tuple[float, int, str]:
    """Wall time, peak RSS (KiB) and output of a command."""
    with tempfile.NamedTemporaryFile("r") as rss:
        t0 = time.perf_counter()
        r = subprocess.run(
            [PY, "-c", RSS_WRAPPER, rss.name, *argv], capture_output=True, text=True, check=False
        )
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"{argv[:3]} failed: {r.stderr.strip()}")
        return dt, int(rss.read() or 0), r.stdout


HAND_SQL = """
SELECT CASE WHEN b.kind IN ('kexec', 'kexec-no-handover', 'kexec-rejected')
            THEN b.previous_release END AS prev, b.release,
       count(*) AS boots, b.machine_id,
       count(c.boot_pk) AS crashes,
       count(CASE WHEN b.booted_at <= {before} THEN 1 END),
       count(CASE WHEN b.booted_at <= {before} AND c.boot_pk IS NOT NULL THEN 1 END),
       count(CASE WHEN b.booted_at <= {before} AND b.warnings IS NOT NULL THEN 1 END),
       count(CASE WHEN b.booted_at <= {before} AND b.warnings > 0 THEN 1 END),
       coalesce(sum(b.warnings), 0), min(b.booted_at), max(b.booted_at)
FROM boots b
LEFT JOIN (SELECT DISTINCT describes AS boot_pk FROM pstore_records
           WHERE reason IN ('Panic', 'Oops') AND describes IS NOT NULL) c
       ON c.boot_pk = b.id
WHERE (b.kind = 'kexec' AND b.previous_release IS NOT NULL) OR b.kind <> 'kexec'
GROUP BY 1, b.release, b.machine_id
"""

HAND_ATTEMPTS_SQL = """
SELECT a.expected_previous_release,
       coalesce(a.target_release, CASE WHEN a.verdict <> 'cold-boot' THEN j.release END),
       a.machine_id,
       count(*), count(CASE WHEN a.verdict = 'landed' THEN 1 END),
       count(CASE WHEN a.verdict IN ('cold-boot', 'mismatch') THEN 1 END),
       count(CASE WHEN a.verdict = 'abi-mismatch' THEN 1 END),
       count(CASE WHEN a.verdict = 'landed-without-handover' THEN 1 END)
FROM kexec_attempts a LEFT JOIN boots j ON j.id = a.verdict_boot
WHERE a.verdict IN ('landed', 'cold-boot', 'mismatch', 'abi-mismatch',
                    'landed-without-handover')
GROUP BY 1, 2, a.machine_id
"""


def hand_sql() -> str:
    """The boots query by hand, per host, with the report's 24h window."""
    return HAND_SQL.format(before=int(time.time()) - 86400)


def summed(hand: list[Any], cols: tuple[int, ...], host: int | None = None) -> set[tuple[Any, ...]]:
    """Per-host rows summed by (previous release, release), with their hosts."""
    out: dict[tuple[Any, Any], list[Any]] = {}
    for r in hand:
        if r[0] is None:
            continue
        v = out.setdefault((r[0], r[1]), [0] * len(cols) + [set()])
        for i, c in enumerate(cols):
            v[i] += r[c]
        v[-1].add(r[2] if host is None else r[host])
    return {
        (k[0], k[1], v[0], len(v[-1]), *v[1:-1]) if host is not None else (*k, *v[:-1])
        for k, v in out.items()
    }


def time_report(url: str, runs: int, recompute: bool = False) -> tuple[float, list[Any]]:
    from khod.fleet.report import transitions
    from khod.store.db import open_store

    store = open_store(url)
    times, rows = [], []
    now = time.time()
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = transitions(store, now=now, recompute=recompute)
        times.append(time.perf_counter() - t0)
    store.dispose()
    return statistics.median(times), rows


def time_hand(run: Any, runs: int) -> tuple[float, list[Any]]:
    times, rows = [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        rows = run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=20_000)
    ap.add_argument("--pstore", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--trust-hosts", type=int, default=8, metavar="N", help="0: skip the stage")
    ap.add_argument("--only-trust", action="store_true", help="skip import and report")
    ap.add_argument("--import-sizes", default="100000,1000000", help='boots; "" to skip')
    ap.add_argument("--baseline-src", metavar="DIR", help="also time this khod's import")
    ap.add_argument("--baseline-max", type=int, default=0, help="... up to this size only")
    ap.add_argument("--only-import", action="store_true", help="the import sizes only")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="khod-fleet-bench-"))
    try:
        if a.import_sizes and not a.only_trust:
            from bench import fleet_import

            sizes = [int(n) for n in a.import_sizes.split(",")]
            fleet_import.measure(sizes, tmp, a.baseline_src, a.baseline_max)
        if a.only_import:
            return 0
        export = tmp / "fleet.jsonl"
        attempts = tmp / "attempts.jsonl"
        t0 = time.perf_counter()
        made = generate(export, a.boots, a.hosts, a.pstore, attempts_path=attempts)
        print(
            f"generated {made['boots']:,} boots over {a.hosts:,} hosts, {made['pstore']:,} "
            f"pstore records and {made['attempts']:,} kexec attempts: "
            f"{export.stat().st_size / 2**20:.0f} MiB in "
            f"{time.perf_counter() - t0:.1f} s",
            flush=True,
        )
        if a.only_trust:
            from bench.fleet_trust import measure

            measure(export, tmp, a.trust_hosts, a.runs)
            return 0
        from bench.fleet_import import hand_load_pg, hand_load_sqlite, with_attempts

        small = tmp / "tenth.jsonl"
        head(export, small, 0.1)
        both = tmp / "fleet-attempts.jsonl"
        with_attempts(export, attempts, both)
        rows_in = made["boots"] + made["attempts"]
        with pgserver.running_server(durable=True) as pg:
            targets = {
                "PostgreSQL": (pg.url(pg.create_database()), pg.url(pg.create_database())),
                "SQLite": (f"sqlite:///{tmp / 'fleet.db'}", f"sqlite:///{tmp / 'tenth.db'}"),
            }
            for name, (url, small_url) in targets.items():
                dt, rss, out = measured_child(
                    [KHOCTL, "import", str(both), "--db", url, "--json", "--quiet"]
                )
                res = json.loads(out[: out.rindex("}") + 1])
                assert res["new"]["boot"] == made["boots"], res
                assert res["new"]["pstore"] == made["pstore"], res
                assert res["new"]["attempt"] == made["attempts"], res
                _, rss_small, _ = measured_child(
                    [KHOCTL, "import", str(small), "--db", small_url, "--json", "--quiet"]
                )
                if name == "PostgreSQL":
                    base = hand_load_pg(both, url.replace("postgresql+psycopg", "postgresql"))
                else:
                    base = hand_load_sqlite(both, Path(url.removeprefix("sqlite:///")))
                print(
                    f"import ({name}): {made['boots']:,} boots + {made['attempts']:,} attempts "
                    f"+ {made['pstore']:,} pstore records in {dt:.1f} s = "
                    f"{rows_in / dt:,.0f} boots and attempts/s; hand-written loader of the "
                    f"boots and attempts {base:.1f} s = {rows_in / base:,.0f}/s; ratio "
                    f"{dt / base:.2f}x; peak RSS {rss / 1024:.0f} MiB for the whole file, "
                    f"{rss_small / 1024:.0f} MiB for a tenth (ratio {rss / rss_small:.2f})",
                    flush=True,
                )
                ours, rows = time_report(url, a.runs)
                full, full_rows = time_report(url, a.runs, recompute=True)
                assert [r.as_json() for r in rows] == [r.as_json() for r in full_rows]
                if name == "PostgreSQL":
                    import psycopg

                    conn = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))

                    def run_pg(conn: Any = conn) -> list[Any]:
                        with conn.cursor() as cur:
                            cur.execute(hand_sql())
                            got = list(cur.fetchall())
                            cur.execute(HAND_ATTEMPTS_SQL)
                            return [got, list(cur.fetchall())]

                    hand, hrows = time_hand(run_pg, a.runs)
                    conn.close()
                else:
                    conn3 = sqlite3.connect(url.removeprefix("sqlite:///"))

                    def run_sqlite(conn3: Any = conn3) -> list[Any]:
                        got = list(conn3.execute(hand_sql()).fetchall())
                        return [got, list(conn3.execute(HAND_ATTEMPTS_SQL).fetchall())]

                    hand, hrows = time_hand(run_sqlite, a.runs)
                    conn3.close()
                # same answer both ways (the report leaves out the baseline rows, and
                # attempts whose transition has no boot yet are rows of their own)
                hboots, hattempts = hrows
                assert {
                    (r.previous_release, r.release, r.boots, r.hosts, r.crashes, r.warned_boots)
                    for r in rows
                    if r.boots
                } == summed(hboots, (2, 4, 8), 3)
                assert {
                    (r.previous_release, r.release, r.attempts, r.landed, r.failed_to_land)
                    for r in rows
                    if r.attempts
                } == summed(hattempts, (3, 4, 5))
                worst = rows[0]
                assert (worst.previous_release, worst.release) == BAD, worst
                assert str(worst.verdict) == "worse", worst
                cli, cli_rss, out = measured_child(
                    [KHOCTL, "report", "transitions", "--db", url, "--json"]
                )
                assert json.loads(out)[0]["release"] == BAD[1]
                kept = (
                    "from the rollups" if name == "PostgreSQL" else "(no rollups: the full query)"
                )
                print(
                    f"report ({name}): transitions over {made['boots']:,} boots "
                    f"and {made['attempts']:,} attempts {kept} {ours * 1000:.0f} ms; "
                    f"counted again from every row (--recompute) {full * 1000:.0f} ms, "
                    f"ratio {ours / full:.2f}x; the per-host queries by hand "
                    f"{hand * 1000:.0f} ms, ratio {ours / hand:.2f}x; "
                    f"worst {worst.previous_release} -> {worst.release}: "
                    f"{worst.verdict}, crashes {worst.crash_rate or 0:.1%} of "
                    f"{worst.boots:,} boots, {worst.failed_to_land + worst.rejected:,} of "
                    f"{worst.attempts:,} attempts did not land; "
                    f"{sum(str(r.verdict) == 'worse' for r in rows)} of {len(rows)} "
                    f"transitions worse; "
                    f"`khoctl report transitions --json` {cli:.2f} s, peak RSS "
                    f"{cli_rss / 1024:.0f} MiB",
                    flush=True,
                )
        if a.trust_hosts:
            from bench.fleet_trust import measure

            measure(export, tmp, a.trust_hosts, a.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
