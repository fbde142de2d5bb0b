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


DEADLINE_S = 10.0  # the whole read, not each socket read


def _read_url(source: str) -> bytes:
    import time  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    end = time.monotonic() + DEADLINE_S
    chunks: list[bytes] = []
    size = 0
    with urllib.request.urlopen(source, timeout=DEADLINE_S) as r:  # noqa: S310 (http(s) only)
        while size <= LIMIT:
            if time.monotonic() > end:
                raise TimeoutError(f"not read within {DEADLINE_S:.0f}s")
            chunk = r.read1(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def _read_file(source: str) -> bytes:
    import os  # noqa: PLC0415
    import stat  # noqa: PLC0415

    # O_NONBLOCK: a FIFO put where the report should be does not hang the kexec
    fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        return f.read(LIMIT + 1)


def _load(source: str) -> Any:
    data = _read_url(source) if source.startswith(("http://", "https://")) else _read_file(source)
    if len(data) > LIMIT:
        raise ValueError(f"larger than {LIMIT >> 20} MiB")
    return json.loads(data)


def _dict(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def _why(row: dict[str, Any]) -> str:
    parts = []
    for name, rate in _dict(row.get("rates")).items():
        r = _dict(rate)
        if r.get("verdict") == "worse":
            h, b = _dict(r.get("hosts")), _dict(_dict(r.get("baseline")).get("hosts"))
            parts.append(
                f"{str(name).replace('_', ' ')} on {h.get('count')} of {h.get('of')} hosts "
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
    except Exception as e:  # whatever the report is, one line: the fleet's silence is no refusal
        why = " ".join(str(e).split())[:200] or type(e).__name__
        return fail(NAME, f"cannot read the fleet's verdicts at {source}: {why}", WARNING)
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
