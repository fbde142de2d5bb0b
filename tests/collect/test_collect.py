"""Collection over every real fixture, checked against the kernel's own log line as the
lab recorded it in each scenario's README, and over variants derived from them."""

from __future__ import annotations

import hashlib
import re
import sqlite3
import struct
from pathlib import Path

import pytest

from khod.collect.boot import collect
from khod.errors import KhodError
from khod.observation import BootKind, Severity
from khod.paths import HostPaths
from khod.sources import capture as cap
from tests import variants
from tests.builders import Host
from tests.conftest import FIXTURES, SysrootFactory, fixture_steps
from tests.fdtbuild import Node, kho_root, v1_subtree, v2_subtree, v3_subtree
from tests.parse.test_parse_luo import luo_fdt, luo_ser

KHO = "sys/kernel/debug/kho"
META_IN = f"{KHO}/in/sub_fdts/kexec-metadata"


def readme_expectations() -> dict[str, tuple[str, str | None, int | None]]:
    """'scenario/step' -> (boot_id, previous_release, count) from the lab's README.txt."""
    out = {}
    for readme in FIXTURES.glob("*/README.txt"):
        scenario = readme.parent.name
        for block in readme.read_text().split("\n== ")[1:]:
            step = block.split()[0]
            boot_id = re.search(r"boot_id:\s+(\S+)", block)
            exec_from = re.search(r"KHO: exec from: (\S+) \(count (\d+)\)\s", block)
            assert boot_id
            out[f"{scenario}/{step}"] = (
                boot_id.group(1),
                exec_from.group(1) if exec_from else None,
                int(exec_from.group(2)) if exec_from else None,
            )
    return out


EXPECTED = readme_expectations()


def test_every_fixture_step_has_a_readme_expectation() -> None:
    assert sorted(EXPECTED) == fixture_steps()


@pytest.mark.parametrize("step", fixture_steps())
def test_fixture_matches_what_the_kernel_logged(step: str) -> None:
    boot_id, release, count = EXPECTED[step]
    obs = collect(HostPaths(FIXTURES / step))
    assert obs.boot_id == boot_id
    if release is None:
        assert obs.kind is BootKind.COLD
        assert (obs.previous_release, obs.kexec_count) == (None, 0)
    else:
        assert obs.kind is BootKind.KEXEC
        assert (obs.previous_release, obs.kexec_count, obs.metadata_source) == (
            release,
            count,
            "kho",
        )
        assert obs.kho_abi == "kho-v4" and obs.memory_map_handed
    # the outgoing metadata always says: this release, count + 1
    if obs.kho_enabled:
        assert (obs.out_release, obs.out_kexec_count) == (obs.release, (count or 0) + 1)
    assert not [e for e in obs.events if e.severity is Severity.ERROR]


def test_kho_enabled_per_scenario() -> None:
    assert collect(HostPaths(FIXTURES / "cold/step0")).kho_enabled
    assert not collect(HostPaths(FIXTURES / "nokho/step2")).kho_enabled


def test_incoming_subtrees_of_the_pstore_kho_kernel() -> None:
    obs = collect(HostPaths(FIXTURES / "pstore-kho/step2"))
    assert [(s.name, s.size) for s in obs.subtrees] == [
        ("kexec-metadata", 73),
        ("pstore-kho", 262192),
    ]


def test_scratch_areas_and_blobs_are_kept() -> None:
    obs = collect(HostPaths(FIXTURES / "kexec1/step1"))
    assert [n for _, n in obs.scratch] == [16 << 20, 64 << 20, 16 << 20]
    names = {(b.direction, b.name) for b in obs.blobs}
    assert {
        ("in", "fdt"),
        ("in", "sub_fdts/kexec-metadata"),
        ("out", "sub_fdts/kexec-metadata"),
        ("out", "scratch_phys"),
    } <= names


def test_truncated_out_fdt_is_an_info_event_not_an_error() -> None:
    obs = collect(HostPaths(FIXTURES / "pstore/step0"))
    (ev,) = [e for e in obs.events if e.kind == "fdt-truncated"]
    assert ev.severity is Severity.INFO and "out/fdt" in ev.source


