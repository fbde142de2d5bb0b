"""A damaged SQLite store (power loss on a disk that lied about flushing, a torn page,
a truncated file) is found at start, moved aside with a timestamp, and replaced by a
new database; the event that says so is recorded with the boot. Nothing is deleted:
the damaged file (and its -wal and -shm) stay beside the new one for a later look.

The checks: the header (magic, page size, the file a whole number of pages and as
long as the header says), then ``PRAGMA quick_check``, which reads every page: a few
hundred milliseconds for a store of tens of megabytes, seconds for a large one. The
daemon runs it once, in its first ingest; its later ingests (reloads, rescans,
retries) check the header only, so a large store never holds up its loop.

Only what SQLite itself confirms is damage: a full disk or an I/O error (SQLite cannot
make the -shm file on a full disk, and says "disk I/O error") leaves the store where it
is, and the ingest is retried.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from khod.errors import StoreError
from khod.observation import Event, EventSource, Severity

MAGIC = b"SQLite format 3\x00"


def sqlite_file(url_text: str) -> Path | None:
    try:
        url = make_url(url_text)
    except ArgumentError:
        return None
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


# what SQLite says of a file that is damaged; anything else it says (disk I/O error, full,
# read-only, out of memory, cannot open) is about the disk or the host, not the file
DAMAGE = ("file is not a database", "database disk image is malformed")


class Unchecked(Exception):
    """The store could not be checked (a full disk, an I/O error): it is left in place."""


def filesystem_full(path: Path) -> bool:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 65536 or (st.f_files > 0 and st.f_favail == 0)


def _header(size: int, head: bytes) -> str | None:
    if len(head) < 100 or head[:16] != MAGIC:
        return "not an SQLite database: its header is gone"
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        return f"its header is damaged (page size {page})"
    if size % page:
        return f"truncated: {size} bytes is not a whole number of {page}-byte pages"
    pages = int.from_bytes(head[28:32], "big")
    if head[24:28] == head[92:96] and pages * page > size:
        return f"truncated: its header counts {pages} pages, the file holds {size // page}"
    return None


def _sqlite_check(path: Path) -> str | None:
    """What SQLite's ``PRAGMA quick_check`` finds wrong, or None when it finds it whole;
    ``Unchecked`` when it could not look (busy, unreadable, a full disk, an I/O error)."""
    try:
        conn = sqlite3.connect(path, timeout=10)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        msg = str(e)
        if any(d in msg for d in DAMAGE):
            return msg
        raise Unchecked(msg) from None
    if rows != [("ok",)]:
        first = " ".join(str(rows[0][0]).replace("*** in database main ***", "").split())
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        return f"quick_check: {first[:200]}{more}"
    return None


def inspect(path: Path, *, quick_check: bool = True) -> tuple[str | None, bool]:
    """Why the SQLite file cannot be trusted, or None (also when it is empty); and
    whether ``PRAGMA quick_check`` ran to its end (``quick_check=False``: the header
    checks alone, unless they find something: SQLite then has the last word).

    Only damage SQLite itself confirms counts ("file is not a database", "malformed",
    a failing check); ``Unchecked`` when it could not look: a full disk or an I/O error
    is not damage."""
    if path.is_symlink():
        return None, False  # not ours to judge or move: open_store refuses to follow it
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(100)
    except OSError:
        return None, False  # not there, or unreadable: open_store says which, in its words
    if size == 0:
        return None, False
    suspect = _header(size, head)
    if suspect is None and not quick_check:
        return None, False
    try:
        found = _sqlite_check(path)
    except Unchecked as e:
        if "locked" in str(e) or "busy" in str(e):
            return None, False  # another khod or khoctl holds it: it reads it, so can we
        raise
    if found is None:
        return None, True  # SQLite reads it whole: nothing to move, whatever the header
    return (suspect or found), True


def move_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dst = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while dst.exists():
        n += 1
        dst = path.with_name(f"{path.name}.damaged-{stamp}.{n}")
    try:
        for suffix in ("-wal", "-shm", ""):  # the main file last: it is what says "store"
            src = Path(f"{path}{suffix}")
            if src.exists() or src.is_symlink():
                os.rename(src, f"{dst}{suffix}")
    except OSError as e:
        raise StoreError(
            f"database {path} is damaged and cannot be moved aside: {e.strerror}"
        ) from None
    return dst


def salvage(url_text: str, *, quick_check: bool = True) -> Event | None:
    """Check the store behind this URL (SQLite only); when damaged, move it aside and
    return the event to record with the boot (a ``store-checked`` INFO event, to log
    and not record, when ``PRAGMA quick_check`` found it whole). When it cannot be
    checked (a full disk, an I/O error), a ``store-unchecked`` event: nothing moved."""
    path = sqlite_file(url_text)
    if path is None:
        return None
    try:
        why, checked = inspect(path, quick_check=quick_check)
        if why is not None and filesystem_full(path):
            raise Unchecked("its filesystem is full")  # no new store could be made there
    except Unchecked as e:
        full = "; its filesystem is full" if filesystem_full(path) and "full" not in str(e) else ""
        return Event(
            "store-unchecked",
            "store",
            Severity.WARNING,
            f"database {path} could not be checked ({e}{full}): left in place, not moved",
            origin=EventSource.STORE,
        )
    if why is None:
        if not checked:
            return None
        return Event(
            "store-checked",
            "store",
            Severity.INFO,
            f"database {path}: integrity checked (quick_check ok)",
            origin=EventSource.STORE,
        )
    dst = move_aside(path)
    return Event(
        "store-damaged",
        "store",
        Severity.WARNING,
        f"database {path} was damaged ({why}): moved aside to {dst}; a new one was created",
        origin=EventSource.STORE,
    )
