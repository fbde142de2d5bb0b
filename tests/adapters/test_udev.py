"""The pyudev adapter on a real NETLINK_KOBJECT_UEVENT socket, with a real kernel uevent.

This host's kernel has no loadable modules, so no real ``module`` uevent can be made
here; the adapter takes the subsystem as a parameter and the test asks the kernel for a
``change`` uevent of ``mem/null`` (harmless) instead. The VM suite loads real modules.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import pytest

from khod.adapters.udev import PyudevWatcher
from tests.conftest import HostFactory

UEVENT = Path("/sys/devices/virtual/mem/null/uevent")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(UEVENT, os.W_OK),
    reason="asking the kernel for a uevent needs root and a writable sysfs",
)


def kernel_uevent() -> None:
    UEVENT.write_text("change")


def wait_for(watcher: PyudevWatcher, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    names: list[str] = []
    while not names and time.monotonic() < deadline:
        select.select([watcher.fileno()], [], [], max(0.0, deadline - time.monotonic()))
        names = watcher.drain()
    return names


def test_watcher_sees_a_real_kernel_uevent() -> None:
    watcher = PyudevWatcher(subsystem="mem", actions=("change",))
    try:
        assert watcher.drain() == []
        kernel_uevent()
        assert wait_for(watcher) == ["null"]
    finally:
        watcher.close()


def test_watcher_ignores_other_actions() -> None:
    watcher = PyudevWatcher(subsystem="mem", actions=("add",))
    try:
        kernel_uevent()
        time.sleep(0.5)
        assert watcher.drain() == []
    finally:
        watcher.close()


def test_a_uevent_triggers_the_pstore_rescan(host: HostFactory, db_url: str) -> None:
    h = host("pstore/step1", db_url, ingest=False)
    root = h.root
    late = root.parent / "late"
    (root / "sys/fs/pstore").rename(late)
    h.ingest()
    watcher = PyudevWatcher(subsystem="mem", actions=("change",))
    try:
        late.rename(root / "sys/fs/pstore")  # the backend registers...
        kernel_uevent()  # ...and the kernel says so
        assert wait_for(watcher)
        out = h.ingest("--pstore-rescan").out
    finally:
        watcher.close()
    assert "pstore rescan: 3 new records" in out
