"""The operator's side of fleet trust (``khoctl fleet init|enroll|revoke``), run with the
fleet database's owner role (a superuser, or a role with CREATEROLE that owns the
database). Migration 0010 makes the group roles, grants and policies; this module
locks the database down, sets the bounds, and makes or disables one login role per host.

A host's role is ``host_<machine_id>`` (``host_<machine_id>_<n>`` when enrolled again
after a revocation: a revoked role, and every certificate naming it, never comes back;
``fleet_roles`` remembers the names): its client certificate's CN, checked by ``cert``
authentication; row-level security reads the machine id back from the name.

An owner that is not a superuser needs, from a superuser, what ``missing()`` lists:
membership in pg_signal_backend (revoke ends sessions), SET on temp_file_limit (enroll
bounds it), and large objects taken from PUBLIC in the fleet database.
"""

from __future__ import annotations

import re
import shutil
import time
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
# the functions that make a large object (outside every bound of a host)
LO_MAKERS = (
    "lo_creat(integer)",
    "lo_create(oid)",
    "lo_from_bytea(oid, bytea)",
    "lo_import(text)",
    "lo_import(text, oid)",
)


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
        if _superuser(conn):
            for fn in LO_MAKERS:
                conn.execute(text(f"REVOKE EXECUTE ON FUNCTION {fn} FROM PUBLIC"))
        _require(conn, "fleet init")
        given = {k: v for k, v in asdict(limits).items() if v is not None}
        if given:
            sets = ", ".join(f"{k} = :{k}" for k in given)
            conn.execute(text(f"UPDATE fleet_limits SET {sets} WHERE id = 1"), given)
        row = conn.execute(text("SELECT * FROM fleet_limits WHERE id = 1")).mappings().one()
        return {k: int(v) for k, v in row.items() if k != "id"}

    return dict(_run(store, "set up fleet roles", body))


def _superuser(conn: Connection) -> bool:
    q = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    return bool(conn.execute(text(q)).scalar())


def missing(conn: Connection) -> list[str]:
    """What the owner lacks to bound and revoke hosts, as the SQL a superuser runs."""
    if _superuser(conn):
        return []
    me = conn.execute(text("SELECT quote_ident(current_user)")).scalar_one()
    out = []
    if not conn.execute(text("SELECT pg_has_role('pg_signal_backend', 'MEMBER')")).scalar():
        out.append(f"GRANT pg_signal_backend TO {me}")
    q = "SELECT has_parameter_privilege('temp_file_limit', 'SET')"
    if not conn.execute(text(q)).scalar():
        out.append(f"GRANT SET ON PARAMETER temp_file_limit TO {me}")
    lo = [
        fn
        for fn in LO_MAKERS
        if conn.execute(
            text("SELECT has_function_privilege('public', :f, 'EXECUTE')"), {"f": fn}
        ).scalar()
    ]
    if lo:
        out.append(f"REVOKE EXECUTE ON FUNCTION {', '.join(lo)} FROM PUBLIC")
    return out


def _require(conn: Connection, what: str) -> None:
    lack = missing(conn)
    if lack:
        db = conn.execute(text("SELECT current_database()")).scalar_one()
        user = conn.execute(text("SELECT current_user")).scalar_one()
        raise KhodError(
            f"{what}: the owner {user} is not a superuser and cannot bound or revoke hosts "
            f"yet; a superuser runs, in database {db}: {'; '.join(lack)}"
        )


def _generations(conn: Connection, machine: str) -> dict[str, tuple[int, bool]]:
    """Every role this machine had: name -> (generation, may log in now)."""
    base = HOST_PREFIX + machine
    out: dict[str, tuple[int, bool]] = {}
    for role, gen in conn.execute(
        text("SELECT role, generation FROM fleet_roles WHERE machine_id = :m"), {"m": machine}
    ):
        out[str(role)] = (int(gen), False)
    for role, login in conn.execute(
        text("SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = :b OR rolname ~ :p"),
        {"b": base, "p": f"^{base}_[0-9]+$"},
    ):
        gen = 0 if role == base else int(str(role).rsplit("_", 1)[1])
        out[str(role)] = (gen, bool(login))
    return out


