"""Durations and points in time, the one parser of each.

A duration: a number of seconds with an optional unit, ``s``, ``m``, ``h``, ``d`` or
``w`` (``30d``, ``10s``, ``90``): the configuration's intervals and ages, and ``--since``'s
ages (which need the unit, so that ``--since 2026`` is never taken as seconds).
``--since``/``--until``: a point in time as journalctl takes it (``parse_time``), local
time unless ``--utc``."""

from __future__ import annotations

import datetime as dt
import math
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


_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("d", "day", "days"), 86400),
    **dict.fromkeys(("w", "week", "weeks"), 7 * 86400),
}
_TERM = re.compile(r"(\d+)\s*([a-z]+)")
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}
_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%H:%M:%S", "%H:%M")


def _span(text: str) -> int | None:
    """Seconds in ``1h30min``, ``2 days``, ``7d``; None when it is not such a span."""
    total, pos = 0, 0
    for m in _TERM.finditer(text):
        if text[pos : m.start()].strip() or m.group(2) not in _UNITS:
            return None
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos and not text[pos:].strip() else None


def parse_time(
    text: str, now: float | None = None, *, utc: bool = False, option: str = "--since"
) -> float:
    """A point in time in journalctl's syntax (systemd.time(7)): ``now``, ``today``,
    ``yesterday``, ``tomorrow``; ``-2h``, ``+1h``, ``2h ago`` (and khod's ``7d``, an
    age); ``2026-11-01``, ``2026-11-01 08:00[:00]``, ``08:00`` (today), in local time
    unless ``utc`` or a trailing `` UTC``; ISO 8601 with a zone; ``@EPOCH``."""
    now = time.time() if now is None else now
    t = " ".join(text.strip().lower().split())
    if t.endswith(" utc"):
        t, utc = t[:-4], True
    zone = dt.UTC if utc else None
    if t == "now":
        return now
    if t in _DAYS:
        day = dt.datetime.fromtimestamp(now, zone).date() + dt.timedelta(days=_DAYS[t])
        midnight = dt.datetime.combine(day, dt.time())
        return midnight.replace(tzinfo=zone).timestamp() if zone else midnight.timestamp()
    if t[:1] in "+-" and t[1:2].isdigit():
        span = _span(t[1:])
        if span is not None:
            return now + span if t[0] == "+" else now - span
    if t.endswith(" ago"):
        span = _span(t[:-4])
        if span is not None:
            return now - span
    age = duration(t, unit_required=True)
    if age is not None:
        return now - age
    if t.startswith("@"):
        try:
            v = float(t[1:])
        except ValueError:
            pass
        else:
            if math.isfinite(v) and abs(v) < 1e12:  # NaN would quietly match nothing
                return v
    for fmt in _FORMATS:
        try:
            d = dt.datetime.strptime(t, fmt)
        except ValueError:
            continue
        if fmt.startswith("%H"):
            today = dt.datetime.fromtimestamp(now, zone).date()
            d = dt.datetime.combine(today, d.time())
        return d.replace(tzinfo=zone).timestamp() if zone else d.timestamp()
    try:
        # the ISO form as given (its T and case), less the " UTC" already taken off
        iso = text.strip()
        d = dt.datetime.fromisoformat(
            iso[:-4].rstrip() if utc and iso.lower().endswith(" utc") else iso
        )
    except ValueError:
        pass
    else:
        if d.tzinfo is None:
            d = d.replace(tzinfo=zone) if zone else d.astimezone()
        return d.timestamp()
    raise KhodError(
        f"{option} {text!r}: expected a time as journalctl takes it: yesterday, today, "
        "-2h, 2h ago, 2026-11-01, '2026-11-01 08:00', 08:00, @EPOCH, or an age (7d, 12h)"
    )
