"""Unlinking pstore files, for a host configured to let khod own pstore.

Unlinking a pstore file calls the backend's ``erase()`` (``fs/pstore/inode.c``); a
backend without one (pstore_kho, some firmware) answers EPERM, which is expected. Only
called after the records' rows are committed with ``synchronous=FULL``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from khod import faults
from khod.observation import Event, EventSource, PstoreRecord, Severity
from khod.paths import HostPaths
from khod.records import PstoreLocation


def release_pstore_files(paths: HostPaths, records: Iterable[PstoreRecord]) -> list[Event]:
    events = []
    for r in records:
        if r.location != PstoreLocation.PSTORE:
            continue  # never touch systemd-pstore's archive or KHO
        path = paths.pstore / r.name
        if path.parent != paths.pstore or "/" in r.name:
            continue
        try:
            faults.point("unlink")
            os.unlink(path)
            faults.point("unlinked")
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno == errno.EPERM:
                events.append(
                    Event(
                        "pstore-unlink-eperm",
                        r.path,
                        Severity.INFO,
                        f"{r.path}: backend {r.backend} cannot erase records "
                        "(EPERM); left in place",
                        origin=EventSource.PSTORE,
                    )
                )
            else:
                events.append(
                    Event(
                        "pstore-unlink-failed",
                        r.path,
                        Severity.WARNING,
                        f"{r.path}: cannot unlink: {e.strerror}",
                        origin=EventSource.PSTORE,
                    )
                )
            continue
        events.append(
            Event(
                "pstore-unlinked",
                r.path,
                Severity.INFO,
                f"{r.path}: unlinked after its record was committed",
                origin=EventSource.PSTORE,
            )
        )
    return events
