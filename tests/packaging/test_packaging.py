"""Packaging: the Debian source package builds in a clean Debian 13 (trixie) chroot,
lintian passes it, and the .deb installs with apt in another clean chroot and runs
there; the RPM spec goes as far as rpmbuild on Debian can take it.

The chroots and the build: tests/debian.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from khod.config import Config, load_config
from khod.store import migrate
from khod.store.db import open_store
from khod.store.schema import HEAD_REVISION
from tests.conftest import FIXTURES
from tests.debian import REPO, build_deb, cached_chroot, in_chroot, run, unpack

pytestmark = pytest.mark.package


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path | str]]:
    """The source package built in a clean trixie chroot: the .deb and lintian's say."""
    deb, root = build_deb(tmp_path_factory.mktemp("deb"))
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
        "/usr/lib/systemd/system/khod-fleet-retain.service",
        "/usr/lib/systemd/system/khod-fleet-retain.timer",
        "/usr/lib/systemd/system/khod-once.service",
        "/usr/lib/udev/rules.d/60-khod-once.rules",
        "/usr/lib/systemd/catalog/khod.catalog",
        "/etc/khod/khod.toml",
        "/etc/khod/khod.toml.d/",  # the (empty) drop-in directory
        "/usr/share/man/man8/khod.8.gz",
        "/usr/share/man/man8/khoctl.8.gz",
        "/usr/share/man/man5/khod.toml.5.gz",
        "/usr/share/bash-completion/completions/khoctl",
        "/usr/share/bash-completion/completions/khod",
        "/usr/share/zsh/vendor-completions/_khoctl",
        "/usr/share/khod/prometheus/khod-rules.yml",
    ):
        assert path in names, (path, sorted(names))
    assert any(n.endswith("/khod/migrations/versions/0004_fleet.py") for n in names)
    assert any(n.endswith("/khod/schemas/history.v1.json") for n in names)  # khoctl(8)
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
    # every program the installed units run is there, brought by the package's own
    # dependencies (minbase has no /bin/kill: khod.service's ExecReload needs procps)
    for unit in sorted((root / "usr/lib/systemd/system").glob("khod*.service")):
        for line in unit.read_text().splitlines():
            m = re.match(r"Exec\w+=[-@:+!]*(/\S+)", line)
            if m:
                exe = root / m.group(1).lstrip("/")
                assert exe.exists() or exe.is_symlink(), f"{unit.name}: {line}: not installed"


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
