"""Packaging: the Debian source package builds in a clean Debian 13 (trixie) chroot,
lintian passes it, and the .deb installs with apt in another clean chroot and runs
there; the RPM spec goes as far as rpmbuild on Debian can take it.

The chroots are made with debootstrap from deb.debian.org and cached as tarballs under
~/.cache/khod-pkg (KHOD_PKG_CACHE); a new machine builds them (a few minutes).
Commands run in the chroot inside a private mount namespace (unshare), so /proc and
/dev mounted there vanish with the command.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from khod.config import Config, load_config
from khod.store import migrate
from khod.store.db import open_store
from khod.store.schema import HEAD_REVISION
from tests.conftest import FIXTURES

pytestmark = pytest.mark.package

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
    "help2man",
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
    tmp = tar.with_suffix(".tar.tmp")
    r = run(["tar", "-C", str(work), "--numeric-owner", "-cf", str(tmp), "."])
    assert r.returncode == 0, r.stderr
    tmp.rename(tar)
    shutil.rmtree(work, ignore_errors=True)
    return tar


def unpack(tar: Path, dst: Path) -> Path:
    dst.mkdir()
    r = run(["tar", "-C", str(dst), "--numeric-owner", "-xf", str(tar)])
    assert r.returncode == 0, r.stderr
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | str]]:
    """The source package built in a clean trixie chroot: the .deb and lintian's say."""
    tmp = tmp_path_factory.mktemp("deb")
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
    r = in_chroot(
        root,
        "cd /build && runuser -u nobody -- lintian --info --display-info --pedantic "
        "--fail-on error --profile debian khod_0.1.0_*.changes 2>&1",
    )
    yield {"deb": deb, "lintian": r.stdout + r.stderr, "lintian_rc": str(r.returncode)}


def test_lintian_is_clean(built: dict[str, Path | str], capsys: pytest.CaptureFixture[str]) -> None:
    out = str(built["lintian"])
    with capsys.disabled():
        print("\nlintian (trixie):\n" + (out or "(nothing)\n"))
    tags = [line for line in out.splitlines() if line[:2] in ("E:", "W:")]
    assert built["lintian_rc"] == "0" and tags == [], out


def test_deb_contents(built: dict[str, Path | str]) -> None:
    r = run(["dpkg-deb", "--contents", str(built["deb"])])
    names = {line.split()[-1].lstrip(".") for line in r.stdout.splitlines()}
    for path in (
        "/usr/bin/khod",
        "/usr/bin/khoctl",
        "/usr/lib/systemd/system/khod.service",
        "/usr/lib/systemd/system/khod-pstore.service",
        "/usr/lib/systemd/system/khod-kexec.service",
        "/usr/lib/systemd/system/khod-fleet-report.timer",
        "/usr/lib/systemd/catalog/khod.catalog",
        "/etc/khod/khod.toml",
        "/etc/khod/khod.toml.d/",  # the (empty) drop-in directory
        "/usr/share/man/man8/khod.8.gz",
        "/usr/share/man/man8/khoctl.8.gz",
        "/usr/share/khod/prometheus/khod-rules.yml",
    ):
        assert path in names, (path, sorted(names))
    assert any(n.endswith("/khod/migrations/versions/0004_fleet.py") for n in names)
    info = run(["dpkg-deb", "--field", str(built["deb"]), "Depends"]).stdout
    for dep in ("python3-sqlalchemy (>= 2.0)", "python3-libfdt", "python3-systemd"):
        assert dep in info, info


