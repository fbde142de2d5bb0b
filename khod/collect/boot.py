"""Collection: run every source and parser for this boot, one result per source.

A source that fails becomes an Event; the others still land. Only the boot identity
(boot_id, release) is required to record a boot at all.
"""

from __future__ import annotations

from khod.collect.collector import Collector
from khod.collect.luo import collect_luo
from khod.collect.pstore import collect_pstore
from khod.errors import KhodError, ParseError, SourceError
from khod.observation import (
    Blob,
    BootKind,
    BootObservation,
    EventSource,
    Severity,
    Subtree,
)
from khod.parse import proc
from khod.parse.fdt import TruncatedFdt
from khod.parse.kho import KhoRoot, parse_kho_fdt
from khod.parse.kmsg import KhoLog, count_warnings, parse_kho_log, parse_kmsg
from khod.parse.metadata import KexecMetadata, UnsupportedMetadataVersion, parse_kexec_metadata
from khod.parse.pstore import DEFAULT_INFLATE_LIMIT
from khod.paths import SCRATCH_NAMES, HostPaths
from khod.sources.files import read_bytes, read_kmsg, read_optional
from khod.sources.kho import KhoFiles, read_kho_files

META = "sub_fdts/kexec-metadata"


def _machine_id(c: Collector, boot_id: str) -> str:
    """/etc/machine-id; before it is initialized the boot's provisional identity, and
    with none to be had (missing, garbage) ``unknown``: both adopted by the real id at a
    later ingest of the same boot."""
    path = c.paths.machine_id
    shown = c.paths.rel(path)
    provisional = proc.provisional_machine_id(boot_id)
    try:
        data = read_bytes(path, shown, 1 << 20)
        if not proc.machine_id_pending(data):
            return proc.parse_machine_id(data, shown)
        c.event(
            "machine-id-pending",
            shown,
            Severity.INFO,
            f"{shown} is not initialized yet: this boot stands for its machine "
            f"({provisional}) until it is",
            origin=EventSource.IDENTITY,
        )
    except (SourceError, ParseError) as e:
        c.failed(e, origin=EventSource.IDENTITY)
        return proc.UNKNOWN_MACHINE
    return provisional


def collect(paths: HostPaths, inflate_limit: int = DEFAULT_INFLATE_LIMIT) -> BootObservation:
    """Read this boot's identity, KHO state, kernel log and pstore records."""
    c = Collector(paths)
    boot_id = c.file("boot_id", proc.parse_boot_id)
    release = c.file("osrelease", proc.parse_osrelease)
    if boot_id is None or release is None:
        missing = [e.message for e in c.events]
        raise KhodError("cannot identify this boot: " + "; ".join(missing))
    machine_id = _machine_id(c, boot_id)
    cmdline = c.file("cmdline", proc.parse_cmdline) or ""
    booted_at = _booted_at(c)
    loader = _bootloader_type(c)

    log, warnings = _read_log(c)
    kf = read_kho_files(paths)
    if kf.unreadable is not None:
        c.event(
            "read-error",
            kf.unreadable.source,
            Severity.INFO,
            f"{kf.unreadable}: KHO state taken from the kernel command line and log",
            origin=EventSource.KHO,
        )
    for err in kf.errors:
        c.failed(err, origin=EventSource.KHO)
    blobs = tuple(
        Blob(name.split("/", 1)[0], name.split("/", 1)[1], data)
        for name, data in sorted(kf.files.items())
    )

    kho_enabled = _kho_enabled(c, kf, log, cmdline)
    in_root = _parse_root(c, kf, "in")
    if "out/fdt" in kf.files:
        _parse_root(c, kf, "out")
    meta = _parse_metadata(c, kf, "in")
    out_meta = _parse_metadata(c, kf, "out")
    luo_compatible, liveupdate_num, luo_sessions = collect_luo(c, kf, log)

    kind, reason = _kind(c, kf, log, in_root, kho_enabled, loader=loader)
    previous_release: str | None = None
    previous_raw: bytes | None = None
    count: int | None = 0
    source: str | None = None
    if kind is BootKind.KEXEC:
        count = None
        if meta is not None:
            previous_release, previous_raw, count = (
                meta.previous_release,
                meta.previous_release_raw,
                meta.kexec_count,
            )
            source = "kho"
        elif log is not None and log.exec_from_count is not None:
            previous_release, previous_raw, count = (
                log.exec_from_release,
                log.exec_from_release_raw,
                log.exec_from_count,
            )
            source = "kmsg"
        _cross_check(c, meta, log)

    scratch = _scratch(c, kf)
    pstore, pstore_events = collect_pstore(paths, kf.get("in/sub_fdts/pstore-kho"), inflate_limit)
    c.events.extend(pstore_events)
    if out_meta is not None:
        expected = (count or 0) + 1
        if out_meta.previous_release != release or (
            count is not None and out_meta.kexec_count != expected
        ):
            c.event(
                "outgoing-metadata-mismatch",
                c.kho_path("out/" + META),
                Severity.WARNING,
                f"outgoing kexec-metadata says {out_meta.previous_release} count "
                f"{out_meta.kexec_count}, expected {release} count {expected}",
                origin=EventSource.KHO,
            )

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
        subtrees=_subtrees(kf, "in", in_root),
        out_subtrees=_subtrees(kf, "out", None),
        out_release=out_meta.previous_release if out_meta else None,
        out_kexec_count=out_meta.kexec_count if out_meta else None,
        scratch=scratch,
        warnings=warnings,
        bootloader_type=loader,
        luo_compatible=luo_compatible,
        liveupdate_num=liveupdate_num,
        luo_sessions=luo_sessions,
        blobs=blobs,
        events=tuple(c.events),
        pstore=tuple(pstore),
    )


