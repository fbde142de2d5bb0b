"""The frozen records that flow from collection into the store and out to users."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import Any

from khod.records import BootKind, Direction, EventSource, PstoreLocation, Severity

__all__ = [
    "BOOT_FIELDS",
    "Blob",
    "Boot",
    "BootKind",
    "BootObservation",
    "Event",
    "EventSource",
    "PstoreRecord",
    "Severity",
    "Subtree",
    "boot_facts",
]


@dataclass(frozen=True)
class Event:
    kind: str  # short stable name, e.g. "parse-error", "metadata-log-mismatch"
    source: str  # the path or subsystem it is about, as shown
    severity: Severity
    message: str
    origin: EventSource = field(kw_only=True)  # where it comes from (the metric's label)
    # what makes a second look's event the same fact, when its message quotes what may
    # change between looks at one boot (memory the kernel freed and reuses); the store
    # keeps the first look's message. None: the message itself.
    same_as: str | None = field(default=None, kw_only=True)

    @property
    def fingerprint(self) -> str:
        said = self.message if self.same_as is None else self.same_as
        h = hashlib.sha256(f"{self.kind}\0{self.source}\0{said}".encode())
        return h.hexdigest()


@dataclass(frozen=True)
class Blob:
    """A raw KHO file as read, kept so a later version can re-parse it."""

    direction: Direction
    name: str  # relative to kho/<direction>/, e.g. "fdt", "sub_fdts/kexec-metadata"
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class Subtree:
    name: str
    size: int | None

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size}


@dataclass(frozen=True)
class PstoreRecord:
    location: PstoreLocation
    path: str  # where it was read, relative to the sysroot
    name: str
    type: str
    backend: str
    record_id: int | None
    part: int | None
    reason: str | None
    count: int | None
    record_time: float | None  # seconds since the epoch (pstore mtime)
    compressed: bool
    inflate_status: str
    raw: bytes
    text: str | None  # the log text, dmesg header removed; None when undecodable
    release: str | None  # the kernel that wrote it, from its "Linux version" banner

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()

    @property
    def dump_key(self) -> str:
        """Parts of one dump share this key (EFI/ERST ids differ in their last six
        digits, as systemd-pstore groups them); other records stand alone."""
        rid = "" if self.record_id is None else str(self.record_id)
        if self.type == "dmesg" and len(rid) > 6:
            return f"{self.backend}:{self.reason}#{self.count}:{rid[:-6]}"
        return f"{self.backend}:{self.type}:{rid}:{self.sha256[:16]}"


@dataclass(frozen=True)
class Boot:
    """What one boot showed of itself: the facts the kernel gave at that boot, the
    same whether just collected (``BootObservation``) or read back from the store
    (``khod.store.boots.BootRecord``). A field added here is a column of ``boots``
    (and a migration): ``tests/store/test_store.py`` holds the two to one shape."""

    machine_id: str
    boot_id: str
    release: str
    cmdline: str
    booted_at: int | None  # btime, seconds since the epoch
    kind: str  # a BootKind; a kind stored by a newer khod is kept as its string
    kind_reason: str | None
    kho_enabled: bool
    kho_abi: str | None  # incoming root compatible
    memory_map_handed: bool | None  # incoming preserved-memory-map != 0
    previous_release: str | None
    previous_release_raw: bytes | None
    kexec_count: int | None  # None: a handover without metadata (pre-7.1 or unreadable)
    # a MetadataSource: the kernel's word ("kho", "kmsg") or khod's own ("attempt",
    # "derived": set by the store where the kernel said nothing); a newer khod's as stored
    metadata_source: str | None
    subtrees: tuple[Subtree, ...]  # incoming
    out_subtrees: tuple[Subtree, ...]
    out_release: str | None
    out_kexec_count: int | None
    scratch: tuple[tuple[int, int], ...]  # (phys, len) per area
    # the kernel's own warning lines in its log so far (khod.parse.kmsg.count_warnings:
    # WARNING, BUG, Oops, hung task, soft lockup, MCE); None: the log was not read
    warnings: int | None
    # x86 /proc/sys/kernel/bootloader_type (0xD0: kexec, 0xB0: QEMU); None: not there
    bootloader_type: int | None
    luo_compatible: str | None  # incoming LUO subtree's compatible (also when unknown)
    liveupdate_num: int | None  # incoming liveupdate_num; None: no LUO state decoded
    luo_sessions: bool | None  # incoming sessions_pa != 0; None: not told


@dataclass(frozen=True)
class BootObservation(Boot):
    """A boot as collected: its facts, the raw blobs, the events and the pstore
    records that came with them."""

    blobs: tuple[Blob, ...]
    events: tuple[Event, ...]
    pstore: tuple[PstoreRecord, ...] = ()
    # the boot the journal holds just before this one (asked only where the kernel gave
    # no chain): the store derives one from it (khod.store.chain); not stored itself
    journal_previous_boot: str | None = None


BOOT_FIELDS = tuple(f.name for f in fields(Boot))


def boot_facts(boot: Boot) -> dict[str, Any]:
    """A boot's facts by field name, whatever else the object carries."""
    return {name: getattr(boot, name) for name in BOOT_FIELDS}
