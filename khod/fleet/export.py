"""Export: a store's rows as ``khod-export`` objects (khod.fleet.format), boots first."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import Table, func, select

from khod.fleet.format import HARD_REFS, TABLES, header, ref_key
from khod.oneline import escape_json_controls
from khod.store.handle import Store
from khod.store.schema import boots


def _columns(table: Table, kind: str) -> list[str]:
    refs = TABLES[kind][1]
    return [c.name for c in table.columns if c.name != "id" and c.name not in refs]


def _select(
    kind: str,
    since: float | None,
    after_id: int,
    min_id: int | None = None,
    until: float | None = None,
) -> Any:
    """Rows of one type as export objects' columns, ordered by id."""
    table, refs = TABLES[kind]
    cols = [table.c[n] for n in _columns(table, kind)]
    q = select(table.c.id, *cols)
    joined: Any = table
    owner = None
    for i, ref in enumerate(refs):
        alias = boots.alias(f"r{i}")
        joined = joined.outerjoin(alias, alias.c.id == table.c[ref])
        q = q.add_columns(alias.c.boot_id.label(ref_key(ref)))
        if i == 0:
            owner = alias
    if kind == "boot":
        owner = boots
    elif "machine_id" not in table.c and owner is not None:
        q = q.add_columns(owner.c.machine_id.label("machine_id"))
    q = q.select_from(joined).where(table.c.id > after_id).order_by(table.c.id)
    for ref in refs:
        if ref in HARD_REFS:  # an event of no boot (a refused import) stays here
            q = q.where(table.c[ref].is_not(None))
    if min_id is not None:
        q = q.where(table.c.id >= min_id)
    when = None if owner is None else func.coalesce(owner.c.booted_at, owner.c.ingested_at)
    if since is not None and when is not None:
        q = q.where(when >= since)
    if until is not None and when is not None:
        q = q.where(when <= until)
    return q


def _to_object(kind: str, row: Mapping[Any, Any]) -> dict[str, Any]:
    obj: dict[str, Any] = {"object": kind}
    for k, v in row.items():
        if k == "id":
            continue
        if isinstance(v, (bytes, memoryview)):
            obj[k] = base64.b64encode(bytes(v)).decode("ascii")
        else:
            obj[k] = v
    return obj


def iter_objects(
    store: Store,
    kind: str,
    *,
    since: float | None = None,
    after_id: int = 0,
    min_id: int | None = None,
    with_ids: bool = False,
    until: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream one type's rows as export objects (``with_ids`` adds ``_id``, the local
    row id, for sync's watermarks)."""
    q = _select(kind, since, after_id, min_id, until)
    with store.engine.connect() as conn:
        result = conn.execution_options(yield_per=2000).execute(q).mappings()
        for row in result:
            obj = _to_object(kind, row)
            if with_ids:
                obj["_id"] = row["id"]
            yield obj


def rows_after(store: Store, kind: str, after_id: int = 0, min_id: int | None = None) -> list[Any]:
    """The local ids (and, for attempts, verdicts) of the rows of one type that a sync
    past these watermarks would send; at most one for any type but attempts (whose rows
    past the watermark are few: the open ones and the newer ones)."""
    q = _select(kind, None, after_id, min_id)
    cols = [q.selected_columns.id]
    if kind == "attempt":
        cols.append(q.selected_columns.verdict)
    else:
        q = q.limit(1)
    with store.engine.connect() as conn:
        return list(conn.execute(q.with_only_columns(*cols, maintain_column_froms=True)).all())


def export(
    store: Store,
    out: io.TextIOBase | Any,
    since: float | None = None,
    on_row: Callable[[int], None] | None = None,
    until: float | None = None,
) -> dict[str, int]:
    """Write the whole store (boots booted from ``since`` to ``until``, and what hangs
    off them);
    ``on_row``: told the number of rows written so far, after each one."""
    counts: dict[str, int] = {}
    total = 0
    out.write(json.dumps(header(since)) + "\n")
    for kind in TABLES:
        n = 0
        for obj in iter_objects(store, kind, since=since, until=until):
            line = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            out.write(escape_json_controls(line))  # C1 and DEL too: it may be a terminal
            out.write("\n")
            n += 1
            total += 1
            if on_row is not None:
                on_row(total)
        counts[kind] = n
    return counts