# --- older ABIs, built from the spec into a real sysroot ---


@pytest.mark.parametrize(
    ("compatible", "subtree", "address_prop"),
    [
        ("kho-v1", v1_subtree("memblock", 0x7000), "fdt"),
        ("kho-v2", v2_subtree("LUO", 0x7000), "preserved-data"),
        ("kho-v3", v3_subtree("kexec-metadata", 0x7000, 73), "preserved-data"),
        ("kho-v4;radix-v1;vmalloc-v1", v3_subtree("kexec-metadata", 0x7000, 73), "preserved-data"),
    ],
)
def test_older_abis_in_a_real_tree(
    sysroot: SysrootFactory,
    compatible: str,
    subtree: Node,
    address_prop: str,
) -> None:
    root = sysroot("kexec1/step1")
    variants.replace(root, f"{KHO}/in/fdt", kho_root(compatible, 0x1000, [subtree]))
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC and obs.kho_abi == compatible
    assert [s.name for s in obs.subtrees] == sorted({subtree.name, "kexec-metadata"})
    assert not [e for e in obs.events if e.severity is not Severity.INFO]


def test_pre_7_1_handover_has_no_metadata(sysroot: SysrootFactory) -> None:
    # 6.16-7.0 (kho-v1): no kexec-metadata subtree, no exec-from line: count is unknown
    root = sysroot("kexec1/step1")
    variants.replace(root, f"{KHO}/in/fdt", kho_root("kho-v1", 0x1000, []))
    variants.remove(root, META_IN)
    variants.drop_kmsg_lines(root, b"KHO: exec from")
    obs = collect(HostPaths(root))
    assert (obs.kind, obs.kho_abi, obs.previous_release, obs.kexec_count) == (
        BootKind.KEXEC,
        "kho-v1",
        None,
        None,
    )


def test_unknown_abi_is_recorded_as_such(sysroot: SysrootFactory) -> None:
    root = sysroot("kexec1/step1")
    variants.replace(root, f"{KHO}/in/fdt", kho_root("kho-v9", 0x1000, []))
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC and obs.kho_abi == "kho-v9"
    assert any(e.kind == "unknown-abi" for e in obs.events)
    assert any(b.name == "fdt" and b.direction == "in" for b in obs.blobs)


# --- rejected handovers (the kernel's own log lines) ---


def test_abi_mismatch_is_kexec_rejected_with_the_reason(sysroot: SysrootFactory) -> None:
    root = sysroot("kexec1/step1")
    variants.strip_handover(root)
    variants.append_kmsg(
        root,
        b"KHO: setup: handover FDT (0x10116b000) is incompatible with 'kho-v4'",
        b"KHO: disabling KHO revival",
    )
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC_REJECTED
    assert obs.kind_reason is not None and "incompatible with 'kho-v4'" in obs.kind_reason
    assert (obs.previous_release, obs.kexec_count) == (None, 0)


# --- bad input: one event each, the boot still recorded ---


@pytest.mark.parametrize(
    ("data", "kind", "text"),
    [
        (b"\x01\x00", "parse-error", "blob too small"),
        (b"\x01\x00\x00\x00" + bytes(68), "parse-error", "too small for v1"),
        (struct.pack("<I", 2) + bytes(69), "unknown-metadata-version", "version 2 not supported"),
    ],
)
def test_bad_metadata_falls_back_to_the_kernel_log(
    sysroot: SysrootFactory, data: bytes, kind: str, text: str
) -> None:
    root = sysroot("kexec1/step1")
    variants.replace(root, META_IN, data)
    obs = collect(HostPaths(root))
    assert (obs.previous_release, obs.kexec_count, obs.metadata_source) == (
        "7.3.4-khlab-a",
        1,
        "kmsg",
    )
    assert any(e.kind == kind and text in e.message for e in obs.events)
    assert any(b.name == "sub_fdts/kexec-metadata" and b.data == data for b in obs.blobs)


