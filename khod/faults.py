"""Fault injection for the crash-consistency tests.

``KHOD_FAULT_KILL_AT=N``: this process sends itself SIGKILL at its Nth fault point.
``KHOD_FAULT_TRACE=FILE``: each point's name is appended to FILE (to count them).
The points are every SQL statement and commit (``instrument``), both sides of each
pstore unlink, and the boot capture's spool written but not yet renamed (a daemon's
first point). Neither variable set: ``enabled()`` is one environment lookup, and
nothing is instrumented.
"""

from __future__ import annotations

import os

# not ``typing``: the daemon's boot capture imports this module before anything else
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_count = 0


def enabled() -> bool:
    return "KHOD_FAULT_KILL_AT" in os.environ or "KHOD_FAULT_TRACE" in os.environ


def point(name: str) -> None:
    global _count  # noqa: PLW0603  (one counter per process, by design)
    if not enabled():
        return
    _count += 1
    trace = os.environ.get("KHOD_FAULT_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(f"{_count} {name}\n")
    if os.environ.get("KHOD_FAULT_KILL_AT") == str(_count):
        os.kill(os.getpid(), 9)  # SIGKILL (``signal`` is not loaded for a constant)


def instrument(engine: Any) -> None:
    from sqlalchemy import event  # noqa: PLC0415

    def before(_conn: Any, _cur: Any, statement: str, *_a: Any) -> None:
        point("sql " + statement.split(None, 1)[0])

    def commit(_conn: Any) -> None:
        point("commit")

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "commit", commit)
