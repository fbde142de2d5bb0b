"""The one module that imports pyudev: kernel uevents for late pstore backends.

A pstore backend that is a module (ramoops, efi_pstore, erst's driver) may register
after khod started; its ``module`` ``add`` uevent is the cue to rescan pstore.
"""

from __future__ import annotations

from typing import Protocol


class UeventWatcher(Protocol):
    def fileno(self) -> int: ...

    def drain(self) -> list[str]:
        """Names of matching devices seen since the last call; never blocks."""
        ...

    def close(self) -> None: ...


class PyudevWatcher:
    """Kernel uevents (no udevd needed) of one subsystem and set of actions."""

    def __init__(self, subsystem: str = "module", actions: tuple[str, ...] = ("add",)) -> None:
        import pyudev  # noqa: PLC0415

        self._monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="kernel")
        self._monitor.filter_by(subsystem)
        self._monitor.start()
        self._actions = actions

    def fileno(self) -> int:
        return int(self._monitor.fileno())

    def drain(self) -> list[str]:
        names: list[str] = []
        while True:
            dev = self._monitor.poll(timeout=0)
            if dev is None:
                return names
            if dev.action in self._actions:
                names.append(str(dev.sys_name))

    def close(self) -> None:
        # pyudev closes the netlink socket with the monitor
        self._monitor = None