def test_log_and_blob_disagreeing_is_an_event(sysroot: SysrootFactory) -> None:
    root = sysroot("kexec1/step1")
    blob = bytearray((root / META_IN).read_bytes())
    struct.pack_into("<I", blob, 69, 5)
    variants.replace(root, META_IN, bytes(blob))
    obs = collect(HostPaths(root))
    assert obs.kexec_count == 5
    (ev,) = [e for e in obs.events if e.kind == "metadata-log-mismatch"]
    assert "count 5" in ev.message and "count 1" in ev.message


def test_missing_debugfs_uses_the_log_line(sysroot: SysrootFactory) -> None:
    root = sysroot("kexec1/step1")
    variants.remove(root, "sys/kernel/debug")
    obs = collect(HostPaths(root))
    assert (obs.kind, obs.previous_release, obs.kexec_count, obs.metadata_source) == (
        BootKind.KEXEC,
        "7.3.4-khlab-a",
        1,
        "kmsg",
    )
    assert obs.kho_enabled
    assert any(e.kind == "debugfs-missing" for e in obs.events)


def test_unreadable_files_are_events(sysroot: SysrootFactory) -> None:
    root = sysroot("kexec1/step1")
    variants.make_dir_in_place_of(root, f"{KHO}/in/fdt")
    variants.make_dir_in_place_of(root, "dev/kmsg")
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC  # the metadata blob is still there
    assert obs.kexec_count == 1
    msgs = [e.message for e in obs.events if e.kind == "read-error"]
    assert any("in/fdt: is a directory" in m for m in msgs)
    assert any("dev/kmsg: is a directory" in m for m in msgs)


def test_garbage_in_fdt(sysroot: SysrootFactory) -> None:
    root = sysroot("kexec1/step1")
    variants.replace(root, f"{KHO}/in/fdt", b"\x00" * 64)
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC and obs.kexec_count == 1 and obs.kho_abi is None
    assert any("not an FDT" in e.message for e in obs.events)


def test_no_boot_id_is_one_clear_error(sysroot: SysrootFactory) -> None:
    root = sysroot("cold/step0")
    variants.remove(root, "proc/sys/kernel/random/boot_id")
    with pytest.raises(KhodError, match=r"cannot identify this boot: .*boot_id: not found"):
        collect(HostPaths(root))


def test_empty_root(tmp_path: Path) -> None:
    with pytest.raises(KhodError, match="cannot identify this boot"):
        collect(HostPaths(tmp_path))


def test_7_4_bootmem_names_are_read_like_scratch(sysroot: SysrootFactory) -> None:
    # 7.4 renamed out/scratch_{phys,len} to out/bootmem_{phys,len}
    root = sysroot("kexec1/step1")
    out = root / KHO / "out"
    (out / "scratch_phys").rename(out / "bootmem_phys")
    (out / "scratch_len").rename(out / "bootmem_len")
    obs = collect(HostPaths(root))
    assert [n for _, n in obs.scratch] == [16 << 20, 64 << 20, 16 << 20]
    assert {b.name for b in obs.blobs} >= {"bootmem_phys", "bootmem_len"}


# --- kexec without a handover, KHO off after a KHO kernel, LUO -------------------------

LOADER = "proc/sys/kernel/bootloader_type"
LUO_IN = f"{KHO}/in/sub_fdts/LUO"
LUO_OUT = f"{KHO}/out/sub_fdts/LUO"


def kho_off_after_kho(root: Path) -> None:
    """kexec1/step1 as a kho=off kernel shows it: no kho/ at all, only the kernel's
    "found kexec handover data." line (KERNEL-INTERFACES section 10)."""
    variants.remove(root, KHO)
    variants.drop_kmsg_lines(root, b"KHO: exec from")
    variants.drop_kmsg_lines(root, b"KHO: scratch areas")
    cmdline = (root / "proc/cmdline").read_bytes().replace(b"kho=on", b"kho=off")
    variants.replace(root, "proc/cmdline", cmdline)


def test_a_kho_off_kernel_entered_from_a_kho_kernel_is_a_rejected_handover(
    sysroot: SysrootFactory,
) -> None:
    root = sysroot("kexec1/step1")
    kho_off_after_kho(root)
    variants.replace(root, LOADER, b"208\n")
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC_REJECTED
    assert obs.kind_reason and "found kexec handover data" in obs.kind_reason
    assert (obs.previous_release, obs.kexec_count, obs.kho_enabled) == (None, 0, False)
    assert "handover-ignored" in {e.kind for e in obs.events}


