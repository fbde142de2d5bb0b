"""Derive broken or older-ABI variants from a copied real sysroot (never from the originals)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

KHO = Path("sys/kernel/debug/kho")


def replace(root: Path, rel: str | Path, data: bytes) -> None:
    p = root / rel
    if p.is_dir():
        shutil.rmtree(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def remove(root: Path, rel: str | Path) -> None:
    p = root / rel
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def make_dir_in_place_of(root: Path, rel: str | Path) -> None:
    remove(root, rel)
    (root / rel).mkdir(parents=True)


def append_kmsg(root: Path, *lines: bytes, level: int = 4) -> None:
    """Add records as the kernel writes them (seq continues from the last record)."""
    kmsg = root / "dev/kmsg"
    data = kmsg.read_bytes()
    seq = data.count(b"\n") + 1000
    for i, line in enumerate(lines):
        data += b"%d,%d,0,-;%s\n" % (level, seq + i, line)
    kmsg.write_bytes(data)


def drop_kmsg_lines(root: Path, needle: bytes) -> None:
    kmsg = root / "dev/kmsg"
    kmsg.write_bytes(
        b"".join(line for line in kmsg.read_bytes().splitlines(keepends=True) if needle not in line)
    )


def strip_handover(root: Path) -> None:
    """What a kernel shows after it refused the handover: no in/ tree, no exec line."""
    remove(root, KHO / "in")
    drop_kmsg_lines(root, b"KHO: exec from")
    drop_kmsg_lines(root, b"KHO: found kexec handover data")


def without_debugfs(root: Path) -> None:
    """A host that does not mount debugfs: no KHO tree to read."""
    remove(root, "sys/kernel/debug")


def setup_data_kho(root: Path, n: int = 1) -> None:
    """x86's record of a KHO handover passed at kexec (SETUP_KEXEC_KHO, kho_data)."""
    base = Path("sys/kernel/boot_params/setup_data") / str(n)
    replace(root, base / "type", b"0xa\n")
    replace(root, base / "data", struct.pack("<4Q", 0x1_4000_0000, 0x1000, 0x1_0000_0000, 1 << 26))


def chosen(root: Path, *props: str) -> None:
    """arm64's /chosen as /proc/device-tree shows it (one file per property)."""
    make_dir_in_place_of(root, "proc/device-tree/chosen")
    for p in ("bootargs", *props):
        replace(root, Path("proc/device-tree/chosen") / p, b"")


def without_handover_lines(root: Path) -> None:
    """A kernel that logs nothing of a handover (7.0 has no "exec from" line)."""
    drop_kmsg_lines(root, b"KHO: exec from")
    drop_kmsg_lines(root, b"KHO: found kexec handover data")
