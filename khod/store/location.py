"""Where the store is, in the standard library only: the resident daemon (which never
imports SQLAlchemy) reads it too."""

from __future__ import annotations

import os
import re
from pathlib import Path

_SQLITE = re.compile(r"sqlite(\+\w+)?:///(?P<path>[^?]+)")


def default_db_url() -> str:
    """The store where neither --db nor [store] db names one: $KHOD_DB, else SQLite at
    /var/lib/khod/khod.db for root, $XDG_STATE_HOME/khod/khod.db otherwise."""
    env = os.environ.get("KHOD_DB")
    if env:
        return env
    if os.geteuid() == 0:
        return "sqlite:////var/lib/khod/khod.db"
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return f"sqlite:///{Path(state) / 'khod' / 'khod.db'}"


def store_url(given: str | None, configured: str) -> str:
    """The one rule for the store khod and khoctl use: ``--db`` (``given``), else
    ``[store] db`` of the configuration, else ``default_db_url``."""
    return given or configured or default_db_url()


def sqlite_file(url: str | None) -> Path | None:
    """The file of a SQLite store's URL (None: the default store); None when the store
    is not a SQLite file (PostgreSQL, memory)."""
    m = _SQLITE.fullmatch(url or default_db_url())
    if m is None or m["path"] == ":memory:":
        return None
    return Path(m["path"])
