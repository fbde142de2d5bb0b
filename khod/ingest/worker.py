"""The daemon's later ingests (a reload, a retry, a pstore backend loaded late) run in
a process of their own, so that the resident daemon never loads SQLAlchemy:
``python -m khod.ingest.worker [--debug]``, its ``IngestJob`` (``khod.contracts``) on
stdin from the daemon (``khod.daemon.loop``), its lines on stderr, 0 or the one-line
error's status. A job of another version (this khod upgraded while the old daemon
runs) is refused in one line, and the event journaled."""

from __future__ import annotations

import os
import sys

from khod.contracts import IngestJob, RecordError, decode
from khod.ingest.pipeline import run_ingest
from khod.oneline import run_main


def argv(debug: bool) -> list[str]:
    """How the daemon starts a worker."""
    return [sys.executable, "-m", "khod.ingest.worker", *(["--debug"] if debug else [])]


def read_job(data: bytes, source: str) -> IngestJob:
    """The job sent to an ingest child; a record it cannot take is one line, and an
    event for the journal."""
    try:
        return decode(IngestJob, data, source)
    except RecordError as e:
        from khod.adapters import sd  # noqa: PLC0415

        sd.journal_event(e.event)
        raise


def main() -> int:
    os.umask(0o077)  # the database and the snapshot are private
    flags = sys.argv[1:]

    def ingest(_argv: object) -> int:
        return run_ingest(read_job(sys.stdin.buffer.read(), "on stdin"))

    return run_main("khod", ingest, flags)


if __name__ == "__main__":
    sys.exit(main())
