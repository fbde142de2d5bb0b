"""`khoctl import` of boots and kexec attempts against a hand-written COPY loader, in
the same run, at each size asked for.

    python bench/fleet_import.py [--sizes 100000,1000000] [--baseline-src DIR]
        [--stores PostgreSQL,SQLite] [--again]

Per size: a generated fleet (bench/fleet.py's, 50 boots a host, no pstore records)
of N boots and about as many attempts in one export; then on PostgreSQL (fsync on)
and on SQLite: `khoctl import` of the file into an empty (migrated) store, and the
hand loader (json.loads per line, boot ids given by itself, COPY of the boots and of
the attempts on PostgreSQL, executemany on SQLite; no checks, no dedupe, into tables
without indexes, keys or triggers; and again into an empty store's own tables, with
them). Rows/s and the ratios of the times. With --baseline-src (a khod source tree,
e.g. `git archive` of an earlier commit with migrations/ moved to khod/migrations)
that khod's import is timed too, in the same run. With --again each khod imports the
file a second time into the store it filled (every row known: a restored database fed
its export again).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import groupby, islice
from operator import itemgetter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import pgserver  # noqa: E402

BOOT_COLS = [
    "machine_id", "boot_id", "booted_at", "release", "cmdline", "kind", "kind_reason",
    "kho_enabled", "kho_abi", "memory_map_handed", "previous_release", "previous_release_raw",
    "kexec_count", "metadata_source", "subtrees", "out_subtrees", "out_release",
    "out_kexec_count", "scratch", "warnings", "ingested_at", "khod_version",
]  # fmt: skip
ATTEMPT_COLS = [
    "uid", "machine_id", "created_at", "source", "target_image", "target_release",
    "target_abi", "initrd", "cmdline", "checks", "forced", "argv",
    "expected_previous_release", "expected_kexec_count", "verdict", "verdict_detail",
]  # fmt: skip
JSON_COLS = frozenset({"subtrees", "out_subtrees", "scratch", "checks", "argv"})


def with_attempts(export: Path, attempts: Path, dst: Path) -> None:
    """One export: the fleet's lines, then its attempts' (without their header)."""
    with dst.open("wb") as out:
        with export.open("rb") as src:
            shutil.copyfileobj(src, out)
        with attempts.open("rb") as src:
            src.readline()
            shutil.copyfileobj(src, out)


def _rows(path: Path) -> Iterator[tuple[str, list[Any]]]:
    """("boot", row with its id first) and ("attempt", row with its boot ids last),
    the boot ids given here; anything else skipped."""
    ids: dict[tuple[str, str], int] = {}
    with path.open("rb") as f:
        f.readline()
        for line in f:
            o = json.loads(line)
            kind = o.get("object")
            if kind == "boot":
                pk = ids[(o["machine_id"], o["boot_id"])] = len(ids) + 1
                yield kind, [pk, *(json.dumps(o[c]) if c in JSON_COLS else o[c] for c in BOOT_COLS)]
            elif kind == "attempt":
                m = o["machine_id"]
                row = [json.dumps(o[c]) if c in JSON_COLS else o[c] for c in ATTEMPT_COLS]
                judged = o["verdict_boot"]
                yield kind, [*row, ids[(m, o["from_boot"])], judged and ids.get((m, judged))]


def hand_load_pg(path: Path, dsn: str, schema: bool = False) -> float:
    """The baseline loader on psycopg: COPY of the boots, then of the attempts, into
    bare copies of their tables (or, with schema, into the store's own tables, with
    their keys, indexes and triggers: the store must be empty)."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        boots, attempts = ("boots", "kexec_attempts") if schema else ("hand_b", "hand_a")
        if not schema:
            cur.execute("CREATE TABLE hand_b AS SELECT * FROM boots WITH NO DATA")
            cur.execute("CREATE TABLE hand_a AS SELECT * FROM kexec_attempts WITH NO DATA")
        targets = {
            "boot": f"{boots} (id, {', '.join(BOOT_COLS)})",
            "attempt": f"{attempts} ({', '.join(ATTEMPT_COLS)}, from_boot, verdict_boot)",
        }
        for kind, group in groupby(_rows(path), key=itemgetter(0)):
            with cur.copy(f"COPY {targets[kind]} FROM STDIN") as copy:
                for _, row in group:
                    copy.write_row(row)
        conn.commit()
    return time.perf_counter() - t0