def test_deb_installs_in_a_clean_trixie_and_runs(
    built: dict[str, Path | str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = unpack(cached_chroot("clean", []), tmp_path / "root")
    shutil.copy(built["deb"], root / "tmp" / "khod.deb")
    shutil.copytree(FIXTURES / "kexec1" / "step1", root / "fixture")
    # a store from before this version (schema 0003): the postinst migrates it
    (root / "var/lib/khod").mkdir(parents=True, mode=0o700)
    old = open_store(f"sqlite:///{root}/var/lib/khod/khod.db", migrate=False)
    migrate.upgrade(old, None, "0003")
    old.dispose()
    r = in_chroot(
        root,
        "apt-get update -q && apt-get install -y -q --no-install-recommends /tmp/khod.deb && "
        "echo REVISION $(khoctl db current) && "
        "khod --once --sysroot /fixture --db sqlite:////tmp/k.db && "
        "khoctl history --json --all --db sqlite:////tmp/k.db > /tmp/history.json && "
        "khod --version && python3 -c 'import sqlalchemy as s; print(s.__version__)'",
        timeout=1800,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    with capsys.disabled():
        print("\nin a clean trixie chroot:\n" + "\n".join(out.splitlines()[-6:]))
    assert f"/var/lib/khod/khod.db: schema {HEAD_REVISION} (head)" in out
    assert "recorded boot 30341bb4" in out and "kexec from 7.3.4-khlab-a, count 1" in out
    (boot,) = json.loads((root / "tmp" / "history.json").read_text())
    assert (boot["kind"], boot["previous_release"], boot["kexec_count"]) == (
        "kexec",
        "7.3.4-khlab-a",
        1,
    )


def test_default_config_file_is_every_default() -> None:
    """packaging/khod.toml (installed as /etc/khod/khod.toml) shows each key commented
    out with its default: as shipped and uncommented, it configures the defaults."""
    shipped = REPO / "packaging" / "khod.toml"
    assert load_config(shipped, required=True) == Config()
    text = shipped.read_text()
    uncommented = "\n".join(
        line[1:] if line.startswith("#") and "=" in line.split("#")[1] else line
        for line in text.splitlines()
    )
    keys = [line for line in uncommented.splitlines() if "=" in line and not line.startswith("#")]
    assert len(keys) == len(Config.__dataclass_fields__) - 1  # every key but "source"
    p = Path(os.environ.get("TMPDIR", "/tmp")) / f"khod-uncommented-{os.getpid()}.toml"
    p.write_text(uncommented)
    try:
        assert load_config(p, required=True) == Config()
    finally:
        p.unlink()


def test_rpm_spec_builds_a_source_rpm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """rpmbuild (Debian's rpm) parses the spec and builds the source RPM. Building the
    binary RPM needs Fedora's pyproject-rpm-macros and systemd-rpm-macros, which no
    registry here has: that part is not checked here."""
    top = tmp_path / "rpmbuild"
    for d in ("SOURCES", "SPECS", "SRPMS", "BUILD", "RPMS"):
        (top / d).mkdir(parents=True)
    with tarfile.open(top / "SOURCES" / "khod-0.1.0.tar.gz", "w:gz") as tar:
        files = run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"]).stdout
        for f in files.split():
            if (REPO / f).is_file() and not f.startswith("tests/data/"):
                tar.add(REPO / f, arcname=f"khod-0.1.0/{f}")
    spec = REPO / "packaging" / "rpm" / "khod.spec"
    r = run(["rpmspec", "-q", "--qf", "%{NAME} %{VERSION} %{LICENSE} %{ARCH}\n", str(spec)])
    assert r.returncode == 0 and r.stdout.split() == [
        "khod",
        "0.1.0",
        "GPL-2.0-or-later",
        "noarch",
    ], r
    r = run(["rpmbuild", "--define", f"_topdir {top}", "-bs", str(spec)])
    with capsys.disabled():
        print("\nrpmbuild -bs:", (r.stdout + r.stderr).strip().splitlines()[-1])
    assert r.returncode == 0, r.stdout + r.stderr
    (srpm,) = (top / "SRPMS").glob("khod-0.1.0-1*.src.rpm")
    r = run(["rpm", "-qp", "--requires", str(srpm)])
    assert "systemd-rpm-macros" in r.stdout and "pyproject-rpm-macros" in r.stdout
    # the binary build stops where Fedora's macros are needed, and says so
    r = run(["rpmbuild", "--define", f"_topdir {top}", "--nodeps", "-bb", str(spec)])
    assert r.returncode != 0 and "pyproject" in (r.stdout + r.stderr)