@pytest.mark.parametrize("step", ["cold/step0", "nokho/step1"])
def test_loaded_by_kexec_without_any_handover(sysroot: SysrootFactory, step: str) -> None:
    """kexec -c (nokho/step1 is one), or kexec -s into or from a kernel without KHO:
    nothing handed over, and the kernel says kexec loaded it."""
    root = sysroot(step)
    variants.replace(root, LOADER, b"208\n")
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC_NO_HANDOVER
    assert obs.kind_reason and "0xd0" in obs.kind_reason
    assert (obs.bootloader_type, obs.previous_release, obs.kexec_count) == (0xD0, None, 0)


@pytest.mark.parametrize(("content", "loader"), [(b"176\n", 0xB0), (None, None), (b"0\n", 0)])
def test_a_firmware_or_vmm_loader_or_none_told_is_a_cold_boot(
    sysroot: SysrootFactory, content: bytes | None, loader: int | None
) -> None:
    root = sysroot("cold/step0")
    if content is not None:
        variants.replace(root, LOADER, content)
    obs = collect(HostPaths(root))
    assert (obs.kind, obs.bootloader_type) == (BootKind.COLD, loader)
    assert not [e for e in obs.events if "bootloader" in e.source]


def test_a_garbled_bootloader_type_is_an_event_and_unknown(sysroot: SysrootFactory) -> None:
    root = sysroot("cold/step0")
    variants.replace(root, LOADER, b"kexec\n")
    obs = collect(HostPaths(root))
    assert (obs.kind, obs.bootloader_type) == (BootKind.COLD, None)
    assert any(e.source == "/" + LOADER for e in obs.events)


def test_an_accepted_handover_stays_kexec_whatever_the_loader(sysroot: SysrootFactory) -> None:
    root = sysroot("kexec1/step1")
    variants.replace(root, LOADER, b"208\n")
    obs = collect(HostPaths(root))
    assert (obs.kind, obs.bootloader_type, obs.kexec_count) == (BootKind.KEXEC, 0xD0, 1)


def luo_step(sysroot: SysrootFactory, incoming: bytes, outgoing: bytes, *log: bytes) -> Path:
    root = sysroot("kexec1/step1")
    variants.replace(root, LUO_IN, incoming)
    variants.replace(root, LUO_OUT, outgoing)
    variants.append_kmsg(root, *log, level=6)
    return root


def test_the_luo_state_a_live_update_handed_over(sysroot: SysrootFactory) -> None:

    root = luo_step(
        sysroot,
        luo_ser("luo-v5", 2, sessions_pa=0x10F000),
        luo_ser("luo-v5", 3),
        b"luo: Retrieved live update data, liveupdate number: 2",
    )
    obs = collect(HostPaths(root))
    assert (obs.luo_compatible, obs.liveupdate_num, obs.luo_sessions) == ("luo-v5", 2, True)
    assert not [e for e in obs.events if "luo" in e.kind]
    assert ("in", "sub_fdts/LUO") in {(b.direction, b.name) for b in obs.blobs}


def test_luo_blob_and_kernel_log_disagreeing_is_the_memory_reused(
    sysroot: SysrootFactory,
) -> None:
    """The log and the blob come from one struct the kernel read once: a blob that
    says another number than the log is no longer that struct (it was freed)."""
    root = luo_step(
        sysroot,
        luo_ser("luo-v5;block-v1", 4),
        luo_ser("luo-v5;block-v1", 9),
        b"luo: Retrieved live update data, liveupdate number: 5",
    )
    obs = collect(HostPaths(root))
    assert (obs.luo_compatible, obs.liveupdate_num, obs.luo_sessions) == (
        "luo-v5;block-v1",
        5,
        None,
    )
    kinds = {e.kind: e.message for e in obs.events}
    assert "liveupdate number 4" in kinds["luo-state-freed"]
    assert "is 9, expected 6" in kinds["outgoing-luo-mismatch"]


