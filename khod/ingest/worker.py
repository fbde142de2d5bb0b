"""The daemon's later ingests (a reload, a retry, a pstore backend loaded late) run in
a process of their own, so that the resident daemon never loads SQLAlchemy:
``python -m khod.ingest.worker [--debug]``, its ``IngestJob`` pickled on stdin by the
daemon (``khod.daemon.loop``), its lines on stderr, 0 or the one-line error's status."""

from __future__ import annotations

import os
import pickle
import sys

from khod.ingest.pipeline import IngestJob, run_ingest
from khod.oneline import run_main


def argv(debug: bool) -> list[str]:
    """How the daemon starts a worker."""
    return [sys.executable, "-m", "khod.ingest.worker", *(["--debug"] if debug else [])]


def main() -> int:
    os.umask(0o077)  # the database and the snapshot are private
    flags = sys.argv[1:]

    def ingest(_argv: object) -> int:
        job = pickle.loads(sys.stdin.buffer.read())  # noqa: S301  (our own parent)
        if not isinstance(job, IngestJob):
            raise TypeError(f"not an ingest job: {type(job).__name__}")
        return run_ingest(job)

    return run_main("khod", ingest, flags)


if __name__ == "__main__":
    sys.exit(main())
