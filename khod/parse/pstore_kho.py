"""The ``pstore-kho`` KHO subtree of the proposed pstore_kho backend (v2, 2026-06-05;
not in mainline; ``include/linux/kho/abi/pstore.h`` in the patch), version 1.

Seen on 7.3.4 with the patch: an unpacked, native-endian ``struct pstore_ser``::

    u32 version;            offset 0   (4 bytes of padding follow)
    s64 size;               offset 8   bytes used in buf
    s64 time_sec;           offset 16
    u32 time_nsec;          offset 24
    s32 count;              offset 28
    u32 reason;             offset 32  enum kmsg_dump_reason
    u32 part;               offset 36
    u32 compressed;         offset 40
    char buf[];             offset 44

``buf[:size]`` is byte for byte the ``dmesg-kho-0`` file the next kernel shows. In the
outgoing tree, ``size`` stays 0 until the kernel dumps at kexec.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from khod.errors import ParseError
from khod.records import DumpReason

PSTORE_KHO_VERSION = 1
_E = "<" if sys.byteorder == "little" else ">"
HEADER = struct.Struct(_E + "I4xqqIiIII")
# enum kmsg_dump_reason (include/linux/kmsg_dump.h, 5.8+)
KMSG_DUMP_REASONS = {
    0: DumpReason.UNKNOWN,
    1: DumpReason.PANIC,
    2: DumpReason.OOPS,
    3: DumpReason.EMERGENCY,
    4: DumpReason.SHUTDOWN,
}


@dataclass(frozen=True)
class PstoreKhoRecord:
    version: int
    size: int
    time_sec: int
    time_nsec: int
    count: int
    reason: str
    part: int
    compressed: bool
    data: bytes  # buf[:size]


def parse_pstore_kho(blob: bytes, source: str) -> PstoreKhoRecord | None:
    """The record, or None when the buffer holds none (size 0)."""
    if len(blob) < 4:
        raise ParseError(source, 0, f"pstore-kho blob too small ({len(blob)} bytes)")
    (version,) = struct.unpack_from(_E + "I", blob, 0)
    if version != PSTORE_KHO_VERSION:
        raise ParseError(source, 0, f"pstore-kho version {version} not supported")
    if len(blob) < HEADER.size:
        raise ParseError(source, len(blob), f"pstore-kho blob too small for v1 ({len(blob)})")
    _, size, sec, nsec, count, reason, part, compressed = HEADER.unpack_from(blob, 0)
    if size == 0:
        return None
    if size < 0 or HEADER.size + size > len(blob):
        raise ParseError(
            source,
            8,
            f"pstore-kho record size {size} outside the {len(blob) - HEADER.size}-byte buffer",
        )
    if nsec >= 1_000_000_000:
        raise ParseError(source, 24, f"pstore-kho time_nsec {nsec} out of range")
    return PstoreKhoRecord(
        version,
        size,
        sec,
        nsec,
        count,
        KMSG_DUMP_REASONS.get(reason, f"reason-{reason}"),
        part,
        bool(compressed),
        blob[HEADER.size : HEADER.size + size],
    )
