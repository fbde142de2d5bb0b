"""PostgreSQL bulk import: a chunk of export lines goes to the server as it is (COPY),
and PostgreSQL parses, checks and inserts it in SQL, in C, beside this process.

Python's json.loads alone caps a loader at a few tens of thousands of lines a second
on a small machine; this path does no per-line work in Python. It is all or nothing
per chunk: when anything in a chunk is off (not JSON, a wrong type, bad base64, a NUL
that jsonb cannot hold), the transaction is rolled back and the caller imports the
chunk line by line in Python, which names each bad line. The checks below mirror
``khod.fleet.format.validate``: what one path refuses, so does the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Connection, Float, Integer, LargeBinary, String

from khod.fleet import format as fmt


class Fallback(Exception):
    """This chunk needs the line-by-line path."""


def _lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _int64(v: str) -> str:
    """SQL: the jsonb value v is an integer of 64 bits (as format._int64 takes it)."""
    return (
        f"(jsonb_typeof({v}) = 'number' AND ({v})::numeric BETWEEN {-fmt.INT64} AND "
        f"{fmt.INT64 - 1} AND trunc(({v})::numeric) = ({v})::numeric)"
    )


def _all(v: str, pred: str) -> str:
    """SQL: v is an array and each element e of it satisfies pred."""
    return (
        f"(CASE WHEN jsonb_typeof({v}) = 'array' THEN NOT EXISTS (SELECT 1 FROM "
        f"jsonb_array_elements({v}) e WHERE NOT coalesce({pred}, false)) ELSE false END)"
    )


# SQL mirrors of format.JSON_SHAPES
_SIZE = "e->'size'"
_SUBTREE = (
    "(jsonb_typeof(e) = 'object' AND jsonb_typeof(e->'name') = 'string' AND "
    f"(jsonb_typeof({_SIZE}) IS NULL OR jsonb_typeof({_SIZE}) = 'null' OR {_int64(_SIZE)}))"
)
_JSON_SHAPES = {
    "subtrees": lambda v: _all(v, _SUBTREE),
    "out_subtrees": lambda v: _all(v, _SUBTREE),
    "scratch": lambda v: _all(
        v,
        "(CASE WHEN jsonb_typeof(e) = 'array' AND jsonb_array_length(e) = 2 THEN "
        f"{_int64('e->0')} AND {_int64('e->1')} ELSE false END)",
    ),
    "checks": lambda v: _all(v, "jsonb_typeof(e) = 'object'"),
    "argv": lambda v: _all(
        v,
        "(CASE WHEN jsonb_typeof(e) = 'array' THEN NOT EXISTS (SELECT 1 FROM "
        "jsonb_array_elements(e) x WHERE jsonb_typeof(x) <> 'string') ELSE false END)",
    ),
}


def _pred(col: Any, v: str, key: str = "") -> str:
    """SQL: the jsonb value v has the column's type (and is not null)."""
    p = _type_pred(col, v)
    if key in _JSON_SHAPES:
        p = f"({p} AND {_JSON_SHAPES[key](v)})"
    if key in fmt.TIMES:
        p = f"({p} AND {v}::numeric BETWEEN 0 AND {fmt.TIME_MAX})"
    return p


def _type_pred(col: Any, v: str) -> str:
    t = col.type
    typ = f"jsonb_typeof({v})"
    if isinstance(t, Boolean):
        return f"{typ} = 'boolean'"
    if isinstance(t, Integer):
        low, high = fmt.int_range(col)
        return (
            f"({typ} = 'number' AND {v}::numeric BETWEEN {low} AND {high - 1} "
            f"AND trunc({v}::numeric) = {v}::numeric)"
        )
    if isinstance(t, Float):
        return f"{typ} = 'number'"
    if isinstance(t, JSON):
        return f"{typ} IN ('array', 'object')"
    if isinstance(t, LargeBinary):
        return f"{typ} = 'string'"
    if isinstance(t, String) and t.length is not None:
        return f"({typ} = 'string' AND char_length({v} #>> '{{}}') <= {t.length})"
    return f"{typ} = 'string'"


def _check(kind: str) -> str:
    """SQL: how many objects of this type fail the checks of ``khod.fleet.format.validate``.
    jsonb_to_record takes each value out once (far cheaper than j->'key' per test)."""
    shape = fmt.SHAPES[kind]
    cols = ", ".join(f'"{key}" jsonb' for key in shape.columns)
    parts = []
    for key, col in shape.columns.items():
        v = f'x."{key}"'
        p = _pred(col, v, key)
        if key not in shape.required:
            p = f"(jsonb_typeof({v}) IS NULL OR jsonb_typeof({v}) = 'null' OR {p})"
        parts.append(p)
    return (
        f"SELECT count(*) FROM khod_objs, jsonb_to_record(j) AS x({cols}) "
        f"WHERE j->>'object' = {_lit(kind)} AND NOT coalesce({' AND '.join(parts)}, false)"
    )


