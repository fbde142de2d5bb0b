"""``--since``: an ISO date or time (UTC unless it says otherwise), ``@EPOCH``, or an
age such as ``7d``, ``12h``, ``30m``."""

from __future__ import annotations

import datetime as dt
import re
import time

from khod.errors import KhodError

_AGE = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float | None = None) -> float:
    now = time.time() if now is None else now
    t = text.strip()
    m = _AGE.match(t)
    if m:
        return now - int(m.group(1)) * _SECONDS[m.group(2)]
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
