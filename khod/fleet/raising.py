"""A boot's warning count raised, never lowered, in a store that has the boot (a boot
pushed while it ran has seen more of its log since; migration 0017): the SQL, and the
count of boots raised. Used by the importer (khod.fleet.importer) after its inserts
committed, and by a bulk chunk's worker thread (khod.fleet.pgfast finds the boots).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Connection, text

Key = tuple[str, str]  # machine_id, boot_id

# boots already in the store: their warning count raised to the highest given, never
# lowered (migration 0017). An UPDATE after ``INSERT ... DO NOTHING`` committed, in a
# transaction of its own, not ``DO UPDATE``: a boot given twice in one statement is no
# error, a boot whose count is not higher is not locked, and the update's row triggers
# take their machines' rollup locks (in machine order) before their rollup rows, as
# every update and delete of a boot does, while no insert of the same writer holds a
# rollup row (an insert holds them to its commit; one that then waited for a machine's
# lock deadlocked with an update of that machine). {rows}: a query of machine_id,
# boot_id and warnings of the boots given
RAISE_WARNINGS = (
    "UPDATE boots b SET warnings = s.warnings "
    "FROM (SELECT machine_id, boot_id, max(warnings) AS warnings FROM ({rows}) r "
    "GROUP BY machine_id, boot_id ORDER BY machine_id, boot_id) s "
    "WHERE b.machine_id = s.machine_id AND b.boot_id = s.boot_id "
    "AND s.warnings > coalesce(b.warnings, -1)"
)


# RAISE_WARNINGS of rows given as arrays (a host's push: it may not stage rows; it
# reads and updates no column of boots but its own boots' warnings), and on SQLite
# row by row (no rollups there)
_RAISE_ARRAYS = RAISE_WARNINGS.format(
    rows="SELECT * FROM unnest(CAST(:m AS text[]), CAST(:b AS text[]), "
    "CAST(:w AS integer[])) AS u(machine_id, boot_id, warnings)"
)
_RAISE_ROW = (
    "UPDATE boots SET warnings = :w WHERE machine_id = :m AND boot_id = :b "
    "AND coalesce(warnings, -1) < :w"
)


def note_counts(most: dict[Key, int], rows: Iterable[dict[str, Any]]) -> None:
    """Into ``most``: each boot's highest warning count given (none: not noted)."""
    for r in rows:
        w = r.get("warnings")
        if w is not None:
            key = (r["machine_id"], r["boot_id"])
            most[key] = max(w, most.get(key, w))


def raise_counts(conn: Connection, pg: bool, most: dict[Key, int]) -> int:
    """The boots of ``most`` the store holds with a lower count (or none) get that
    count, in the caller's transaction (one with no insert of boots in it:
    RAISE_WARNINGS); how many were raised."""
    if not most:
        return 0
    keys = sorted(most)
    if pg:
        params = {
            "m": [m for m, _ in keys],
            "b": [b for _, b in keys],
            "w": [most[k] for k in keys],
        }
        return max(conn.execute(text(_RAISE_ARRAYS), params).rowcount, 0)
    raw = conn.connection.driver_connection
    assert raw is not None
    before = raw.total_changes
    conn.execute(text(_RAISE_ROW), [{"w": most[k], "m": k[0], "b": k[1]} for k in keys])
    return int(raw.total_changes - before)
