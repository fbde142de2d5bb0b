"""Writing a file whole or not at all: the one way khod writes its outputs (the spool,
the snapshot, the textfile, exports).

A temporary file beside the target (a fresh random name, ``O_EXCL | O_NOFOLLOW``, so a
planted file or link is never written through), its mode set, flushed to disk, renamed
over the target (a symlink there is replaced, not followed), then the directory flushed.
Readers see the old file or the new one, never half of it; after a power cut, the old
one or the new one.

Only a regular file (or nothing) is replaced so: a character device (``/dev/null``, a
terminal), a FIFO, ``-`` and this process's own descriptors (``/dev/stdout``) are
written through, the node left as it is; anything else (a block device, a directory)
is an error.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import sys
from collections.abc import Iterator

TYPE_CHECKING = False  # not ``typing``: the boot capture imports this module
if TYPE_CHECKING:
    from typing import BinaryIO


def _temp_name(target: str) -> str:
    parent = os.path.dirname(target) or "."
    return os.path.join(parent, f".{os.path.basename(target)}.{os.urandom(6).hex()}.tmp")


# names of this process's own descriptors (``-o /dev/stdout``): a link to whatever the
# descriptor is, which a rename would replace
_OWN_FD = re.compile(r"/dev/(stdin|stdout|stderr)|/dev/fd/(\d+)|/proc/self/fd/(\d+)")
_STD = {"stdin": 0, "stdout": 1, "stderr": 2}


def _write_through(target: str) -> BinaryIO | None:
    """The open file to write ``target`` through, when it is not a path to replace: one
    of this process's descriptors (``-``, ``/dev/stdout``), a character device (a
    terminal, ``/dev/null``) or a FIFO. None for a regular file or nothing (written to a
    temporary file and renamed); an error for anything else (a block device, a
    directory, a socket): never replaced, never written."""
    m = _OWN_FD.fullmatch(os.path.normpath(target)) if target != "-" else None
    if target == "-" or m is not None:
        fd = 1 if m is None else _STD[m[1]] if m[1] else int(m[2] or m[3])
        if fd == 1:
            sys.stdout.flush()  # what was printed before comes first
        elif fd == 2:
            sys.stderr.flush()
        return os.fdopen(os.dup(fd), "wb")
    try:
        st = os.stat(target)  # what the path is, through any link
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise OSError(errno.EINVAL, "not a regular file, a character device or a pipe", target)
    # no O_CREAT, no O_TRUNC, no chmod, no rename: the node stays as it is
    fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    return os.fdopen(fd, "wb")


def _open_locked(target: str) -> tuple[str, int]:
    """A new temporary file beside ``target``, held under an exclusive ``flock`` for as
    long as it is open: ``remove_stale_temps`` leaves it alone. One that a cleaner
    removed between its creation and the lock (no link left) is replaced by another."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    while True:
        tmp = _temp_name(target)
        fd = os.open(tmp, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink > 0:
                return tmp, fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str], mode: int = 0o600, *, lock: bool = False
) -> Iterator[BinaryIO]:
    """A binary file to write; it becomes ``path`` when the block ends without an
    exception (otherwise it is removed and ``path`` is left as it was). ``lock``: the
    temporary file is held under ``flock`` while it is written, so that the next start
    can tell one a killed process left (``remove_stale_temps``) from one being written."""
    target = os.fspath(path)
    through = _write_through(target)
    if through is not None:
        with through as f:
            yield f
            f.flush()
        return
    parent = os.path.dirname(target) or "."
    if lock:
        tmp, fd = _open_locked(target)
    else:
        tmp = _temp_name(target)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
    try:
        try:
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            os.fchmod(f.fileno(), mode)  # whatever the umask: a textfile is read by others
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    with atomic_file(path, mode) as f:
        f.write(data)


def remove_stale_temps(directory: str | os.PathLike[str], suffix: str) -> list[tuple[str, int]]:
    """Remove the temporary files ``atomic_file(..., lock=True)`` left in ``directory``
    for targets ending in ``suffix`` when its process was killed: those no live process
    holds (their ``flock`` can be taken). The names and sizes removed; a file that
    cannot be examined or removed is left for the next start."""
    pattern = re.compile(rf"\..+{re.escape(suffix)}\.[0-9a-f]{{12}}\.tmp")
    removed: list[tuple[str, int]] = []
    try:
        with os.scandir(directory) as it:
            names = [e.name for e in it if pattern.fullmatch(e.name)]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(os.fspath(directory), name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone already, or a link: not ours to touch
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            os.unlink(path)  # under the lock: a writer that raced us sees no link, retries
            removed.append((name, st.st_size))
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed
