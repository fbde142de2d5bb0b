"""The transition report at fleet size, from the rollups (migration 0013), each figure
against a baseline measured in the same run.

    python bench/fleet_report.py [--boots 1000000] [--hosts 10000] [--copies 10]

1. bench/fleet.py's generated fleet (boots, pstore records, kexec attempts) is imported
   with `khoctl import` into two PostgreSQL databases: one keeping the rollups, one
   with the rollup triggers disabled: what keeping them costs an import. The bulk-load
   path then: the triggers enabled again and `khoctl fleet rollups --rebuild` (checked
   after), its time added to the bare import's.
2. The fleet is then copied ``--copies - 1`` more times inside PostgreSQL, each copy
   under new machine ids (INSERT ... SELECT of the boots, then of the pstore records
   and attempts pointing at the copied boots; the rollup triggers count every copy as
   they count a push): --boots x --copies boots over --hosts x --copies hosts, or as
   many copies as --budget seconds make.
   With ``--rebuild-copies`` the copies are made with the rollup triggers disabled,
   then `khoctl fleet rollups --rebuild` counts them (timed): the owner's bulk path,
   and the only way to reach 10^7 boots on a small machine in a sitting.
3. `report transitions` from the rollups (the whole history: migration 0015's totals),
   the same report counted again from every row (``--recompute``; identical output,
   asserted), 0013's read of the bucket rollups (the same rows, asserted), and the
   per-host queries of bench/fleet.py by hand on psycopg, at 1 copy and at the end.
   With ``--explain``, after each "last day" line: ``EXPLAIN (ANALYZE, BUFFERS)`` of the
   whole history's boots query (``rollup.TOTAL_BOOTS_SQL``), where its last window goes.

The copies lay each copy's boots host by host, as the import of a history does: the
last day's boots of a copy lie one on each of its hosts' stretches of the table. With
``--time-ordered`` each copy's boots are written in the order they booted, as a fleet's
pushes lay them (a host pushes its boot within minutes): the last day's boots of a copy
lie together.

``--shared-buffers`` sets the server's (PostgreSQL's default, 128MB, unless given): the
last window's boots and host totals are read from the operating system's cache when they
do not fit in it.

With ``--cost-against DIR[,DIR]`` it only times ``khoctl import`` of the generated
fleet by this khod and by the khod in each DIR (a source tree of an earlier commit with
migrations/ linked as khod/migrations), each into a database it migrated, in turn.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet import HAND_ATTEMPTS_SQL, hand_sql, time_hand  # noqa: E402
from bench.fleetgen import KHOCTL, generate  # noqa: E402
from khod.fleet import rollup  # noqa: E402
from khod.fleet.rollups_admin import TRIGGERS  # noqa: E402  (0013's)
from tests import pgserver  # noqa: E402

SCHEMA_PY = "khod/store/schema.py"

# a copy of every row under machine ids whose first 4 hex digits are the copy's number
# (bench/fleet.py's machine ids start with 0000 up to 65,535 hosts)
_M = "lpad(to_hex(%(k)s::integer), 4, '0') || substr({c}, 5)"
COPY_BOOTS = f"""
INSERT INTO boots (machine_id, boot_id, booted_at, seq, release, cmdline, kind, kind_reason,
  kho_enabled, kho_abi, memory_map_handed, previous_release, previous_release_raw,
  kexec_count, metadata_source, subtrees, out_subtrees, out_release, out_kexec_count,
  scratch, warnings, ingested_at, khod_version)
SELECT {_M.format(c="machine_id")}, boot_id, booted_at, seq, release, cmdline, kind,
  kind_reason, kho_enabled, kho_abi, memory_map_handed, previous_release,
  previous_release_raw, kexec_count, metadata_source, subtrees, out_subtrees, out_release,
  out_kexec_count, scratch, warnings, ingested_at, khod_version
FROM boots WHERE machine_id LIKE '0000%%'
"""
# --time-ordered: each copy's boots written in the order they booted, as pushes lay them
# (a host pushes within minutes of its boot); the import writes host by host
COPY_BOOTS_IN_TIME = COPY_BOOTS.rstrip() + " ORDER BY booted_at, id\n"
COPY_PSTORE = f"""
INSERT INTO pstore_records (machine_id, sha256, collected_by, describes, location, path,
  name, type, backend, record_id, part, reason, count, record_time, compressed,
  inflate_status, size, raw, text, release, dump_key, collected_at)
SELECT nc.machine_id, p.sha256, nc.id, nd.id, p.location, p.path, p.name, p.type,
  p.backend, p.record_id, p.part, p.reason, p.count, p.record_time, p.compressed,
  p.inflate_status, p.size, p.raw, p.text, p.release, p.dump_key, p.collected_at
