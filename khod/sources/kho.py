"""Read the KHO debugfs tree (``/sys/kernel/debug/kho``) as raw bytes.

Layout (KERNEL-INTERFACES.md section 3): ``in/fdt``, ``in/sub_fdts/*`` (only in a
kernel entered by an accepted KHO kexec), ``out/fdt`` (after a cold boot only, may be
truncated), ``out/sub_fdts/*``, ``out/scratch_{phys,len}`` (7.4: ``bootmem_*``),
``out/finalize`` (6.16-7.0 only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from khod.errors import SourceError
from khod.paths import SCRATCH_NAMES, HostPaths
from khod.sources.files import list_dir, read_optional

MAX_SUBTREES = 256


@dataclass
class KhoFiles:
    """Every KHO debugfs file that was there, by name relative to ``kho/``."""

    present: bool = False  # kho/ exists
    in_present: bool = False  # kho/in/ exists: the kernel accepted an incoming handover
    debugfs_mounted: bool = False  # sys/kernel/debug has anything in it
    files: dict[str, bytes] = field(default_factory=dict)  # "in/fdt" -> bytes
    errors: list[SourceError] = field(default_factory=list)

    def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def subtree_names(self, direction: str) -> list[str]:
        prefix = f"{direction}/sub_fdts/"
        return sorted(n[len(prefix) :] for n in self.files if n.startswith(prefix))


def _read_into(kf: KhoFiles, paths: HostPaths, path: Path, name: str) -> None:
    try:
        data = read_optional(path, paths.rel(path))
    except SourceError as e:
        kf.errors.append(e)
        return
    if data is not None:
        kf.files[name] = data


def read_kho_files(paths: HostPaths) -> KhoFiles:
    kf = KhoFiles()
    try:
        debugfs = list_dir(paths.debugfs, paths.rel(paths.debugfs))
    except SourceError as e:
        kf.errors.append(e)
        debugfs = None
    kf.debugfs_mounted = bool(debugfs)
    if not paths.kho.is_dir():
        return kf
    kf.present = True
    kf.in_present = paths.kho_in.is_dir()
    for direction, base in (("in", paths.kho_in), ("out", paths.kho_out)):
        _read_into(kf, paths, base / "fdt", f"{direction}/fdt")
        sub = base / "sub_fdts"
        try:
            names = list_dir(sub, paths.rel(sub)) or []
        except SourceError as e:
            kf.errors.append(e)
            names = []
        for n in names[:MAX_SUBTREES]:
            _read_into(kf, paths, sub / n, f"{direction}/sub_fdts/{n}")
    for pair in SCRATCH_NAMES:
        for n in pair:
            _read_into(kf, paths, paths.kho_out / n, f"out/{n}")
    _read_into(kf, paths, paths.kho_out_finalize, "out/finalize")
    return kf
