"""Kernel images built from the spec (``Documentation/arch/x86/boot.rst``), for the
checks' tests: a setup header with ``HdrS``, a version string, and a gzip or xz
payload holding a stand-in vmlinux with a banner, ``KHO_FDT_COMPATIBLE`` and an
IKCONFIG block. The end-to-end suite uses real bzImages."""

from __future__ import annotations

import gzip
import lzma
import struct

KHO_CONFIG = "CONFIG_KEXEC=y\nCONFIG_KEXEC_FILE=y\nCONFIG_KEXEC_HANDOVER=y\n"
# the header's init_size of the lab's 10 MiB bzImage (KERNEL-INTERFACES.md section 10)
INIT_SIZE = 0x2050000  # 32.3 MiB
NO_KHO_CONFIG = "CONFIG_KEXEC=y\nCONFIG_KEXEC_FILE=y\n# CONFIG_KEXEC_HANDOVER is not set\n"


def vmlinux(
    release: str,
    abi: str | None = "kho-v4",
    config: str | None = KHO_CONFIG,
    tail: bytes = b"",
) -> bytes:
    body = b"\x00" * 4096 + f"Linux version {release} (root@vm) #1 SMP\n\0".encode()
    if abi:
        body += b"\0" + abi.encode() + b"\0" + b"\x00" * 64
    if config is not None:
        body += b"IKCFG_ST" + gzip.compress(config.encode()) + b"IKCFG_ED"
    return body + tail + b"\x00" * 4096


def bzimage(
    release: str,
    *,
    abi: str | None = "kho-v4",
    config: str | None = KHO_CONFIG,
    compression: str = "gzip",
    pad: int = 0,
    init_size: int = INIT_SIZE,
    kernel_alignment: int = 0x200000,
    vmlinux_tail: bytes = b"",
) -> bytes:
    payload = (
        gzip.compress
        if compression == "gzip"
        else lambda b: lzma.compress(b, format=lzma.FORMAT_XZ)
    )(vmlinux(release, abi, config, vmlinux_tail))
    setup_sects = 4
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x020F)  # boot protocol 2.15
    setup[0x211] = 0x01  # loadflags: LOADED_HIGH
    struct.pack_into("<I", setup, 0x230, kernel_alignment)  # CONFIG_PHYSICAL_ALIGN
    setup[0x234] = 1  # relocatable_kernel
    struct.pack_into("<H", setup, 0x236, 0x3)  # xloadflags: KERNEL_64, CAN_BE_LOADED_ABOVE_4G
    struct.pack_into("<I", setup, 0x238, 2047)  # cmdline_size
    struct.pack_into("<Q", setup, 0x258, 0x1000000)  # pref_address: LOAD_PHYSICAL_ADDR
    struct.pack_into("<I", setup, 0x260, init_size)
    version = f"{release} (root@vm) (gcc 12.2.0) #1 SMP PREEMPT_DYNAMIC\0".encode()
    struct.pack_into("<H", setup, 0x20E, 0x300 - 0x200)  # kernel_version - 0x200
    setup[0x300 : 0x300 + len(version)] = version
    code = b"\x90" * 64  # the decompressor would be here
    struct.pack_into("<II", setup, 0x248, len(code), len(payload))
    return bytes(setup) + code + payload + b"\x00" * pad


def arm64_image(release: str) -> bytes:
    head = bytearray(64)
    head[0x38:0x3C] = b"ARM\x64"
    return bytes(head) + vmlinux(release)
