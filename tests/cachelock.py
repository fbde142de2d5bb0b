"""One builder at a time for what the suite caches under ~/.cache (kernels, chroots,
guest images): pytest-xdist's workers, a background kernel build started by `make test`
and other checkouts on the same machine share those caches. The others wait on the lock,
then find the result in the cache."""

from __future__ import annotations

import fcntl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(lock: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``lock`` (created if missing) for the block; the
    kernel releases it if the holder dies."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            t0 = time.monotonic()
            print(f"[cache] waiting for {lock} (another build holds it)", file=sys.stderr)
            fcntl.flock(f, fcntl.LOCK_EX)
            print(f"[cache] {lock} free after {time.monotonic() - t0:.0f}s", file=sys.stderr)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
