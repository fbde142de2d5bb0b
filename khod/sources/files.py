"""Reading kernel files: to end of file (debugfs/procfs report st_size 0), bounded."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from khod.errors import SourceError

DEFAULT_LIMIT = 64 << 20


def describe_oserror(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "not found"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, IsADirectoryError):
        return "is a directory, expected a file"
    if e.errno == errno.ENOTDIR:
        return "a parent is not a directory"
    return e.strerror or str(e)


def read_bytes(path: Path, shown: str, limit: int = DEFAULT_LIMIT) -> bytes:
    """All bytes of a regular (or kernel pseudo-) file, at most ``limit``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise SourceError(shown, describe_oserror(e)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(shown, "is a directory, expected a file")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
            raise SourceError(shown, "not a regular file")
        chunks = []
        total = 0
        while True:
            try:
                b = os.read(fd, min(1 << 20, limit + 1 - total))
            except OSError as e:
                raise SourceError(shown, describe_oserror(e)) from None
            if not b:
                break
            chunks.append(b)
            total += len(b)
            if total > limit:
                raise SourceError(shown, f"larger than the {limit}-byte limit")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_optional(path: Path, shown: str, limit: int = DEFAULT_LIMIT) -> bytes | None:
    """Like read_bytes, but a missing file is None rather than an error."""
    try:
        return read_bytes(path, shown, limit)
    except SourceError as e:
        if e.why == "not found":
            return None
        raise


def read_kmsg_device(path: str | Path, limit: int = DEFAULT_LIMIT) -> bytes:
    """Every record ``/dev/kmsg`` still holds: one record per read(), EAGAIN at the end,
    EPIPE for a record overwritten in the ring buffer meanwhile (skipped). OSError when
    it cannot be opened or read. Standard library only: the boot capture uses it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    out: list[bytes] = []
    total = 0
    try:
        while total <= limit:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EPIPE:
                    continue
                if e.errno == errno.EINVAL:
                    break
                raise
            if not rec:
                break
            out.append(rec)
            total += len(rec)
    finally:
        os.close(fd)
    return b"".join(out)


def read_kmsg(path: Path, shown: str, limit: int = DEFAULT_LIMIT) -> bytes:
    """The kernel log records: from the device on a host, from a plain file of the same
    records in a captured tree."""
    try:
        if not stat.S_ISCHR(os.stat(path).st_mode):
            return read_bytes(path, shown, limit)
        return read_kmsg_device(path, limit)
    except OSError as e:
        raise SourceError(shown, describe_oserror(e)) from None


def is_dir(path: Path, shown: str) -> bool:
    """Whether ``path`` is a directory: False when it is not there, SourceError when that
    cannot be told (a parent this process may not search: debugfs is 0700 root)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise SourceError(shown, describe_oserror(e)) from None


def list_dir(path: Path, shown: str) -> list[str] | None:
    """Sorted entry names; None when the directory does not exist."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SourceError(shown, describe_oserror(e)) from None
