"""khod: record this boot's KHO state (and, later, stay up to serve metrics)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from khod import __version__
from khod.cli.common import add_common, host_paths, run_main
from khod.errors import KhodError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="khod",
        description="Record this boot's kexec handover "
        "(KHO) state and the previous kernel's last words.",
    )
    add_common(p)
    p.add_argument("--once", action="store_true", help="ingest this boot and exit")
    p.add_argument("--version", action="version", version=f"khod {__version__}")
    return p


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    if not args.once:
        raise KhodError("the resident daemon is not available in this version; use --once")
    paths = host_paths(args)
    from khod.collect import collect  # noqa: PLC0415

    obs = collect(paths)
    for e in obs.events:
        print(f"khod: {e.severity}: {e.message}", file=sys.stderr)
    from khod.store.boots import save_observation  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415

    store = open_store(args.db)
    try:
        result = save_observation(store, obs)
    finally:
        store.dispose()
    what = f"{obs.kind}"
    if obs.previous_release is not None or obs.kexec_count:
        what += f" from {obs.previous_release or '?'}, count {obs.kexec_count}"
    verb = "recorded" if result.created else "already recorded"
    print(f"khod: {verb} boot {obs.boot_id} ({obs.release}, {what}) in {store.location}")
    return 0


def run() -> None:
    sys.exit(run_main("khod", main, sys.argv[1:]))
