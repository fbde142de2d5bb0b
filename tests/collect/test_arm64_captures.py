"""The arm64 captures (tests/data/arm64-*): a real 7.3.4 arm64 kernel in QEMU ``virt``,
made by ``make capture-arm64``. What each boot shows is checked against what its kernel
logged, with khod's own parsers: the ``KHO: exec from`` line, the kexec-metadata blobs,
the KHO root FDT, ``/chosen`` in the boot FDT and in /proc/device-tree, pstore."""

from __future__ import annotations

import hashlib
import itertools
import shutil
from pathlib import Path

import pytest

from khod.collect.boot import collect
from khod.observation import BootKind
from khod.parse.fdt import FdtNode, parse_fdt
from khod.parse.kho import parse_kho_fdt
from khod.parse.kmsg import KhoLog, parse_kho_log, parse_kmsg
from khod.parse.metadata import KexecMetadata, parse_kexec_metadata
from khod.paths import HostPaths
from tests.conftest import DATA, restore_pstore_mtimes

SCENARIOS = ("chain", "nokho", "pstore")
KHO = "sys/kernel/debug/kho"
CHOSEN_KEXEC = "linux,booted-from-kexec"
CHOSEN_KHO = ("linux,kho-fdt", "linux,kho-scratch")


def scenario(name: str) -> Path:
    return DATA / f"arm64-{name}"


def plan(name: str) -> dict[int, tuple[str, str, str]]:
    """STEP -> (action, kernel, command line) from the scenario's README."""
    text = (scenario(name) / "README.txt").read_text()
    block = text.split("plan (STEP|ACTION|KERNEL|APPEND", 1)[1].split("\n\n", 1)[0]
    out = {}
    for line in block.splitlines()[1:]:
        step, action, kernel, append = line.strip().split("|", 3)
        out[int(step)] = (action, kernel, append)
    return out


def steps(name: str) -> list[Path]:
    return sorted((p for p in scenario(name).iterdir() if p.is_dir()), key=lambda p: p.name)


def kho_log(root: Path) -> KhoLog:
    return parse_kho_log(parse_kmsg((root / "dev/kmsg").read_bytes()))


def metadata(root: Path, direction: str) -> KexecMetadata | None:
    p = root / KHO / direction / "sub_fdts/kexec-metadata"
    return parse_kexec_metadata(p.read_bytes(), str(p)) if p.exists() else None


def chosen_of_boot_fdt(root: Path) -> FdtNode:
    fdt = parse_fdt((root / "sys/firmware/fdt").read_bytes(), "sys/firmware/fdt")
    (node,) = [c for c in fdt.children if c.name == "chosen"]
    return node


def chosen_names(root: Path) -> set[str]:
    """/chosen's properties, read both ways; the two must agree."""
    from_fdt = {p.name for p in chosen_of_boot_fdt(root).properties}
    from_proc = {p.name for p in (root / "proc/device-tree/chosen").iterdir()}
    assert from_fdt | {"name"} == from_proc | {"name"}
    return from_fdt


def release(root: Path) -> str:
    return (root / "proc/sys/kernel/osrelease").read_text().strip()


def step_number(root: Path) -> int:
    return int(root.name.removeprefix("step").split("-")[0])


