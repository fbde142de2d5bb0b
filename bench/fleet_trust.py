"""The cost of fleet trust (bench/fleet.py's last stage; alone: ``python
bench/fleet_trust.py [--boots N] [--hosts H] [--pstore P]``).

Two fleet databases in one TLS cluster, both set up by ``khoctl fleet init``: in one the
row-level security policies and the per-host quota trigger are on (as shipped), in the
other they are off (``DISABLE ROW LEVEL SECURITY``, ``DISABLE TRIGGER`` of the quota
and row-bound triggers). Every host
pushes its own store to both through its own role over verified TLS, alternately, then
the reporting role runs the transition report on both: throughput with and without the
policies, and their ratio, from the same run; then the cost of the row bound trigger
alone (migration 0012), on and off in the same database.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pgserver  # noqa: E402

TABLES = ("boots", "blobs", "events", "pstore_records", "kexec_attempts")


def split_by_host(export: Path, out_dir: Path, max_hosts: int) -> dict[str, Path]:
    """One export per machine (the header, then that machine's lines), of the first
    ``max_hosts`` machines."""
    files: dict[str, Any] = {}
    paths: dict[str, Path] = {}
    with export.open() as src:
        header = src.readline()
        for line in src:
            machine = json.loads(line)["machine_id"]
            f = files.get(machine)
            if f is None:
                if len(files) >= max_hosts:
                    continue
                paths[machine] = out_dir / f"{machine}.jsonl"
                f = files[machine] = paths[machine].open("w")
                f.write(header)
            f.write(line)
    for f in files.values():
        f.close()
    return paths


def ctl(*argv: str) -> None:
    from khod.cli import khoctl
    from khod.cli.common import run_main

    if run_main("khoctl", khoctl.main, list(argv)) != 0:
        raise SystemExit(f"khoctl {argv[0]} failed")


@contextmanager
def tls_fleet(
    *, log_connections: bool = False, durable: bool = False
) -> Iterator[tuple[pgserver.PostgresServer, str]]:
    """A TLS cluster with one fleet database set up by ``khoctl fleet init``;
    ``log_connections``: each session the server lets in is a line of its log."""
    with pgserver.running_server(durable=durable, tls=True) as pg:
        if log_connections:
            pg.psql("ALTER SYSTEM SET log_connections = on")
            pg.psql("SELECT pg_reload_conf()")
        db = pg.create_database()
        ctl("fleet", "init", "--db", pg.url(db))
        yield pg, db


def enroll_host(
    owner: Any, pg: pgserver.PostgresServer, machine: str, out: Path
) -> tuple[str, Any]:
    """A host's own role and certificate (``khod.fleet.admin.enroll``, as ``khoctl fleet
    enroll``): its role and its verified-TLS settings."""
    from khod.fleet import admin
    from khod.fleet.tls import TlsSettings

    role = admin.host_role(machine)
    c = admin.enroll(owner, role, admin.HOST_GROUP, ca_cert=pg.ca_cert, ca_key=pg.ca_key, out=out)
    return role, TlsSettings("verify-full", c["ca"], c["cert"], c["key"])


def host_url(pg: pgserver.PostgresServer, db: str, role: str) -> str:
    return f"postgresql+psycopg://{role}@localhost:{pg.port}/{db}"


def measure(export: Path, tmp: Path, max_hosts: int = 8, runs: int = 5) -> None:
    from khod.fleet import admin
    from khod.fleet.report import transitions
    from khod.fleet.sync import push
    from khod.store.db import open_store

    per_host = split_by_host(export, tmp, max_hosts)
    with pgserver.running_server(durable=True, tls=True) as pg:
        dbs = {"with": pg.create_database(), "without": pg.create_database()}
        for name, db in dbs.items():
            ctl("fleet", "init", "--db", pg.url(db))
            if name == "without":
                pg.psql(
                    "; ".join(
                        f"ALTER TABLE {t} DISABLE ROW LEVEL SECURITY; "
                        f"ALTER TABLE {t} DISABLE TRIGGER khod_host_quota; "
                        f"ALTER TABLE {t} DISABLE TRIGGER khod_row_bound"
                        for t in TABLES
                    ),
                    db,
                )
        owner = open_store(pg.url(dbs["with"]))
        hosts = []
        for machine, path in per_host.items():
            local = f"sqlite:///{tmp / machine / 'khod.db'}"
            ctl("import", "--db", local, "--quiet", str(path))
            role, tls = enroll_host(owner, pg, machine, tmp / f"tls-{machine}")
            hosts.append((role, local, tls))
        reader = admin.enroll(
            owner, "bench_reader", admin.REPORT_GROUP, ca_cert=pg.ca_cert, ca_key=pg.ca_key,
            out=tmp / "tls-reader",
        )  # fmt: skip
        owner.dispose()
        spent = {"with": 0.0, "without": 0.0}
        rows = {"with": 0, "without": 0}
        for i, (role, local, tls) in enumerate(hosts):
            order = ("with", "without") if i % 2 == 0 else ("without", "with")
            for name in order:
                url = host_url(pg, dbs[name], role)
                t0 = time.perf_counter()
                res = push(url, local, tls=tls)
                spent[name] += time.perf_counter() - t0
                rows[name] += sum(res.counts.new.values())
        assert rows["with"] == rows["without"], rows
        n = rows["with"]
        print(
            f"sync through host roles over TLS ({len(hosts)} hosts, {n:,} rows): with RLS and "
            f"the quota trigger {n / spent['with']:,.0f} rows/s, without "
            f"{n / spent['without']:,.0f} rows/s; ratio {spent['with'] / spent['without']:.2f}x",
            flush=True,
        )
        q = (
            f"?sslmode=verify-full&sslrootcert={reader['ca']}&sslcert={reader['cert']}"
            f"&sslkey={reader['key']}"
        )
        times: dict[str, list[float]] = {"with": [], "without": []}
        answers = {}
        stores = {
            name: open_store(f"postgresql+psycopg://bench_reader@localhost:{pg.port}/{db}{q}")
            for name, db in dbs.items()
        }
        for _ in range(runs):
            for name, store in stores.items():
                t0 = time.perf_counter()
                answers[name] = transitions(store)
                times[name].append(time.perf_counter() - t0)
        for store in stores.values():
            store.dispose()
        assert answers["with"] == answers["without"]
        w, wo = statistics.median(times["with"]), statistics.median(times["without"])
        print(
            f"report transitions as the reporting role over {n:,} rows: with RLS "
            f"{w * 1000:.0f} ms, without {wo * 1000:.0f} ms; ratio {w / wo:.2f}x",
            flush=True,
        )
        row_bound_cost(pg, dbs["with"], hosts[0][0], hosts[0][2], runs)


def row_bound_cost(pg: pgserver.PostgresServer, db: str, role: str, tls: Any, runs: int) -> None:
    """One host inserting 50,000 events in one statement (rolled back), with the row
    bound trigger of migration 0012 on and off (the owner toggles it), alternately."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    conninfo = make_conninfo(
        host="localhost", port=str(pg.port), dbname=db, user=role, sslmode="verify-full",
        sslrootcert=tls.ca, sslcert=tls.cert, sslkey=tls.key,
    )  # fmt: skip
    n = 50_000
    times: dict[str, list[float]] = {"on": [], "off": []}
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT max(id) FROM boots").fetchone()
        boot = row[0] if row else None
        conn.rollback()
        for i in range(runs * 2):
            state = ("on", "off")[i % 2]
            word = "ENABLE" if state == "on" else "DISABLE"
            pg.psql(f"ALTER TABLE events {word} TRIGGER khod_row_bound", db)
            t0 = time.perf_counter()
            conn.execute(
                "INSERT INTO events (boot_pk, created_at, kind, source, severity, message, "
                f"fingerprint) SELECT {boot}, 0, 'bench', 's', 'info', repeat('m', 200), "
                f"'b' || g FROM generate_series(1, {n}) g"
            )
            times[state].append(time.perf_counter() - t0)
            conn.rollback()
    pg.psql("ALTER TABLE events ENABLE TRIGGER khod_row_bound", db)
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    print(
        f"one statement of {n:,} events as a host: with the row bound {n / on:,.0f} rows/s, "
        f"without {n / off:,.0f} rows/s; ratio {on / off:.2f}x",
        flush=True,
    )


