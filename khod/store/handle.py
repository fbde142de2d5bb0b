"""The handle on an open store and the one line its database errors come down to
(khod.store.db opens one; khod.store.migrate upgrades one)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import URL

TLS_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")


def describe_db_error(e: BaseException) -> str:
    orig = getattr(e, "orig", None)
    msg = str(orig if orig is not None else e).strip().splitlines()
    return msg[0] if msg else type(e).__name__


@dataclass
class Store:
    engine: Engine
    url: URL

    @property
    def location(self) -> str:
        if self.url.get_backend_name() == "sqlite":
            return str(Path(self.url.database or ":memory:").resolve())
        # the paths of TLS keys and certificates are not part of the database's name
        url = self.url.difference_update_query(TLS_FILES)
        return url.render_as_string(hide_password=True)

    @property
    def writer(self) -> Engine:
        """The engine for write transactions (BEGIN IMMEDIATE on SQLite)."""
        return self.engine.execution_options(khod_begin="IMMEDIATE")

    def dispose(self) -> None:
        self.engine.dispose()