def hand_load_sqlite(path: Path, db: Path, schema: bool = False) -> float:
    """The baseline loader on sqlite3: executemany of the boots and of the attempts
    (schema: as hand_load_pg's)."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(db)
    boots, attempts = ("boots", "kexec_attempts") if schema else ("hand_b", "hand_a")
    if not schema:
        conn.execute("CREATE TABLE hand_b AS SELECT * FROM boots WHERE 0")
        conn.execute("CREATE TABLE hand_a AS SELECT * FROM kexec_attempts WHERE 0")
    cols = {
        "boot": (boots, ["id", *BOOT_COLS]),
        "attempt": (attempts, [*ATTEMPT_COLS, "from_boot", "verdict_boot"]),
    }
    queries = {
        k: f"INSERT INTO {t} ({', '.join(c)}) VALUES ({', '.join('?' * len(c))})"
        for k, (t, c) in cols.items()
    }
    for kind, group in groupby(_rows(path), key=itemgetter(0)):
        rows = (row for _, row in group)
        while batch := list(islice(rows, 20_000)):
            conn.executemany(queries[kind], batch)
            conn.commit()
    conn.close()
    return time.perf_counter() - t0


def khoctl_import(path: Path, url: str, src: str | None = None) -> tuple[float, dict[str, Any]]:
    """Wall time and --json answer of `khoctl import` (of the khod in src, if given)."""
    from bench.fleetgen import KHOCTL

    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = src
    t0 = time.perf_counter()
    r = subprocess.run(
        [KHOCTL, "import", str(path), "--db", url, "--json", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd="/",
    )
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"khoctl import failed: {r.stderr.strip()}")
    res: dict[str, Any] = json.loads(r.stdout[: r.stdout.rindex("}") + 1])
    return dt, res


def _hand(name: str, url: str, both: Path, schema: bool = False) -> float:
    if name == "PostgreSQL":
        return hand_load_pg(both, url.replace("postgresql+psycopg", "postgresql"), schema)
    return hand_load_sqlite(both, Path(url[len("sqlite:///") :]), schema)


def _empty_store(pg: Any, name: str, db: Path, src: str | None = None) -> str:
    """A store with nothing in it, migrated by this khod or by the khod in ``src`` (a
    khod refuses a store of a revision newer than its own)."""
    from khod.store.db import open_store

    url = str(pg.url(pg.create_database()) if name == "PostgreSQL" else f"sqlite:///{db}")
    if src is None:
        open_store(url).dispose()
        return url
    code = "import sys; from khod.store.db import open_store; open_store(sys.argv[1]).dispose()"
    env = {**os.environ, "PYTHONPATH": src}
    subprocess.run([sys.executable, "-c", code, url], check=True, env=env, cwd="/")
    return url


def measure(
    sizes: list[int],
    tmp: Path,
    baseline_src: str | None = None,
    baseline_max: int = 0,
    stores: tuple[str, ...] = ("PostgreSQL", "SQLite"),
    *,
    again: bool = False,
) -> None:
    from bench.fleetgen import generate

    with pgserver.running_server(durable=True) as pg:
        for n in sizes:
            export, attempts, both = (tmp / f"{n}-{x}.jsonl" for x in ("f", "a", "both"))
            made = generate(export, n, max(1, n // 50), 0, attempts_path=attempts)
            with_attempts(export, attempts, both)
            export.unlink()
            attempts.unlink()
            rows = made["boots"] + made["attempts"]
            print(
                f"import at {made['boots']:,} boots + {made['attempts']:,} attempts "
                f"({both.stat().st_size / 2**20:.0f} MiB):",
                flush=True,
            )
            for name in stores:
                runs: dict[str, float] = {}
                before = baseline_src and (not baseline_max or n <= baseline_max)
                for who in ("khod", "before") if before else ("khod",):
                    # migrated beforehand: the import is timed, not the schema's creation
                    src = baseline_src if who == "before" else None
                    url = _empty_store(pg, name, tmp / f"{n}-{who}.db", src)
                    runs[who], res = khoctl_import(both, url, src)
                    assert res["new"]["boot"] == made["boots"], res
                    assert res["new"]["attempt"] == made["attempts"], res
                    if again:  # the same file into the store holding it: nothing new
                        runs[f"{who}-again"], res = khoctl_import(both, url, src)
                        assert set(res["new"].values()) == {0}, res
                    if who == "khod":
                        runs["hand"] = _hand(name, url, both)
                        # the same loader into the store's own tables (an empty store)
                        url = _empty_store(pg, name, tmp / f"{n}-schema.db")
                        runs["schema"] = _hand(name, url, both, schema=True)
                    if name == "SQLite":
                        Path(url[len("sqlite:///") :]).unlink()
                hand, schema = runs["hand"], runs["schema"]
                line = (
                    f"  {name}: khoctl import {runs['khod']:.1f} s = {rows / runs['khod']:,.0f} "
                    f"rows/s; hand loader {hand:.1f} s = {rows / hand:,.0f} rows/s; "
                    f"ratio {runs['khod'] / hand:.2f}x; hand loader into the store's tables "
                    f"{schema:.1f} s, ratio {runs['khod'] / schema:.2f}x"
                )
                if "before" in runs:
                    line += (
                        f"; before: {runs['before']:.1f} s = {rows / runs['before']:,.0f} "
                        f"rows/s, ratio {runs['before'] / hand:.2f}x"
                    )
                if again:
                    line += f"; again into the same store {runs['khod-again']:.1f} s"
                    if "before-again" in runs:
                        line += (
                            f", before {runs['before-again']:.1f} s, ratio "
                            f"{runs['khod-again'] / runs['before-again']:.2f}x"
                        )
                print(line, flush=True)
            both.unlink()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000", help="boots, comma-separated")
    ap.add_argument("--baseline-src", metavar="DIR", help="also time this khod's import")
    ap.add_argument("--baseline-max", type=int, default=0, help="... up to this size only")
    ap.add_argument("--stores", default="PostgreSQL,SQLite", help="which, comma-separated")
    ap.add_argument(
        "--again", action="store_true", help="also import the file a second time (all known)"
    )
    a = ap.parse_args()
    stores = tuple(a.stores.split(","))
    if not stores or not set(stores) <= {"PostgreSQL", "SQLite"}:
        ap.error("--stores: PostgreSQL, SQLite or both")
    tmp = Path(tempfile.mkdtemp(prefix="khod-import-bench-"))
    try:
        sizes = [int(s) for s in a.sizes.split(",")]
        measure(sizes, tmp, a.baseline_src, a.baseline_max, stores, again=a.again)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
