"""Where the store is, in the standard library only: the resident daemon (which never
imports SQLAlchemy) reads it too."""

from __future__ import annotations

import os
import re
from pathlib import Path

_SQLITE = re.compile(r"sqlite(\+\w+)?:///(?P<path>[^?]+)")


def default_db_url() -> str:
    env = os.environ.get("KHOD_DB")
    if env:
        return env
    if os.geteuid() == 0:
        return "sqlite:////var/lib/khod/khod.db"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'khod' / 'khod.db'}"


def sqlite_file(url: str | None) -> Path | None:
    """The file of a SQLite store's URL (None: the default store); None when the store
    is not a SQLite file (PostgreSQL, memory)."""
    m = _SQLITE.fullmatch(url or default_db_url())
    if m is None or m["path"] == ":memory:":
        return None
    return Path(m["path"])
