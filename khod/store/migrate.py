"""Alembic, driven from code on a shared connection (the "Sharing a Connection" recipe)."""

from __future__ import annotations

from importlib.resources import files

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from khod.errors import StoreError
from khod.store.handle import Store, describe_db_error
from khod.store.schema import HEAD_REVISION

MIGRATION_LOCK = 0x6B686F64  # "khod"
# any role may take an advisory lock (a fleet host too): waiting for it is bounded, and
# the one line names who holds it
MIGRATION_LOCK_TIMEOUT_S = 60
_HOLDER = """
SELECT a.usename, l.pid FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
    SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = :hi AND l.objid = :lo AND l.objsubid = 1
"""


class LockBusy(StoreError):
    pass


def _take_lock(store: Store, conn: Connection) -> None:
    timeout = f"{int(MIGRATION_LOCK_TIMEOUT_S * 1000)}ms"
    conn.execute(text("SELECT set_config('lock_timeout', :t, true)"), {"t": timeout})
    try:
        with conn.begin_nested():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
    except OperationalError as e:
        if getattr(e.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        row = conn.execute(
            text(_HOLDER), {"hi": MIGRATION_LOCK >> 32, "lo": MIGRATION_LOCK & 0xFFFFFFFF}
        ).first()
        who = f"role {row[0]} (pid {row[1]})" if row else "another session"
        raise LockBusy(
            f"cannot migrate database {store.location}: the migration lock is held by "
            f"{who} for over {MIGRATION_LOCK_TIMEOUT_S}s; end that session "
            "(a host's: khoctl fleet revoke) and run it again"
        ) from None
    conn.execute(text("SELECT set_config('lock_timeout', '0', true)"))


def alembic_config(store: Store | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(files("khod.migrations")))
    if store is not None:
        cfg.set_main_option(
            "sqlalchemy.url", store.url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


def script_head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def knows(rev: str) -> bool:
    try:
        return ScriptDirectory.from_config(alembic_config()).get_revision(rev) is not None
    except CommandError:
        return False


def at_or_after(rev: str, base: str) -> bool:
    """Whether revision ``rev`` (one this khod knows) is ``base`` or comes after it."""
    script = ScriptDirectory.from_config(alembic_config())
    return any(s.revision == base for s in script.iterate_revisions(rev, "base"))


def newer_than_head(store: Store, rev: str) -> StoreError:
    """The one line for a store whose schema a newer khod wrote."""
    return StoreError(
        f"database {store.location}: schema {rev} is newer than this khod "
        f"(head {HEAD_REVISION}): upgrade khod"
    )


def upgrade(store: Store, current: str | None, target: str = "head") -> str:
    cfg = alembic_config(store)
    if current is not None and not knows(current):
        raise newer_than_head(store, current)
    try:
        with store.writer.begin() as conn:
            if conn.dialect.name == "postgresql":
                # hosts starting together against a fresh fleet database: one migrates,
                # the others wait here, then find the schema current (Alembic reads the
                # version after the lock); SQLite's BEGIN IMMEDIATE does the same
                _take_lock(store, conn)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, target)
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot migrate database {store.location}: {describe_db_error(e)}"
        ) from None
    return script_head() if target == "head" else target


def downgrade(store: Store, target: str) -> None:
    cfg = alembic_config(store)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, target)
