"""khod's vocabulary, each fact defined once: kinds of boot, severities, kexec verdicts,
where an event comes from, and what a crash is. Metric labels, JSON values, journal
entries and the report all take their names from here."""

from __future__ import annotations

from enum import StrEnum


class BootKind(StrEnum):
    KEXEC = "kexec"  # a KHO handover was accepted
    KEXEC_REJECTED = "kexec-rejected"  # one was offered and the kernel refused it
    KEXEC_NO_HANDOVER = "kexec-no-handover"  # loaded by kexec, no KHO state at all
    COLD = "cold"  # no sign of a kexec (firmware or VMM boot, or a loader not told)


# a boot through a kexec, a KHO handover or not: with a known previous release, its
# transition's boot (the report, its rollups, and migration 0013's triggers, frozen)
THROUGH_KEXEC = (BootKind.KEXEC, BootKind.KEXEC_NO_HANDOVER, BootKind.KEXEC_REJECTED)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Verdict(StrEnum):
    """What became of a kexec attempt, judged by the boot that followed it."""

    LANDED = "landed"
    COLD_BOOT = "cold-boot"  # the kexec did not happen or fell back to firmware
    # the kexec happened (the kernel says it was loaded by kexec) with no handover
    LANDED_WITHOUT_HANDOVER = "landed-without-handover"
    # the kexec happened, into a kernel with KHO off (kho=off): the handover offered and
    # refused by configuration, not by the kernel's ABI
    LANDED_KHO_OFF = "landed-kho-off"
    ABI_MISMATCH = "abi-mismatch"  # the handover was offered and rejected
    MISMATCH = "mismatch"  # a handover, not the one expected
    SUPERSEDED = "superseded"  # a later attempt in the same boot took its place
    FAILED = "failed"  # loading or executing failed: nothing happened


class EventSource(StrEnum):
    """What an event is about: the ``source`` label of ``khod_source_errors_total``."""

    KHO = "kho"  # the KHO debugfs tree and its blobs
    KMSG = "kmsg"  # the kernel log
    PSTORE = "pstore"  # pstore records, systemd-pstore's archive, the pstore-kho subtree
    IDENTITY = "identity"  # boot id, machine id, release, command line, boot time
    STORE = "store"  # the database
    KEXEC = "kexec"  # kexec attempts and their verdicts


class Direction(StrEnum):
    """Which way a KHO file goes: ``kho/in`` (handed to this kernel), ``kho/out``."""

    IN = "in"
    OUT = "out"


class PstoreLocation(StrEnum):
    """Where a pstore record was read."""

    PSTORE = "pstore"  # /sys/fs/pstore
    ARCHIVE = "archive"  # systemd-pstore's /var/lib/systemd/pstore
    KHO = "kho"  # the pstore-kho KHO subtree


class MetadataSource(StrEnum):
    """Where a boot's previous_release and kexec_count come from (``boots.metadata_source``)."""

    KHO = "kho"  # the kexec-metadata subtree the previous kernel handed over
    KMSG = "kmsg"  # the kernel's "KHO: exec from" log line
    # khod's own kexec attempt record, made by khoctl in the boot before: not the kernel's
    ATTEMPT = "attempt"
    # khod's own chain: the boot it recorded just before, shown to be the one that ran
    # before this one (the journal's boot before this one is that boot)
    DERIVED = "derived"


class KhoSubtreeName(StrEnum):
    """The KHO subtrees khod reads (``kho/{in,out}/sub_fdts/NAME``); any other is kept
    opaque, its bytes stored. Each has its row in ``khod.collect.subtrees.SUBTREES``."""

    KEXEC_METADATA = "kexec-metadata"
    LUO = "LUO"
    PSTORE_KHO = "pstore-kho"


class DumpReason(StrEnum):
    """kmsg_dump reasons (``enum kmsg_dump_reason``; pstore's ``Reason#count`` header)."""

    UNKNOWN = "Unknown"
    PANIC = "Panic"
    OOPS = "Oops"
    EMERGENCY = "Emergency"
    SHUTDOWN = "Shutdown"
    RESTART = "Restart"
    HALT = "Halt"
    POWEROFF = "Poweroff"


class TransitionVerdict(StrEnum):
    """How a kernel transition compares with its baseline (khod.fleet.stats)."""

    WORSE = "worse"
    NO_EVIDENCE = "no evidence"
    BETTER = "better"


# What became of the kexec attempts that ran, as the transition report groups their
# verdicts. "landed-without-handover" is the verdict of an attempt whose next boot was
# a kexec-no-handover boot (a loader or kernel without KHO), "landed-kho-off" one into
# a kernel booted with kho=off: both landed, without a handover, and neither is a
# failure to land; stores that never judge one count none.
WITHOUT_HANDOVER = (Verdict.LANDED_WITHOUT_HANDOVER, Verdict.LANDED_KHO_OFF)
FAILED_TO_LAND = (Verdict.COLD_BOOT, Verdict.MISMATCH)  # a firmware boot, another kernel
REJECTED = (Verdict.ABI_MISMATCH,)  # the new kernel refused the handover
RAN = (Verdict.LANDED, *FAILED_TO_LAND, *REJECTED, *WITHOUT_HANDOVER)

KINDS = tuple(str(k) for k in BootKind)
VERDICTS = tuple(str(v) for v in Verdict)
SOURCES = tuple(str(s) for s in EventSource)
METADATA_SOURCES = tuple(str(s) for s in MetadataSource)

# kmsg_dump reasons of a crash: a boot that left one of these in pstore crashed (an
# Emergency record is the restart that follows a panic, or an operator's sysrq reboot)
CRASH_REASONS = (DumpReason.PANIC, DumpReason.OOPS)


def is_crash(reason: str | None) -> bool:
    return reason in CRASH_REASONS


def legacy_source(kind: str, path: str) -> EventSource:
    """The source of an event stored before events carried one (its ``origin`` is
    NULL): from its kind, else from the path it names."""
    if kind == "kexec-verdict":
        return EventSource.KEXEC
    if kind in ("store-damaged", "store-unchecked"):
        return EventSource.STORE
    if "/kho" in path or path == "kho" or "/sys/kernel/debug" in path:
        return EventSource.KHO
    if "kmsg" in path:
        return EventSource.KMSG
    if "pstore" in path:
        return EventSource.PSTORE
    return EventSource.IDENTITY


# report --derived: the boots through a kexec whose chain khod derived itself (its own
# attempt record, or the boot it recorded before): counted with the others, left out,
# or alone
DERIVED_CHOICES = ("include", "exclude", "only")