def _booted_at(c: Collector) -> int | None:
    """btime, or None with an event: the boot is recorded all the same."""
    path = c.paths.proc_stat
    shown = c.paths.rel(path)
    try:
        return proc.parse_btime(read_bytes(path, shown, 1 << 20), shown)
    except SourceError as e:
        c.failed(e, origin=EventSource.IDENTITY)
    except ParseError as e:
        c.event("boot-time-unknown", shown, Severity.WARNING, str(e), origin=EventSource.IDENTITY)
    return None


def _read_log(c: Collector) -> tuple[KhoLog | None, int | None]:
    """What the kernel log says of the handover, and how many warnings it holds."""
    shown = c.paths.rel(c.paths.kmsg)
    try:
        data = read_kmsg(c.paths.kmsg, shown)
    except SourceError as e:
        c.failed(e, Severity.WARNING, origin=EventSource.KMSG)
        return None, None
    records = parse_kmsg(data)
    return parse_kho_log(records), count_warnings(records)


def _kho_enabled(c: Collector, kf: KhoFiles, log: KhoLog | None, cmdline: str) -> bool:
    if kf.present:
        return True
    if kf.unreadable is None:  # else collect() said so already
        if kf.debugfs_mounted:
            return False  # debugfs is there and has no kho/: KHO is off (or compiled out)
        c.event(
            "debugfs-missing",
            c.paths.rel(c.paths.debugfs),
            Severity.INFO,
            f"debugfs is not mounted at {c.paths.rel(c.paths.debugfs)}: KHO state taken "
            "from the kernel command line and log",
            origin=EventSource.KHO,
        )
    if log is not None and log.exec_from_count is not None:
        return True  # the kernel took the handover's metadata: only KHO does that
    setting = proc.kho_cmdline_setting(cmdline)
    if setting is not None:
        # kho= on the command line decides; "KHO: scratch areas" is not a sign of KHO
        # on: kho_scratch= is parsed (and says so) by a kho=off kernel too
        return setting
    return log is not None and log.scratch_areas


def _parse_root(c: Collector, kf: KhoFiles, direction: str) -> KhoRoot | None:
    name = f"{direction}/fdt"
    data = kf.get(name)
    if data is None:
        return None
    try:
        root = parse_kho_fdt(data, c.kho_path(name))
    except TruncatedFdt as e:
        # out/fdt is sized when debugfs registers it; later subtrees grow the FDT
        severity = Severity.INFO if direction == "out" else Severity.ERROR
        c.event("fdt-truncated", e.source, severity, str(e), origin=EventSource.KHO)
        return None
    except ParseError as e:
        c.failed(e, origin=EventSource.KHO)
        return None
    if not root.known:
        c.event(
            "unknown-abi",
            c.kho_path(name),
            Severity.WARNING,
            f"{c.kho_path(name)}: unknown KHO ABI {root.compatible!r}; kept as is",
            origin=EventSource.KHO,
        )
    return root


