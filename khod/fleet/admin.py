"""The operator's side of fleet trust (``khoctl fleet init|enroll|revoke``), run with the
fleet database's owner role (a superuser, or a role with CREATEROLE that owns the
database). Migration 0010 makes the group roles, grants and policies; this module
locks the database down, sets the bounds, and makes or disables one login role per host.

A host's role is ``host_<machine_id>``: its client certificate's CN, checked by
``cert`` authentication; row-level security reads the machine id back from the name.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import SQLAlchemyError

from khod.errors import KhodError, StoreError
from khod.fleet import certs
from khod.store.handle import Store, describe_db_error

HOST_PREFIX = "host_"
HOST_GROUP = "khod_host"
REPORT_GROUP = "khod_report"
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")  # /etc/machine-id: 32 lowercase hex digits
_READER = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Limits:
    max_row_bytes: int | None = None
    max_push_rows: int | None = None
    max_host_rows: int | None = None
    max_host_bytes: int | None = None


@dataclass(frozen=True)
class RoleBounds:
    connections: int = 2
    statement_timeout: int = 60  # seconds
    temp_file_limit_kb: int = 256 << 10


def host_role(machine_id: str) -> str:
    if not _MACHINE_ID.match(machine_id):
        raise KhodError(f"not a machine id (32 lowercase hex digits): {machine_id!r}")
    return HOST_PREFIX + machine_id


def reader_role(name: str) -> str:
    if not _READER.match(name) or name.startswith(HOST_PREFIX) or name.startswith("khod_"):
        raise KhodError(
            f"not a name for a reporting role: {name!r} (lowercase letters, digits and _, "
            f"not starting with {HOST_PREFIX} or khod_)"
        )
    return name


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _postgres(store: Store) -> None:
    if store.url.get_backend_name() != "postgresql":
        raise KhodError(
            f"{store.location} is not PostgreSQL: fleet roles live in the fleet database"
        )


def _run(store: Store, what: str, body: Any) -> Any:
    _postgres(store)
    try:
        with store.writer.begin() as conn:
            return body(conn)
    except SQLAlchemyError as e:
        raise StoreError(f"cannot {what} in {store.location}: {describe_db_error(e)}") from None


def init(store: Store, limits: Limits) -> dict[str, Any]:
    """Only the owner, hosts and readers may connect; nobody else may create anything;
    the bounds of ``limits`` that are given replace the current ones."""

    def body(conn: Connection) -> dict[str, Any]:
        db = _ident(conn.execute(text("SELECT current_database()")).scalar_one())
        schema = _ident(conn.execute(text("SELECT current_schema()")).scalar_one())
        for stmt in (
            f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",  # CONNECT and TEMP
            f"GRANT CONNECT ON DATABASE {db} TO {HOST_GROUP}, {REPORT_GROUP}",
            f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC",
            f"GRANT USAGE ON SCHEMA {schema} TO {HOST_GROUP}, {REPORT_GROUP}",
        ):
            conn.execute(text(stmt))
        given = {k: v for k, v in asdict(limits).items() if v is not None}
        if given:
            sets = ", ".join(f"{k} = :{k}" for k in given)
            conn.execute(text(f"UPDATE fleet_limits SET {sets} WHERE id = 1"), given)
        row = conn.execute(text("SELECT * FROM fleet_limits WHERE id = 1")).mappings().one()
        return {k: int(v) for k, v in row.items() if k != "id"}

    return dict(_run(store, "set up fleet roles", body))


def _role_state(conn: Connection, role: str) -> bool | None:
    """None: no such role; else whether it may log in."""
    row = conn.execute(
        text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).first()
    return None if row is None else bool(row[0])


def make_role(store: Store, role: str, group: str, bounds: RoleBounds) -> bool:
    """Create (or enable again) a login role in ``group``; True when it was new."""

    def body(conn: Connection) -> bool:
        state = _role_state(conn, role)
        r = _ident(role)
        limit = int(bounds.connections)
        if state is None:
            conn.execute(text(f"CREATE ROLE {r} LOGIN CONNECTION LIMIT {limit} IN ROLE {group}"))
        else:
            conn.execute(text(f"ALTER ROLE {r} LOGIN CONNECTION LIMIT {limit}"))
            conn.execute(text(f"GRANT {group} TO {r}"))
        for name, value in (
            ("statement_timeout", f"{int(bounds.statement_timeout)}s"),
            ("idle_in_transaction_session_timeout", f"{int(bounds.statement_timeout)}s"),
        ):
            conn.execute(text(f"ALTER ROLE {r} SET {name} = '{value}'"))
        if conn.execute(
            text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        ).scalar():
            # superuser-only: unlike the two above, the host's session cannot raise it
            conn.execute(
                text(f"ALTER ROLE {r} SET temp_file_limit = '{int(bounds.temp_file_limit_kb)}kB'")
            )
        return state is None

    return bool(_run(store, f"enroll {role}", body))


def enroll(
    store: Store,
    role: str,
    group: str,
    *,
    ca_cert: Path,
    ca_key: Path,
    out: Path,
    days: int = 397,
    bounds: RoleBounds | None = None,
) -> dict[str, Any]:
    """The role, and what the host needs: its key, its certificate (CN = the role),
    the fleet CA's certificate, written to ``out`` (0700)."""
    for p in (ca_cert, ca_key):
        if not p.is_file():
            raise KhodError(f"cannot read {p}: No such file")
    new = make_role(store, role, group, bounds or RoleBounds())
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise KhodError(f"cannot create {out}: {e.strerror}") from None
    stem = "host" if group == HOST_GROUP else role
    issued = certs.issue(ca_cert, ca_key, role, out / f"{stem}.crt", out / f"{stem}.key", days=days)
    ca_copy = out / "ca.crt"
    if ca_copy.resolve() != ca_cert.resolve():
        shutil.copyfile(ca_cert, ca_copy)
    return {
        "role": role,
        "new": new,
        "cert": str(issued.cert),
        "key": str(issued.key),
        "ca": str(ca_copy),
        "days": days,
    }


def revoke(store: Store, role: str, *, drop: bool = False) -> dict[str, Any]:
    """The role may no longer log in (every certificate of it is worthless at once),
    its open sessions are ended; ``drop``: the role goes too (its rows stay)."""

    def disable(conn: Connection) -> None:
        if _role_state(conn, role) is None:
            raise KhodError(f"no role {role} in the fleet database (never enrolled, or dropped)")
        conn.execute(text(f"ALTER ROLE {_ident(role)} NOLOGIN"))

    def end_sessions(conn: Connection) -> int:
        q = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = :r"
        return int(conn.execute(text(q), {"r": role}).scalar_one())

    _run(store, f"revoke {role}", disable)  # committed first: no new session from here on
    ended = _run(store, f"end the sessions of {role}", end_sessions)
    if drop:
        _run(store, f"drop {role}", lambda conn: conn.execute(text(f"DROP ROLE {_ident(role)}")))
    return {"role": role, "sessions_ended": ended, "dropped": drop}
