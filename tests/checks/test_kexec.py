"""khoctl check / kexec / record-kexec on the real outgoing-state captures and variants
derived from them, with a fake kexec and systemctl on PATH that record their argv (the
real kexec runs in the end-to-end suite), and the verdict at the next boot."""

from __future__ import annotations

import gzip
import json
import os
import sqlite3
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from khod.cli import khoctl
from khod.cli.common import run_main
from khod.parse import kimage
from tests import variants
from tests.builders import Host
from tests.conftest import SysrootFactory
from tests.fdtbuild import kho_root
from tests.kimagebuild import KHO_CONFIG, NO_KHO_CONFIG, arm64_image, bzimage

KHO = "sys/kernel/debug/kho"
FAKE = """#!{python}
import json, os, sys
with open({log!r}, "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0])] + sys.argv[1:]) + "\\n")
if sys.argv[1:] == ["--version"]:
    print("kexec-tools 2.0.25")
elif {fail!r} and "-l" in sys.argv:
    print("Cannot load the kernel: Invalid argument", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def fakebin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    for name in ("kexec", "systemctl"):
        write_fake(d, name, fail=False)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    return d


def write_fake(d: Path, name: str, *, fail: bool) -> None:
    p = d / name
    p.write_text(
        FAKE.format(
            python=os.path.realpath(sys.executable),
            log=str(d / "calls.log"),
            fail=fail,
        )
    )
    p.chmod(p.stat().st_mode | stat.S_IXUSR)


def calls(fakebin: Path) -> list[list[str]]:
    log = fakebin / "calls.log"
    if not log.exists():
        return []
    return [c for c in map(json.loads, log.read_text().splitlines()) if c[1:] != ["--version"]]


def ctl(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    capsys.readouterr()
    rc = run_main("khoctl", khoctl.main, list(argv))
    out = capsys.readouterr()
    try:
        return rc, json.loads(out.out), out.err
    except ValueError:
        return rc, out.out, out.err


def on(
    capsys: pytest.CaptureFixture[str], root: Path, *argv: str, db: str | None = None
) -> tuple[int, Any, str]:
    """khoctl on the host at ``root`` (and the store at ``db``): exit code, the JSON
    document it printed (else its text), its standard error."""
    return ctl(capsys, *Host(root, db).khoctl_argv(*argv))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "vmlinuz-7.3.4-khlab-b"
    p.write_bytes(bzimage("7.3.4-khlab-b"))
    return p


def by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


# --- the image parser ---


def test_bzimage_from_the_spec_is_read() -> None:
    img = kimage.parse_kernel_image(bzimage("7.3.4-khlab-b"), "x")
    assert (img.kind, img.release, img.protocol, img.compression) == (
        "bzImage",
        "7.3.4-khlab-b",
        "2.15",
        "gzip",
    )
    vm = kimage.decompress_payload(img, "x")
    assert vm is not None and kimage.kho_abis_in(vm) == ["kho-v4"]
    cfg = kimage.ikconfig_in(vm)
    assert cfg is not None and kimage.config_value(cfg, "CONFIG_KEXEC_HANDOVER") == "y"


def test_xz_payload_and_arm64() -> None:
    img = kimage.parse_kernel_image(bzimage("7.2.0", compression="xz", abi="kho-v4"), "x")
    vm = kimage.decompress_payload(img, "x")
    assert img.compression == "xz" and vm is not None and kimage.kho_abis_in(vm) == ["kho-v4"]
    a = kimage.parse_kernel_image(arm64_image("7.3.4-arm"), "a")
    assert (a.kind, a.release) == ("arm64-Image", "7.3.4-arm")


def real_config_block(config: str = KHO_CONFIG) -> bytes:
    return b"IKCFG_ST" + gzip.compress(config.encode()) + b"IKCFG_ED"


def test_ikconfig_after_decoy_markers_is_found() -> None:
    # decoys before the real block: markers with no gzip stream after them
    vm = b"\0" * 64 + b"IKCFG_ST\0\0" * 1000 + b"IKCFG_STIKCFG_ED" + real_config_block()
    cfg = kimage.ikconfig_in(vm)
    assert cfg is not None and kimage.config_value(cfg, "CONFIG_KEXEC_HANDOVER") == "y"


@pytest.mark.parametrize(
    "hostile",
    [
        b"IKCFG_ST" * (1 << 20),  # 8 MiB of start markers, no end marker
        b"IKCFG_S" * (1 << 20) + b"IKCFG_ED",  # 7 MiB of partial markers
        (b"IKCFG_ST" + b"\x1f\x8b\x08\0" + b"IKCFG_E") * (1 << 19),  # gzip magics, bad streams
    ],
    ids=["start-markers", "partial-markers", "bad-gzip"],
)
def test_hostile_ikconfig_is_no_config(hostile: bytes) -> None:
    assert kimage.ikconfig_in(hostile) is None


def test_an_ikconfig_bomb_is_no_config() -> None:
    bomb = b"IKCFG_ST" + gzip.compress(b"CONFIG_X=y\n" * (1 << 20)) + b"IKCFG_ED"
    assert kimage.ikconfig_in(bomb) is None


def test_check_on_a_hostile_image_says_no_config(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "vmlinuz"
    img.write_bytes(bzimage("7.3.4-x", config=None, pad=0, vmlinux_tail=b"IKCFG_ST" * (1 << 20)))
    rc, res, err = on(capsys, sysroot("kexec1/step0"), "check", "--json", "--kernel", str(img))
    c = by_name(res)["image-config"]
    assert (rc, c["ok"], c["severity"], err) == (0, False, "warning", "")
    assert "no embedded IKCONFIG" in c["detail"]


@pytest.mark.parametrize(
    ("release", "abi"),
    [
        ("6.15.0", None),
        ("6.16.1", "kho-v1"),
        ("6.19.3", "kho-v1"),
        ("7.0.0", "kho-v1"),
        ("7.1.2", "kho-v3"),
        ("7.2.0", "kho-v4"),
        ("7.3.4-khlab-a", "kho-v4"),
    ],
)
def test_release_table(release: str, abi: str | None) -> None:
    assert kimage.kho_abi_for_release(release) == abi


# --- khoctl check on real captures and derived variants ---


def test_check_passes_on_a_real_cold_boot(
    sysroot: SysrootFactory, image: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sysroot("kexec1/step0")
    rc, res, _ = on(capsys, root, "check", "--json", "--kernel", str(image))
    assert rc == 0 and res["ok"] is True
    c = by_name(res)
    assert set(c) >= {
        "kho-enabled",
        "debugfs",
        "scratch",
        "out-fdt",
        "outgoing-metadata",
        "finalize",
        "image",
        "image-config",
        "abi",
        "kexec-tools",
        "lockdown",
        "kexec-loaded",
        "liveupdate",
    }
    assert all(set(x) == {"name", "ok", "severity", "detail"} for x in res["checks"])
    assert c["outgoing-metadata"]["detail"] == "7.3.4-khlab-a count 1"
    assert "both speak 'kho-v4' (target: image)" in c["abi"]["detail"]
    assert c["scratch"]["detail"].startswith("3 areas: 16 MiB, 64 MiB, 16 MiB; ")


def test_check_on_a_real_kexecd_boot_without_out_fdt(
    sysroot: SysrootFactory, image: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, res, _ = on(capsys, sysroot("kexec1/step1"), "check", "--json", "--kernel", str(image))
    c = by_name(res)
    assert rc == 0 and c["out-fdt"]["ok"] and c["out-fdt"]["severity"] == "info"
    assert c["outgoing-metadata"]["detail"] == "7.3.4-khlab-a count 2"


def test_check_on_a_truncated_out_fdt_is_informational(
    sysroot: SysrootFactory, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, res, _ = on(capsys, sysroot("pstore/step0"), "check", "--json")
    c = by_name(res)
    assert rc == 0 and not c["out-fdt"]["ok"] and c["out-fdt"]["severity"] == "info"


def test_kho_off_is_an_error(
    sysroot: SysrootFactory, image: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, res, _ = on(capsys, sysroot("nokho/step0"), "check", "--json", "--kernel", str(image))
    assert rc == 1 and res["ok"] is False
    assert by_name(res)["kho-enabled"]["ok"] is False


@pytest.mark.parametrize(
    ("lens", "ok", "severity"),
    [
        (b"0x10\n0x10\n0x10\n", False, "error"),  # 48 bytes: no segment fits
        (b"0x0\n0x0\n0x0\n", False, "error"),
    ],
)
def test_scratch_too_small(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    lens: bytes,
    ok: bool,
    severity: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = sysroot("kexec1/step0")
    variants.replace(root, f"{KHO}/out/scratch_len", lens)
    _, res, _ = on(capsys, root, "check", "--json", "--kernel", str(image))
    s = by_name(res)["scratch"]
    assert (s["ok"], s["severity"]) == (ok, severity)


def test_foreign_abi_target_is_an_error(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a stand-in for the lab's 7.3.4-khlab-v3abi: a 7.3 release that speaks kho-v3
    img = tmp_path / "vmlinuz"
    img.write_bytes(bzimage("7.3.4-khlab-v3abi", abi="kho-v3"))
    rc, res, _ = on(capsys, sysroot("kexec1/step0"), "check", "--json", "--kernel", str(img))
    a = by_name(res)["abi"]
    assert rc == 1 and not a["ok"] and a["severity"] == "error"
    assert "'kho-v4' (out/fdt)" in a["detail"] and "'kho-v3' (image)" in a["detail"]


def test_abi_from_the_release_table_when_the_image_does_not_say(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "vmlinuz"
    img.write_bytes(bzimage("7.0.3", abi=None))
    _, res, _ = on(capsys, sysroot("kexec1/step0"), "check", "--json", "--kernel", str(img))
    a = by_name(res)["abi"]
    assert not a["ok"] and "'kho-v1' (release table)" in a["detail"]


def test_missing_outgoing_metadata(
    sysroot: SysrootFactory, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sysroot("kexec1/step1")
    variants.remove(root, f"{KHO}/out/sub_fdts/kexec-metadata")
    rc, res, _ = on(capsys, root, "check", "--json")
    m = by_name(res)["outgoing-metadata"]
    assert not m["ok"] and "no out/sub_fdts/kexec-metadata" in m["detail"]
    # the handover itself is whole: the next boot's chain comes from khoctl's attempt
    # record, so a warning that says so, not a refusal to kexec
    assert (rc, m["severity"]) == (0, "warning"), m
    assert "khoctl kexec's attempt record" in m["detail"]


def seven_oh(root: Path, finalize: bytes) -> None:
    """A 7.0-style tree: kho-v1 out/fdt, no kexec-metadata, out/finalize."""
    variants.replace(root, "proc/sys/kernel/osrelease", b"7.0.2\n")
    variants.replace(root, f"{KHO}/out/fdt", kho_root("kho-v1", 0, []))
    variants.remove(root, f"{KHO}/out/sub_fdts/kexec-metadata")
    variants.replace(root, f"{KHO}/out/finalize", finalize)


@pytest.mark.parametrize(("finalize", "ok"), [(b"0\n", False), (b"1\n", True)])
def test_unfinalized_7_0_tree(
    sysroot: SysrootFactory,
    fakebin: Path,
    finalize: bytes,
    ok: bool,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = sysroot("kexec1/step0")
    seven_oh(root, finalize)
    rc, res, _ = on(capsys, root, "check", "--json")
    c = by_name(res)
    assert c["finalize"]["ok"] is ok and rc == (0 if ok else 1)
    assert c["outgoing-metadata"]["ok"] and c["outgoing-metadata"]["severity"] == "info"


def test_target_without_handover_support(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "vmlinuz"
    img.write_bytes(bzimage("7.3.4-nokho", abi="kho-v4", config=NO_KHO_CONFIG))
    rc, res, _ = on(capsys, sysroot("kexec1/step0"), "check", "--json", "--kernel", str(img))
    c = by_name(res)["image-config"]
    assert rc == 1 and not c["ok"] and "CONFIG_KEXEC_HANDOVER" in c["detail"]


def test_target_config_from_boot(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sysroot("kexec1/step0")
    img = tmp_path / "vmlinuz"
    img.write_bytes(bzimage("7.3.4-x", config=None))
    variants.replace(root, "boot/config-7.3.4-x", NO_KHO_CONFIG.encode())
    _, res, _ = on(capsys, root, "check", "--json", "--kernel", str(img))
    c = by_name(res)["image-config"]
    assert not c["ok"] and "/boot/config-7.3.4-x" in c["detail"]


def test_not_a_kernel_image(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    img = tmp_path / "junk"
    img.write_bytes(b"\x7fELF" + bytes(4096))
    rc, res, _ = on(capsys, sysroot("kexec1/step0"), "check", "--json", "--kernel", str(img))
    assert rc == 1 and "not a bzImage" in by_name(res)["image"]["detail"]


def test_loaded_image_liveupdate_and_lockdown(
    sysroot: SysrootFactory, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sysroot("kexec1/step0")
    variants.replace(root, "sys/kernel/kexec_loaded", b"1\n")
    variants.replace(root, "dev/liveupdate", b"")
    variants.replace(root, "sys/kernel/security/lockdown", b"none [integrity] confidentiality\n")
    rc, res, _ = on(capsys, root, "check", "--json")
    c = by_name(res)
    assert rc == 0
    assert (c["kexec-loaded"]["ok"], c["kexec-loaded"]["severity"]) == (False, "warning")
    assert c["liveupdate"]["ok"] and "present" in c["liveupdate"]["detail"]
    assert not c["lockdown"]["ok"] and "'integrity'" in c["lockdown"]["detail"]


def test_no_kexec_tools(
    sysroot: SysrootFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    rc, res, _ = on(capsys, sysroot("kexec1/step0"), "check", "--json")
    assert rc == 1 and not by_name(res)["kexec-tools"]["ok"]


def scratch_lens(root: Path, *mib: int) -> None:
    """The real areas' addresses (lowmem, global, node) with other lengths."""
    variants.replace(root, f"{KHO}/out/scratch_len", b"".join(b"0x%x\n" % (m << 20) for m in mib))


