"""``kexec-metadata``: the release and count the previous kernel handed over (7.1+).

Mirrors ``struct kho_kexec_metadata`` (``include/linux/kho/abi/kexec_metadata.h``),
``__packed`` and native-endian, 73 bytes at version 1::

    u32  version;               offset 0
    char previous_release[65];  offset 4, NUL-terminated
    u32  kexec_count;           offset 69

The consumer (``kho_in_kexec_metadata``) needs >= 4 bytes, version 1, >= 73 bytes;
a longer blob is accepted by the kernel and so here, with a warning.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from khod.errors import ParseError

KEXEC_METADATA_VERSION = 1
_E = "<" if sys.byteorder == "little" else ">"
VERSION = struct.Struct(_E + "I")
KEXEC_METADATA_V1 = struct.Struct(_E + "I65sI")
RELEASE_LEN = 65


class UnsupportedMetadataVersion(ParseError):
    def __init__(self, source: str, version: int) -> None:
        self.version = version
        super().__init__(
            source,
            0,
            f"kexec-metadata version {version} not supported "
            f"(this khod knows version {KEXEC_METADATA_VERSION})",
        )


@dataclass(frozen=True)
class KexecMetadata:
    version: int
    previous_release: str  # decoded; undecodable bytes shown as \xNN
    previous_release_raw: bytes  # up to the first NUL
    kexec_count: int
    warnings: tuple[str, ...] = ()


def decode_release(raw: bytes) -> tuple[str, list[str]]:
    """Bytes of a release string -> text (\\xNN for undecodable bytes) and warnings."""
    warnings = []
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="backslashreplace")
        warnings.append("previous_release is not valid UTF-8")
    if not text.isprintable():
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
        warnings.append("previous_release has control characters")
    return text, warnings


def parse_kexec_metadata(data: bytes, source: str) -> KexecMetadata:
    if len(data) < VERSION.size:
        raise ParseError(source, 0, f"kexec-metadata blob too small ({len(data)} bytes)")
    (version,) = VERSION.unpack_from(data, 0)
    if version != KEXEC_METADATA_VERSION:
        raise UnsupportedMetadataVersion(source, version)
    if len(data) < KEXEC_METADATA_V1.size:
        raise ParseError(
            source,
            len(data),
            f"kexec-metadata too small for v1 ({len(data)} "
            f"bytes, expected {KEXEC_METADATA_V1.size})",
        )
    _, release_field, count = KEXEC_METADATA_V1.unpack_from(data, 0)
    warnings: list[str] = []
    nul = release_field.find(b"\0")
    if nul < 0:
        warnings.append("previous_release is not NUL-terminated")
        raw = release_field
    else:
        raw = release_field[:nul]
    text, more = decode_release(raw)
    warnings += more
    if len(data) > KEXEC_METADATA_V1.size:
        warnings.append(
            f"kexec-metadata is {len(data)} bytes, expected "
            f"{KEXEC_METADATA_V1.size}; trailing bytes ignored"
        )
    return KexecMetadata(version, text, raw, count, tuple(warnings))
