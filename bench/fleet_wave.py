"""A kexec wave (``python bench/fleet_wave.py [--hosts N] [--workers W]``).

Of N simulated hosts, ``--share`` (10%) kexec within ``--window`` (10 simulated
minutes); each comes up in a new boot (a boot row with its blobs and events, the
pstore fixture's) and its daemon pushes it at its splay into the first minute
(``khod.daemon.syncplan``). The other hosts have nothing new and open no connection
(bench/fleet_quiet.py), so only the hosts of the wave are enrolled: each with its own
role and certificate on one TLS fleet database (``khoctl fleet init``), its first boot
pushed before the wave. The wave's pushes are then real (``khod.fleet.sync.push`` over
verified TLS), in schedule order, as fast as ``--workers`` concurrent pushers can
send them: rows/s absorbed, p50 and p99 push latency, and the server's CPU (utime +
stime of the postmaster, its children, and the children it reaped, from /proc).

The same run's baseline: the same rows (an export of the new boots of the wave's
hosts) through one bulk ``khoctl import`` as the owner, into a second fleet database
of the same cluster: rows/s and the server's CPU per 1,000 rows.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fleet_quiet import INTERVAL, SimHost, setup  # noqa: E402
from bench.fleet_trust import ctl, tls_fleet  # noqa: E402
from tests import pgserver  # noqa: E402


def server_cpu(pg: pgserver.PostgresServer) -> float:
    """CPU seconds of the server so far: the postmaster's own and its reaped children's,
    and its live children's (backends, checkpointer, walwriter...)."""
    tick = os.sysconf("SC_CLK_TCK")
    master = int((pg.data / "postmaster.pid").read_text().split()[0])

    def fields(pid: int) -> list[str]:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()  # from the state on: field 3 is [0]

    f = fields(master)
    total = sum(int(x) for x in f[11:15])  # utime stime cutime cstime
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == master:
            continue
        try:
            c = fields(int(d))
        except (OSError, ValueError):
            continue  # gone meanwhile: its time is in the postmaster's cutime
        if int(c[1]) == master:
            total += int(c[11]) + int(c[12])
    return total / tick


def kexec(path: Path, at: int) -> None:
    """A new boot in the host's store (the newest one again, a new boot id, booted at
    ``at``) with copies of its blobs and events: what the host's next push sends."""
    with sqlite3.connect(path) as db:
        (old,) = db.execute("SELECT max(id) FROM boots").fetchone()

        def copy(table: str, where: str, **over: object) -> int:
            cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[1] != "id"]
            picked = ", ".join("?" if c in over else c for c in cols)
            cur = db.execute(
                f"INSERT INTO {table} ({', '.join(cols)}) SELECT {picked} FROM {table} "
                f"WHERE {where}",
                [over[c] for c in cols if c in over],
            )
            return int(cur.lastrowid or 0)

        new = copy("boots", f"id = {old}", boot_id=uuid.uuid4().hex, booted_at=at, ingested_at=at)
        copy("blobs", f"boot_pk = {old}", boot_pk=new)
        copy("events", f"boot_pk = {old}", boot_pk=new)


def wave(hosts: list[SimHost], window: float, workers: int, pg: pgserver.PostgresServer) -> int:
    from khod.daemon import syncplan
    from khod.fleet.sync import push

    rng = random.Random(28)
    at = int(time.time())
    plan = []
    for h in hosts:
        kexec(Path(h.local.removeprefix("sqlite:///")), at)
        plan.append((rng.uniform(0, window) + syncplan.first_delay(h.splay, INTERVAL), h))
    plan.sort(key=lambda p: p[0])

    def one(h: SimHost) -> tuple[float, int]:
        t0 = time.perf_counter()
        res = push(h.url, h.local, tls=h.tls)
        return time.perf_counter() - t0, sum(res.counts.new.values())

    cpu0, t0 = server_cpu(pg), time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(one, [h for _, h in plan]))
    wall, cpu = time.perf_counter() - t0, server_cpu(pg) - cpu0
    lat = sorted(d for d, _ in done)
    rows = sum(n for _, n in done)
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    span = plan[-1][0] - plan[0][0]
    print(
        f"wave: {len(hosts):,} hosts kexec in {window / 60:.0f} simulated min "
        f"({len(hosts) / span:.2f} pushes/s arriving over {span:.0f} s), {rows:,} rows; "
        f"pushed by {workers} concurrent pushers in {wall:.1f} s: {rows / wall:,.0f} rows/s, "
        f"{len(hosts) / wall:.1f} pushes/s ({span / wall:,.0f}x the wave's arrival rate); "
        f"push latency p50 {statistics.median(lat) * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms; server CPU {cpu:.1f} s "
        f"({cpu / rows * 1000:.2f} s per 1,000 rows)",
        flush=True,
    )
    return at


def baseline(hosts: list[SimHost], since: int, pg: pgserver.PostgresServer, tmp: Path) -> None:
    """The same rows through one bulk import, as the owner, into a fresh fleet database."""
    from khod.fleet.export import export
    from khod.store.db import open_store

    path = tmp / "wave.jsonl"
    with path.open("w") as out:
        for i, h in enumerate(hosts):
            store = open_store(h.local, create=False)
            buf = io.StringIO()
            export(store, buf, since=float(since))
            store.dispose()
            lines = buf.getvalue().splitlines(keepends=True)
            out.writelines(lines if i == 0 else lines[1:])
    rows = sum(1 for _ in path.open()) - 1
    db = pg.create_database()
    ctl("fleet", "init", "--db", pg.url(db))
    cpu0, t0 = server_cpu(pg), time.perf_counter()
    ctl("import", "--db", pg.url(db), "--quiet", str(path))
    wall, cpu = time.perf_counter() - t0, server_cpu(pg) - cpu0
    print(
        f"baseline, the same {rows:,} rows through one bulk import as the owner: "
        f"{wall:.1f} s, {rows / wall:,.0f} rows/s; server CPU {cpu:.1f} s "
        f"({cpu / rows * 1000:.2f} s per 1,000 rows)",
        flush=True,
    )


def main() -> int:
    from khod.fleet.sync import push

    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", type=int, default=2000, help="simulated hosts")
    ap.add_argument("--share", type=float, default=0.10, help="of the hosts in the wave")
    ap.add_argument("--window", type=float, default=600.0, help="simulated seconds")
    ap.add_argument("--workers", type=int, default=4, help="concurrent pushers")
    a = ap.parse_args()
    n = max(1, round(a.hosts * a.share))
    tmp = Path(tempfile.mkdtemp(prefix="khod-fleet-wave-bench-"))
    try:
        with tls_fleet() as (pg, db):
            t0 = time.perf_counter()
            hosts = setup(n, tmp, pg, db)
            for h in hosts:  # the boot before the wave, in the fleet
                push(h.url, h.local, tls=h.tls)
            print(
                f"{n:,} hosts of {a.hosts:,} enrolled and current in "
                f"{time.perf_counter() - t0:.0f} s",
                flush=True,
            )
            since = wave(hosts, a.window, a.workers, pg)
            baseline(hosts, since, pg, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
