"""The journal's word on which boot came before this one: what lets khod derive a
chain (``khod.store.chain``) where the kernel hands none over."""

from __future__ import annotations

from khod.collect.collector import Collector
from khod.errors import ParseError, SourceError
from khod.observation import EventSource, Severity
from khod.parse.journal import previous_boot
from khod.sources.journal import list_boots


def journal_previous_boot(c: Collector, boot_id: str) -> str | None:
    try:
        data = list_boots(c.paths)
        if data is None:
            return None
        return previous_boot(data, boot_id, "journalctl --list-boots")
    except (SourceError, ParseError) as e:
        c.failed(e, Severity.INFO, origin=EventSource.IDENTITY)
        return None
