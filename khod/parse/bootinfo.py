"""How the boot loader handed this kernel over, where no KHO debugfs tells it.

- x86 ``/sys/kernel/boot_params/setup_data/N/type`` (``arch/x86/kernel/ksysfs.c``,
  ``"0x%x\\n"``): ``SETUP_KEXEC_KHO`` (0xa) when kexec passed a KHO handover; its
  ``data`` is ``struct kho_data`` (``arch/x86/include/uapi/asm/setup_data.h``), four
  native-endian u64: ``fdt_addr, fdt_size, scratch_addr, scratch_size``.
- arm64 ``/chosen`` of the boot device tree (``/sys/firmware/fdt``, or its unflattened
  ``/proc/device-tree/chosen/``): ``linux,booted-from-kexec`` on every
  ``kexec_file_load`` boot; ``linux,kho-fdt`` and ``linux,kho-scratch`` when a handover
  was offered (``drivers/of/kexec.c``), also to a kernel that ignores it (kho=off).
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from khod.errors import ParseError
from khod.parse.fdt import parse_fdt

SETUP_KEXEC_KHO = 0xA
KHO_DATA = struct.Struct(("<" if sys.byteorder == "little" else ">") + "4Q")
BOOTED_FROM_KEXEC = "linux,booted-from-kexec"
KHO_FDT = "linux,kho-fdt"
KHO_SCRATCH = "linux,kho-scratch"


@dataclass(frozen=True)
class KhoData:
    fdt_addr: int
    fdt_size: int
    scratch_addr: int
    scratch_size: int


def parse_setup_data_type(data: bytes, source: str) -> int:
    text = data.strip()
    try:
        return int(text, 16) if text.lower().startswith(b"0x") else int(text)
    except ValueError:
        raise ParseError(source, 0, f"setup_data type {text[:32]!r} is not a number") from None


def parse_kho_data(data: bytes, source: str) -> KhoData:
    if len(data) < KHO_DATA.size:
        raise ParseError(
            source, len(data), f"kho_data is {len(data)} bytes, expected {KHO_DATA.size}"
        )
    return KhoData(*KHO_DATA.unpack_from(data, 0))


@dataclass(frozen=True)
class Chosen:
    """What ``/chosen`` says of how this kernel was entered."""

    booted_from_kexec: bool
    kho_offered: bool  # linux,kho-fdt: a handover was offered (not necessarily taken)


def chosen_from_names(names: list[str]) -> Chosen:
    """From the property names of ``/proc/device-tree/chosen/``."""
    return Chosen(BOOTED_FROM_KEXEC in names, KHO_FDT in names)


def parse_chosen_fdt(data: bytes, source: str) -> Chosen:
    """From the raw boot FDT (``/sys/firmware/fdt``); no /chosen says nothing."""
    root = parse_fdt(data, source)
    chosen = next((n for n in root.children if n.name == "chosen"), None)
    if chosen is None:
        return Chosen(False, False)
    return Chosen(chosen.prop(BOOTED_FROM_KEXEC) is not None, chosen.prop(KHO_FDT) is not None)
