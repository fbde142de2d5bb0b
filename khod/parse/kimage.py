"""Kernel images a kexec may load, and what they say about themselves.

- x86 bzImage (``Documentation/arch/x86/boot.rst``): setup header at 0x1F1, ``HdrS``
  at 0x202, protocol version at 0x206, ``kernel_version`` at 0x20E (string offset - 0x200),
  ``setup_sects`` at 0x1F1, ``payload_offset``/``payload_length`` at 0x248/0x24C (2.08+),
  relative to the protected-mode code at ``(setup_sects + 1) * 512``.
  What the kexec loader reserves (2.10+): ``kernel_alignment`` at 0x230, ``pref_address``
  at 0x258, ``init_size`` at 0x260 (the memory the kernel needs to boot, not its size).
- arm64 ``Image`` (``Documentation/arch/arm64/booting.rst``): magic ``ARM\\x64`` at 0x38,
  ``image_size`` (le64) at 16.
- EFI zboot (``drivers/firmware/efi/libstub/zboot-header.S``): ``MZ``, then ``zimg`` at 4,
  payload offset/size at 8/12, compression name at 0x18.

The payload, when gzip or xz (the standard library decodes both), is the vmlinux: its
``KHO_FDT_COMPATIBLE`` string and an embedded config (``CONFIG_IKCONFIG``) are read from
there, which beats guessing the ABI from a release number.
"""

from __future__ import annotations

import lzma
import re
import struct
import zlib
from dataclasses import dataclass

from khod.errors import ParseError
from khod.parse.pstore import inflate

MAX_VMLINUX = 256 << 20
_KHO_COMPAT = re.compile(rb"\0(kho-v\d+(?:;[a-z0-9-]+)*)\0")
# kernel/configs.c: the gzip'd config (``gzip -n``) between these two markers
IKCFG_ST, IKCFG_ED = b"IKCFG_ST", b"IKCFG_ED"
IKCONFIG_LIMIT = 4 << 20  # inflated; a distribution's config is about 300 KiB
IKCONFIG_IN = 1 << 20  # gzip bytes looked at after a marker
IKCONFIG_TRIES = 16  # markers followed by a gzip magic that are tried
_GZIP_MAGIC = b"\x1f\x8b\x08"  # ID1 ID2 CM=deflate (RFC 1952)
_BANNER = re.compile(rb"Linux version (\S+) ")


@dataclass(frozen=True)
class KernelImage:
    kind: str  # "bzImage" | "arm64-Image" | "efi-zboot"
    version: str | None  # the image's version string
    release: str | None  # its first word
    protocol: str | None  # x86 boot protocol, "2.15"
    compression: str | None  # of the payload: gzip, xz, zstd, lz4, ... or None (plain)
    payload: bytes  # compressed payload (bzImage/zboot) or the image itself
    init_size: int | None = None  # memory the kernel needs (bzImage 2.10+, arm64 image_size)
    kernel_alignment: int | None = None  # bzImage 2.10+ (arm64: 2 MiB, MIN_KIMG_ALIGN)
    pref_address: int | None = None  # bzImage 2.10+


def _cstr(data: bytes, off: int, limit: int = 512) -> str | None:
    if not 0 <= off < len(data):
        return None
    end = data.find(b"\0", off, off + limit)
    if end < 0:
        return None
    return data[off:end].decode("utf-8", errors="backslashreplace")


def compression_of(payload: bytes) -> str | None:
    for magic, name in (
        (b"\x1f\x8b", "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\x02\x21\x4c\x18", "lz4"),
        (b"BZh", "bzip2"),
        (b"\x89LZO", "lzo"),
        (b"\x5d\x00\x00", "lzma"),
    ):
        if payload.startswith(magic):
            return name
    return None


