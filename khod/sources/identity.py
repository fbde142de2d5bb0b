"""This host's identity as the sources read it: /etc/machine-id and this boot's id."""

from __future__ import annotations

from khod.errors import ParseError, SourceError
from khod.parse.proc import (
    machine_id_pending,
    parse_boot_id,
    parse_machine_id,
    provisional_machine_id,
)
from khod.paths import HostPaths
from khod.sources.files import read_bytes


def this_machine(paths: HostPaths) -> str | None:
    """/etc/machine-id; before it is initialized, this boot's provisional identity (what
    collection records it under); None without a usable one (every machine is shown)."""
    try:
        data = read_bytes(paths.machine_id, "machine-id", 4096)
        if not machine_id_pending(data):
            return parse_machine_id(data, "machine-id")
    except (SourceError, ParseError):
        return None
    boot = this_boot(paths)
    return provisional_machine_id(boot) if boot is not None else None


def this_boot(paths: HostPaths) -> str | None:
    try:
        return parse_boot_id(read_bytes(paths.boot_id, "boot_id", 4096), "boot_id")
    except (SourceError, ParseError):
        return None
