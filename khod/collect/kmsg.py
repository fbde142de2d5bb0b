"""The kernel log: what it says of the handover, and how many warnings it holds."""

from __future__ import annotations

from khod.collect.collector import Collector
from khod.errors import SourceError
from khod.observation import EventSource, Severity
from khod.parse.kmsg import KhoLog, count_warnings, parse_kho_log, parse_kmsg
from khod.sources.files import read_kmsg


def read_log(c: Collector) -> tuple[KhoLog | None, int | None]:
    """(the KHO lines, the warning count), or (None, None) with an event."""
    shown = c.paths.rel(c.paths.kmsg)
    try:
        data = read_kmsg(c.paths.kmsg, shown)
    except SourceError as e:
        c.failed(e, Severity.WARNING, origin=EventSource.KMSG)
        return None, None
    records = parse_kmsg(data)
    return parse_kho_log(records), count_warnings(records)
