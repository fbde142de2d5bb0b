"""The ``kexec-metadata`` subtree (7.1+): the release and count the previous kernel
handed over, held against the kernel's own ``KHO: exec from`` line, and the outgoing
one against this boot."""

from __future__ import annotations

from khod.collect.collector import Collector, SubtreeFacts
from khod.errors import ParseError
from khod.observation import EventSource, Severity
from khod.parse.kmsg import KhoLog
from khod.parse.metadata import KexecMetadata, UnsupportedMetadataVersion, parse_kexec_metadata
from khod.records import Direction, KhoSubtreeName
from khod.sources.kho import KhoFiles

NAME = KhoSubtreeName.KEXEC_METADATA


def _parse(c: Collector, kf: KhoFiles, direction: Direction) -> KexecMetadata | None:
    data = kf.subtree(direction, NAME)
    if data is None:
        return None
    shown = c.subtree_path(direction, NAME)
    try:
        meta = parse_kexec_metadata(data, shown)
    except UnsupportedMetadataVersion as e:
        c.event("unknown-metadata-version", shown, Severity.WARNING, str(e), origin=EventSource.KHO)
        return None
    except ParseError as e:
        c.failed(e, origin=EventSource.KHO)
        return None
    for w in meta.warnings:
        c.event(
            "metadata-warning", shown, Severity.WARNING, f"{shown}: {w}", origin=EventSource.KHO
        )
    return meta


def collect_metadata(c: Collector, kf: KhoFiles, log: KhoLog | None, found: SubtreeFacts) -> None:
    """Both directions' blobs (held against the log by ``cross_check`` on a kexec)."""
    found.metadata = _parse(c, kf, Direction.IN)
    found.out_metadata = _parse(c, kf, Direction.OUT)


def cross_check(c: Collector, meta: KexecMetadata | None, log: KhoLog | None) -> None:
    """The log line and the blob come from the same kernel struct: they must agree."""
    if log is None:
        return
    for err in log.metadata_errors:
        c.event("kernel-metadata-error", "kmsg", Severity.WARNING, err, origin=EventSource.KMSG)
    if meta is None or log.exec_from_count is None:
        return
    if (meta.previous_release_raw, meta.kexec_count) != (
        log.exec_from_release_raw,
        log.exec_from_count,
    ):
        c.event(
            "metadata-log-mismatch",
            "kmsg",
            Severity.WARNING,
            f"kexec-metadata says {meta.previous_release} count {meta.kexec_count}, the "
            f"kernel log says {log.exec_from_release} count {log.exec_from_count}",
            origin=EventSource.KMSG,
        )


def check_outgoing(
    c: Collector, out_meta: KexecMetadata | None, release: str, count: int | None
) -> None:
    """The outgoing blob names this kernel and this boot's count + 1."""
    if out_meta is None:
        return
    expected = (count or 0) + 1
    if out_meta.previous_release != release or (
        count is not None and out_meta.kexec_count != expected
    ):
        c.event(
            "outgoing-metadata-mismatch",
            c.subtree_path(Direction.OUT, NAME),
            Severity.WARNING,
            f"outgoing kexec-metadata says {out_meta.previous_release} count "
            f"{out_meta.kexec_count}, expected {release} count {expected}",
            origin=EventSource.KHO,
        )
