"""When the daemon pushes to the fleet database: spread over the fleet, never together.

- a per-host splay, a fraction in [0, 1) derived from the machine id (stable across
  restarts and boots, uniform over a fleet): the host's pushes fall at its own offset
  into each ``sync.interval`` of the wall clock, so hosts that booted together (a kexec
  wave) or came back together do not push together; the first push after start waits
  its share of the first ``FIRST_WINDOW`` seconds (or of the interval, when shorter);
- retries after a failure back off with decorrelated jitter (each delay drawn between
  the first retry's and three times the last one's, capped at the interval), so hosts
  that failed together (the database away) do not come back together;
- a tick with the local store as the last successful push left it starts no push at
  all (``store_stamp``): no process, no connection, the store not even opened.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path

from khod.store.location import sqlite_file

FIRST_RETRY = 30.0  # the shortest retry (or the interval, when shorter)
FIRST_WINDOW = 60.0  # the first push after start falls within this many seconds


def splay(machine_id: str) -> float:
    """The host's fraction of every interval, in [0, 1), from its machine id."""
    digest = hashlib.sha256(b"khod-sync-splay\0" + machine_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def host_splay(machine_id_file: Path) -> float:
    """``splay`` of the machine id in ``machine_id_file``; a host without one (not
    initialized yet) gets a random one, spread all the same."""
    try:
        ident = machine_id_file.read_text().strip()
    except (OSError, UnicodeDecodeError):
        ident = ""
    return splay(ident) if ident else random.random()  # noqa: S311  (spread, not a secret)


def first_delay(fraction: float, interval: float) -> float:
    """Seconds from start to the first push."""
    return fraction * min(interval, FIRST_WINDOW)


def next_slot(now_wall: float, fraction: float, interval: float) -> float:
    """Seconds from ``now_wall`` (the wall clock) to the host's next slot: the next
    time past it that is ``fraction`` of an interval into an interval of the clock."""
    offset = fraction * interval
    k = math.floor((now_wall - offset) / interval) + 1
    return max(offset + k * interval - now_wall, 0.0)


def retry_delay(last: float | None, interval: float, rng: random.Random | None = None) -> float:
    """Seconds to the next retry after a failure; ``last``: the previous retry's delay
    (None: the first failure in a row). Decorrelated jitter, capped at the interval."""
    base = min(FIRST_RETRY, interval)
    upper = max(base, 3 * (last if last is not None else base))
    draw = (rng or random).uniform(base, upper)
    return min(interval, draw)


Stamp = tuple[tuple[int, int, int] | None, ...]


def store_stamp(db: str | None) -> Stamp | None:
    """What the local SQLite store's files look like (inode, size and modification time
    of the database and its write-ahead log; a reader changes neither), without
    opening it: equal stamps
    taken before two pushes mean nothing was written in between, so a push that then
    succeeded left nothing for the next one. None (always push) for a store that is not
    a SQLite file, or cannot be looked at."""
    path = sqlite_file(db)
    if path is None:
        return None
    out: list[tuple[int, int, int] | None] = []
    for f in (path, Path(f"{path}-wal")):
        try:
            st = os.stat(f)
        except FileNotFoundError:
            if f == path:
                return None
            out.append(None)
            continue
        except OSError:
            return None
        out.append((st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)
