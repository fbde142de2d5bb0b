"""Debian 13 (trixie) chroots and the khod .deb built from this checkout.

The chroots are made with debootstrap from deb.debian.org and cached as tarballs under
~/.cache/khod-pkg (KHOD_PKG_CACHE); a new machine builds them (a few minutes).
Commands run in the chroot inside a private mount namespace (unshare), so /proc and
/dev mounted there vanish with the command. Used by tests/packaging/test_packaging.py and the
systemd-booted guest image (tests/vm/guestimage.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from tests.cachelock import locked

REPO = Path(__file__).parent.parent
SUITE = "trixie"
MIRROR = os.environ.get("KHOD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(os.environ.get("KHOD_PKG_CACHE", Path.home() / ".cache" / "khod-pkg"))
BUILD_DEPS = [
    "build-essential",
    "debhelper",
    "dh-python",
    "pybuild-plugin-pyproject",
    "python3-all",
    "python3-setuptools",
    "python3-wheel",
    "python3-argparse-manpage",
    "python3-shtab",
    "lintian",
    "python3-sqlalchemy",
    "python3-alembic",
    "python3-libfdt",
    "python3-prometheus-client",
    "python3-pyudev",
    "python3-systemd",
]


def run(argv: list[str], timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def in_chroot(root: Path, script: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """sh -c script inside root, /proc and /dev mounted in a private namespace."""
    setup = (
        f"mount -t proc proc {root}/proc && mount --rbind /dev {root}/dev && "
        f"exec chroot {root} /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "
        'HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive sh -ec "$0"'
    )
    return run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, script], timeout
    )


def cached_chroot(name: str, packages: list[str]) -> Path:
    """A tarball of a debootstrapped trixie with these packages added; built once."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {sorted(packages)} v1".encode()).hexdigest()[:16]
    tar = CACHE / f"{SUITE}-{name}-{key}.tar"
    if tar.exists():
        return tar
    with locked(tar.with_suffix(".lock")):
        return tar if tar.exists() else _debootstrap(tar, key, name, packages)


def _debootstrap(tar: Path, key: str, name: str, packages: list[str]) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    work = CACHE / f"{name}-{key}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    r = run(["debootstrap", "--variant=minbase", SUITE, str(work), MIRROR], timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    if packages:
        r = in_chroot(
            work,
            "apt-get update -q && apt-get install -y -q --no-install-recommends "
            + " ".join(packages)
            + " && apt-get clean",
            timeout=3600,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    pack(work, tar)
    shutil.rmtree(work, ignore_errors=True)
    return tar


def pack(src: Path, tar: Path) -> None:
    """src as a tarball at tar, written under a temporary name and renamed."""
    tmp = tar.with_suffix(".tar.tmp")
    r = run(["tar", "-C", str(src), "--numeric-owner", "-cf", str(tmp), "."])
    assert r.returncode == 0, r.stderr
    tmp.rename(tar)


def unpack(tar: Path, dst: Path) -> Path:
    dst.mkdir()
    r = run(["tar", "-C", str(dst), "--numeric-owner", "-xf", str(tar)])
    assert r.returncode == 0, r.stderr
    return dst


def build_deb(tmp: Path) -> tuple[Path, Path]:
    """The source package built in a clean trixie chroot unpacked under tmp: the
    .deb and the chroot it was built in."""
    root = unpack(cached_chroot("build", BUILD_DEPS), tmp / "build-root")
    src = root / "build" / "khod-0.1.0"
    files = run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"]).stdout.split()
    for f in files:  # the working tree as git sees it (tracked and new, not ignored)
        if (REPO / f).is_file() and not f.startswith("tests/data/"):
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    shutil.copytree(REPO / "packaging" / "debian", src / "debian")
    r = in_chroot(root, "cd /build/khod-0.1.0 && dpkg-buildpackage -us -uc -b 2>&1")
    log = r.stdout + r.stderr
    (tmp / "build.log").write_text(log)
    assert r.returncode == 0, log[-5000:]
    (deb,) = (root / "build").glob("khod_0.1.0_all.deb")
    return deb, root
