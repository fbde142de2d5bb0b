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
import random
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

from tests import pgserver  # noqa: E402
from tests.builders import (  # noqa: E402
    attempt_row,
    boot_row,
    export_header,
    export_line,
    pstore_row,
)

PY = sys.executable
KHOCTL = str(Path(PY).parent / "khoctl")

RELEASES = [f"7.{minor}.{patch}-fleet" for minor in (1, 2, 3, 4) for patch in (0, 2, 4)]
BAD = ("7.3.2-fleet", "7.3.4-fleet")  # the crash-prone transition


def attempt_line(
    machine: str,
    uid: int,
    *,
    frm: str,
    prev: str,
    target: str,
    verdict: str,
    judged_by: str | None,
    t: int,
) -> str:
    row = attempt_row(
        machine,
        f"{uid:08x}-0000-4000-8000-{uid:012x}",
        from_boot=frm,
        prev=prev,
        target=target,
        verdict=verdict,
        verdict_boot=judged_by,
        created_at=float(t),
        target_image="/boot/vmlinuz-" + target,
        target_abi="kho-v4",
    )
    return export_line(row).rstrip("\n")


def generate(
    path: Path, n_boots: int, n_hosts: int, n_pstore: int, *, attempts_path: Path, seed: int = 7
) -> dict[str, Any]:
    """Write the export, and the attempts' export; return what was generated (for the
    checks below). Every boot after a host's first was aimed at by an attempt from the
    boot before: a kexec boot's landed; a cold boot's failed to land (or was rejected);
    the bad transition fails to land three times as often. 2% of boots logged kernel
    warnings (the bad transition's, 10%)."""
    rnd = random.Random(seed)
    n_attempts = 0
    att = attempts_path.open("w")
    att.write(export_line(export_header()))
    per_host = n_boots // n_hosts
    t0 = 1_780_000_000
    candidates: list[tuple[str, str, str, bool]] = []  # machine, describes, found_by, bad
    with path.open("w") as out:
        out.write(export_line(export_header()))
        for h in range(n_hosts):
            machine = f"{h:032x}"
            rel = rnd.choice(RELEASES)
            count = 0
            prev_boot = None
            prev_bad = False
            for i in range(per_host):
                boot_id = f"{h:08x}-0000-4000-8000-{i:012x}"
                idx = RELEASES.index(rel)
                target = RELEASES[min(len(RELEASES) - 1, max(0, idx + rnd.choice((-1, 0, 1, 1))))]
                fails = 0.3 if (rel, target) == BAD else 0.1
                booted = t0 + h * 7 + i * 86_400
                if i == 0 or rnd.random() < fails:
                    if i > 0:  # the attempt from the boot before did not land
                        verdict = "abi-mismatch" if rnd.random() < 0.2 else "cold-boot"
                        n_attempts += 1
                        line = attempt_line(
                            machine,
                            n_attempts,
                            frm=prev_boot or "",
                            prev=rel,
                            target=target,
                            verdict=verdict,
                            judged_by=boot_id,
                            t=booted - 60,
                        )
                        att.write(line + "\n")
                    prev, count = None, 0  # a cold boot
                else:
                    prev, count = rel, count + 1  # a kexec
                    rel = target
                    n_attempts += 1
                    line = attempt_line(
                        machine,
                        n_attempts,
                        frm=prev_boot or "",
                        prev=prev,
                        target=rel,
                        verdict="landed",
                        judged_by=boot_id,
                        t=booted - 60,
                    )
                    att.write(line + "\n")
                warned = rnd.random() < (0.1 if (prev, rel) == BAD else 0.02)
                kexec = [{"name": "kexec-metadata", "size": 73}]
                row = boot_row(
                    machine,
                    boot_id,
                    rel,
                    prev,
                    booted,
                    cmdline="BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro console=ttyS0 kho=on",
                    kexec_count=count,
                    subtrees=kexec if prev else [],
                    out_subtrees=kexec,
                    out_release=rel,
                    out_kexec_count=count,
                    scratch=[[4294967296, 100663296]],
                    warnings=rnd.randint(1, 5) if warned else 0,
                    ingested_at=float(booted + 9),
                    khod_version="bench",
                )
                out.write(export_line(row))
                if prev_boot is not None:
                    candidates.append((machine, prev_boot, boot_id, prev_bad))
                prev_boot = boot_id
                prev_bad = (prev, rel) == BAD
    # pstore records: found by a boot, describing the boot before it; the bad
    # transition's boots crash 20 times as often
    weights = [20.0 if bad else 1.0 for *_, bad in candidates]
    chosen = rnd.choices(range(len(candidates)), weights=weights, k=n_pstore * 2)
    seen: set[int] = set()
    picks = [c for c in chosen if not (c in seen or seen.add(c))][:n_pstore]  # type: ignore[func-returns-value]
    with path.open("a") as out:
        for j, c in enumerate(picks):
            machine, describes, found_by, _bad = candidates[c]
            reason = rnd.choice(("Panic", "Oops", "Shutdown", "Shutdown"))
            raw = f"{reason}#1 Part1\n<0>[ 1.0] record {j}\n".encode()
            row = pstore_row(
                machine,
                found_by,
                describes,
                reason,
                raw=raw,
                path="/sys/fs/pstore/dmesg-ramoops-0",
                name="dmesg-ramoops-0",
                backend="ramoops",
                record_id=0,
                dump_key=f"ramoops:dmesg:0:{j:016x}",
            )
            out.write(export_line(row))
    att.close()
    return {"boots": per_host * n_hosts, "pstore": len(picks), "attempts": n_attempts}


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