def _parse_metadata(c: Collector, kf: KhoFiles, direction: str) -> KexecMetadata | None:
    name = f"{direction}/{META}"
    data = kf.get(name)
    if data is None:
        return None
    shown = c.kho_path(name)
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


def _bootloader_type(c: Collector) -> int | None:
    """x86's record of who loaded this kernel; None where there is no such file (other
    architectures, a capture from a khod that did not keep it): then nothing is known."""
    path = c.paths.bootloader_type
    shown = c.paths.rel(path)
    try:
        data = read_optional(path, shown, 4096)
        return None if data is None else proc.parse_bootloader_type(data, shown)
    except (SourceError, ParseError) as e:
        c.failed(e, Severity.WARNING, origin=EventSource.IDENTITY)
        return None


def _kind(
    c: Collector,
    kf: KhoFiles,
    log: KhoLog | None,
    in_root: KhoRoot | None,
    enabled: bool,
    *,
    loader: int | None,
) -> tuple[BootKind, str | None]:
    if log is not None and (log.rejected or log.revival_disabled):
        reason = log.rejected or log.revival_disabled
        if log.rejected and log.revival_disabled:
            reason = f"{log.rejected}; {log.revival_disabled}"
        return BootKind.KEXEC_REJECTED, reason
    if kf.in_present:  # debugfs creates kho/in/ only for an accepted handover
        return BootKind.KEXEC, None
    if log is not None and (log.found_handover or log.exec_from_count is not None):
        if not enabled:
            # offered and refused by configuration: the kernel's own line is the reason;
            # 7.3.4 still revives reserve_mem regions from the handover (their pstore
            # records survive), so what it revived is said
            revived = ", ".join(f"reserve_mem '{n}'" for n in log.revived)
            kept = f"; still revived: {revived}" if revived else "; nothing revived"
            c.event(
                "handover-ignored",
                "kho",
                Severity.WARNING,
                "the kernel found KHO handover data but KHO is off in this kernel: no "
                f"handover taken{kept}; the next kexec starts a new chain",
                origin=EventSource.KHO,
            )
            return BootKind.KEXEC_REJECTED, f"KHO: found kexec handover data. (KHO is off{kept})"
        return BootKind.KEXEC, None
    if proc.loaded_by_kexec(loader):
        return (
            BootKind.KEXEC_NO_HANDOVER,
            f"bootloader_type 0x{loader:02x}: loaded by kexec, no KHO state handed over",
        )
    return BootKind.COLD, None


def _cross_check(c: Collector, meta: KexecMetadata | None, log: KhoLog | None) -> None:
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


def _scratch(c: Collector, kf: KhoFiles) -> tuple[tuple[int, int], ...]:
    for phys_name, len_name in SCRATCH_NAMES:
        phys, size = kf.get(f"out/{phys_name}"), kf.get(f"out/{len_name}")
        if phys is None or size is None:
            continue
        try:
            p = proc.parse_scratch(phys, c.kho_path(f"out/{phys_name}"))
            n = proc.parse_scratch(size, c.kho_path(f"out/{len_name}"))
        except ParseError as e:
            c.failed(e, origin=EventSource.KHO)
            return ()
        if len(p) != len(n):
            c.event(
                "scratch-mismatch",
                c.kho_path("out"),
                Severity.WARNING,
                f"{len(p)} scratch addresses but {len(n)} lengths",
                origin=EventSource.KHO,
            )
        return tuple(zip(p, n, strict=False))
    return ()


def _subtrees(kf: KhoFiles, direction: str, root: KhoRoot | None) -> tuple[Subtree, ...]:
    sizes: dict[str, int | None] = {}
    if root is not None:
        for s in root.subtrees:
            sizes[s.name] = s.blob_size
    for name in kf.subtree_names(direction):
        sizes[name] = len(kf.files[f"{direction}/sub_fdts/{name}"])
    return tuple(Subtree(n, sizes[n]) for n in sorted(sizes))
