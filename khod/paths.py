"""HostPaths: the one place where host paths are spelled.

Every path to the kernel is derived from one root (``--sysroot``), so the same
code reads a live host (root ``/``) and a captured fixture tree.
"""

from __future__ import annotations

from pathlib import Path

# KHO debugfs names: scratch_* until 7.3, bootmem_* from 7.4 (liveupdate 8fe64603a475).
SCRATCH_NAMES = (("scratch_phys", "scratch_len"), ("bootmem_phys", "bootmem_len"))


class HostPaths:
    """Immutable, compared by root. A plain class, not a dataclass: the boot capture
    imports it before anything heavy, and ``dataclasses`` costs it more than the rest."""

    __slots__ = ("root",)
    root: Path

    def __init__(self, root: Path = Path("/")) -> None:
        object.__setattr__(self, "root", root)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"HostPaths is immutable: cannot set {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostPaths) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def __repr__(self) -> str:
        return f"HostPaths(root={self.root!r})"

    def __reduce__(self) -> tuple[type[HostPaths], tuple[Path]]:
        return HostPaths, (self.root,)

    def _p(self, rel: str) -> Path:
        return self.root / rel

    def rel(self, path: Path) -> str:
        """The path as shown to users and stored: relative to the root, with a leading /."""
        try:
            return "/" + str(path.relative_to(self.root))
        except ValueError:
            return str(path)

    # --- KHO debugfs (6.16+) ---
    @property
    def debugfs(self) -> Path:
        return self._p("sys/kernel/debug")

    @property
    def kho(self) -> Path:
        return self._p("sys/kernel/debug/kho")

    @property
    def kho_in(self) -> Path:
        return self.kho / "in"

    @property
    def kho_out(self) -> Path:
        return self.kho / "out"

    @property
    def kho_in_fdt(self) -> Path:
        return self.kho_in / "fdt"

    @property
    def kho_in_subtrees(self) -> Path:
        return self.kho_in / "sub_fdts"

    @property
    def kho_out_fdt(self) -> Path:
        return self.kho_out / "fdt"

    @property
    def kho_out_subtrees(self) -> Path:
        return self.kho_out / "sub_fdts"

    @property
    def kho_out_finalize(self) -> Path:
        return self.kho_out / "finalize"

    # --- pstore ---
    @property
    def pstore(self) -> Path:
        return self._p("sys/fs/pstore")

    @property
    def systemd_pstore_archive(self) -> Path:
        return self._p("var/lib/systemd/pstore")

    # --- boot identity ---
    @property
    def boot_id(self) -> Path:
        return self._p("proc/sys/kernel/random/boot_id")

    @property
    def osrelease(self) -> Path:
        return self._p("proc/sys/kernel/osrelease")

    @property
    def cmdline(self) -> Path:
        return self._p("proc/cmdline")

    @property
    def proc_stat(self) -> Path:
        return self._p("proc/stat")

    @property
    def bootloader_type(self) -> Path:
        """x86 only: the boot protocol's type_of_loader (0xD0 kexec, 0xB0 QEMU)."""
        return self._p("proc/sys/kernel/bootloader_type")

    @property
    def setup_data(self) -> Path:
        """x86 only: the boot protocol's setup_data list (N/type, N/data)."""
        return self._p("sys/kernel/boot_params/setup_data")

    @property
    def firmware_fdt(self) -> Path:
        """The raw device tree this kernel booted with (arm64 and other DT machines)."""
        return self._p("sys/firmware/fdt")

    @property
    def device_tree_chosen(self) -> Path:
        """The boot device tree's /chosen, unflattened: one file per property."""
        return self._p("proc/device-tree/chosen")

    @property
    def machine_id(self) -> Path:
        return self._p("etc/machine-id")

    @property
    def journal_dirs(self) -> tuple[Path, Path]:
        """The persistent and the volatile journal."""
        return (self._p("var/log/journal"), self._p("run/log/journal"))

    @property
    def kmsg(self) -> Path:
        return self._p("dev/kmsg")

    # --- kexec and LUO ---
    @property
    def kexec_loaded(self) -> tuple[Path, Path]:
        return (self._p("sys/kernel/kexec_loaded"), self._p("sys/kernel/kexec/loaded"))

    @property
    def lockdown(self) -> Path:
        return self._p("sys/kernel/security/lockdown")

    @property
    def liveupdate(self) -> Path:
        return self._p("dev/liveupdate")

    def boot_image(self, release: str) -> tuple[Path, Path]:
        """Where a distribution installs the kernel of ``release``: Debian's
        /boot/vmlinuz-RELEASE, kernel-install's /lib/modules/RELEASE/vmlinuz."""
        return (self._p(f"boot/vmlinuz-{release}"), self._p(f"lib/modules/{release}/vmlinuz"))

    def boot_config(self, release: str) -> tuple[Path, Path]:
        return (self._p(f"boot/config-{release}"), self._p(f"lib/modules/{release}/config"))
