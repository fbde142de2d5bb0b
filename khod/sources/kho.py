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
from khod.sources.files import is_dir, list_dir, read_optional

MAX_SUBTREES = 256
DENIED = "permission denied"


def subtree_file(direction: str, name: str) -> str:
    """A subtree's file, relative to ``kho/``: ``in/sub_fdts/LUO``."""
    return f"{direction}/sub_fdts/{name}"


@dataclass
class KhoFiles:
    """Every KHO debugfs file that was there, by name relative to ``kho/``."""

    present: bool = False  # kho/ exists
    in_present: bool = False  # kho/in/ exists: the kernel accepted an incoming handover
    debugfs_mounted: bool = False  # sys/kernel/debug has anything in it
    files: dict[str, bytes] = field(default_factory=dict)  # "in/fdt" -> bytes
    errors: list[SourceError] = field(default_factory=list)
    # debugfs or kho/ could not be entered (not root, or root without CAP_DAC_OVERRIDE):
    # whether KHO is on is not known from here
    unreadable: SourceError | None = None
    # (name, error) of each file or directory permission was denied on
    denied: list[tuple[str, SourceError]] = field(default_factory=list)

    def get(self, name: str) -> bytes | None:
        return self.files.get(name)

    def subtree(self, direction: str, name: str) -> bytes | None:
        return self.files.get(subtree_file(direction, name))

    def subtree_names(self, direction: str) -> list[str]:
        prefix = f"{direction}/sub_fdts/"
        return sorted(n[len(prefix) :] for n in self.files if n.startswith(prefix))


def _read_into(kf: KhoFiles, paths: HostPaths, path: Path, name: str) -> None:
    try:
        data = read_optional(path, paths.rel(path))
    except SourceError as e:
        if e.why == DENIED:  # 0400 root files: see read_kho_files
            kf.denied.append((name, e))
        else:
            kf.errors.append(e)
        return
    if data is not None:
        kf.files[name] = data


def read_kho_files(paths: HostPaths) -> KhoFiles:
    kf = KhoFiles()
    listing: SourceError | None = None
    try:
        debugfs = list_dir(paths.debugfs, paths.rel(paths.debugfs))
    except SourceError as e:
        listing, debugfs = e, None
    kf.debugfs_mounted = bool(debugfs)
    try:
        kf.present = is_dir(paths.kho, paths.rel(paths.kho))
        if not kf.present:
            kf.unreadable = listing
            return kf
        kf.debugfs_mounted = True
        kf.in_present = is_dir(paths.kho_in, paths.rel(paths.kho_in))
    except SourceError as e:
        kf.unreadable = listing or e
        return kf
    for direction, base in (("in", paths.kho_in), ("out", paths.kho_out)):
        _read_into(kf, paths, base / "fdt", f"{direction}/fdt")
        sub = base / "sub_fdts"
        try:
            names = list_dir(sub, paths.rel(sub)) or []
        except SourceError as e:
            if e.why == DENIED:
                kf.denied.append((f"{direction}/sub_fdts/", e))
            else:
                kf.errors.append(e)
            names = []
        for n in names[:MAX_SUBTREES]:
            _read_into(kf, paths, sub / n, f"{direction}/sub_fdts/{n}")
    for pair in SCRATCH_NAMES:
        for n in pair:
            _read_into(kf, paths, paths.kho_out / n, f"out/{n}")
    _read_into(kf, paths, paths.kho_out_finalize, "out/finalize")
    if kf.denied and not kf.files and not kf.errors:
        # nothing could be read (debugfs mounted mode=755, files 0400 root): one event
        names = [n for n, _ in kf.denied]
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        kf.unreadable = SourceError(
            paths.rel(paths.kho), f"{DENIED} on {len(names)} files ({shown})"
        )
    else:  # one file among readable ones: an error of its own
        kf.errors += [e for _, e in kf.denied]
    return kf
