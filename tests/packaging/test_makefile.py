"""`make run` installs what khod needs on the host whose boot it records, and nothing
that runs there: no server that Debian would enable and start (PostgreSQL, Prometheus),
no QEMU, no kernel toolchain. `make test` installs the rest.

Read from the Makefile as make itself expands it (`make -n run` into an empty venv
path, so every recipe prints), then each package and everything it depends on is looked
up in dpkg's own file lists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

ROOT = REPO

pytestmark = pytest.mark.skipif(
    shutil.which("dpkg-query") is None or shutil.which("apt-cache") is None,
    reason="needs a Debian host (dpkg, apt)",
)

SERVERS = ("postgresql", "prometheus", "qemu-system", "debootstrap", "flex", "bison")


def _dry_run(target: str, tmp_path: Path) -> str:
    return subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _apt_packages(dry_run: str) -> list[str]:
    """The packages the install loop would ask apt for, as make expanded them."""
    loops = re.findall(r"for p in ([^;]*); do[\s\\]*dpkg-query", dry_run)
    assert loops, dry_run
    return sorted({p for loop in loops for p in loop.split()})


def _closure(packages: list[str]) -> set[str]:
    """The packages and what they depend on (not recommends: the install says
    --no-install-recommends)."""
    out = subprocess.run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            *packages,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    names = set()
    for line in out.splitlines():
        name = line.strip().removeprefix("|").split(":", 1)[-1].strip()
        if line and not line.startswith(" "):
            names.add(line.strip().split(":")[0])
        elif name and not name.startswith("<"):
            names.add(name.split(":")[0])
    return names


def _on_every_debian(package: str) -> bool:
    fields = subprocess.run(
        ["dpkg-query", "-W", "-f=${Essential} ${Priority}", package],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return "yes" in fields or "required" in fields


def _services(package: str) -> list[str]:
    files = subprocess.run(
        ["dpkg-query", "-L", package], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return [
        f
        for f in files
        if f.startswith("/etc/init.d/")
        or (re.match(r"^(/usr)?/lib/systemd/system/[^/]+\.(service|socket)$", f) is not None)
    ]


def test_make_run_installs_no_server(tmp_path: Path) -> None:
    run = _apt_packages(_dry_run("run", tmp_path))
    assert run, "make run names no package"
    assert not [p for p in run if p.startswith(SERVERS)], run
    closure = _closure(run)
    assert not [p for p in closure if p.startswith(SERVERS)], sorted(closure)
    installed = [
        p
        for p in sorted(closure)
        if "install ok installed"
        in subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False
        ).stdout
    ]
    # make test installed them all, so every one of them can be looked into
    assert set(run) <= set(installed)
    # what every Debian system has anyway (dpkg ships a backup timer) is not installed
    # by make run
    added = [p for p in installed if not _on_every_debian(p)]
    with_services = {p: _services(p) for p in added if _services(p)}
    assert with_services == {}


def test_make_test_installs_what_make_run_does_and_the_servers(tmp_path: Path) -> None:
    run = set(_apt_packages(_dry_run("run", tmp_path)))
    test = set(_apt_packages(_dry_run("deps", tmp_path)))
    assert run < test
    assert {"postgresql", "prometheus", "qemu-system-x86"} <= test


def test_make_run_installs_no_test_tools_into_the_venv(tmp_path: Path) -> None:
    dry = _dry_run("run", tmp_path)
    installs = re.findall(r"pip install -q -e '(\.[^']*)'", dry)
    assert installs == [".[postgres]"], installs