def _pick_host_role(conn: Connection, base: str) -> str:
    """The role to enroll as: the live one (a renewal), else a name never used."""
    machine = base.removeprefix(HOST_PREFIX)
    gens = _generations(conn, machine)
    if not gens:
        return base
    latest = max(gens, key=lambda r: gens[r][0])
    if gens[latest][1]:
        return latest
    return f"{base}_{gens[latest][0] + 1}"


def _role_state(conn: Connection, role: str) -> bool | None:
    """None: no such role; else whether it may log in."""
    row = conn.execute(
        text("SELECT rolcanlogin FROM pg_roles WHERE rolname = :r"), {"r": role}
    ).first()
    return None if row is None else bool(row[0])


def make_role(store: Store, role: str, group: str, bounds: RoleBounds) -> tuple[str, bool]:
    """Create (or enable again) a login role in ``group``: (its name, whether it is new).
    A host's role is its live one, or a new generation after a revocation."""

    def body(conn: Connection) -> tuple[str, bool]:
        nonlocal role
        _require(conn, f"fleet enroll {role}")
        if group == HOST_GROUP:
            role = _pick_host_role(conn, role)
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
        # superuser-only (or granted SET): unlike the two above, the host cannot raise it
        conn.execute(
            text(f"ALTER ROLE {r} SET temp_file_limit = '{int(bounds.temp_file_limit_kb)}kB'")
        )
        if group == HOST_GROUP and state is None:
            conn.execute(
                text(
                    "INSERT INTO fleet_roles (role, machine_id, generation, enrolled_at) "
                    "VALUES (:r, :m, :g, :t) ON CONFLICT (role) DO NOTHING"
                ),
                {"r": role, "m": role[len(HOST_PREFIX) :][:32], "g": _gen(role), "t": time.time()},
            )
        return role, state is None

    name, new = _run(store, f"enroll {role}", body)
    return str(name), bool(new)


def _gen(role: str) -> int:
    tail = role[len(HOST_PREFIX) + 32 :]
    return int(tail[1:]) if tail else 0


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
    role, new = make_role(store, role, group, bounds or RoleBounds())
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
    """The role may no longer log in (every certificate of it is worthless at once; a
    host's every generation), its open sessions are ended; ``drop``: the role goes too,
    with anything it owns (its rows stay: they belong to the owner)."""
    roles: list[str] = []

    def disable(conn: Connection) -> None:
        if role.startswith(HOST_PREFIX) and _MACHINE_ID.match(role[len(HOST_PREFIX) :]):
            machine = role[len(HOST_PREFIX) :]
            gens = _generations(conn, machine)
            roles.extend(sorted((r for r in gens if _role_state(conn, r) is not None), key=_gen))
            conn.execute(
                text(
                    "UPDATE fleet_roles SET revoked_at = :t "
                    "WHERE machine_id = :m AND revoked_at IS NULL"
                ),
                {"t": time.time(), "m": machine},
            )
        elif _role_state(conn, role) is not None:
            roles.append(role)
        if not roles:
            raise KhodError(f"no role {role} in the fleet database (never enrolled, or dropped)")
        for r in roles:
            conn.execute(text(f"ALTER ROLE {_ident(r)} NOLOGIN"))

    def end_sessions(conn: Connection) -> int:
        lack = [m for m in missing(conn) if "pg_signal_backend" in m]
        if lack:
            user = conn.execute(text("SELECT current_user")).scalar_one()
            raise KhodError(
                f"revoked {', '.join(roles)} (no new session), but its open sessions go on: "
                f"the owner {user} may not end them; a superuser runs: {lack[0]}"
            )
        q = "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = ANY(:r)"
        return int(conn.execute(text(q), {"r": roles}).scalar_one())

    def drop_roles(conn: Connection) -> None:
        for r in roles:
            if not conn.execute(text("SELECT pg_has_role(:r, 'USAGE')"), {"r": r}).scalar():
                # DROP OWNED needs the role's privileges (CREATEROLE may grant them)
                conn.execute(text(f"GRANT {_ident(r)} TO CURRENT_USER"))
            conn.execute(text(f"DROP OWNED BY {_ident(r)}"))  # large objects, grants
            conn.execute(text(f"DROP ROLE {_ident(r)}"))

    _run(store, f"revoke {role}", disable)  # committed first: no new session from here on
    ended = _run(store, f"end the sessions of {role}", end_sessions)
    if drop:
        _run(store, f"drop {role}", drop_roles)
    return {"role": roles[-1], "roles": roles, "sessions_ended": ended, "dropped": drop}
