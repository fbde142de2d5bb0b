"""Durations and points in time, the one parser of each.

A duration: a number of seconds with an optional unit, ``s``, ``m``, ``h``, ``d`` or
``w`` (``30d``, ``10s``, ``90``): the configuration's intervals and ages, and ``--since``'s
ages (which need the unit, so that ``--since 2026`` is never taken as seconds).
``--since``: an ISO date or time (UTC unless it says otherwise), ``@EPOCH``, or an age
such as ``7d``, ``12h``, ``30m``."""

from __future__ import annotations

import datetime as dt
import re
import time

from khod.errors import KhodError

_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)?$")
_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str, *, unit_required: bool = False) -> int | None:
    """Seconds, or None when ``text`` is not a duration."""
    m = _DURATION.match(text.strip())
    if not m or (unit_required and m.group(2) is None):
        return None
    return int(m.group(1)) * _SECONDS[m.group(2)]


def parse_since(text: str, now: float | None = None) -> float:
    now = time.time() if now is None else now
    t = text.strip()
    age = duration(t, unit_required=True)
    if age is not None:
        return now - age
    if t.startswith("@"):
        try:
            return float(t[1:])
        except ValueError:
            pass
    else:
        try:
            d = dt.datetime.fromisoformat(t)
        except ValueError:
            pass
        else:
            if d.tzinfo is None:
                d = d.replace(tzinfo=dt.UTC)
            return d.timestamp()
    raise KhodError(
        f"--since {text!r}: expected a date (2026-11-01), a time (2026-11-01T08:00Z), "
        "@EPOCH or an age (7d, 12h, 30m)"
    )
