"""khod: record this boot's KHO state (and, later, stay up to serve metrics)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from khod import __version__
from khod.cli.common import add_common, host_paths, run_main
from khod.errors import KhodError
from khod.observation import Severity


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="khod",
        description="Record this boot's kexec handover "
        "(KHO) state and the previous kernel's last words.",
    )
    add_common(p)
    p.add_argument("--once", action="store_true", help="ingest this boot and exit")
    p.add_argument(
        "--own-pstore",
        action="store_true",
        help="unlink /sys/fs/pstore files once their records are committed "
        "(only where nothing else, e.g. systemd-pstore, collects them)",
    )
    p.add_argument(
        "--pstore-inflate-limit",
        type=int,
        default=16 << 20,
        metavar="BYTES",
        help="store a compressed pstore record raw if it would inflate past this (default: 16 MiB)",
    )
    p.add_argument("--version", action="version", version=f"khod {__version__}")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if not args.once:
        raise KhodError("the resident daemon is not available in this version; use --once")
    paths = host_paths(args)
    from khod.ingest import IngestOptions, ingest_boot  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415

    opts = IngestOptions(own_pstore=args.own_pstore, inflate_limit=args.pstore_inflate_limit)
    store = open_store(args.db)
    try:
        obs, result, later = ingest_boot(paths, store, opts)
    finally:
        store.dispose()
    # every problem with this boot's sources is one line; of the pstore unlinks, only
    # the failures (EPERM and success are routine)
    for e in [*obs.events, *(e for e in later if e.severity is not Severity.INFO)]:
        print(f"khod: {e.severity}: {e.message}", file=sys.stderr)
    what = f"{obs.kind}"
    if obs.previous_release is not None or obs.kexec_count:
        what += f" from {obs.previous_release or '?'}, count {obs.kexec_count}"
    verb = "recorded" if result.created else "already recorded"
    pstore = f"; {result.new_pstore} new pstore records" if result.new_pstore else ""
    print(f"khod: {verb} boot {obs.boot_id} ({obs.release}, {what}){pstore} in {store.location}")
    return 0


def run() -> None:
    sys.exit(run_main("khod", main, sys.argv[1:]))
