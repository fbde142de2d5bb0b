"""pstore records (``/sys/fs/pstore``; ``fs/pstore/inode.c``, ``fs/pstore/platform.c``).

File names are ``"%s-%s-%llu%s"``: type, backend, id, and ``.enc.z`` when the record is
still compressed (6.6+: raw deflate, which the reading kernel normally inflates itself;
4.19-6.5: one of several crypto API compressors; older: zlib with a header). The type
may contain ``-`` (``powerpc-ofw``), the backend may contain ``_`` (``efi_pstore``).

A dmesg record starts with ``<Reason>#<count> Part<n>`` (``pstore_dump``); reasons are
Panic, Oops, Emergency, Shutdown (and before 5.8 Restart, Halt, Poweroff). Part 1 is the
newest chunk of the log; higher parts are older.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from enum import StrEnum

from khod.errors import ParseError
from khod.records import DumpReason, is_crash

# enum pstore_type_id names (fs/pstore/platform.c pstore_type_names), longest first
TYPES = (
    "powerpc-common",
    "powerpc-opal",
    "powerpc-ofw",
    "console",
    "ftrace",
    "dmesg",
    "pmsg",
    "rtas",
    "mce",
    "unknown",
)
REASONS = tuple(DumpReason)
DEFAULT_INFLATE_LIMIT = 16 << 20

_NAME = re.compile(r"^([a-z0-9_.]+)-(\d{1,20})(\.enc\.z)?$")
_HEADER = re.compile(rb"^([A-Za-z]+)#(\d{1,10}) Part(\d{1,10})\r?\n")
_LINUX_VERSION = re.compile(rb"Linux version (\S+) ")


@dataclass(frozen=True)
class PstoreName:
    type: str
    backend: str
    id: int
    compressed: bool  # ".enc.z": the kernel could not (or did not) inflate it

    @property
    def known_type(self) -> bool:
        return self.type in TYPES


def parse_pstore_name(name: str) -> PstoreName:
    """``dmesg-efi_pstore-155741337601001.enc.z`` -> (dmesg, efi_pstore, id, True)."""
    for t in TYPES:
        if name.startswith(t + "-"):
            rest = name[len(t) + 1 :]
            break
    else:
        # an unknown type (a newer kernel's): the backend and id are the last two parts
        t, _, rest = name.rpartition("-")
        head, _, backend = t.rpartition("-")
        if not head or not backend:
            raise ParseError(name, None, "not a pstore record name (type-backend-id)")
        t, rest = head, f"{backend}-{rest}"
    backend, sep, tail = rest.rpartition("-")
    m = _NAME.match(f"{backend}-{tail}") if sep else None
    if not m or not backend or not re.fullmatch(r"[A-Za-z0-9_-]+", t):
        raise ParseError(name, None, "not a pstore record name (type-backend-id)")
    return PstoreName(t, m.group(1), int(m.group(2)), bool(m.group(3)))


class InflateStatus(StrEnum):
    PLAIN = "plain"  # not compressed
    INFLATED = "inflated"  # .enc.z, inflated here
    TOO_LARGE = "too-large"  # inflating would pass the limit: kept compressed
    UNDECODABLE = "undecodable"  # not deflate/zlib (lzo, lz4, zstd from 4.19-6.5, or corrupt)


def inflate(data: bytes, limit: int = DEFAULT_INFLATE_LIMIT) -> tuple[bytes | None, InflateStatus]:
    """Raw deflate (6.6+), then zlib (older kernels), never past ``limit`` bytes."""
    for wbits in (-zlib.MAX_WBITS, zlib.MAX_WBITS):
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or d.unconsumed_tail:
            return None, InflateStatus.TOO_LARGE
        if not d.eof:
            continue  # truncated stream: try the other framing, then give up
        return out, InflateStatus.INFLATED
    return None, InflateStatus.UNDECODABLE


@dataclass(frozen=True)
class DmesgHeader:
    reason: str
    count: int
    part: int
    length: int  # bytes of the header line

    @property
    def known_reason(self) -> bool:
        return self.reason in REASONS

    @property
    def crash(self) -> bool:
        return is_crash(self.reason)


def parse_dmesg_header(text: bytes) -> DmesgHeader | None:
    m = _HEADER.match(text)
    if not m:
        return None
    return DmesgHeader(m.group(1).decode(), int(m.group(2)), int(m.group(3)), m.end())


def linux_version(text: bytes) -> str | None:
    """The release in the first ``Linux version`` banner of a log, if the record has it."""
    m = _LINUX_VERSION.search(text, 0, 1 << 16)
    if not m:
        return None
    try:
        return m.group(1).decode("ascii")
    except UnicodeDecodeError:
        return None


def to_text(data: bytes) -> str:
    """Log bytes as text for the store: undecodable bytes and NUL shown as \\xNN."""
    return data.decode("utf-8", errors="backslashreplace").replace("\0", "\\x00")
