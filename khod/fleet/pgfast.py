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


# SQL mirrors of format.JSON_SHAPES, in SQL/JSON path (evaluated in C, an order of
# magnitude cheaper than a subquery over jsonb_array_elements per row). Strict mode
# where an element's own type is asked (lax mode would unwrap a nested array), lax
# where a key may be missing (strict would make that an error, not a mismatch).
_INT64_PATH = (
    '({x}.type() == "number" && {x} >= -{m} && {x} < {m} && {x}.floor() == {x})'
).replace("{m}", str(fmt.INT64))


def _int64_path(x: str) -> str:
    return _INT64_PATH.replace("{x}", x)


def _none(v: str, path: str, silent: bool = False) -> str:
    """SQL: no item of the jsonb array v matches the SQL/JSON path."""
    errors = ", '{}', true" if silent else ""  # an error is NULL: refused
    return f"NOT jsonb_path_exists({v}, {_lit(path)}{errors})"


def _array(v: str, *conditions: str) -> str:
    return f"(CASE WHEN jsonb_typeof({v}) = 'array' THEN {' AND '.join(conditions)} ELSE false END)"


_NOT_OBJECTS = 'strict $[*] ? (@.type() != "object")'
_BAD_SUBTREE = (
    'lax $[*] ? (!(@.name.type() == "string") || '
    f'(@.size.type() != "null" && !{_int64_path("@.size")}))'
)
_BAD_AREA = (
    'strict $[*] ? (@.type() != "array" || @.size() != 2 || '
    f"!{_int64_path('@[0]')} || !{_int64_path('@[1]')})"
)
_JSON_SHAPES = {
    "subtrees": lambda v: _array(v, _none(v, _NOT_OBJECTS), _none(v, _BAD_SUBTREE)),
    "out_subtrees": lambda v: _array(v, _none(v, _NOT_OBJECTS), _none(v, _BAD_SUBTREE)),
    "scratch": lambda v: _array(v, _none(v, _BAD_AREA)),
    "checks": lambda v: _array(v, _none(v, _NOT_OBJECTS)),
    # the second path errs (silent: NULL, refused) only where the first has refused
    "argv": lambda v: _array(
        v,
        _none(v, 'strict $[*] ? (@.type() != "array")'),
        _none(v, 'strict $[*][*] ? (@.type() != "string")', silent=True),
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


# an attempt already in the target gets a verdict only while its own is open
_FILL_VERDICT = (
    " DO UPDATE SET verdict = EXCLUDED.verdict, verdict_boot = EXCLUDED.verdict_boot, "
    "verdict_detail = EXCLUDED.verdict_detail "
    "WHERE kexec_attempts.verdict IS NULL AND EXCLUDED.verdict IS NOT NULL"
)


def _statements() -> tuple[list[str], dict[str, tuple[str, str | None]]]:
    """The check queries, and per type its INSERT and its count of unknown boots. The
    attempts' INSERT returns how many rows it inserted (a verdict filled is not one)."""
    known = ", ".join(_lit(k) for k in fmt.TABLES)
    checks = [
        "SELECT count(*) FROM khod_objs WHERE jsonb_typeof(j) <> 'object' "
        f"OR coalesce(j->>'object' NOT IN ({known}), true)",
        *(_check(k) for k in fmt.TABLES),
    ]
    inserts: dict[str, tuple[str, str | None]] = {}
    for kind in fmt.TABLES:
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
        select = (
            f"SELECT {', '.join(exprs)} FROM khod_objs s {' '.join(joins)} "
            f"WHERE s.j->>'object' = {_lit(kind)}"
        )
        if kind == "attempt":
            # one row per uid, the first in the file (one statement may not touch a row
            # twice), in (machine, verdict) order: the counters the verdicts bump are
            # locked in one order by every chunk, so two chunks at once cannot deadlock
            aliased = ", ".join(f'{e} AS "{c.name}"' for e, c in zip(exprs, cols, strict=True))
            select = (
                f"SELECT * FROM (SELECT DISTINCT ON (s.j->>'uid') {aliased} "
                f"FROM khod_objs s {' '.join(joins)} WHERE s.j->>'object' = 'attempt' "
                "ORDER BY s.j->>'uid', s.ctid) a ORDER BY machine_id, verdict"
            )
            insert = (
                f"WITH w AS (INSERT INTO {table.name} ({names}) {select} "
                f"ON CONFLICT ({conflict}){_FILL_VERDICT} RETURNING xmax = 0 AS new) "
                "SELECT count(*) FILTER (WHERE new) FROM w"
            )
        else:
            insert = (
                f"INSERT INTO {table.name} ({names}) {select} ON CONFLICT ({conflict}) DO NOTHING"
            )
        inserts[kind] = (insert, unknown)
    return checks, inserts


CHECKS, INSERTS = _statements()
# the chunk's boots with a warning count, the highest given each: those the target
# had are raised after the chunk committed (khod.fleet.raising.RAISE_WARNINGS)
COUNTED_BOOTS = (
    "SELECT j->>'machine_id', j->>'boot_id', max((j->>'warnings')::numeric::integer) "
    "FROM khod_objs WHERE j->>'object' = 'boot' AND jsonb_typeof(j->'warnings') = 'number' "
    "GROUP BY 1, 2"
)


@dataclass
class ChunkResult:
    read: dict[str, int] = field(default_factory=dict)
    new: dict[str, int] = field(default_factory=dict)
    unknown_boot: int = 0
    raised: int = 0  # boots the target had whose warning count was raised
    # boots of the chunk the target may have had: their highest warning count given
    to_raise: dict[tuple[str, str], int] = field(default_factory=dict)


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
        # a chunk's sorts (the attempts' one row per uid) in memory, not on disk
        cur.execute("SET LOCAL work_mem = '64MB'")
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
            if kind not in res.read:
                continue
            insert, unknown = INSERTS[kind]
            if unknown is not None:
                cur.execute(unknown)
                row = cur.fetchone()
                res.unknown_boot += int(row[0]) if row else 0
            cur.execute(insert)
            row = cur.fetchone() if cur.description else (cur.rowcount,)
            res.new[kind] = max(int(row[0]), 0) if row else 0
            if kind == "boot" and res.new[kind] < res.read[kind]:
                cur.execute(COUNTED_BOOTS)
                res.to_raise = {(m, b): int(w) for m, b, w in cur.fetchall()}
        cur.execute("TRUNCATE khod_objs")
    return res