def test_scratch_areas_of_4_kib_are_an_error(
    sysroot: SysrootFactory, image: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = sysroot("kexec1/step0")
    variants.replace(root, f"{KHO}/out/scratch_len", b"0x1000\n0x1000\n0x1000\n")
    rc, res, _ = on(capsys, root, "check", "--json", "--kernel", str(image))
    s = by_name(res)["scratch"]
    assert (rc, res["ok"], s["ok"], s["severity"]) == (1, False, False, "error")
    assert "-EADDRNOTAVAIL" in s["detail"]


def test_a_kernel_that_fits_at_its_file_size_but_not_at_init_size_is_an_error(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the lab's shape: a 10 MiB bzImage whose header asks for 32.3 MiB (init_size)
    img = tmp_path / "vmlinuz"
    img.write_bytes(bzimage("7.3.4-khlab-b", pad=10 << 20))
    root = sysroot("kexec1/step0")
    scratch_lens(root, 16, 16, 16)  # 48 MiB in all, each area larger than the file
    rc, res, _ = on(capsys, root, "check", "--json", "--kernel", str(img))
    s = by_name(res)["scratch"]
    assert (rc, res["ok"], s["ok"], s["severity"]) == (1, False, False, "error")
    assert "kernel (init_size 32.3 MiB)" in s["detail"]


def test_a_real_fit_is_ok_and_says_where(
    sysroot: SysrootFactory,
    image: Path,
    tmp_path: Path,
    fakebin: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    initrd = tmp_path / "initrd.img"
    with initrd.open("wb") as f:
        f.truncate(12 << 20)
    root = sysroot("kexec1/step0")
    rc, res, _ = on(
        capsys, root, "check", "--json", "--kernel", str(image), "--initrd", str(initrd)
    )
    s = by_name(res)["scratch"]
    assert (rc, res["ok"], s["ok"]) == (0, True, True)
    # the kernel only fits the 64 MiB global area; the rest goes top-down into lowmem
    assert "kernel (init_size 32.3 MiB) in area 1 at 0x7a600000" in s["detail"]
    assert "initrd (12 MiB) in area 0" in s["detail"]


def test_an_initrd_that_does_not_fit_is_an_error_naming_it(
    sysroot: SysrootFactory,
    image: Path,
    tmp_path: Path,
    fakebin: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    initrd = tmp_path / "initrd.img"
    with initrd.open("wb") as f:
        f.truncate(40 << 20)  # 96 MiB of scratch in all, but no area has 40 MiB left
    root = sysroot("kexec1/step0")
    rc, res, _ = on(
        capsys, root, "check", "--json", "--kernel", str(image), "--initrd", str(initrd)
    )
    s = by_name(res)["scratch"]
    assert (rc, res["ok"], s["ok"], s["severity"]) == (1, False, False, "error")
    assert s["detail"].startswith("initrd (40 MiB) fits in no scratch area")


# --- khoctl kexec ---


def test_dry_run_prints_the_plan_and_changes_nothing(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "k.db"
    rc, plan, _ = on(
        capsys,
        sysroot("kexec1/step0"),
        "kexec",
        "--dry-run",
        "--json",
        "--kernel",
        str(image),
        db=f"sqlite:///{db}",
    )
    assert rc == 0 and plan["dry_run"] is True
    assert plan["expect"] == {"previous_release": "7.3.4-khlab-a", "kexec_count": 1}
    assert plan["argv"] == [
        [str(fakebin / "kexec"), "-s", "-l", str(image), "--reuse-cmdline"],
        [str(fakebin / "systemctl"), "kexec"],
    ]
    assert calls(fakebin) == [] and not db.exists()


def test_kexec_runs_exact_argv_without_a_shell(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"\x1f\x8b" + bytes(100))
    hostile = "console=ttyS0 kho=on ; rm -rf / $(reboot) `id`"
    rc, _, err = on(
        capsys,
        sysroot("kexec1/step0"),
        "kexec",
        "--kernel",
        str(image),
        "--initrd",
        str(initrd),
        "--append",
        hostile,
        db=f"sqlite:///{tmp_path / 'k.db'}",
    )
    assert rc == 0, err
    assert calls(fakebin) == [
        ["kexec", "-s", "-l", str(image), f"--initrd={initrd}", f"--append={hostile}"],
        ["systemctl", "kexec"],
    ]
    with sqlite3.connect(tmp_path / "k.db") as conn:
        rows = conn.execute(
            "SELECT source, expected_previous_release, expected_kexec_count, "
            "forced, verdict, argv FROM kexec_attempts"
        ).fetchall()
    assert [r[:5] for r in rows] == [("khoctl", "7.3.4-khlab-a", 1, 0, None)]
    assert json.loads(rows[0][5])[0][-1] == f"--append={hostile}"


def test_kexec_now_uses_kexec_e(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, _, _ = on(
        capsys,
        sysroot("kexec1/step0"),
        "kexec",
        "--now",
        "--kernel",
        str(image),
        db=f"sqlite:///{tmp_path / 'k.db'}",
    )
    assert rc == 0 and calls(fakebin)[-1] == ["kexec", "-e"]


def test_kexec_refuses_on_an_error_and_force_goes_on(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = sysroot("nokho/step0")
    db = f"sqlite:///{tmp_path / 'k.db'}"
    rc, _, err = on(capsys, root, "kexec", "--kernel", str(image), db=db)
    assert rc == 1 and calls(fakebin) == []
    assert err == "khoctl: error: refusing to kexec: kho-enabled failed (--force to go on)\n"
    assert not (tmp_path / "k.db").exists()
    rc, _, _ = on(capsys, root, "kexec", "--force", "--kernel", str(image), db=db)
    assert rc == 0 and [c[1] for c in calls(fakebin)] == ["-s", "kexec"]
    with sqlite3.connect(tmp_path / "k.db") as conn:
        assert conn.execute("SELECT forced FROM kexec_attempts").fetchall() == [(1,)]


def test_a_transition_the_fleet_calls_worse_is_refused_and_force_is_recorded(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The published report ([fleet] verdicts: its JSON, shipped to the host) calls
    7.3.4-khlab-a -> 7.3.4-khlab-b worse: 5 of 5 hosts failed to land. This host runs
    7.3.4-khlab-a: check fails with error severity, kexec refuses, --force goes ahead
    and the attempt records the failed check and that it was forced."""
    from tests.fleet.test_report import Fleet, hosts

    f = Fleet()
    for m in hosts("h", 40):
        f.take(m, "7.3.4-khlab-0", "7.3.4-khlab-a")
    for m in hosts("p", 5):
        f.take(m, "7.3.4-khlab-a", "7.3.4-khlab-b", fail=True)
    fleet_db = f"sqlite:///{tmp_path / 'fleet.db'}"
    assert ctl(capsys, "import", str(f.write(tmp_path / "f.jsonl")), "--db", fleet_db)[0] == 0
    rc, published, _ = ctl(capsys, "report", "transitions", "--db", fleet_db, "--json")
    assert rc == 0
    report = tmp_path / "report.json"
    report.write_text(json.dumps(published))
    conf = tmp_path / "khod.toml"
    conf.write_text(f'[fleet]\nverdicts = "{report}"\n')
    root = sysroot("kexec1/step0")
    argv = ["--config", str(conf), "--kernel", str(image)]
    rc, out, _ = on(capsys, root, "check", *argv, "--json")
    c = by_name(out)["fleet-verdict"]
    assert (rc, out["ok"], c["ok"], c["severity"]) == (1, False, False, "error")
    assert c["detail"] == (
        "the fleet calls 7.3.4-khlab-a -> 7.3.4-khlab-b worse: land failure on 5 of 5 "
        f"hosts against 0 of 40 ({report})"
    )
    db = f"sqlite:///{tmp_path / 'k.db'}"
    rc, _, err = on(capsys, root, "kexec", *argv, db=db)
    assert rc == 1 and calls(fakebin) == []
    assert err == "khoctl: error: refusing to kexec: fleet-verdict failed (--force to go on)\n"
    rc, _, _ = on(capsys, root, "kexec", *argv, "--force", db=db)
    assert rc == 0 and [c[1] for c in calls(fakebin)] == ["-s", "kexec"]
    with sqlite3.connect(tmp_path / "k.db") as conn:
        ((forced, checks),) = conn.execute("SELECT forced, checks FROM kexec_attempts").fetchall()
    assert forced == 1
    assert {c["name"]: c["ok"] for c in json.loads(checks)}["fleet-verdict"] is False
    # no report configured: no check; a report that cannot be read: a warning
    rc, out, _ = on(capsys, root, "check", "--kernel", str(image), "--json")
    assert "fleet-verdict" not in by_name(out)
    report.write_text("{not json")
    rc, out, _ = on(capsys, root, "check", *argv, "--json")
    c = by_name(out)["fleet-verdict"]
    assert (rc, c["ok"], c["severity"]) == (0, False, "warning")
    assert c["detail"].startswith(f"cannot read the fleet's verdicts at {report}: ")


def test_a_failed_load_is_one_line_and_the_attempt_says_so(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_fake(fakebin, "kexec", fail=True)
    rc, _, err = on(
        capsys,
        sysroot("kexec1/step0"),
        "kexec",
        "--kernel",
        str(image),
        db=f"sqlite:///{tmp_path / 'k.db'}",
    )
    assert rc == 1
    assert err.endswith("failed: Cannot load the kernel: Invalid argument\n")
    assert err.count("\n") == 1 and [c[0] for c in calls(fakebin)] == ["kexec"]  # no exec
    with sqlite3.connect(tmp_path / "k.db") as conn:
        assert conn.execute("SELECT verdict FROM kexec_attempts").fetchall() == [("failed",)]


# --- the verdict at the next boot ---


def attempt_then_boot(
    sysroot: SysrootFactory,
    image: Path,
    db: str,
    before: str,
    after: Path,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> list[dict[str, Any]]:
    rc, _, err = on(capsys, sysroot(before), "kexec", "--kernel", str(image), *extra, db=db)
    assert rc == 0, err
    assert Host(after, db, after.parent / "st", capsys).once().rc == 0
    _, rows, _ = ctl(capsys, "history", "--json", "--all", "--db", db)
    assert isinstance(rows, list)
    return rows


def test_verdict_landed(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    rows = attempt_then_boot(sysroot, image, db, "kexec1/step0", sysroot("kexec1/step1"), capsys)
    assert [(r["kind"], r["verdict"]) for r in rows] == [("kexec", "landed"), ("cold", None)]


def test_verdict_cold_boot_after_a_panic(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # real: after step1 the VM panicked and was reset; step0-boot2 is a cold boot
    db = f"sqlite:///{tmp_path / 'k.db'}"
    rows = attempt_then_boot(
        sysroot, image, db, "pstore/step1", sysroot("pstore/step0-boot2"), capsys
    )
    assert rows[0]["verdict"] == "cold-boot"


def test_verdict_abi_mismatch(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    after = sysroot("kexec1/step1")
    variants.strip_handover(after)
    variants.append_kmsg(
        after,
        b"KHO: setup: handover FDT (0x10116b000) is incompatible with 'kho-v3'",
        b"KHO: disabling KHO revival",
    )
    rows = attempt_then_boot(
        sysroot, image, f"sqlite:///{tmp_path / 'k.db'}", "kexec1/step0", after, capsys
    )
    assert (rows[0]["kind"], rows[0]["verdict"]) == ("kexec-rejected", "abi-mismatch")


def test_verdict_mismatch_and_superseded(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    before = sysroot("kexec1/step0")
    assert on(capsys, before, "kexec", "--kernel", str(image), db=db)[0] == 0
    after = sysroot("kexec1/step1")
    blob = bytearray((after / KHO / "in/sub_fdts/kexec-metadata").read_bytes())
    blob[69] = 7  # the handover says count 7
    variants.replace(after, f"{KHO}/in/sub_fdts/kexec-metadata", bytes(blob))
    variants.drop_kmsg_lines(after, b"exec from")
    rc, _, _ = on(capsys, before, "kexec", "--kernel", str(image), db=db)
    assert rc == 0
    assert Host(after, db, tmp_path / "st").once().rc == 0
    with sqlite3.connect(tmp_path / "k.db") as conn:
        got = conn.execute(
            "SELECT id, verdict, verdict_detail FROM kexec_attempts ORDER BY id"
        ).fetchall()
    assert [v for _, v, _ in got] == ["superseded", "mismatch"]
    assert (
        "expected kexec from 7.3.4-khlab-a count 1, got kexec from 7.3.4-khlab-a count 7"
        in (got[1][2])
    )


def test_the_verdict_is_counted_in_the_metrics(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from khod.ingest.snapshot import compute_snapshot
    from khod.metrics import SnapshotCollector, exposition, make_registry
    from khod.store.db import open_store

    db = f"sqlite:///{tmp_path / 'k.db'}"
    attempt_then_boot(sysroot, image, db, "kexec1/step0", sysroot("kexec1/step1"), capsys)
    snap = compute_snapshot(
        open_store(db),
        "65f7426a2b95da889897ce107b775321",
        "30341bb4-f2be-44ce-9dc1-bc1efbab050a",
        ingested_at=0,
        duration=0,
    )
    c = SnapshotCollector()
    c.set(snap)
    assert (
        'khod_kexec_attempts_total{verdict="landed"} 1.0' in exposition(make_registry(c)).decode()
    )


# --- the kexec.target hook ---


def test_record_kexec_hook(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = sysroot("kexec1/step0")
    variants.replace(root, "sys/kernel/kexec_loaded", b"1\n")
    db = f"sqlite:///{tmp_path / 'k.db'}"
    rc, out, err = on(capsys, root, "record-kexec", db=db)
    assert rc == 0 and "recorded (not through khoctl kexec)" in out
    assert "may have used the classic loader" in err
    rc, out, _ = on(capsys, root, "record-kexec", db=db)
    assert "was recorded by khoctl kexec" in out  # an open attempt exists: no second one
    with sqlite3.connect(tmp_path / "k.db") as conn:
        assert conn.execute(
            "SELECT source, expected_kexec_count FROM kexec_attempts"
        ).fetchall() == [("hook", 1)]


def test_a_misfit_of_an_arm64_image_is_an_error_by_arm64s_rules(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """arm64's image loader (bottom-up at 2 MiB, then the DTB above the kernel): a kernel
    that fits no scratch area fails the load there too, so it is refused."""
    img = tmp_path / "Image"
    img.write_bytes(arm64_image("7.3.4-arm"))
    root = sysroot("kexec1/step0")
    variants.replace(root, f"{KHO}/out/scratch_len", b"0x1000\n0x1000\n0x1000\n")
    _, res, _ = on(capsys, root, "check", "--json", "--kernel", str(img))
    s = by_name(res)["scratch"]
    assert (s["ok"], s["severity"]) == (False, "error")
    assert s["detail"].startswith("kernel (file size"), s


def test_an_arm64_image_is_placed_by_arm64s_rules(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The kernel bottom-up at a 2 MiB boundary, the DTB above it, top-down at 2 MiB."""
    img = tmp_path / "Image"
    img.write_bytes(arm64_image("7.3.4-arm"))
    root = sysroot("kexec1/step0")
    _, res, _ = on(capsys, root, "check", "--json", "--kernel", str(img))
    s = by_name(res)["scratch"]
    assert s["ok"], s
    where = dict(
        (part.split(" in area ")[0].split(" (")[0], int(part.rsplit(" at ", 1)[1], 16))
        for part in s["detail"].split("; ")
        if " in area " in part
    )
    assert where["kernel"] % (2 << 20) == 0 and where["DTB"] % (2 << 20) == 0
    assert where["DTB"] > where["kernel"]


def test_kexec_fits_the_command_line_it_will_pass(
    sysroot: SysrootFactory, image: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--append`` replaces the running kernel's command line: the boot params segment
    is sized for the one the new kernel gets."""
    root = sysroot("kexec1/step0")

    def boot_params(*extra: str) -> str:
        rc, plan, err = on(
            capsys, root, "kexec", "--dry-run", "--json", "--kernel", str(image), *extra
        )
        assert rc == 0, err
        (s,) = [c for c in plan["checks"] if c["name"] == "scratch"]
        return str(s["detail"]).split("boot params and command line (", 1)[1].split(")")[0]

    assert boot_params("--append", "x" * 6000) != boot_params()


def test_the_checks_judge_the_state_collection_read(sysroot: SysrootFactory) -> None:
    """One read of the outgoing KHO state: the checks judge the bytes collection kept
    (the same ones stored with the boot), not a second read that may differ."""
    from khod.checks.run import run_checks
    from khod.collect.boot import collect
    from khod.paths import HostPaths

    paths = HostPaths(sysroot("cold/step0"))
    obs = collect(paths)
    paths.kho_out_fdt.write_bytes(b"\xd0\x0d\xfe\xed garbage after collection")
    checks, _, _ = run_checks(paths, obs, None, None)
    by_name = {c.name: c for c in checks}
    assert by_name["out-fdt"].ok, by_name["out-fdt"]
    assert by_name["out-fdt"].detail.startswith("valid, compatible 'kho-v"), by_name["out-fdt"]


def test_verdict_landed_without_handover_takes_the_release_from_the_attempt(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """khoctl kexec --force from a kernel without KHO: the next kernel says kexec loaded
    it (bootloader_type 0xD0) and nothing was handed over."""
    after = sysroot("nokho/step1")
    variants.replace(after, "proc/sys/kernel/bootloader_type", b"208\n")
    rows = attempt_then_boot(
        sysroot,
        image,
        f"sqlite:///{tmp_path / 'k.db'}",
        "nokho/step0",
        after,
        capsys,
        "--force",
    )
    got = rows[0]
    assert (got["kind"], got["verdict"]) == ("kexec-no-handover", "landed-without-handover")
    assert (got["previous_release"], got["metadata_source"]) == ("7.3.4-khlab-a", "attempt")
    assert got["kexec_count"] == 1  # one kexec on from the cold boot the attempt was made in
    assert got["bootloader_type"] == 0xD0


def test_kho_off_after_a_kho_kexec_is_a_rejected_handover_with_khods_release(
    sysroot: SysrootFactory,
    image: Path,
    fakebin: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.collect.test_collect import kho_off_after_kho

    after = sysroot("kexec1/step1")
    kho_off_after_kho(after)
    rows = attempt_then_boot(
        sysroot, image, f"sqlite:///{tmp_path / 'k.db'}", "kexec1/step0", after, capsys
    )
    got = rows[0]
    assert (got["kind"], got["verdict"]) == ("kexec-rejected", "landed-kho-off")
    assert (got["previous_release"], got["metadata_source"]) == ("7.3.4-khlab-a", "attempt")


@pytest.mark.parametrize(
    ("running", "target", "same"),
    [
        ("kho-v4", "kho-v4;radix-v1;vmalloc-v1", False),
        ("kho-v4;radix-v1;vmalloc-v1", "kho-v4", False),
        ("kho-v4;radix-v1;vmalloc-v1", "kho-v4;radix-v1;vmalloc-v1", True),
    ],
)
def test_feature_tags_of_the_compatible_are_part_of_the_abi(
    sysroot: SysrootFactory,
    tmp_path: Path,
    fakebin: Path,
    capsys: pytest.CaptureFixture[str],
    running: str,
    target: str,
    same: bool,
) -> None:
    root = sysroot("kexec1/step0")
    variants.replace(root, f"{KHO}/out/fdt", kho_root(running, 0, []))
    img = tmp_path / "vmlinuz"
    img.write_bytes(bzimage("7.3.4-khlab-composite", abi=target))
    _, res, _ = on(capsys, root, "check", "--json", "--kernel", str(img))
    a = by_name(res)["abi"]
    assert a["ok"] is same
    if not same:
        assert "feature tags" in a["detail"] and "whole string" in a["detail"]


_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and args and "liveupdate" in str(args[0]):
        _OPENED.append(str(args[0]))


def test_nothing_khod_runs_opens_dev_liveupdate(
    sysroot: SysrootFactory, fakebin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """/dev/liveupdate has one holder, and opening it deserializes the incoming sessions:
    collection, the boot capture, status and check only look at it (every open of this
    process is audited)."""
    global _OPENED  # noqa: PLW0603
    from khod.collect.boot import collect
    from khod.paths import HostPaths
    from khod.sources import capture as cap

    root = sysroot("kexec1/step1")
    variants.replace(root, "dev/liveupdate", b"")
    sys.addaudithook(_audit)
    _OPENED = []
    try:
        collect(HostPaths(root))
        assert cap.capture(HostPaths(root), str(tmp_path / "spool")) is not None
        _, res, _ = on(capsys, root, "check", "--json")
        assert "not opened" in by_name(res)["liveupdate"]["detail"]
        on(capsys, root, "status", "--json", db=f"sqlite:///{tmp_path}/k.db")
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert opened == []


def test_the_running_kernels_abi_from_its_installed_image(
    sysroot: SysrootFactory, tmp_path: Path, fakebin: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cold boot whose out/fdt debugfs cut short (the kernel sizes the blob at boot)
    does not say its compatible: the release table knows only stock kernels, so the
    kernel's own /boot/vmlinuz-RELEASE is read, as the e2e's composite kernel needed."""
    root = sysroot("pstore/step0")  # a cold 7.3.4-khlab-a boot, out/fdt truncated
    composite = "kho-v4;radix-v1;vmalloc-v1"
    (root / "boot").mkdir(exist_ok=True)
    (root / "boot/vmlinuz-7.3.4-khlab-a").write_bytes(bzimage("7.3.4-khlab-a", abi=composite))
    stock, same = tmp_path / "stock", tmp_path / "same"
    stock.write_bytes(bzimage("7.3.4-khlab-b"))
    same.write_bytes(bzimage("7.3.4-khlab-b", abi=composite))
    rc, res, _ = on(capsys, root, "check", "--json", "--kernel", str(stock))
    a = by_name(res)["abi"]
    assert rc == 1 and not a["ok"] and a["severity"] == "error"
    assert f"'{composite}' (/boot/vmlinuz-7.3.4-khlab-a)" in a["detail"], a
    rc, res, _ = on(capsys, root, "check", "--json", "--kernel", str(same))
    assert rc == 0 and by_name(res)["abi"]["ok"], by_name(res)["abi"]
