"""What the fleet says of the transition this host is about to take.

The published transition report (``khoctl report transitions --json``, a file shipped
by configuration management or an http(s) URL: ``[fleet] verdicts``) is read, never
other hosts' rows: when it calls ``running release -> target release`` worse (in
crashes, warnings or landing), the check fails with error severity, and ``khoctl
kexec`` goes ahead only with ``--force`` (the attempt records the check and that it
was forced). A report that cannot be read is a warning: the fleet's silence is not a
reason to refuse.
"""

from __future__ import annotations

import json
from typing import Any

from khod.checks.base import ERROR, WARNING, Check, fail, ok

NAME = "fleet-verdict"
LIMIT = 64 << 20  # a report larger than this is not one


def _load(source: str) -> Any:
    if source.startswith(("http://", "https://")):
        import urllib.request  # noqa: PLC0415

        with urllib.request.urlopen(source, timeout=10) as r:  # noqa: S310 (http(s) only)
            data = r.read(LIMIT + 1)
    else:
        with open(source, "rb") as f:
            data = f.read(LIMIT + 1)
    if len(data) > LIMIT:
        raise ValueError(f"larger than {LIMIT >> 20} MiB")
    return json.loads(data)


def _why(row: dict[str, Any]) -> str:
    parts = []
    for name, r in (row.get("rates") or {}).items():
        if isinstance(r, dict) and r.get("verdict") == "worse":
            h, b = r.get("hosts") or {}, (r.get("baseline") or {}).get("hosts") or {}
            parts.append(
                f"{name.replace('_', ' ')} on {h.get('count')} of {h.get('of')} hosts "
                f"against {b.get('count')} of {b.get('of')}"
            )
    return "; ".join(parts) or "worse"


def check_fleet(source: str, running: str | None, target: str | None) -> Check | None:
    """None when there is nothing to ask: no report configured, or no target release."""
    if not source or not running or not target:
        return None
    try:
        rows = _load(source)
        if not isinstance(rows, list):
            raise ValueError("not a list of transitions")
    except (OSError, ValueError) as e:
        return fail(NAME, f"cannot read the fleet's verdicts at {source}: {e}", WARNING)
    for row in rows:
        if not isinstance(row, dict):
            continue
        if (row.get("previous_release"), row.get("release")) != (running, target):
            continue
        verdict = row.get("verdict")
        if verdict == "worse":
            return fail(
                NAME, f"the fleet calls {running} -> {target} worse: {_why(row)} ({source})", ERROR
            )
        return ok(NAME, f"the fleet: {running} -> {target} {verdict} ({row.get('hosts')} hosts)")
    return ok(NAME, f"the fleet has no verdict on {running} -> {target} yet")
