"""Writing a file whole or not at all: the one way khod writes its outputs (the spool,
the snapshot, the textfile, exports).

A temporary file beside the target (a fresh random name, ``O_EXCL | O_NOFOLLOW``, so a
planted file or link is never written through), its mode set, flushed to disk, renamed
over the target (a symlink there is replaced, not followed), then the directory flushed.
Readers see the old file or the new one, never half of it; after a power cut, the old
one or the new one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the boot capture imports this module: nothing it does not need
    from typing import BinaryIO


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: int = 0o600) -> Iterator[BinaryIO]:
    """A binary file to write; it becomes ``path`` when the block ends without an
    exception (otherwise it is removed and ``path`` is left as it was)."""
    target = os.fspath(path)
    parent = os.path.dirname(target) or "."
    tmp = os.path.join(parent, f".{os.path.basename(target)}.{os.urandom(6).hex()}.tmp")
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
