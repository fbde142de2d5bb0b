"""Opening the store: URL defaults, SQLite pragmas, schema migrations at start.

SQLite (the default) runs in WAL mode with a busy timeout so that khoctl can read
while khod writes. The schema is checked against HEAD_REVISION with one query;
Alembic is imported only when the database actually needs migrating.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    DBAPIError,
    OperationalError,
    SQLAlchemyError,
)

from khod.errors import StoreError
from khod.store.handle import Store, describe_db_error
from khod.store.location import default_db_url
from khod.store.schema import HEAD_REVISION
from khod.store.url import default_remote_tls

BUSY_TIMEOUT_MS = 10_000
CONNECT_TIMEOUT_S = 10


class NoStore(StoreError):
    """Nothing recorded there yet: no database, or one without a schema."""


def _sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _writable(path: Path) -> bool:
    return os.access(path, os.R_OK | os.W_OK) and os.access(path.parent, os.W_OK)


def _read_only_fs(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _read_only_uri(path: Path) -> str:
    """SQLite's URI for reading ``path`` without writing anything: ``mode=ro``; on a
    read-only filesystem also ``immutable=1`` (no -shm can be made there, and nothing
    can change the file), unless an unmerged WAL and its -shm are there to be read."""
    uri = f"file:{quote(str(path))}?mode=ro"
    read_only_fs = _read_only_fs(path)
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if read_only_fs and not (wal.is_file() and wal.stat().st_size > 0 and shm.is_file()):
        uri += "&immutable=1"
    return uri


def _prepare_sqlite_file(path: Path, create: bool, read_only: bool = False) -> None:
    if path.is_symlink():  # never follow a planted link to write somewhere else
        raise StoreError(f"database {path} is a symbolic link: refusing to follow it")
    if path.exists():
        if not path.is_file():
            raise StoreError(f"database {path} is not a regular file")
        if read_only:
            if not os.access(path, os.R_OK):
                raise StoreError(f"cannot read database {path}: permission denied")
            return
        if not _writable(path):
            raise StoreError(f"cannot write database {path}: permission denied")
        return
    if not create:
        raise NoStore(f"no database at {path} (run `khod --once` first, or pass --db)")
    parent = path.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(f"cannot create database {path}: {parent} is not a directory") from None
    except OSError as e:
        raise StoreError(f"cannot create database directory {parent}: {e.strerror}") from None
    if not parent.is_dir():
        raise StoreError(f"cannot create database {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"cannot create database {path}: directory {parent} is not writable")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as e:
        raise StoreError(f"cannot create database {path}: {e.strerror}") from None


def _on_sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    # take transaction control from the driver: BEGIN is emitted by _on_sqlite_begin
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a committed row survives power loss, so a pstore file may be unlinked
    # once its row is committed (one fsync per commit; khod commits a few times a boot)
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _on_sqlite_connect_ro(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.close()


def _on_sqlite_begin(conn: Any) -> None:
    # writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction
    # that upgrades from read to write fails with "database is locked" at once, without
    # waiting for the busy timeout
    mode = conn.get_execution_options().get("khod_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def open_store(
    url_text: str | None = None,
    *,
    create: bool = True,
    migrate: bool = True,
    read_only: bool | None = False,
) -> Store:
    """The store at ``url_text``. ``read_only`` (SQLite): open it so that nothing is
    written, not even a -shm file; None: so when it cannot be written."""
    url_text = url_text or default_db_url()
    try:
        url = make_url(url_text)
    except ArgumentError:
        raise StoreError(f"not a database URL: {url_text!r}") from None
    url = default_remote_tls(url)
    path = _sqlite_path(url)
    if path is None:
        read_only = False
    elif read_only is None:
        read_only = path.exists() and not _writable(path)
    if path is not None:
        _prepare_sqlite_file(path, create and not read_only, read_only)
    try:
        kwargs: dict[str, Any] = {}
        if path is not None and read_only:
            uri = _read_only_uri(path)
            kwargs["creator"] = lambda: sqlite3.connect(
                uri, uri=True, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
        elif url.get_backend_name() == "sqlite":
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000}
        elif url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
            # a fleet database behind a dead route fails in seconds, not minutes
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError) as e:
        raise StoreError(f"cannot use database {url_text!r}: {e}") from None
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _on_sqlite_connect_ro if read_only else _on_sqlite_connect)
        event.listen(engine, "begin", _on_sqlite_begin)
    location = Store(engine, url).location

    def tag_location(ctx: Any) -> None:
        # an error that no caller turns into a StoreError still names its database in
        # the one line run_main prints (khod.oneline.store_error_line)
        # (only the driver's errors: an interrupt or a bug raised while a statement ran
        # is left as it is, and SQLAlchemy wraps nothing then)
        if isinstance(ctx.sqlalchemy_exception, DBAPIError):
            ctx.sqlalchemy_exception.khod_location = location  # type: ignore[attr-defined]

    event.listen(engine, "handle_error", tag_location)
    from khod import faults  # noqa: PLC0415

    if faults.enabled():  # the crash-consistency tests only
        faults.instrument(engine)
    store = Store(engine, url)
    if migrate:
        ensure_schema(store)
    return store


def current_revision(store: Store) -> str | None:
    try:
        conn = store.engine.connect()
    except SQLAlchemyError as e:
        raise cannot_connect(store, e) from None
    try:
        with conn:
            row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
            return str(row[0]) if row else None
    except OperationalError as e:
        msg = describe_db_error(e)
        if "no such table" in msg or "does not exist" in msg:
            return None
        raise StoreError(f"cannot open database {store.location}: {msg}") from None
    except DatabaseError as e:
        msg = describe_db_error(e)
        if "does not exist" in msg:  # PostgreSQL: relation "alembic_version" does not exist
            return None
        raise StoreError(f"database {store.location} is unusable: {msg}") from None
    except SQLAlchemyError as e:
        raise StoreError(f"cannot open database {store.location}: {describe_db_error(e)}") from None


def cannot_connect(store: Store, e: BaseException) -> StoreError:
    """The one line for a database that could not be reached or logged into; a
    verified TLS connection without a CA file says where to give one."""
    msg = describe_db_error(e)
    if store.url.get_backend_name() == "sqlite":  # a file: opened, not connected to
        if isinstance(e, DatabaseError) and not isinstance(e, OperationalError):
            return StoreError(f"database {store.location} is unusable: {msg}")  # not SQLite's
        return StoreError(f"cannot open database {store.location}: {msg}")
    line = f"cannot connect to database {store.location}: {msg}"
    if "root certificate file" in msg and "sslrootcert" not in store.url.query:
        line += " (give the server's CA as sslrootcert=PATH in the URL)"
    return StoreError(line)


def is_known(rev: str) -> bool:
    """Whether this khod's migrations know the revision (Alembic imported: rare)."""
    from khod.store import migrate  # noqa: PLC0415

    return migrate.knows(rev)