def connect_time(conninfo: str, n: int = 30) -> float:
    """Median seconds of a TLS connection with cert authentication and one query."""
    import psycopg

    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        with psycopg.connect(conninfo) as conn:
            conn.execute("SELECT 1")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


MAKE_ROLES = """
DO $$ BEGIN FOR i IN 2..@N@ LOOP
  EXECUTE format('CREATE ROLE %I LOGIN CONNECTION LIMIT 2 IN ROLE khod_host',
                 'host_' || lpad(to_hex(i), 32, '0'));
  EXECUTE format('ALTER ROLE %I SET statement_timeout = %L',
                 'host_' || lpad(to_hex(i), 32, '0'), '60s');
END LOOP; END $$
"""


def roles_at_scale(n_roles: int, tmp: Path) -> None:
    """One login role per host, at fleet size: the catalog bytes of n_roles host roles
    and a host's connection time with 1 enrolled host against n_roles."""
    from psycopg.conninfo import make_conninfo

    from khod.store.db import open_store

    size = "SELECT pg_total_relation_size('pg_authid') + pg_total_relation_size('pg_auth_members')"
    with tls_fleet() as (pg, db):
        owner = open_store(pg.url(db))
        role, tls = enroll_host(owner, pg, f"{1:032x}", tmp / "tls-one")
        owner.dispose()
        info = make_conninfo(
            host="localhost", port=pg.port, dbname=db, user=role,
            sslmode="verify-full", sslrootcert=tls.ca, sslcert=tls.cert, sslkey=tls.key,
        )  # fmt: skip
        before_bytes = int(pg.psql(size, db))
        before = connect_time(info)
        t0 = time.perf_counter()
        pg.psql(MAKE_ROLES.replace("@N@", str(n_roles)), db)
        made = time.perf_counter() - t0
        after_bytes = int(pg.psql(size, db))
        settings = int(pg.psql("SELECT pg_total_relation_size('pg_db_role_setting')", db))
        after = connect_time(info)
        print(
            f"{n_roles:,} host roles: made in {made:.1f} s; pg_authid + pg_auth_members "
            f"{before_bytes / 2**20:.2f} -> {after_bytes / 2**20:.2f} MiB "
            f"(pg_db_role_setting {settings / 2**20:.2f} MiB); a host's TLS connection "
            f"{before * 1000:.1f} ms with 1 role, {after * 1000:.1f} ms with {n_roles:,} "
            f"(ratio {after / before:.2f}x)",
            flush=True,
        )


def main() -> int:
    from bench.fleetgen import generate

    ap = argparse.ArgumentParser()
    ap.add_argument("--boots", type=int, default=40_000)
    ap.add_argument("--hosts", type=int, default=8)
    ap.add_argument("--pstore", type=int, default=4_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--roles", type=int, default=0, metavar="N", help="only: N host roles")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="khod-fleet-trust-bench-"))
    try:
        if a.roles:
            roles_at_scale(a.roles, tmp)
            return 0
        export = tmp / "fleet.jsonl"
        generate(export, a.boots, a.hosts, a.pstore, attempts_path=tmp / "attempts.jsonl")
        measure(export, tmp, a.hosts, a.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