def parse_kernel_image(data: bytes, source: str) -> KernelImage:
    if len(data) >= 0x250 and data[0x202:0x206] == b"HdrS":
        setup_sects = data[0x1F1] or 4
        (proto,) = struct.unpack_from("<H", data, 0x206)
        (kv,) = struct.unpack_from("<H", data, 0x20E)
        version = _cstr(data, kv + 0x200) if kv else None
        payload = b""
        if proto >= 0x208:
            off, length = struct.unpack_from("<II", data, 0x248)
            start = (setup_sects + 1) * 512 + off
            if start + length > len(data) or length == 0:
                raise ParseError(
                    source,
                    0x248,
                    f"bzImage payload [{start}, +{length}) is outside the {len(data)}-byte file",
                )
            payload = data[start : start + length]
        align = pref = init = None
        if proto >= 0x20A and len(data) >= 0x264:
            (align,) = struct.unpack_from("<I", data, 0x230)
            pref, init = struct.unpack_from("<QI", data, 0x258)
        return KernelImage(
            "bzImage",
            version,
            version.split()[0] if version else None,
            f"{proto >> 8}.{proto & 0xFF:02d}",
            compression_of(payload),
            payload,
            init,
            align,
            pref,
        )
    if len(data) >= 0x40 and data[0x38:0x3C] == b"ARM\x64":
        m = _BANNER.search(data)
        rel = m.group(1).decode("utf-8", "backslashreplace") if m else None
        (image_size,) = struct.unpack_from("<Q", data, 16)
        return KernelImage("arm64-Image", None, rel, None, None, data, image_size or None, 2 << 20)
    if len(data) >= 0x20 and data[:2] == b"MZ" and data[4:8] == b"zimg":
        off, size = struct.unpack_from("<II", data, 8)
        if off + size > len(data):
            raise ParseError(source, 8, "EFI zboot payload outside the file")
        payload = data[off : off + size]
        return KernelImage(
            "efi-zboot", None, None, None, compression_of(payload) or _cstr(data, 0x18, 32), payload
        )
    raise ParseError(source, 0, "not a bzImage, arm64 Image or EFI zboot image")


def decompress_payload(img: KernelImage, source: str, limit: int = MAX_VMLINUX) -> bytes | None:
    """The vmlinux inside, when its compression is one the standard library has."""
    if img.compression is None:
        return img.payload
    try:
        if img.compression == "gzip":
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(img.payload, limit)
        elif img.compression == "xz":
            x = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            out = x.decompress(img.payload, limit)
        else:
            return None
    except (zlib.error, lzma.LZMAError) as e:
        raise ParseError(source, None, f"{img.compression} payload does not decode: {e}") from e
    return out


def kho_abis_in(vmlinux: bytes) -> list[str]:
    """The KHO root compatibles the kernel carries (normally exactly one)."""
    return sorted({m.group(1).decode() for m in _KHO_COMPAT.finditer(vmlinux)})


def _gzip_member(data: bytes) -> bytes | None:
    """The raw deflate stream of a gzip member (RFC 1952 header skipped), or None."""
    if len(data) < 10 or not data.startswith(_GZIP_MAGIC):
        return None
    flags, off = data[3], 10
    if flags & 0x04:  # FEXTRA: a 2-byte length, then that many bytes
        if len(data) < off + 2:
            return None
        off += 2 + int.from_bytes(data[off : off + 2], "little")
    for bit in (0x08, 0x10):  # FNAME, FCOMMENT: NUL-terminated
        if flags & bit:
            end = data.find(b"\0", off)
            if end < 0:
                return None
            off = end + 1
    if flags & 0x02:  # FHCRC
        off += 2
    return data[off:] if off < len(data) else None


def ikconfig_in(vmlinux: bytes) -> str | None:
    """The config embedded by CONFIG_IKCONFIG: the gzip stream after ``IKCFG_ST``.

    Linear in the image: ``bytes.find`` looks for the marker followed by a gzip magic, so
    decoy markers cost no Python work; at most ``IKCONFIG_TRIES`` candidates are inflated,
    each through the project's bounded ``inflate`` (at most ``IKCONFIG_LIMIT`` bytes out).
    The stream's own end closes the config; ``IKCFG_ED`` after it is not needed."""
    needle = IKCFG_ST + _GZIP_MAGIC
    pos = 0
    for _ in range(IKCONFIG_TRIES):
        at = vmlinux.find(needle, pos)
        if at < 0:
            return None
        pos = at + len(IKCFG_ST)
        deflate = _gzip_member(vmlinux[pos : pos + IKCONFIG_IN])
        text = inflate(deflate, IKCONFIG_LIMIT)[0] if deflate is not None else None
        if text is not None:
            return text.decode("utf-8", "replace")
    return None


def release_of_vmlinux(vmlinux: bytes) -> str | None:
    m = _BANNER.search(vmlinux)
    return m.group(1).decode("utf-8", "backslashreplace") if m else None


def config_value(config: str, key: str) -> str | None:
    """``CONFIG_X=y`` -> "y"; ``# CONFIG_X is not set`` and absent -> None."""
    m = re.search(rf"^{re.escape(key)}=(.*)$", config, re.M)
    return m.group(1).strip() if m else None


def release_version(release: str) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m.group(1)), int(m.group(2))) if m else None


def kho_abi_for_release(release: str) -> str | None:
    """Mainline's KHO root ABI by release (KERNEL-INTERFACES.md section 0): a fallback,
    since a patched kernel may differ (read the image's own string when possible)."""
    v = release_version(release)
    if v is None or v < (6, 16):
        return None
    if v <= (7, 0):
        return "kho-v1"
    if v == (7, 1):
        return "kho-v3"
    return "kho-v4"
