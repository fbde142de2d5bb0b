"""The daemon's pushes to the fleet database run in a process of their own, so that a
fleet database that hangs never blocks the daemon's loop and the resident daemon never
loads SQLAlchemy: ``python -m khod.fleet.worker --to URL [--db URL]`` (``khod.daemon.loop``
starts it through ``argv``), its one line on stdout, 0 or the one-line error's status."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from khod.oneline import print_text, run_main

# why a push failed: the ``reason`` label of ``khod_sync_failures_total``, from its one
# line (the server's answer, or the client's); the first that matches, in this order
# (khod's own word on the schema first: its line names the database, whose URL may
# say sslmode)
REASONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("schema", ("schema revision",)),
    ("insecure", ("does not verify the server",)),
    ("timeout", ("statement timeout", "no answer in", "timeout expired")),
    ("quota", ("khod fleet:",)),
    (
        "refused",
        (
            "permission denied",
            "row-level security",
            "not permitted to log in",
            "no pg_hba.conf entry",
            "certificate authentication failed",
            "too many connections",
            'role "',
        ),
    ),
    ("tls", ("ssl", "certificate", "tls")),
    ("unreachable", ("connection refused", "could not translate", "no route", "unreachable")),
)
REASON_LABELS = (*(r for r, _ in REASONS), "other")


def failure_reason(text: str) -> str:
    low = text.lower()
    for reason, needles in REASONS:
        if any(n in low for n in needles):
            return reason
    return "other"


def argv(
    to: str,
    db: str | None,
    tls: tuple[str, str, str, str] = ("", "", "", ""),
) -> list[str]:
    """How the daemon starts a push of the store at ``db`` to ``to``; ``tls``: sync.sslmode,
    ca, cert and key from its configuration."""
    out = [sys.executable, "-m", "khod.fleet.worker", "--to", to, *(["--db", db] if db else [])]
    for flag, value in zip(("--sslmode", "--ca", "--cert", "--key"), tls, strict=True):
        out += [flag, value]
    return out


def _push(args: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="khod-sync")
    p.add_argument("--to", required=True)
    p.add_argument("--db")
    for flag in ("--sslmode", "--ca", "--cert", "--key"):
        p.add_argument(flag, default="")
    ns = p.parse_args(args)
    from khod.fleet.sync import push  # noqa: PLC0415  (after the arguments parsed)
    from khod.fleet.tls import TlsSettings  # noqa: PLC0415

    tls = TlsSettings(ns.sslmode, ns.ca, ns.cert, ns.key)
    print_text(push(ns.to, ns.db, tls=tls).line())
    return 0


def main() -> int:
    return run_main("khod", _push, sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
