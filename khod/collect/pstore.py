"""pstore collection: every record the previous kernel left, decoded and deduplicated.

Sources, in order of preference for the same bytes: ``/sys/fs/pstore`` (record time
from the file's mtime), systemd-pstore's archive, and the ``pstore-kho`` KHO subtree
(the proposed pstore_kho backend hands its one record over in it as well).
"""

from __future__ import annotations

import dataclasses

from khod.collect.collector import Collector, SubtreeFacts
from khod.errors import ParseError
from khod.observation import Event, EventSource, PstoreRecord, Severity
from khod.parse.kmsg import KhoLog
from khod.parse.pstore import (
    DEFAULT_INFLATE_LIMIT,
    InflateStatus,
    inflate,
    linux_version,
    parse_dmesg_header,
    parse_pstore_name,
    to_text,
)
from khod.parse.pstore_kho import parse_pstore_kho
from khod.paths import HostPaths
from khod.records import Direction, KhoSubtreeName, PstoreLocation
from khod.sources.kho import KhoFiles
from khod.sources.pstore import LeftOut, PstoreFile, read_pstore_files


def decode_record(
    f: PstoreFile, events: list[Event], inflate_limit: int = DEFAULT_INFLATE_LIMIT
) -> PstoreRecord | None:
    name = f.name
    if f.location is PstoreLocation.ARCHIVE and name == "dmesg.txt":
        # a reassembled EFI/ERST dump whose part files are gone
        type_, backend, rid, compressed = "dmesg", "archive", None, False
    else:
        try:
            pn = parse_pstore_name(name)
        except ParseError as e:
            events.append(
                Event(
                    "pstore-bad-name",
                    f.shown,
                    Severity.WARNING,
                    f"{f.shown}: {e.why}; kept as an unknown record",
                    origin=EventSource.PSTORE,
                )
            )
            type_, backend, rid, compressed = "unknown", "unknown", None, False
        else:
            type_, backend, rid, compressed = pn.type, pn.backend, pn.id, pn.compressed
            if not pn.known_type:
                events.append(
                    Event(
                        "pstore-unknown-type",
                        f.shown,
                        Severity.INFO,
                        f"{f.shown}: unknown pstore type {pn.type!r}; kept raw",
                        origin=EventSource.PSTORE,
                    )
                )
    if not f.data:
        events.append(
            Event(
                "pstore-empty",
                f.shown,
                Severity.WARNING,
                f"{f.shown}: empty pstore record; nothing to keep",
                origin=EventSource.PSTORE,
            )
        )
        return None
    body: bytes | None = f.data
    status = InflateStatus.PLAIN
    if compressed:
        body, status = inflate(f.data, inflate_limit)
        if status is InflateStatus.TOO_LARGE:
            events.append(
                Event(
                    "pstore-too-large",
                    f.shown,
                    Severity.WARNING,
                    f"{f.shown}: inflates past {inflate_limit} bytes; stored compressed",
                    origin=EventSource.PSTORE,
                )
            )
        elif status is InflateStatus.UNDECODABLE:
            events.append(
                Event(
                    "pstore-undecodable",
                    f.shown,
                    Severity.WARNING,
                    f"{f.shown}: compressed with something other than "
                    "deflate/zlib, or corrupt; stored raw",
                    origin=EventSource.PSTORE,
                )
            )
    reason = count = part = None
    text = None
    release = None
    if body is not None:
        if type_ == "dmesg":
            hdr = parse_dmesg_header(body)
            if hdr is not None:
                reason, count, part = hdr.reason, hdr.count, hdr.part
                body = body[hdr.length :]
            elif f.name != "dmesg.txt":
                events.append(
                    Event(
                        "pstore-no-header",
                        f.shown,
                        Severity.INFO,
                        f"{f.shown}: dmesg record without a Reason#count header",
                        origin=EventSource.PSTORE,
                    )
                )
        text = to_text(body)
        if type_ in ("dmesg", "console"):
            release = linux_version(body)
    return PstoreRecord(
        location=f.location,
        path=f.shown,
        name=name,
        type=type_,
        backend=backend,
        record_id=rid,
        part=part,
        reason=reason,
        count=count,
        record_time=f.mtime_ns / 1e9 if f.location is PstoreLocation.PSTORE else None,
        compressed=compressed,
        inflate_status=str(status),
        raw=f.data,
        text=text,
        release=release,
    )


def kho_subtree_record(blob: bytes, shown: str, events: list[Event]) -> PstoreRecord | None:
    try:
        rec = parse_pstore_kho(blob, shown)
    except ParseError as e:
        events.append(
            Event("parse-error", shown, Severity.WARNING, str(e), origin=EventSource.PSTORE)
        )
        return None
    if rec is None:
        return None
    f = PstoreFile(PstoreLocation.KHO, None, shown, "dmesg-kho-0", rec.data, 0)
    r = decode_record(f, events)
    if r is None:
        return None
    return dataclasses.replace(r, record_time=rec.time_sec + rec.time_nsec / 1e9)


def collect_pstore_kho(c: Collector, kf: KhoFiles, log: KhoLog | None, found: SubtreeFacts) -> None:
    """The subtree's row in ``SUBTREES``: its blob is decoded with the other pstore
    records (``collect_pstore``), as the same bytes may be there too."""
    found.pstore_kho = kf.subtree(Direction.IN, KhoSubtreeName.PSTORE_KHO)


def collect_pstore(
    paths: HostPaths, kho_subtree: bytes | None, inflate_limit: int = DEFAULT_INFLATE_LIMIT
) -> tuple[list[PstoreRecord], list[Event]]:
    events: list[Event] = []
    left_out: list[LeftOut] = []
    files, errors = read_pstore_files(paths, left_out)
    for lo in left_out:
        events.append(
            Event(
                "pstore-left-out", lo.shown, Severity.WARNING, lo.message, origin=EventSource.PSTORE
            )
        )
    for e in errors:
        events.append(
            Event("read-error", e.source, Severity.WARNING, str(e), origin=EventSource.PSTORE)
        )
    records: list[PstoreRecord] = []
    seen: set[str] = set()
    for f in files:
        r = decode_record(f, events, inflate_limit)
        if r is not None and r.sha256 not in seen:
            seen.add(r.sha256)
            records.append(r)
    if kho_subtree is not None:
        shown = paths.rel(paths.kho_in_subtrees / KhoSubtreeName.PSTORE_KHO)
        r = kho_subtree_record(kho_subtree, shown, events)
        if r is not None and r.sha256 not in seen:
            if any(x.backend == "kho" for x in records):
                events.append(
                    Event(
                        "pstore-kho-mismatch",
                        shown,
                        Severity.WARNING,
                        "the pstore-kho subtree and dmesg-kho-0 differ",
                        origin=EventSource.PSTORE,
                    )
                )
            seen.add(r.sha256)
            records.append(r)
    return records, events