def test_luo_state_the_kernel_refused_is_quoted_and_an_unknown_one_kept_raw(
    sysroot: SysrootFactory,
) -> None:

    blob = luo_ser("luo-v6", 4)
    root = luo_step(
        sysroot, blob, luo_ser("luo-v5", 1), b"luo: LUO state is incompatible with 'luo-v5'"
    )
    obs = collect(HostPaths(root))
    assert (obs.luo_compatible, obs.liveupdate_num, obs.luo_sessions) == ("luo-v6", None, None)
    by_kind = {e.kind: e.message for e in obs.events}
    assert by_kind["kernel-luo-error"] == "luo: LUO state is incompatible with 'luo-v5'"
    assert "'luo-v6' not supported" in by_kind["unknown-luo-version"]
    assert "outgoing-luo-mismatch" not in by_kind  # not judged against what is unknown
    assert [b.data for b in obs.blobs if b.name == "sub_fdts/LUO" and b.direction == "in"] == [blob]


def test_an_fdt_luo_of_an_older_kernel(sysroot: SysrootFactory) -> None:

    root = luo_step(sysroot, luo_fdt("luo-v2", 6), luo_fdt("luo-v2", 7))
    obs = collect(HostPaths(root))
    assert (obs.luo_compatible, obs.liveupdate_num, obs.luo_sessions) == ("luo-v2", 6, None)


