"""How this kernel was loaded, from what the boot protocol left: x86's bootloader_type
and setup_data, arm64's /chosen (``khod.parse.bootinfo``). Says whether kexec loaded it
and whether a KHO handover was offered, where the KHO debugfs tree does not."""

from __future__ import annotations

from dataclasses import dataclass

from khod.collect.collector import Collector
from khod.collect.identity import bootloader_type
from khod.errors import ParseError, SourceError
from khod.observation import EventSource, Severity
from khod.parse import bootinfo, proc
from khod.sources.files import list_dir, read_optional

MAX_SETUP_DATA = 64


@dataclass(frozen=True)
class LoadSigns:
    loader: int | None  # x86 bootloader_type
    kexec: str | None  # why this boot was loaded by kexec, or None: no sign of it
    offered: str | None  # why a KHO handover was offered, or None: no sign of one


def load_signs(c: Collector) -> LoadSigns:
    loader = bootloader_type(c)
    kexec = offered = None
    if proc.loaded_by_kexec(loader):
        kexec = f"bootloader_type 0x{loader:02x}"
    if _setup_data_kho(c):
        offered = f"{c.paths.rel(c.paths.setup_data)}: SETUP_KEXEC_KHO"
    chosen, shown = _chosen(c)
    if chosen is not None and chosen.booted_from_kexec:
        kexec = kexec or f"{shown}: {bootinfo.BOOTED_FROM_KEXEC}"
    if chosen is not None and chosen.kho_offered:
        offered = offered or f"{shown}: {bootinfo.KHO_FDT}"
    return LoadSigns(loader, kexec, offered)


def _setup_data_kho(c: Collector) -> bool:
    """Whether an x86 setup_data entry is SETUP_KEXEC_KHO (its kho_data well-formed)."""
    base = c.paths.setup_data
    try:
        names = list_dir(base, c.paths.rel(base)) or []
        for n in sorted(names)[:MAX_SETUP_DATA]:
            shown = c.paths.rel(base / n / "type")
            data = read_optional(base / n / "type", shown, 64)
            if data is None or bootinfo.parse_setup_data_type(data, shown) != (
                bootinfo.SETUP_KEXEC_KHO
            ):
                continue
            kho_shown = c.paths.rel(base / n / "data")
            kho = read_optional(base / n / "data", kho_shown, 4096)
            if kho is not None:
                bootinfo.parse_kho_data(kho, kho_shown)
            return True
    except (SourceError, ParseError) as e:
        c.failed(e, Severity.WARNING, origin=EventSource.IDENTITY)
    return False


def _chosen(c: Collector) -> tuple[bootinfo.Chosen | None, str]:
    """/chosen: the unflattened tree's names, else the raw FDT (root-only)."""
    base = c.paths.device_tree_chosen
    shown = "/chosen"
    try:
        names = list_dir(base, c.paths.rel(base))
        if names:
            return bootinfo.chosen_from_names(names), c.paths.rel(base)
        fdt_shown = c.paths.rel(c.paths.firmware_fdt)
        data = read_optional(c.paths.firmware_fdt, fdt_shown, 4 << 20)
        if data is not None:
            return bootinfo.parse_chosen_fdt(data, fdt_shown), fdt_shown + ":/chosen"
    except (SourceError, ParseError) as e:
        c.failed(e, Severity.WARNING, origin=EventSource.IDENTITY)
    return None, shown
