"""``journalctl --list-boots --output=json``: the boots the journal holds, oldest first
(``[{"index": -1, "boot_id": "<32 hex>", "first_entry": usec, "last_entry": usec}]``)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from khod.errors import ParseError


def _plain(boot_id: str) -> str:
    return boot_id.replace("-", "").lower()


def same_boot(a: str, b: str) -> bool:
    """Boot ids as /proc (dashed) and the journal (32 hex digits) write them."""
    return _plain(a) == _plain(b)


def previous_boot(data: bytes, boot_id: str, source: str) -> str | None:
    """The boot the journal holds just before ``boot_id``; None when ``boot_id`` is not
    there or is the first it holds (nothing to show, so nothing is said)."""
    try:
        boots: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ParseError(source, None, f"journal boot list is not JSON: {e}") from None
    if not isinstance(boots, list):
        raise ParseError(source, None, "journal boot list is not a list")
    ids: list[tuple[int, str]] = []
    for b in boots:
        if not isinstance(b, dict):
            raise ParseError(source, None, "journal boot list holds a non-object")
        index, bid = b.get("index"), b.get("boot_id")
        if not isinstance(index, int) or not isinstance(bid, str):
            raise ParseError(source, None, "journal boot list entry without index or boot_id")
        ids.append((index, bid))
    ids.sort()
    for (_, before), (_, this) in itertools.pairwise(ids):
        if same_boot(this, boot_id):
            return before
    return None