FROM pstore_records p
JOIN boots oc ON oc.id = p.collected_by
JOIN boots nc ON nc.machine_id = {_M.format(c="oc.machine_id")} AND nc.boot_id = oc.boot_id
LEFT JOIN boots od ON od.id = p.describes
LEFT JOIN boots nd ON nd.machine_id = {_M.format(c="od.machine_id")} AND nd.boot_id = od.boot_id
WHERE p.machine_id LIKE '0000%%'
"""
COPY_ATTEMPTS = f"""
INSERT INTO kexec_attempts (uid, machine_id, from_boot, created_at, source, target_image,
  target_release, target_abi, initrd, cmdline, checks, forced, argv,
  expected_previous_release, expected_kexec_count, verdict, verdict_boot, verdict_detail)
SELECT substr(a.uid, 1, 9) || lpad(to_hex(%(k)s::integer), 4, '0') || substr(a.uid, 14),
  nf.machine_id, nf.id, a.created_at,
  a.source, a.target_image, a.target_release, a.target_abi, a.initrd, a.cmdline, a.checks,
  a.forced, a.argv, a.expected_previous_release, a.expected_kexec_count, a.verdict, nv.id,
  a.verdict_detail
FROM kexec_attempts a
JOIN boots ofb ON ofb.id = a.from_boot
JOIN boots nf ON nf.machine_id = {_M.format(c="ofb.machine_id")} AND nf.boot_id = ofb.boot_id
LEFT JOIN boots ov ON ov.id = a.verdict_boot
LEFT JOIN boots nv ON nv.machine_id = {_M.format(c="ov.machine_id")} AND nv.boot_id = ov.boot_id
WHERE a.machine_id LIKE '0000%%'
"""


def timed_khoctl(what: str, *argv: str, src: str | None = None) -> float:
    """Seconds one khoctl command took (the khod in ``src``, a source tree, if given);
    its failure ends the benchmark in one line."""
    env = dict(os.environ, PYTHONPATH=src) if src is not None else None
    t0 = time.perf_counter()
    r = subprocess.run(
        [KHOCTL, *argv], capture_output=True, text=True, check=False, env=env, cwd=src
    )
    if r.returncode != 0:
        raise SystemExit(f"{what} failed: {r.stdout.strip()} {r.stderr.strip()}")
    return time.perf_counter() - t0


def rebuild(url: str) -> float:
    """``khoctl fleet rollups --rebuild`` (its own check after it must agree)."""
    return timed_khoctl("rebuild", "fleet", "rollups", "--rebuild", "--db", url)


def khoctl_import(path: Path, url: str, src: str | None = None) -> float:
    return timed_khoctl("import", "import", str(path), "--db", url, "--json", "--quiet", src=src)


def report_times(url: str, runs: int, now: float | None = None) -> dict[str, Any]:
    """The report at ``now`` (default: the wall clock) from the rollups (best of
    ``runs``), counted again (once: minutes at 10^7 boots), 0013's read and the hand
    queries (best of ``runs``)."""
    import psycopg

    from khod.fleet.report import transitions
    from khod.store.db import open_store

    store = open_store(url, create=False)
    now = time.time() if now is None else now
    out: dict[str, Any] = {}
    for name, recompute, n in (("rollup", False, runs), ("recompute", True, 1)):
        times, rows = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            rows = transitions(store, now=now, recompute=recompute)
            times.append(time.perf_counter() - t0)
        out[name] = min(times)
        out[name + "_rows"] = [r.as_json() for r in rows]
    with store.engine.connect() as sa_conn:  # 0013's read: per host and bucket
        assert rollup.keeps_totals(sa_conn), "the database keeps no totals (before 0015)"
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            buckets = rollup.read_buckets(sa_conn, None, None, now - 86400)
            times.append(time.perf_counter() - t0)
        out["buckets"] = min(times)
        totals = rollup.read(sa_conn, None, None, now - 86400)
        assert _same(buckets, totals), "the totals and the bucket rollups disagree"
    store.dispose()
    assert out["rollup_rows"] == out["recompute_rows"], "the rollups disagree"
    conn = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"))

    def run_pg() -> list[Any]:
        with conn.cursor() as cur:
            cur.execute(hand_sql())
            got = list(cur.fetchall())
            cur.execute(HAND_ATTEMPTS_SQL)
            return [got, list(cur.fetchall())]

    out["hand"], _ = time_hand(run_pg, runs)
    with conn.cursor() as cur:
        for table in (
            "boots", "kexec_attempts", "fleet_rollup_boots", "fleet_rollup_attempts",
            "fleet_rollup_host_boots", "fleet_rollup_transition_boots",
        ):  # fmt: skip
            cur.execute(f"SELECT count(*) FROM {table}")
            row = cur.fetchone()
            out[table] = int(row[0]) if row else 0
        cur.execute("SELECT count(*) FROM boots WHERE booted_at > %s", (int(now) - 86400,))
        row = cur.fetchone()
        out["last_window"] = int(row[0]) if row else 0
    conn.close()
    return out


def explain_last_window(url: str, now: float) -> None:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the whole history's boots query at ``now`` (its
    last window: the day before), run twice (the second printed: the cache warm)."""
    import psycopg

    sql = rollup.TOTAL_BOOTS_SQL.replace(":before", str(int(now - 86400)))
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        conn.execute("SET jit = off")  # as rollup.read() does
        for _ in range(2):
            plan = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql).fetchall()
    print("\n".join("  " + str(r[0]) for r in plan), flush=True)


