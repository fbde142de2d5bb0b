"""The systemd guest's image, shared by its modules; every end-to-end run's per-boot
table in pytest's summary (CI output shows it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.debian import build_deb
from tests.vm import guestimage, harness, kernel


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The systemd guest's image tarball (the deb built from this checkout, installed
    with apt) and the kernels' directory."""
    deb, _ = build_deb(tmp_path_factory.mktemp("deb"))
    tar, built = guestimage.image(deb)
    guestimage.TABLES.append(
        f"image: {tar.name}, " + (f"built in {built:.0f}s" if built else "cached")
    )
    return tar, kernel.kernels()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if harness.TABLES:
        terminalreporter.section("khod end-to-end: every boot, the kernel's word and khod's")
        for t in harness.TABLES:
            terminalreporter.write_line(t)
    if guestimage.TABLES:
        terminalreporter.section("khod in a systemd-booted Debian 13 guest")
        for t in guestimage.TABLES:
            terminalreporter.write_line(t)
