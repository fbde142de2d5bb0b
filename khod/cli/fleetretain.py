"""khoctl fleet retain: the fleet database keeps what its owner says, by age
(khod.fleet.retain); its arguments, the database it runs on and what it prints."""

from __future__ import annotations

import argparse
import os
import sys

from khod.cli.common import print_json, print_text, whole_number
from khod.errors import KhodError

MAX_AGE_DAYS = 36500  # a century: a time past it is no time
# fleet retain's database when --db does not name it (not KHOD_DB: a host's own store)
FLEET_DB_ENV = "KHOD_FLEET_DB"


def _age(text: str) -> int:
    """A retention age: with its unit (``400`` alone is not taken for seconds, nor ``0``
    for "no limit" as in khod.toml: either would delete nearly everything), a day or
    more."""
    from khod.timespec import duration  # noqa: PLC0415

    s = duration(text, unit_required=True)
    if s is None:
        raise argparse.ArgumentTypeError(
            f"expected a duration with its unit like '400d', got {text!r}"
        )
    if s > MAX_AGE_DAYS * 86400:
        raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_AGE_DAYS} days")
    if s < 86400:
        raise argparse.ArgumentTypeError(
            f"{text!r} is less than a day: every boot but each machine's newest would go"
        )
    return s


def arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--max-age",
        type=_age,
        required=True,
        metavar="D",
        help="keep the boots younger than D (e.g. 400d; a unit and at least 1d), by the "
        "database's clock",
    )
    c.add_argument("--dry-run", action="store_true", help="count what would go, delete nothing")
    c.add_argument("--quiet", action="store_true", help="no progress line")
    c.add_argument(
        "--force",
        action="store_true",
        help="delete even when more of the machines it deletes from have not booted since "
        "the cutoff than have (the clock's check: a clock ahead?)",
    )
    c.add_argument(
        "--batch",
        type=whole_number(1, 1000000),
        default=5000,
        metavar="N",
        help="boots one transaction deletes (default 5000): a host's push waits for one",
    )


def cmd_retain(args: argparse.Namespace) -> int:
    """Delete (or count) the boots older than --max-age; never migrates."""
    from khod.cli.fleet import _bar  # noqa: PLC0415
    from khod.cli.views import iso  # noqa: PLC0415
    from khod.fleet import retain  # noqa: PLC0415
    from khod.store import migrate  # noqa: PLC0415
    from khod.store.db import current_revision, open_store  # noqa: PLC0415

    bar = None if args.json else _bar("fleet retain", args)

    def progress(o: retain.Outcome) -> None:
        if bar is not None:
            bar.total = o.planned
            bar.update(o.deleted["boots"], sum(o.deleted.values()))

    url = getattr(args, "db_given", args.db)
    if url == "":
        raise KhodError("fleet retain: --db is empty: name the fleet database")
    url = url or os.environ.get(FLEET_DB_ENV)
    if not url:
        raise KhodError(
            f"fleet retain: name the fleet database with --db URL or {FLEET_DB_ENV} (it "
            "never deletes from the store khod.toml, KHOD_DB or the default names)"
        )
    store = open_store(url, create=False, migrate=False)
    try:
        rev = current_revision(store)
        if rev is not None and not migrate.knows(rev):
            raise migrate.newer_than_head(store, rev)  # a newer khod's schema: one line
        out = retain.retain(
            store, args.max_age, force=args.force, dry_run=args.dry_run, batch=args.batch,
            progress=progress,
        )  # fmt: skip
    finally:
        store.dispose()
        if bar is not None:
            bar.done()
    verb = "would delete" if args.dry_run else "deleted"
    if args.json:
        print_json(
            {
                "database": store.location,
                "dry_run": args.dry_run,
                "max_age": args.max_age,
                "now": iso(out.now),
                "cutoff": iso(out.cutoff),
                "machines": out.machines,
                "silent": out.silent,
                "alive": out.alive,
                "batches": out.batches,
                "retried": out.retried,
                "held": out.held,
                "held_machines": out.held_machines,
                "table_locked": out.table_locked,
                "deleted": out.deleted,
            },
            "retain",
        )
    else:
        d = out.deleted
        print_text(
            f"{verb} {d['boots']} boots of {out.machines} machines older than "
            f"{iso(out.cutoff)} (blobs {d['blobs']}, events {d['events']}, pstore records "
            f"{d['pstore_records']}, kexec attempts {d['kexec_attempts']}) in {out.batches} "
            "batches; each machine's newest boot kept"
        )
    if out.suspect:
        print_text(f"khoctl: warning: fleet retain: {out.suspect}", sys.stderr)
    if out.held:
        if store.url.get_backend_name() != "postgresql":
            why = "the database stayed locked past its busy timeout"
        else:
            whys = []
            if out.held_machines:
                whys.append(
                    f"a session held rows of {out.held_machines} machines over "
                    f"{retain.LOCK_TIMEOUT_S} s (their boots all wait)"
                )
            if out.table_locked:
                whys.append(
                    "a lock on a whole table (fleet rollups --rebuild, a migration?) held "
                    f"a batch over {retain.LOCK_TIMEOUT_S} s (every boot after it waits)"
                )
            why = "; ".join(whys)
        print_text(
            f"khoctl: error: fleet retain: {out.held} boots left for the next run: {why}",
            sys.stderr,
        )
        return 1
    return 0
