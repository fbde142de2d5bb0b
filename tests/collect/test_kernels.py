"""The kernels a fleet runs besides 7.3.4 x86 with debugfs, as variants derived from the
real captures (tests/variants.py) until captures of those kernels exist: x86 without
debugfs, arm64's /chosen, 7.0's KHO on by default, 7.4's names."""

from __future__ import annotations

from khod.collect.boot import collect
from khod.observation import BootKind, Severity
from khod.parse.bootinfo import parse_chosen_fdt, parse_kho_data, parse_setup_data_type
from khod.paths import HostPaths
from tests import variants
from tests.conftest import SysrootFactory
from tests.fdtbuild import Node, build_fdt, u64le


def test_x86_without_debugfs_sees_the_handover_in_setup_data(sysroot: SysrootFactory) -> None:
    """SETUP_KEXEC_KHO in boot_params: a handover was passed, though neither debugfs nor
    the log tells it (a 7.0 kernel, debugfs not mounted)."""
    root = sysroot("kexec1/step1")
    variants.without_debugfs(root)
    variants.without_handover_lines(root)
    variants.replace(root, "proc/sys/kernel/bootloader_type", b"208\n")
    variants.setup_data_kho(root)
    obs = collect(HostPaths(root))
    assert (obs.kind, obs.kho_enabled) == (BootKind.KEXEC, True)


def test_setup_data_without_kho_is_a_kexec_without_handover(sysroot: SysrootFactory) -> None:
    root = sysroot("nokho/step1")
    variants.replace(root, "proc/sys/kernel/bootloader_type", b"208\n")
    variants.replace(root, "sys/kernel/boot_params/setup_data/0/type", b"0x1\n")
    assert collect(HostPaths(root)).kind is BootKind.KEXEC_NO_HANDOVER


def test_arm64_booted_from_kexec_without_handover(sysroot: SysrootFactory) -> None:
    """No bootloader_type on arm64: /chosen/linux,booted-from-kexec tells a kexec."""
    root = sysroot("nokho/step1")
    variants.chosen(root, "linux,booted-from-kexec")
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC_NO_HANDOVER
    assert obs.kind_reason is not None and "linux,booted-from-kexec" in obs.kind_reason


def test_arm64_cold_boot_has_no_booted_from_kexec(sysroot: SysrootFactory) -> None:
    root = sysroot("nokho/step0")
    variants.chosen(root)
    assert collect(HostPaths(root)).kind is BootKind.COLD


def test_arm64_raw_fdt_is_read_where_proc_device_tree_is_not(sysroot: SysrootFactory) -> None:
    root = sysroot("nokho/step1")
    chosen = Node("chosen", [("linux,booted-from-kexec", b""), ("bootargs", b"x\0")])
    variants.replace(root, "sys/firmware/fdt", build_fdt(Node("", [], [chosen])))
    assert collect(HostPaths(root)).kind is BootKind.KEXEC_NO_HANDOVER


def test_arm64_handover_offered_to_a_kho_off_kernel_is_refused(sysroot: SysrootFactory) -> None:
    """/chosen keeps linux,kho-fdt also when the kernel runs kho=off (section 12)."""
    root = sysroot("kexec1/step1")
    variants.without_debugfs(root)
    variants.without_handover_lines(root)
    variants.drop_kmsg_lines(root, b"KHO: scratch areas")
    cmdline = (root / "proc/cmdline").read_bytes().replace(b"kho=on", b"kho=off")
    variants.replace(root, "proc/cmdline", cmdline)
    variants.chosen(root, "linux,booted-from-kexec", "linux,kho-fdt", "linux,kho-scratch")
    obs = collect(HostPaths(root))
    assert (obs.kind, obs.kho_enabled) == (BootKind.KEXEC_REJECTED, False)
    assert obs.kind_reason is not None and "linux,kho-fdt" in obs.kind_reason