def _cast(col: Any, src: str = "j") -> str:
    k = _lit(col.name)
    t = col.type
    if isinstance(t, Boolean):
        return f"({src}->>{k})::boolean"
    if isinstance(t, BigInteger):
        return f"({src}->>{k})::numeric::bigint"
    if isinstance(t, Integer):
        return f"({src}->>{k})::numeric::integer"
    if isinstance(t, Float):
        return f"({src}->>{k})::double precision"
    if isinstance(t, JSON):
        return f"({src}->{k})::json"
    if isinstance(t, LargeBinary):
        return f"decode({src}->>{k}, 'base64')"
    return f"({src}->>{k})"


def _statements() -> tuple[list[str], dict[str, tuple[str, str | None]]]:
    """The check queries, and per type its INSERT and its count of unknown boots."""
    kinds = [k for k in fmt.TABLES if k != "attempt"]
    known = ", ".join(_lit(k) for k in fmt.TABLES)
    checks = [
        "SELECT count(*) FROM khod_objs WHERE jsonb_typeof(j) <> 'object' "
        f"OR coalesce(j->>'object' NOT IN ({known}), true)",
        # attempts too: they are inserted by the Python path, but a bad one sends its
        # chunk there line by line, where it is named
        *(_check(k) for k in fmt.TABLES),
    ]
    inserts: dict[str, tuple[str, str | None]] = {}
    for kind in kinds:
        shape = fmt.SHAPES[kind]
        table = shape.table
        cols = [c for c in table.columns if c.name != "id"]
        exprs = []
        joins = []
        unknown = None
        for i, ref in enumerate(shape.refs):
            key = _lit(fmt.ref_key(ref))
            on = f"r{i}.machine_id = s.j->>'machine_id' AND r{i}.boot_id = s.j->>{key}"
            joins.append(f"{'JOIN' if ref in fmt.HARD_REFS else 'LEFT JOIN'} boots r{i} ON {on}")
            if ref in fmt.HARD_REFS:
                unknown = (
                    f"SELECT count(*) FROM khod_objs s WHERE s.j->>'object' = {_lit(kind)} "
                    f"AND NOT EXISTS (SELECT 1 FROM boots r0 WHERE {on})"
                )
        refs = {ref: f"r{i}.id" for i, ref in enumerate(shape.refs)}
        for c in cols:
            exprs.append(refs[c.name] if c.name in refs else _cast(c, "s.j"))
        names = ", ".join(f'"{c.name}"' for c in cols)
        conflict = ", ".join(fmt.CONFLICT[kind])
        inserts[kind] = (
            f"INSERT INTO {table.name} ({names}) SELECT {', '.join(exprs)} "
            f"FROM khod_objs s {' '.join(joins)} WHERE s.j->>'object' = {_lit(kind)} "
            f"ON CONFLICT ({conflict}) DO NOTHING",
            unknown,
        )
    return checks, inserts


CHECKS, INSERTS = _statements()


@dataclass
class ChunkResult:
    read: dict[str, int] = field(default_factory=dict)
    new: dict[str, int] = field(default_factory=dict)
    unknown_boot: int = 0
    attempts: list[str] = field(default_factory=list)  # left to the Python path


def copy_data(lines: list[bytes]) -> bytes:
    """The lines in COPY's text format: one column, backslash escapes."""
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    return data.replace(b"\\", b"\\\\").replace(b"\t", b"\\t").replace(b"\r", b"\\r")


def load_chunk(conn: Connection, lines: list[bytes]) -> ChunkResult:
    """In the caller's transaction; raises (and the caller rolls back) on anything off."""
    raw = conn.connection.driver_connection
    assert raw is not None
    res = ChunkResult()
    with raw.cursor() as cur:
        cur.execute("CREATE TEMP TABLE IF NOT EXISTS khod_objs (j jsonb) ON COMMIT DELETE ROWS")
        # the server parses each line as it arrives (not JSON: the COPY fails)
        with cur.copy("COPY khod_objs (j) FROM STDIN") as copy:
            copy.write(copy_data(lines))
        for check in CHECKS:
            cur.execute(check)
            row = cur.fetchone()
            if row is None or row[0]:
                raise Fallback
        cur.execute("SELECT j->>'object', count(*) FROM khod_objs GROUP BY 1")
        res.read = {k: int(n) for k, n in cur.fetchall()}
        for kind in fmt.TABLES:
            if kind == "attempt" or kind not in res.read:
                continue
            insert, unknown = INSERTS[kind]
            if unknown is not None:
                cur.execute(unknown)
                row = cur.fetchone()
                res.unknown_boot += int(row[0]) if row else 0
            cur.execute(insert)
            res.new[kind] = max(int(cur.rowcount), 0)
        if "attempt" in res.read:
            cur.execute("SELECT j::text FROM khod_objs WHERE j->>'object' = 'attempt'")
            res.attempts = [r[0] for r in cur.fetchall()]
        cur.execute("TRUNCATE khod_objs")
    return res
