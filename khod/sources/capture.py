"""Boot capture: this boot's incoming state, durable on disk before anything heavy.

Standard library only (os, struct): it runs first at daemon start, before SQLAlchemy or
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

from khod.atomic import write_file
from khod.sources.files import read_kmsg_device

MAGIC = b"KHODSPOOL1\n"
ENTRY = struct.Struct("<HQI")
FILE_LIMIT = 32 << 20
TOTAL_LIMIT = 256 << 20
# the files collection reads, relative to the root (see HostPaths)
IDENTITY = (
    "proc/sys/kernel/random/boot_id",
    "proc/sys/kernel/osrelease",
    "proc/cmdline",
    "proc/stat",
    "etc/machine-id",
)
TREES = ("sys/kernel/debug/kho", "sys/fs/pstore")
KMSG = "dev/kmsg"


def _read(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        chunks = []
        total = 0
        while total <= FILE_LIMIT:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            chunks.append(b)
            total += len(b)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_kmsg(path: str) -> bytes | None:
    try:
        if stat.S_ISCHR(os.stat(path).st_mode):
            return read_kmsg_device(path, FILE_LIMIT)
    except OSError:
        return None
    return _read(path)


def _walk(root: str, rel: str) -> list[str]:
    out = []
    try:
        with os.scandir(os.path.join(root, rel)) as it:
            for e in it:
                r = f"{rel}/{e.name}"
                if e.is_dir(follow_symlinks=False):
                    out += _walk(root, r)
                elif e.is_file(follow_symlinks=False):
                    out.append(r)
    except OSError:
        pass
    return out


def read_boot_id(root: str) -> str | None:
    data = _read(os.path.join(root, IDENTITY[0]))
    if not data:
        return None
    text = data.decode("ascii", errors="replace").strip()
    ok = len(text) == 36 and all(c in "0123456789abcdef-" for c in text)
    return text if ok else None


def capture(root: str, spool_dir: str) -> str | None:
    """Write this boot's spool; return its path, or None when the boot has no id."""
    boot_id = read_boot_id(root)
    if boot_id is None:
        return None
    parts = [MAGIC]
    total = 0
    for rel in (*IDENTITY, KMSG, *(f for t in TREES for f in _walk(root, t))):
        path = os.path.join(root, rel)
        data = _read_kmsg(path) if rel == KMSG else _read(path)
        if data is None or total + len(data) > TOTAL_LIMIT:
            continue
        try:
            mtime = os.stat(path, follow_symlinks=False).st_mtime_ns
        except OSError:
            mtime = 0
        name = rel.encode()
        parts += [ENTRY.pack(len(name), mtime, len(data)), name, data]
        total += len(data)
    os.makedirs(spool_dir, mode=0o700, exist_ok=True)
    st = os.lstat(spool_dir)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        # a planted symlink (or someone else's directory) would send this write elsewhere
        raise OSError(errno.EPERM, f"{spool_dir}: not a directory of ours (a symlink?)")
    final = os.path.join(spool_dir, f"{boot_id}.spool")
    write_file(final, b"".join(parts))
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