def test_kho_on_by_the_kernels_default_without_kho_on_the_command_line(
    sysroot: SysrootFactory,
) -> None:
    """Ubuntu 26.04's 7.0: CONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=y, no kho= given."""
    root = sysroot("cold/step0")
    variants.without_debugfs(root)
    variants.drop_kmsg_lines(root, b"KHO: scratch areas")
    cmdline = (root / "proc/cmdline").read_bytes().replace(b"kho=on ", b"")
    variants.replace(root, "proc/cmdline", cmdline)
    release = (root / "proc/sys/kernel/osrelease").read_text().strip()
    variants.replace(
        root,
        f"boot/config-{release}",
        b"CONFIG_KEXEC_HANDOVER=y\nCONFIG_KEXEC_HANDOVER_ENABLE_DEFAULT=y\n",
    )
    assert collect(HostPaths(root)).kho_enabled is True
    variants.replace(root, f"boot/config-{release}", b"CONFIG_KEXEC_HANDOVER=y\n")
    assert collect(HostPaths(root)).kho_enabled is False


def test_74_bootmem_names_are_read_as_scratch(sysroot: SysrootFactory) -> None:
    root = sysroot("cold/step0")
    kho = root / "sys/kernel/debug/kho/out"
    phys, size = (kho / "scratch_phys").read_bytes(), (kho / "scratch_len").read_bytes()
    before = collect(HostPaths(root)).scratch
    (kho / "scratch_phys").rename(kho / "bootmem_phys")
    (kho / "scratch_len").rename(kho / "bootmem_len")
    assert (kho / "bootmem_phys").read_bytes() == phys and size
    assert collect(HostPaths(root)).scratch == before != ()


def test_boot_info_parsers() -> None:
    assert parse_setup_data_type(b"0xa\n", "t") == 0xA
    assert parse_kho_data(u64le(1) + u64le(2) + u64le(3) + u64le(4), "d").scratch_size == 4
    chosen = Node("chosen", [("linux,kho-fdt", u64le(0) * 2)])
    got = parse_chosen_fdt(build_fdt(Node("", [], [chosen])), "fdt")
    assert (got.booted_from_kexec, got.kho_offered) == (False, True)


def test_the_fdt_string_list_compatible_is_read_as_the_composite_is() -> None:
    """ "kho-v4", "vmalloc-v1" (NUL-separated) beside "kho-v4;vmalloc-v1": the base is
    known, the subtrees are read, the whole string decides the ABI."""
    from khod.parse.compat import same_abi, split_compat
    from khod.parse.kho import parse_kho_fdt
    from tests.fdtbuild import kho_root, v3_subtree

    for compatible in ("kho-v4\0vmalloc-v1\0radix-v1", "kho-v4;vmalloc-v1;radix-v1"):
        root = parse_kho_fdt(kho_root(compatible, 0x1000, [v3_subtree("LUO", 0x2000, 32)]), "f")
        assert (root.known, root.base) == (True, "kho-v4")
        assert [(s.name, s.blob_size) for s in root.subtrees] == [("LUO", 32)]
        assert split_compat(root.compatible).tags == ("vmalloc-v1", "radix-v1")
    assert not same_abi("kho-v4\\0vmalloc-v1", "kho-v4\\0vmalloc-v1\\0radix-v1")
    assert same_abi("kho-v4\\0vmalloc-v1", "kho-v4\\0vmalloc-v1")


def test_a_handover_without_in_fdt_is_still_a_kexec(sysroot: SysrootFactory) -> None:
    """kho.rst: in/fdt "may disappear" once its consumers are done; the subtrees stay."""
    root = sysroot("kexec1/step1")
    variants.remove(root, "sys/kernel/debug/kho/in/fdt")
    obs = collect(HostPaths(root))
    assert (obs.kind, obs.kexec_count, obs.kho_abi) == (BootKind.KEXEC, 1, None)
    assert "kexec-metadata" in {s.name for s in obs.subtrees}
    assert not [e for e in obs.events if e.severity is not Severity.INFO], obs.events
