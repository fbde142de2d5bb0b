"""Boot capture: this boot's incoming state, durable on disk before anything heavy.

Standard library only (os, struct, and khod's own HostPaths, file readers and boot id
check, which import nothing else): it runs first at daemon start, before SQLAlchemy or
prometheus-client are imported, so a boot that crashes again within seconds still leaves
its KHO blobs, kernel log and pstore bytes behind. The spool is one file per boot,
``<state>/spool/<boot_id>.spool``, written to a temporary name, fsync'd and renamed; the
next start unpacks any left over into a directory shaped like ``/`` and ingests it with
the same code as a live host (``--sysroot``).

Format: ``KHODSPOOL1\\n``, then per file ``struct "<HQI"`` (path length, mtime in ns,
size), the relative path (UTF-8), the bytes.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import sys
from pathlib import Path

from khod import faults
from khod.atomic import atomic_file, remove_stale_temps
from khod.errors import ParseError, SourceError
from khod.parse.proc import parse_boot_id
from khod.paths import HostPaths
from khod.sources.files import read_bytes, read_kmsg_device

MAGIC = b"KHODSPOOL1\n"
ENTRY = struct.Struct("<HQI")
FILE_LIMIT = 32 << 20  # a larger file is left out whole, never cut
TOTAL_LIMIT = 256 << 20


def _files(paths: HostPaths) -> list[Path]:
    """What collection reads (HostPaths): the boot's identity and how it was loaded, the
    kernel log, the KHO debugfs tree and the pstore files."""
    identity = [
        paths.boot_id,
        paths.osrelease,
        paths.cmdline,
        paths.proc_stat,
        paths.machine_id,
        paths.bootloader_type,
        paths.firmware_fdt,
    ]
    loader = [*_walk(paths.setup_data), *_walk(paths.device_tree_chosen)]
    return [*identity, *loader, paths.kmsg, *_walk(paths.kho), *_walk(paths.pstore)]


def _read(paths: HostPaths, path: Path) -> bytes | None:
    """The whole file, or None: missing, unreadable or over FILE_LIMIT."""
    try:
        if path == paths.kmsg and stat.S_ISCHR(os.stat(path).st_mode):
            return read_kmsg_device(path, FILE_LIMIT)  # records, not a file: no end to cut
        return read_bytes(path, paths.rel(path), FILE_LIMIT)
    except (SourceError, OSError):
        return None


def _walk(top: Path) -> list[Path]:
    out: list[Path] = []
    try:
        with os.scandir(top) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    out += _walk(top / e.name)
                elif e.is_file(follow_symlinks=False):
                    out.append(top / e.name)
    except OSError:
        pass
    return out


def read_boot_id(paths: HostPaths) -> str | None:
    try:
        return parse_boot_id(read_bytes(paths.boot_id, paths.rel(paths.boot_id), 4096), "boot_id")
    except (SourceError, ParseError):
        return None


def clean_spool(spool_dir: str | os.PathLike[str]) -> None:
    """Remove the temporary spool files a killed capture left (no live process holds
    them); one line on stderr for each."""
    for name, size in remove_stale_temps(spool_dir, ".spool"):
        print(
            f"khod: removed {os.path.join(os.fspath(spool_dir), name)} "
            f"({size} bytes), left by a boot capture that was killed",
            file=sys.stderr,
        )


def capture(paths: HostPaths, spool_dir: str) -> str | None:
    """Write this boot's spool; return its path, or None when the boot has no id."""
    boot_id = read_boot_id(paths)
    if boot_id is None:
        return None
    parts = [MAGIC]
    total = 0
    for path in _files(paths):
        data = _read(paths, path)
        if data is None or total + len(data) > TOTAL_LIMIT:
            continue
        try:
            mtime = os.stat(path, follow_symlinks=False).st_mtime_ns
        except OSError:
            mtime = 0
        name = str(path.relative_to(paths.root)).encode()
        parts += [ENTRY.pack(len(name), mtime, len(data)), name, data]
        total += len(data)
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    st = os.lstat(spool_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        # a planted symlink (or someone else's directory) would send this write elsewhere
        raise OSError(errno.EPERM, f"{spool_dir}: not a directory of ours (a symlink?)")
    clean_spool(spool_dir)
    final = os.path.join(spool_dir, f"{boot_id}.spool")
    with atomic_file(final, lock=True) as f:
        f.write(b"".join(parts))
        f.flush()
        faults.point("spool written")  # the crash tests: killed before the rename
    return final


def unpack(spool: str, dest: str) -> None:
    """Recreate the captured tree under ``dest`` (file mtimes restored: pstore times)."""
    with open(spool, "rb") as f:
        data = f.read()
    if not data.startswith(MAGIC):
        raise ValueError(f"{spool}: not a khod spool")
    off = len(MAGIC)
    while off < len(data):
        if off + ENTRY.size > len(data):
            raise ValueError(f"{spool}: truncated at {off}")
        nlen, mtime, size = ENTRY.unpack_from(data, off)
        off += ENTRY.size
        rel = data[off : off + nlen].decode()
        off += nlen
        body = data[off : off + size]
        off += size
        if len(body) != size or rel.startswith("/") or ".." in rel.split("/"):
            raise ValueError(f"{spool}: bad entry {rel!r}")
        path = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(body)
        if mtime:
            os.utime(path, ns=(mtime, mtime))
