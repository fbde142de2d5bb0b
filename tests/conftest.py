from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
FIXTURES = DATA / "fixtures"
SCENARIOS = ("cold", "kexec1", "nokho", "pstore", "pstore-kho")


def fixture_steps() -> list[str]:
    """Every '<scenario>/<step>' captured from the real kernel."""
    return sorted(
        f"{s}/{step.name}" for s in SCENARIOS for step in (FIXTURES / s).iterdir() if step.is_dir()
    )


def restore_pstore_mtimes(step_dir: Path) -> None:
    """git keeps no mtimes; pstore record times come from PSTORE-MTIMES.txt."""
    listing = step_dir / "PSTORE-MTIMES.txt"
    if not listing.exists():
        return
    for line in listing.read_text().splitlines():
        ns, _iso, _size, name = line.split()
        f = step_dir / "sys" / "fs" / "pstore" / name
        if f.exists():
            os.utime(f, ns=(int(ns), int(ns)))


SysrootFactory = Callable[[str], Path]


@pytest.fixture
def sysroot(tmp_path: Path) -> SysrootFactory:
    """Copy a fixture step ('kexec1/step1') into tmp_path; the copy may be altered."""

    def make(step: str) -> Path:
        dst = tmp_path / "roots" / step.replace("/", "-")
        shutil.copytree(FIXTURES / step, dst)
        restore_pstore_mtimes(dst)
        return dst

    return make


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'khod.db'}"