def test_the_boot_capture_keeps_who_loaded_the_kernel(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """The spool is what a restarted daemon ingests: a kexec without handover must not
    come back from it as a cold boot."""
    root = sysroot("nokho/step1")
    variants.replace(root, LOADER, b"208\n")
    spool = cap.capture(HostPaths(root), str(tmp_path / "spool"))
    assert spool is not None
    cap.unpack(spool, str(tmp_path / "tree"))
    obs = collect(HostPaths(tmp_path / "tree"))
    assert (obs.kind, obs.bootloader_type) == (BootKind.KEXEC_NO_HANDOVER, 0xD0)


@pytest.mark.parametrize("logged", [True, False])
def test_a_composite_luo_state_a_stock_kernel_refused_is_not_taken(
    sysroot: SysrootFactory, logged: bool
) -> None:
    """A luo-v5 kernel compares its 8 bytes ("luo-v5\\0\\0" against "luo-v5;b") and
    refuses the state: the number is not this boot's, the count starts again. Without
    the log line the outgoing compatible tells the same (the whole string compared)."""
    log = [b"luo: LUO state is incompatible with 'luo-v5'"] if logged else []
    root = luo_step(
        sysroot, luo_ser("luo-v5;block-v1", 3, sessions_pa=1), luo_ser("luo-v5", 1), *log
    )
    obs = collect(HostPaths(root))
    assert (obs.luo_compatible, obs.liveupdate_num, obs.luo_sessions) == (
        "luo-v5;block-v1",
        None,
        None,
    )
    by_kind = {e.kind: e.message for e in obs.events}
    assert "'luo-v5;block-v1' was not taken" in by_kind["luo-not-taken"]
    assert ("incompatible with 'luo-v5'" in by_kind["luo-not-taken"]) is logged
    assert "outgoing-luo-mismatch" not in by_kind  # 1: counted again from 0


# kho/in/sub_fdts/LUO as 7.3.4 showed it after boot, in the e2e's `luo` runs (boots 1
# and 2 of tests/vm/test_kernels_ahead.py, two runs on 2026-12-04): the page, handed
# back by the kernel once read, already reused by other data, zeroed, holding a string
# the system wrote there since, and the start of an ELF file
FREED_LUO = {
    "reused": bytes.fromhex("90ED000012000D00F0861F000000000038010000000000002C05000012000D00"),
    "zeroed": bytes(32),
    "string": bytes.fromhex("73797374656D642D756465762D747269676765722E7365727669636500000000"),
    "elf": bytes.fromhex("7F454C4602010100000000000000000003003E00010000000000000000000000"),
}


@pytest.mark.parametrize("seen", FREED_LUO)
def test_luo_state_the_kernel_took_and_freed_is_the_kernels_word(
    sysroot: SysrootFactory, seen: str
) -> None:
    """7.3.4 frees the incoming LUO state once read; debugfs goes on showing the memory.
    The log line gives the number, this kernel's own outgoing compatible the one it
    took; an info event, no error."""
    root = luo_step(
        sysroot,
        FREED_LUO[seen],
        luo_ser("luo-v5", 2),
        b"luo: Retrieved live update data, liveupdate number: 1",
    )
    obs = collect(HostPaths(root))
    assert (obs.luo_compatible, obs.liveupdate_num, obs.luo_sessions) == ("luo-v5", 1, None)
    by_kind = {e.kind: e for e in obs.events}
    assert by_kind["luo-state-freed"].severity == "info"
    assert not [e for e in obs.events if e.severity == "error"], obs.events
    assert "outgoing-luo-mismatch" not in by_kind  # 2 = 1 + 1


def recorded_freed_luo_boot(
    sysroot: SysrootFactory, url: str, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, Host]:
    """A boot whose kernel took LUO state number 1 and freed it (the page reused),
    recorded by khod --once into ``url``: its tree and the host."""
    root = luo_step(
        sysroot,
        FREED_LUO["reused"],
        luo_ser("luo-v5", 2),
        b"luo: Retrieved live update data, liveupdate number: 1",
    )
    h = Host(root, url, capsys=capsys)
    h.ingest()
    return root, h


def test_a_second_look_at_a_boot_whose_freed_luo_memory_changed_adds_no_second_event(
    sysroot: SysrootFactory, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """khod records the boot, and khoctl kexec looks at it again at its end (here khod
    --once again: both save the look the same way); the freed LUO page goes on being
    reused in between (the e2e saw it hold other bytes on each look). It is one fact
    about the boot: one event, the first look's words."""
    root, h = recorded_freed_luo_boot(sysroot, sqlite_url, capsys)
    first = [e for e in h.khoctl_json("show")["events"] if e["kind"] == "luo-state-freed"]
    for seen in ("zeroed", "string", "reused"):
        variants.replace(root, LUO_IN, FREED_LUO[seen])
        h.ingest()
    got = [e for e in h.khoctl_json("show")["events"] if e["kind"] == "luo-state-freed"]
    assert len(first) == 1, first
    assert got == first
    assert h.khoctl_json("show")["luo"]["liveupdate_num"] == 1


def test_a_freed_luo_event_an_earlier_khod_recorded_is_not_recorded_again(
    sysroot: SysrootFactory, sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """khod upgraded during a boot an earlier khod recorded: that khod keyed the event by
    its words; the next look (khoctl kexec's) sees the same fact, whatever the page
    holds by then, and adds no second event."""
    root, h = recorded_freed_luo_boot(sysroot, sqlite_url, capsys)
    db = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(db) as c:  # the row as the earlier khod wrote it
        kind, source, message = c.execute(
            "SELECT kind, source, message FROM events WHERE kind = 'luo-state-freed'"
        ).fetchone()
        by_words = hashlib.sha256(f"{kind}\0{source}\0{message}".encode()).hexdigest()
        c.execute("UPDATE events SET fingerprint = ? WHERE kind = ?", (by_words, kind))
    for seen in ("reused", "zeroed"):
        variants.replace(root, LUO_IN, FREED_LUO[seen])
        h.ingest()
    got = [e for e in h.khoctl_json("show")["events"] if e["kind"] == "luo-state-freed"]
    assert [e["message"] for e in got] == [message]


@pytest.mark.parametrize("step", fixture_steps())
def test_a_collected_boot_crosses_to_the_ingest_child_whole(step: str) -> None:
    """The daemon's collector child sends the boot to its first ingest as JSON: the
    blobs, the pstore records and the events arrive as they were collected."""
    from khod.config import Config
    from khod.contracts import IngestJob, decode, encode

    paths = HostPaths(FIXTURES / step)
    obs = collect(paths, 16 << 20)
    job = IngestJob(Config(), paths, obs, snapshot=Path("/s/metrics.json"), journal=True)
    got = decode(IngestJob, encode(job), "from the daemon")
    assert got == job
    assert got.obs is not None
    assert [b.data for b in got.obs.blobs] == [b.data for b in obs.blobs]
    assert [r.raw for r in got.obs.pstore] == [r.raw for r in obs.pstore]
