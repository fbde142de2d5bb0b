"""What a host's row weighs, derived from the live catalog (PostgreSQL only).

Every column of every table the ``khod_host`` group may INSERT into or UPDATE counts:
a fixed-size column its ``attlen``, a variable-length one its bytes (``bytea`` and the
character types as stored, any other type as its text form). ``weigh()`` makes, for
each such table, a row trigger refusing a row heavier than ``fleet_limits.max_row_bytes``
(on INSERT and on UPDATE by a host's session, before the row is written) and the
statement triggers adding inserted and updated rows to the host's usage. A migration
that adds a column a host writes calls ``weigh()`` again (tests/fleet/test_fleet_trust.py
walks the schema and tries an oversize value in every host-writable column, so a
forgotten one fails there).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

HOST_GROUP = "khod_host"

_TABLES = """
SELECT c.relname,
       has_any_column_privilege(:g, c.oid, 'INSERT') AS ins,
       has_any_column_privilege(:g, c.oid, 'UPDATE') AS upd
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p')
  AND (has_any_column_privilege(:g, c.oid, 'INSERT')
       OR has_any_column_privilege(:g, c.oid, 'UPDATE'))
ORDER BY c.relname
"""
_COLUMNS = """
SELECT quote_ident(a.attname), a.attlen, t.typname
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_STORED_AS_IS = {"bytea", "text", "varchar", "bpchar"}
# the sessions whose rows are weighed: a host's (the row trigger's WHEN, so that the
# owner's import, millions of rows, does not call it per row only for it to return;
# its function asks again, and who the host is)
HOST_SESSION = r"session_user::text LIKE 'host\_%'"

_ROW_BOUND = r"""
CREATE OR REPLACE FUNCTION khod_row_bound_@TABLE@() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = @SCHEMA@, pg_temp AS $$
DECLARE
    me text;
    w bigint;
    lim bigint;
BEGIN
    IF session_user::text NOT LIKE 'host\_%' THEN  -- the owner's import: not weighed
        RETURN NEW;
    END IF;
    w := @WEIGHT@;  -- the weight first: who is writing is asked of a heavy row only
    SELECT max_row_bytes INTO lim FROM fleet_limits WHERE id = 1;
    IF w <= lim THEN
        RETURN NEW;
    END IF;
    me := khod_host_machine();
    IF me IS NULL OR NOT pg_has_role(session_user, 'khod_host', 'MEMBER') THEN
        RETURN NEW;
    END IF;
    IF lim IS NULL THEN
        RAISE EXCEPTION 'khod fleet: no limits set (run khoctl fleet init)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RAISE EXCEPTION 'khod fleet: host % sent a % row of % bytes, over the limit of % bytes',
        me, TG_TABLE_NAME, w, lim USING ERRCODE = 'program_limit_exceeded';
END $$
"""


def weight(conn: Connection, table: str, prefix: str = "") -> str:
    """The SQL expression of a row's weight: fixed sizes summed, each variable-length
    column's bytes (``prefix``: ``NEW.`` in a row trigger)."""
    fixed, parts = 0, []
    for name, attlen, typname in conn.execute(text(_COLUMNS), {"t": table}):
        if attlen > 0:
            fixed += int(attlen)
        elif typname in _STORED_AS_IS:
            parts.append(f"coalesce(octet_length({prefix}{name}), 0)")
        else:
            parts.append(f"coalesce(octet_length(({prefix}{name})::text), 0)")
    return " + ".join([str(fixed), *parts])


def host_tables(conn: Connection) -> list[tuple[str, bool, bool]]:
    """(table, host may insert, host may update some column)."""
    rows = conn.execute(text(_TABLES), {"g": HOST_GROUP})
    return [(str(r[0]), bool(r[1]), bool(r[2])) for r in rows]


def weigh(conn: Connection) -> list[str]:
    """(Re)make the bound and quota triggers of every table a host writes; the tables."""
    schema = conn.execute(text("SELECT quote_ident(current_schema())")).scalar_one()
    done = []
    for table, ins, upd in host_tables(conn):
        fn = _ROW_BOUND.replace("@TABLE@", table).replace("@SCHEMA@", schema)
        conn.execute(text(fn.replace("@WEIGHT@", weight(conn, table, "NEW."))))
        events = " OR ".join(e for e, on in (("INSERT", ins), ("UPDATE", upd)) if on)
        conn.execute(text(f"DROP TRIGGER IF EXISTS khod_row_bound ON {table}"))
        conn.execute(
            text(
                f"CREATE TRIGGER khod_row_bound BEFORE {events} ON {table} FOR EACH ROW "
                f"WHEN ({HOST_SESSION}) EXECUTE FUNCTION khod_row_bound_{table}()"
            )
        )
        w = weight(conn, table).replace("'", "''")
        # transition tables allow one event per trigger: one for inserts, one for updates
        for trigger, event, on in (
            ("khod_host_quota", "INSERT", ins),
            ("khod_host_quota_update", "UPDATE", upd),
        ):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger} ON {table}"))
            if on:
                conn.execute(
                    text(
                        f"CREATE TRIGGER {trigger} AFTER {event} ON {table} "
                        "REFERENCING NEW TABLE AS khod_new_rows FOR EACH STATEMENT "
                        f"EXECUTE FUNCTION khod_host_quota('{w}')"
                    )
                )
        done.append(table)
    return done


def unweigh(conn: Connection) -> None:
    """Drop what ``weigh`` made (the INSERT quota triggers stay: migration 0010's)."""
    for table, _, _ in host_tables(conn):
        conn.execute(text(f"DROP TRIGGER IF EXISTS khod_row_bound ON {table}"))
        conn.execute(text(f"DROP TRIGGER IF EXISTS khod_host_quota_update ON {table}"))
        conn.execute(text(f"DROP FUNCTION IF EXISTS khod_row_bound_{table}()"))
