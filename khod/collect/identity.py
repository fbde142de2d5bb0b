"""This boot's identity as collection records it: machine id, boot time, and how the
kernel was loaded (x86's bootloader_type; arm64's /chosen in the boot device tree)."""

from __future__ import annotations

from khod.collect.collector import Collector
from khod.errors import ParseError, SourceError
from khod.observation import EventSource, Severity
from khod.parse import proc
from khod.sources.files import read_bytes, read_optional


def machine_id(c: Collector, boot_id: str) -> str:
    """/etc/machine-id; before it is initialized the boot's provisional identity, and
    with none to be had (missing, garbage) ``unknown``: both adopted by the real id at a
    later ingest of the same boot."""
    path = c.paths.machine_id
    shown = c.paths.rel(path)
    provisional = proc.provisional_machine_id(boot_id)
    try:
        data = read_bytes(path, shown, 1 << 20)
        if not proc.machine_id_pending(data):
            return proc.parse_machine_id(data, shown)
        c.event(
            "machine-id-pending",
            shown,
            Severity.INFO,
            f"{shown} is not initialized yet: this boot stands for its machine "
            f"({provisional}) until it is",
            origin=EventSource.IDENTITY,
        )
    except (SourceError, ParseError) as e:
        c.failed(e, origin=EventSource.IDENTITY)
        return proc.UNKNOWN_MACHINE
    return provisional


def booted_at(c: Collector) -> int | None:
    """btime, or None with an event: the boot is recorded all the same."""
    path = c.paths.proc_stat
    shown = c.paths.rel(path)
    try:
        return proc.parse_btime(read_bytes(path, shown, 1 << 20), shown)
    except SourceError as e:
        c.failed(e, origin=EventSource.IDENTITY)
    except ParseError as e:
        c.event("boot-time-unknown", shown, Severity.WARNING, str(e), origin=EventSource.IDENTITY)
    return None


def bootloader_type(c: Collector) -> int | None:
    """x86's record of who loaded this kernel; None where there is no such file (other
    architectures, a capture from a khod that did not keep it): then nothing is known."""
    path = c.paths.bootloader_type
    shown = c.paths.rel(path)
    try:
        data = read_optional(path, shown, 4096)
        return None if data is None else proc.parse_bootloader_type(data, shown)
    except (SourceError, ParseError) as e:
        c.failed(e, Severity.WARNING, origin=EventSource.IDENTITY)
        return None
