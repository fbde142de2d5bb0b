"""Read pstore records as raw files: ``/sys/fs/pstore`` and systemd-pstore's archive.

systemd-pstore (``src/pstore/pstore.c``) copies each file byte for byte into
``/var/lib/systemd/pstore``: flat for most backends (so the next boot overwrites
``dmesg-ramoops-0``), and for EFI/ERST into a directory named after the record id's
leading digits, next to a reassembled ``dmesg.txt``.
"""

from __future__ import annotations

import heapq
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from khod.errors import SourceError
from khod.paths import HostPaths
from khod.records import PstoreLocation
from khod.sources.files import describe_oserror, read_bytes

PSTORE_READ_LIMIT = 32 << 20
MAX_FILES = 4096


@dataclass(frozen=True)
class PstoreFile:
    location: PstoreLocation
    path: Path | None  # None for a record that came from a KHO subtree
    shown: str  # path relative to the sysroot, for messages and the store
    name: str  # file name (dmesg.txt for a reassembled archive record)
    data: bytes
    mtime_ns: int


@dataclass(frozen=True)
class LeftOut:
    """A directory holding more than ``MAX_FILES`` entries: the oldest were not read."""

    shown: str
    total: int
    kept: int

    @property
    def message(self) -> str:
        return (
            f"{self.shown}: {self.total} entries, more than the {self.kept} khod reads: "
            f"the newest {self.kept} read, {self.total - self.kept} older left out"
        )


def _mtime(e: os.DirEntry[str]) -> int:
    try:
        return e.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return -1  # gone or unreadable: the last to keep (reading it says why)


def _entries(d: Path, left_out: list[LeftOut], shown: str) -> list[os.DirEntry[str]]:
    """The entries of ``d`` in name order; past ``MAX_FILES``, only the newest (by mtime,
    then name), at most ``MAX_FILES`` held in memory whatever the directory holds."""
    total = 0

    def counted(it: Iterator[os.DirEntry[str]]) -> Iterator[os.DirEntry[str]]:
        nonlocal total
        for e in it:
            total += 1
            yield e

    with os.scandir(d) as it:
        kept = heapq.nlargest(MAX_FILES, counted(it), key=lambda e: (_mtime(e), e.name))
    if total > MAX_FILES:
        left_out.append(LeftOut(shown, total, MAX_FILES))
    return sorted(kept, key=lambda e: e.name)


def _read(
    paths: HostPaths, location: PstoreLocation, path: Path, errors: list[SourceError]
) -> PstoreFile | None:
    shown = paths.rel(path)
    try:
        st = os.stat(path, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise SourceError(shown, "is a symbolic link; not followed")
        data = read_bytes(path, shown, PSTORE_READ_LIMIT)
    except SourceError as e:
        errors.append(e)
        return None
    except OSError as e:
        errors.append(SourceError(shown, describe_oserror(e)))
        return None
    return PstoreFile(location, path, shown, path.name, data, st.st_mtime_ns)


def read_pstore_files(
    paths: HostPaths, left_out: list[LeftOut] | None = None
) -> tuple[list[PstoreFile], list[SourceError]]:
    """Every record file in both places; errors for what could not be read; in
    ``left_out``, each directory whose oldest entries were left (``MAX_FILES``)."""
    files: list[PstoreFile] = []
    errors: list[SourceError] = []
    capped: list[LeftOut] = [] if left_out is None else left_out
    for location, base in (
        (PstoreLocation.PSTORE, paths.pstore),
        (PstoreLocation.ARCHIVE, paths.systemd_pstore_archive),
    ):
        try:
            entries = _entries(base, capped, paths.rel(base))
        except FileNotFoundError:
            continue
        except OSError as e:
            errors.append(SourceError(paths.rel(base), describe_oserror(e)))
            continue
        for entry in entries:
            p = Path(entry.path)
            try:
                is_dir = location is PstoreLocation.ARCHIVE and entry.is_dir(follow_symlinks=False)
            except OSError as err:  # d_type unknown and the entry cannot be stat'd
                errors.append(SourceError(paths.rel(p), describe_oserror(err)))
                continue
            if is_dir:
                try:
                    sub = _entries(p, capped, paths.rel(p))
                except OSError as err:
                    errors.append(SourceError(paths.rel(p), describe_oserror(err)))
                    continue
                parts = [e for e in sub if e.name != "dmesg.txt"]
                # dmesg.txt only reassembles the part files beside it: read it alone
                # when the parts are gone
                for part in parts or sub:
                    f = _read(paths, location, Path(part.path), errors)
                    if f:
                        files.append(f)
                continue
            f = _read(paths, location, p, errors)
            if f:
                files.append(f)
    return files, errors
