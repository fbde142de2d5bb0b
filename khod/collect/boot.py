"""Collection: run every source and parser for this boot, one result per source.

The sources, one module each: ``identity`` (boot id, release, machine id, boot time,
how the kernel was loaded), ``kmsg`` (the kernel log), ``kho_root`` (the KHO debugfs
tree, the root FDT, the kind of boot), the subtrees of ``subtrees.SUBTREES`` and
``pstore``. A source that fails becomes an Event; the others still land. Only the boot
identity (boot_id, release) is required to record a boot at all.
"""

from __future__ import annotations

from khod.collect import identity, kho_root
from khod.collect.collector import Collector
from khod.collect.journal import journal_previous_boot
from khod.collect.kmsg import read_log
from khod.collect.loader import load_signs
from khod.collect.metadata import check_outgoing, cross_check
from khod.collect.pstore import collect_pstore
from khod.collect.subtrees import collect_subtrees
from khod.errors import KhodError
from khod.observation import BootKind, BootObservation
from khod.parse import proc
from khod.parse.pstore import DEFAULT_INFLATE_LIMIT
from khod.paths import HostPaths
from khod.records import Direction, MetadataSource


def collect(paths: HostPaths, inflate_limit: int = DEFAULT_INFLATE_LIMIT) -> BootObservation:
    """Read this boot's identity, KHO state, kernel log and pstore records."""
    c = Collector(paths)
    boot_id = c.file("boot_id", proc.parse_boot_id)
    release = c.file("osrelease", proc.parse_osrelease)
    if boot_id is None or release is None:
        missing = [e.message for e in c.events]
        raise KhodError("cannot identify this boot: " + "; ".join(missing))
    machine_id = identity.machine_id(c, boot_id)
    cmdline = c.file("cmdline", proc.parse_cmdline) or ""
    booted_at = identity.booted_at(c)
    signs = load_signs(c)

    log, warnings = read_log(c)
    kf, blobs = kho_root.read_kho(c)
    kho_enabled = kho_root.kho_enabled(c, kf, log, cmdline, release)
    in_root = kho_root.parse_root(c, kf, Direction.IN)
    if "out/fdt" in kf.files:
        kho_root.parse_root(c, kf, Direction.OUT)
    found = collect_subtrees(c, kf, log)
    meta, out_meta = found.metadata, found.out_metadata

    kind, reason = kho_root.boot_kind(c, kf, log, kho_enabled, signs)
    previous_release: str | None = None
    previous_raw: bytes | None = None
    count: int | None = 0
    source: MetadataSource | None = None
    if kind is BootKind.KEXEC:
        count = None
        if meta is not None:
            previous_release, previous_raw, count = (
                meta.previous_release,
                meta.previous_release_raw,
                meta.kexec_count,
            )
            source = MetadataSource.KHO
        elif log is not None and log.exec_from_count is not None:
            previous_release, previous_raw, count = (
                log.exec_from_release,
                log.exec_from_release_raw,
                log.exec_from_count,
            )
            source = MetadataSource.KMSG
        cross_check(c, meta, log)

    journal_previous = None
    if kind is not BootKind.COLD and previous_release is None:
        journal_previous = journal_previous_boot(c, boot_id)  # khod may derive the chain

    scratch = kho_root.scratch(c, kf)
    pstore, pstore_events = collect_pstore(paths, found.pstore_kho, inflate_limit)
    c.events.extend(pstore_events)
    check_outgoing(c, out_meta, release, count)

    return BootObservation(
        machine_id=machine_id,
        boot_id=boot_id,
        release=release,
        cmdline=cmdline,
        booted_at=booted_at,
        kind=kind,
        kind_reason=reason,
        kho_enabled=kho_enabled,
        kho_abi=in_root.compatible if in_root else None,
        memory_map_handed=(in_root.memory_map not in (None, 0)) if in_root else None,
        previous_release=previous_release,
        previous_release_raw=previous_raw,
        kexec_count=count,
        metadata_source=source,
        subtrees=kho_root.subtrees(kf, Direction.IN, in_root),
        out_subtrees=kho_root.subtrees(kf, Direction.OUT, None),
        out_release=out_meta.previous_release if out_meta else None,
        out_kexec_count=out_meta.kexec_count if out_meta else None,
        scratch=scratch,
        warnings=warnings,
        bootloader_type=signs.loader,
        luo_compatible=found.luo_compatible,
        liveupdate_num=found.liveupdate_num,
        luo_sessions=found.luo_sessions,
        blobs=blobs,
        events=tuple(c.events),
        pstore=tuple(pstore),
        journal_previous_boot=journal_previous,
    )