def last_boot(url: str) -> float:
    """An hour after the fleet's last boot: its last day's boots not observed yet."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        row = conn.execute("SELECT max(booted_at) FROM boots").fetchone()
    assert row is not None and row[0] is not None
    return float(row[0]) + 3600


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """The rows of two reads alike, whatever numeric types the server gave them."""

    def norm(rows: list[Any]) -> list[Any]:
        return sorted(
            (str(r[0]), r[1], *(None if v is None else int(v) for v in r[2:])) for r in rows
        )

    return all(norm(x) == norm(y) for x, y in zip(a[:2], b[:2], strict=True))


def show(what: str, m: dict[str, Any]) -> None:
    print(
        f"report at {what}: {m['boots']:,} boots, {m['kexec_attempts']:,} attempts; "
        f"rollup rows {m['fleet_rollup_boots']:,} + {m['fleet_rollup_attempts']:,}, "
        f"host totals {m['fleet_rollup_host_boots']:,}, transition totals "
        f"{m['fleet_rollup_transition_boots']:,}; "
        f"{m['last_window']:,} boots in the last window: from the rollups "
        f"{m['rollup'] * 1000:.0f} ms; counted again from every row (--recompute) "
        f"{m['recompute'] * 1000:.0f} ms, ratio {m['rollup'] / m['recompute']:.3f}x; "
        f"0013's read of the bucket rollups {m['buckets'] * 1000:.0f} ms, ratio "
        f"{m['rollup'] / m['buckets']:.3f}x; "
        f"the per-host queries by hand {m['hand'] * 1000:.0f} ms, ratio "
        f"{m['rollup'] / m['hand']:.3f}x; {len(m['rollup_rows'])} transitions, identical",
        flush=True,
    )


def revision_cost(export: Path, attempts: Path, runs: int, baselines: list[str]) -> None:
    """What the migrations since earlier khods cost an import: the same fleet imported
    by this khod into a database it migrated (head) and by the khod in each of
    ``baselines`` (source trees of earlier commits, migrations/ linked as
    khod/migrations) into one that khod migrated (``khoctl import`` migrates the
    database to its own head first, so each khod imports into its own schema), in turn,
    ``runs`` times each; the best of each printed with its ratio to head's."""
    from khod.store.schema import HEAD_REVISION

    revs: dict[str, str] = {HEAD_REVISION: str(ROOT)}  # this tree's khod, as labelled
    for tree in baselines:
        # without it that khod would find this tree's migrations (the editable install)
        assert (Path(tree) / "khod/migrations").is_dir(), f"{tree}: link migrations/ there"
        text = (Path(tree) / SCHEMA_PY).read_text()
        m = re.search(r'^HEAD_REVISION = "(\w+)"', text, re.M)
        assert m and m.group(1) not in revs, f"{tree}: no HEAD_REVISION, or one seen already"
        revs[m.group(1)] = tree
    times: dict[str, list[tuple[float, float]]] = {r: [] for r in revs}
    with pgserver.running_server(durable=True) as pg:
        for _ in range(runs):
            for rev, src in revs.items():
                url = pg.url(pg.create_database())
                timed_khoctl("db upgrade", "db", "upgrade", "--db", url, src=src)
                took = (khoctl_import(export, url, src), khoctl_import(attempts, url, src))
                times[rev].append(took)
    best = {r: min(t, key=sum) for r, t in times.items()}
    b1, a1 = best[HEAD_REVISION]
    said = "; ".join(
        f"the khod at {r} {b0:.1f} s, {a0:.1f} s: ratio {b1 / b0:.2f}x, {a1 / a0:.2f}x, "
        f"together {(b1 + a1) / (b0 + a0):.2f}x"
        for r, (b0, a0) in best.items()
        if r != HEAD_REVISION
    )
    print(
        f"import at {HEAD_REVISION}: boots and pstore records {b1:.1f} s, attempts "
        f"{a1:.1f} s; {said} (best of {runs} each, in turn)",
        flush=True,
    )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=1_000_000)
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--pstore", type=int, default=100_000)
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-bare", action="store_true", help="skip the import without rollups")
    ap.add_argument("--budget", type=float, default=1800, help="seconds for the copies")
    ap.add_argument(
        "--rebuild-copies",
        action="store_true",
        help="copy with the rollup triggers disabled, then fleet rollups --rebuild",
    )
    ap.add_argument(
        "--explain",
        action="store_true",
        help="after each last day's line, EXPLAIN ANALYZE of the whole history's boots query",
    )
    ap.add_argument("--shared-buffers", help="the server's shared_buffers (e.g. 1GB)")
    ap.add_argument(
        "--time-ordered",
        action="store_true",
        help="write each copy's boots in the order they booted, as pushes lay them",
    )
    ap.add_argument(
        "--cost-against",
        metavar="DIR[,DIR]",
        help="only what the migrations since the khods in DIR (source trees) cost an "
        "import, then stop",
    )
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="khod-fleet-report-"))
    try:
        export, attempts = tmp / "fleet.jsonl", tmp / "attempts.jsonl"
        t0 = time.perf_counter()
        made = generate(export, a.boots, a.hosts, a.pstore, attempts_path=attempts)
        print(
            f"generated {made['boots']:,} boots over {a.hosts:,} hosts, {made['pstore']:,} "
            f"pstore records, {made['attempts']:,} attempts in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        if a.cost_against:
            revision_cost(export, attempts, a.runs, a.cost_against.split(","))
            return 0
        with pgserver.running_server(durable=True) as pg:
            if a.shared_buffers:
                pg.psql(f"ALTER SYSTEM SET shared_buffers = '{a.shared_buffers}'")
                pg.stop()
                pg.start()
            url, bare = pg.url(pg.create_database()), pg.url(pg.create_database())
            import psycopg

            for u in (url, bare):  # the schema, then (bare) no rollup triggers
                subprocess.run(
                    [KHOCTL, "db", "upgrade", "--db", u], check=True, capture_output=True
                )
            with psycopg.connect(bare.replace("postgresql+psycopg", "postgresql")) as conn:
                for table, trigger in TRIGGERS:
                    conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
            took = {}
            for name, u in (("rollups", url), ("no rollups", bare)):
                if name == "no rollups" and a.no_bare:
                    break
                took[name] = (khoctl_import(export, u), khoctl_import(attempts, u))
            b1, a1 = took["rollups"]
            bare_said = ""
            if "no rollups" in took:
                b0, a0 = took["no rollups"]
                with psycopg.connect(bare.replace("postgresql+psycopg", "postgresql")) as conn:
                    for table, trigger in TRIGGERS:
                        conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
                r0 = rebuild(bare)
                bare_said = (
                    f"; with the rollup triggers disabled {b0:.1f} s, {a0:.1f} s; "
                    f"ratio {b1 / b0:.2f}x, {a1 / a0:.2f}x; then fleet rollups --rebuild "
                    f"{r0:.1f} s: imported and rebuilt {b0 + a0 + r0:.1f} s against "
                    f"{b1 + a1:.1f} s keeping the rollups, ratio {(b0 + a0 + r0) / (b1 + a1):.2f}x"
                )
            print(
                f"import keeping the rollups: boots and pstore records {b1:.1f} s, "
                f"attempts {a1:.1f} s{bare_said}",
                flush=True,
            )
            with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
                conn.autocommit = True  # the statistics autovacuum keeps on a live database
                conn.execute("VACUUM ANALYZE")
            show(f"1 copy ({a.hosts:,} hosts)", report_times(url, a.runs))
            show("1 copy, its last day", report_times(url, a.runs, last_boot(url)))
            if a.explain:
                explain_last_window(url, last_boot(url))
            copies = 1
            with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
                if a.rebuild_copies:
                    for table, trigger in TRIGGERS:
                        conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
                t0 = time.perf_counter()
                for k in range(1, a.copies):
                    if time.perf_counter() - t0 > a.budget:  # the scale reached is printed
                        break
                    boots_sql = COPY_BOOTS_IN_TIME if a.time_ordered else COPY_BOOTS
                    for sql in (boots_sql, COPY_PSTORE, COPY_ATTEMPTS):
                        conn.execute(sql, {"k": k})
                    conn.commit()
                    copies += 1
                    print(f"  copy {k}: {time.perf_counter() - t0:.0f} s", flush=True)
                if a.rebuild_copies:
                    for table, trigger in TRIGGERS:
                        conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
                    conn.commit()
                    print(f"  fleet rollups --rebuild: {rebuild(url):.0f} s", flush=True)
                conn.autocommit = True
                conn.execute("VACUUM ANALYZE")
            show(f"{copies} copies ({a.hosts * copies:,} hosts)", report_times(url, a.runs))
            show(f"{copies} copies, their last day", report_times(url, a.runs, last_boot(url)))
            if a.explain:
                explain_last_window(url, last_boot(url))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
