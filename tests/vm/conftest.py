"""Print every end-to-end run's per-boot table in pytest's summary (CI output shows it)."""

from __future__ import annotations

from typing import Any

from tests.vm import guestimage, harness


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if harness.TABLES:
        terminalreporter.section("khod end-to-end: every boot, the kernel's word and khod's")
        for t in harness.TABLES:
            terminalreporter.write_line(t)
    if guestimage.TABLES:
        terminalreporter.section("khod in a systemd-booted Debian 13 guest")
        for t in guestimage.TABLES:
            terminalreporter.write_line(t)
