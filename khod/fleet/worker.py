"""The daemon's pushes to the fleet database run in a process of their own, so that a
fleet database that hangs never blocks the daemon's loop and the resident daemon never
loads SQLAlchemy: ``python -m khod.fleet.worker --to URL [--db URL]`` (``khod.daemon.loop``
starts it through ``argv``), its one line on stdout, 0 or the one-line error's status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from khod.oneline import print_text, run_main


def argv(to: str, db: str | None) -> list[str]:
    """How the daemon starts a push of the store at ``db`` to ``to``."""
    return [sys.executable, "-m", "khod.fleet.worker", "--to", to, *(["--db", db] if db else [])]


def _push(args: Sequence[str]) -> int:
    from khod.fleet.sync import push  # noqa: PLC0415  (after the arguments parsed)

    p = argparse.ArgumentParser(prog="khod-sync")
    p.add_argument("--to", required=True)
    p.add_argument("--db")
    ns = p.parse_args(args)
    print_text(push(ns.to, ns.db).line())
    return 0


def main() -> int:
    return run_main("khod", _push, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
