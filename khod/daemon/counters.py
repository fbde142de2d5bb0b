"""What only the daemon counts, kept across its restarts within one boot.

``khod_source_errors_total{source="store"}`` adds to the boot's own events in the store
the ingests that failed (the store could not be opened or written): nothing records
those but the daemon. Held in memory only, a restart of the daemon (Restart=, a crash)
would lower the counter to the boot's events alone, which Prometheus reads as a reset
followed by an increase it had already counted. So the count is written, per boot id,
to ``<state dir>/counters.json`` (whole or not at all, ``khod.atomic``) and read back at
start when the boot id is the same; a file of another boot is a fresh start, a file
that is not khod's is ignored with one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from khod.atomic import write_file

COUNTERS_VERSION = 1
READ_LIMIT = 4096  # a few dozen bytes are written; anything much larger is not ours
MAX_COUNT = 2**53  # exact in a float sample, and far beyond any real count


def parse_counters(data: bytes) -> tuple[str, int]:
    """(boot id, store errors) from the file's bytes; ValueError saying what is wrong."""
    try:
        doc = json.loads(data)
    except ValueError:  # also UnicodeDecodeError
        raise ValueError("not JSON") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    version = doc.get("version")
    if version != COUNTERS_VERSION:
        raise ValueError(f"unknown version {str(version)[:20]!r}")
    boot_id, n = doc.get("boot_id"), doc.get("store_errors")
    if not isinstance(boot_id, str) or not 0 < len(boot_id) <= 64:
        raise ValueError("no boot_id")
    if type(n) is not int or not 0 <= n <= MAX_COUNT:
        raise ValueError("store_errors is not a count")
    return boot_id, n


def load_store_errors(path: Path, boot_id: str) -> tuple[int, str | None]:
    """The store errors counted before in this boot (0 when none were, or the file is of
    another boot), and a one-line warning when the file is there but not usable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0, None
    except OSError as e:
        return 0, f"ignoring {path}: {e.strerror}"
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(READ_LIMIT + 1)
    except OSError as e:  # a directory, an unreadable file
        return 0, f"ignoring {path}: {e.strerror}"
    try:
        if len(data) > READ_LIMIT:
            raise ValueError(f"larger than {READ_LIMIT} bytes")
        owner, n = parse_counters(data)
    except ValueError as e:
        return 0, f"ignoring {path}: not khod's counters ({e})"
    return (n, None) if owner == boot_id else (0, None)


def save_store_errors(path: Path, boot_id: str, n: int) -> None:
    """Raises OSError (a full disk): the count goes on in memory."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    doc = {"version": COUNTERS_VERSION, "boot_id": boot_id, "store_errors": n}
    write_file(path, json.dumps(doc).encode())
