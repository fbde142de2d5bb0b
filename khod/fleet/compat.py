"""Which fleet databases a push writes into, and with which columns: the compatible
window of docs/fleet-versions.md. A push never migrates a fleet database; its owner
does (``khoctl db upgrade``, ``khoctl fleet init``).

- at this khod's revision (HEAD_REVISION): every column;
- older, down to ``OLDEST_TARGET`` (the previous release's): the columns both know;
- newer: when the database says, in ``schema_compat.min_writer`` (one row, id 1, made
  by the first migration past HEAD_REVISION and kept by every later one), that
  writers of a revision this khod knows may still push: the columns both know;
- no schema at all (a new file, an empty database the URL's user owns): made at
  head, as before; that is a store being created, not a fleet database migrated.
"""

from __future__ import annotations

from sqlalchemy import inspect, text
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import StoreError
from khod.fleet.format import TABLES
from khod.store.db import revision_off_head
from khod.store.handle import Store, describe_db_error
from khod.store.schema import HEAD_REVISION

# the oldest fleet database revision this khod pushes into: the previous release's
# (0011: this khod pushes into a database not yet upgraded, the columns both have)
OLDEST_TARGET = "0011"
# where a newer schema records the oldest revision whose khod may still push into it
MIN_WRITER_SQL = "SELECT min_writer FROM schema_compat WHERE id = 1"

Columns = dict[str, frozenset[str]]  # table name -> the columns the database has


def chain() -> list[str]:
    """This khod's revisions, oldest first (Alembic's scripts: only when not at head)."""
    from alembic.script import ScriptDirectory  # noqa: PLC0415

    from khod.store.migrate import alembic_config  # noqa: PLC0415

    revs = [s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()]
    return revs[::-1]


def min_writer(target: Store) -> str | None:
    """The database's own word on the oldest revision that may push into it; None
    when it has none (a revision from before the window was recorded)."""
    try:
        with target.engine.connect() as conn:
            row = conn.execute(text(MIN_WRITER_SQL)).first()
    except SQLAlchemyError:
        return None
    return str(row[0]) if row else None


def _columns(target: Store) -> Columns:
    try:
        with target.engine.connect() as conn:
            insp = inspect(conn)
            return {
                t.name: frozenset(c["name"] for c in insp.get_columns(t.name))
                for t, _ in TABLES.values()
            }
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot read the schema of {target.location}: {describe_db_error(e)}"
        ) from None


def writable(target: Store) -> Columns | None:
    """Check that this khod may push into ``target`` without migrating it; the columns
    to write (None: all of this khod's). A one-line StoreError otherwise."""
    rev = revision_off_head(target)
    if rev is None:
        return None
    revs = chain()
    if rev in revs:
        if revs.index(rev) < revs.index(OLDEST_TARGET):
            raise StoreError(
                f"database {target.location}: schema revision {rev} is older than this "
                f"khod writes into (oldest {OLDEST_TARGET}, head {HEAD_REVISION}): "
                "its owner runs khoctl db upgrade"
            )
        return _columns(target)
    floor = min_writer(target)
    if floor is None or floor not in revs:
        raise StoreError(
            f"database {target.location}: schema {rev} is newer than this khod "
            f"(head {HEAD_REVISION}): upgrade khod (schema revision {rev} takes pushes "
            f"from {floor or 'its own release'} on)"
        )
    return _columns(target)


# may this role raise the warning count of a boot the database has? (migration 0017
# grants a host role UPDATE of its own boots' warnings; an owner may anywhere)
RAISE_SQL = (
    "SELECT has_column_privilege('boots', 'warnings', 'UPDATE') "
    "AND has_column_privilege('boots', 'warnings', 'SELECT')"
)


def raises_warnings(target: Store) -> bool:
    """Whether a push may raise the warnings of boots ``target`` has (SQLite: yes);
    asked of the database's grants, not of its revision, so an owner's push into an
    older database raises them too."""
    if target.url.get_backend_name() != "postgresql":
        return True
    try:
        with target.engine.connect() as conn:
            return bool(conn.execute(text(RAISE_SQL)).scalar())
    except SQLAlchemyError as e:
        raise StoreError(
            f"cannot read the grants of {target.location}: {describe_db_error(e)}"
        ) from None
