"""The KHO root: the debugfs tree as read, whether KHO is on, the root FDT handed over,
what kind of boot this was, the scratch areas and the subtrees' names and sizes."""

from __future__ import annotations

from khod.collect.collector import Collector
from khod.collect.loader import LoadSigns
from khod.errors import ParseError, SourceError
from khod.observation import Blob, BootKind, EventSource, Severity, Subtree
from khod.parse import proc
from khod.parse.fdt import TruncatedFdt
from khod.parse.kho import KhoRoot, parse_kho_fdt
from khod.parse.kimage import config_value
from khod.parse.kmsg import KhoLog
from khod.paths import SCRATCH_NAMES
from khod.records import Direction
from khod.sources.files import read_optional
from khod.sources.kho import KhoFiles, read_kho_files


def read_kho(c: Collector) -> tuple[KhoFiles, tuple[Blob, ...]]:
    """Every KHO debugfs file, and the raw blobs to store (read errors are events)."""
    kf = read_kho_files(c.paths)
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
        Blob(Direction(name.split("/", 1)[0]), name.split("/", 1)[1], data)
        for name, data in sorted(kf.files.items())
    )
    return kf, blobs


def kho_enabled(c: Collector, kf: KhoFiles, log: KhoLog | None, cmdline: str, release: str) -> bool:
    if kf.present:
        return True
    if kf.unreadable is None:  # else read_kho() said so already
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
        # on: kho_scratch= (7.4: kho_bootmem=) is parsed (and says so) by a kho=off
        # kernel too
        return setting
    if _on_by_default(c, release):
        return True  # no kho=: the kernel's default (Ubuntu 26.04's 7.0 kernels)
    return log is not None and log.scratch_areas


def _on_by_default(c: Collector, release: str) -> bool:
    """CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=y in the running kernel's installed config."""
    for path in c.paths.boot_config(release):
        try:
            data = read_optional(path, c.paths.rel(path), 16 << 20)
        except SourceError:
            continue
        if data is not None:
            text = data.decode("utf-8", "replace")
            return config_value(text, "CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT") == "y"
    return False


def parse_root(c: Collector, kf: KhoFiles, direction: Direction) -> KhoRoot | None:
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


def boot_kind(
    c: Collector,
    kf: KhoFiles,
    log: KhoLog | None,
    enabled: bool,
    signs: LoadSigns,
) -> tuple[BootKind, str | None]:
    if log is not None and (log.rejected or log.revival_disabled):
        reason = log.rejected or log.revival_disabled
        if log.rejected and log.revival_disabled:
            reason = f"{log.rejected}; {log.revival_disabled}"
        return BootKind.KEXEC_REJECTED, reason
    if kf.in_present:  # debugfs creates kho/in/ only for an accepted handover
        return BootKind.KEXEC, None
    logged = log is not None and (log.found_handover or log.exec_from_count is not None)
    if logged or signs.offered:
        if not enabled:
            # offered and refused by configuration: the kernel's own line is the reason;
            # 7.3.4 still revives reserve_mem regions from the handover (their pstore
            # records survive), so what it revived is said
            revived = ", ".join(f"reserve_mem '{n}'" for n in log.revived) if log else ""
            kept = f"; still revived: {revived}" if revived else "; nothing revived"
            c.event(
                "handover-ignored",
                "kho",
                Severity.WARNING,
                "the kernel found KHO handover data but KHO is off in this kernel: no "
                f"handover taken{kept}; the next kexec starts a new chain",
                origin=EventSource.KHO,
            )
            said = "KHO: found kexec handover data." if logged else f"{signs.offered}:"
            return BootKind.KEXEC_REJECTED, f"{said} (KHO is off{kept})"
        return BootKind.KEXEC, None
    if signs.kexec is not None:
        return (
            BootKind.KEXEC_NO_HANDOVER,
            f"{signs.kexec}: loaded by kexec, no KHO state handed over",
        )
    return BootKind.COLD, None


def scratch(c: Collector, kf: KhoFiles) -> tuple[tuple[int, int], ...]:
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


def subtrees(kf: KhoFiles, direction: Direction, root: KhoRoot | None) -> tuple[Subtree, ...]:
    sizes: dict[str, int | None] = {}
    if root is not None:
        for s in root.subtrees:
            sizes[s.name] = s.blob_size
    for name in kf.subtree_names(direction):
        sizes[name] = len(kf.files[f"{direction}/sub_fdts/{name}"])
    return tuple(Subtree(n, sizes[n]) for n in sorted(sizes))