def newer_than_head(store: Store, rev: str) -> StoreError:
    """The one line for a store whose schema a newer khod wrote."""
    from khod.store import migrate  # noqa: PLC0415

    return migrate.newer_than_head(store, rev)


def open_reader(url_text: str | None = None, *, read_only: bool | None = True) -> Store:
    """A store for a command that only reads it: never created, opened read-only (a
    store on a read-only filesystem, a rescued disk, can be read). A local SQLite store
    an older khod wrote is brought to head first, as khod does at start, when it can be
    written (after a package upgrade, before khod has run again); a PostgreSQL store
    never: a fleet database is upgraded by its owner (``khoctl db upgrade``)."""
    store = open_store(url_text, create=False, migrate=False, read_only=read_only)
    try:
        rev = current_revision(store)
        if rev != HEAD_REVISION:
            if rev is None:
                raise NoStore(f"database {store.location} has no schema yet (run khod --once)")
            if not is_known(rev):
                raise newer_than_head(store, rev)
            path = _sqlite_path(store.url)
            if path is None or not _writable(path) or _read_only_fs(path):
                raise StoreError(
                    f"database {store.location}: schema {rev} is older than this khod "
                    f"(head {HEAD_REVISION}): run khoctl db upgrade"
                )
    except BaseException:
        store.dispose()
        raise
    if rev == HEAD_REVISION:
        return store
    store.dispose()
    open_store(url_text, create=False, migrate=True).dispose()
    return open_store(url_text, create=False, migrate=False, read_only=read_only)


def revision_off_head(store: Store) -> str | None:
    """The store's revision when it is not this khod's (older or newer); None at head.
    A store with no schema yet (a new file, an empty database its user owns) is given
    it: that is a store being created, not one migrated. For the callers that never
    migrate (a push, the report)."""
    rev = current_revision(store)
    if rev is None:
        ensure_schema(store)
    return None if rev in (None, HEAD_REVISION) else rev


def ensure_schema(store: Store) -> str:
    """Bring the schema to head; return the revision. Cheap when already current."""
    rev = current_revision(store)
    if rev == HEAD_REVISION:
        return rev
    from khod.store import migrate  # noqa: PLC0415  (Alembic only when needed)

    return migrate.upgrade(store, rev)