@pytest.mark.parametrize("name", SCENARIOS)
def test_capture_files_match_their_manifest(name: str) -> None:
    base = scenario(name)
    manifest: dict[str, str] = {}
    for line in (base / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split(maxsplit=1)
        manifest[rel] = digest
    present = {str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()}
    assert present - {"SHA256SUMS"} == set(manifest)
    for rel, digest in manifest.items():
        assert hashlib.sha256((base / rel).read_bytes()).hexdigest() == digest, rel


@pytest.mark.parametrize("name", SCENARIOS)
def test_every_boot_is_an_arm64_7_3_4_kernel_of_the_plan(name: str) -> None:
    for root in steps(name):
        cmdline = (root / "proc/cmdline").read_text().strip()
        assert cmdline.endswith(f"khlab.step={step_number(root)}")
        assert release(root).startswith("7.3.4-khod-arm64-")
        assert "aarch64-linux-gnu-gcc" in (root / "proc/version").read_text()
        assert (root / "proc/sys/kernel/random/boot_id").read_text().strip()


def test_kho_chain_counts_as_the_kernel_logged_them() -> None:
    """cold -> KHO kexec (count 1) -> KHO kexec (count 2): the log line, the incoming blob
    and the previous boot's release all say the same."""
    roots = steps("chain")
    assert [r.name for r in roots] == ["step0", "step1", "step2"]
    for prev, root in itertools.pairwise(roots):
        log = kho_log(root)
        meta = metadata(root, "in")
        assert meta is not None
        assert log.found_handover
        assert log.exec_from_count == step_number(root)
        assert (log.exec_from_release, log.exec_from_count) == (
            meta.previous_release,
            meta.kexec_count,
        )
        assert meta.previous_release == release(prev)
        kho_root = parse_kho_fdt((root / KHO / "in/fdt").read_bytes(), "in/fdt")
        assert kho_root.compatible == "kho-v4"
        assert "kexec-metadata" in [s.name for s in kho_root.subtrees]
    cold = kho_log(roots[0])
    assert cold.exec_from_release is None and not cold.found_handover
    assert not (roots[0] / KHO / "in").exists()


@pytest.mark.parametrize("name", SCENARIOS)
def test_outgoing_metadata_is_this_release_and_the_next_count(name: str) -> None:
    for root in steps(name):
        out = metadata(root, "out")
        if "kho=on" not in (root / "proc/cmdline").read_text():
            assert out is None and not (root / KHO).exists()
            continue
        assert out is not None
        assert (out.previous_release, out.kexec_count) == (
            release(root),
            (kho_log(root).exec_from_count or 0) + 1,
        )


@pytest.mark.parametrize("name", SCENARIOS)
def test_booted_from_kexec_is_on_every_kexec_file_load_boot_only(name: str) -> None:
    """/chosen/linux,booted-from-kexec: present on each boot the kernel's file loader
    started, with or without a handover; absent on a cold boot and after a VM reset."""
    actions = plan(name)
    for root in steps(name):
        kexeced = "-boot" not in root.name and actions[step_number(root)][0] == "kexec-s"
        assert (CHOSEN_KEXEC in chosen_names(root)) is kexeced, root.name


def test_a_kexec_without_handover_is_still_a_kexec_on_arm64() -> None:
    """Into a kho=off kernel: the handover is offered (/chosen has linux,kho-fdt) and
    ignored (no exec-from line, no kho/ in debugfs). Out of it: nothing is offered."""
    step0, step1, step2 = steps("nokho")
    assert "kho=off" in (step1 / "proc/cmdline").read_text()
    log1 = kho_log(step1)
    assert log1.exec_from_release is None
    assert not (step1 / KHO).exists()
    assert {CHOSEN_KEXEC, *CHOSEN_KHO} <= chosen_names(step1)
    log2 = kho_log(step2)
    assert log2.exec_from_release is None and not log2.found_handover
    assert not (step2 / KHO / "in").exists()
    names2 = chosen_names(step2)
    assert CHOSEN_KEXEC in names2 and not names2 & set(CHOSEN_KHO)
    assert not chosen_names(step0) & {CHOSEN_KEXEC, *CHOSEN_KHO}


def test_chain_offers_the_handover_in_chosen() -> None:
    for root in steps("chain")[1:]:
        assert {CHOSEN_KEXEC, *CHOSEN_KHO} <= chosen_names(root)


def test_pstore_records_survive_a_kho_kexec_and_a_panic_reset() -> None:
    base = scenario("pstore")
    assert sorted(p.name for p in steps("pstore")) == ["step0", "step0-boot2", "step1"]
    after_kexec = {p.name for p in (base / "step1/sys/fs/pstore").iterdir()}
    assert {"pmsg-ramoops-0", "dmesg-ramoops-0"} <= after_kexec
    after_reset = base / "step0-boot2/sys/fs/pstore"
    pmsg = (after_reset / "pmsg-ramoops-0").read_text()
    assert f"khlab pmsg: step 1 release {release(base / 'step1')}" in pmsg
    panic = [p.read_text(errors="replace") for p in after_reset.glob("dmesg-ramoops-*")]
    assert any("Kernel panic" in t and "sysrq" in t.lower() for t in panic)
    assert kho_log(base / "step1").exec_from_release == release(base / "step0")


@pytest.mark.parametrize(("name", "step"), [("chain", "step1"), ("chain", "step2")])
def test_khod_records_the_arm64_kho_kexecs(name: str, step: str) -> None:
    root = scenario(name) / step
    log = kho_log(root)
    obs = collect(HostPaths(root))
    assert obs.kind is BootKind.KEXEC
    assert (obs.previous_release, obs.kexec_count) == (log.exec_from_release, log.exec_from_count)
    assert obs.boot_id == (root / "proc/sys/kernel/random/boot_id").read_text().strip()


def test_khod_records_the_arm64_cold_boots(tmp_path: Path) -> None:
    for src in (scenario("chain") / "step0", scenario("pstore") / "step0-boot2"):
        root = tmp_path / src.parent.name / src.name
        shutil.copytree(src, root)
        restore_pstore_mtimes(root)
        obs = collect(HostPaths(root))
        assert obs.kind is BootKind.COLD
        assert (obs.previous_release, obs.kexec_count) == (None, 0)
