"""End to end on a real KHO kernel: khod and khoctl kexec inside QEMU.

Four runs cover the scenarios (the kernels are built once and cached, tests/vm/kernel.py):

- chain: cold A -> B -> A -> B with khoctl kexec (real kexec -s -l, kexec -e):
  1 cold boot, 2 the chain and its verdicts, 4 a pstore record across a kexec,
  6 the daemon's metrics;
- refuse: KHO off: 3 khoctl check refuses, --force goes on: the next boot was loaded
  by kexec and handed nothing (kexec-no-handover, verdict landed-without-handover);
- panic: 5 a panic, collected with reason Panic at the next boot (after the VM reset);
- abi: 7 a kexec into a kernel of another KHO ABI: kexec-rejected, verdict abi-mismatch.

Every boot is checked against the kernel's own ``KHO: exec from:`` line on the console.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm import harness, kernelcache

pytestmark = pytest.mark.vm
KHOCTL = str(Path(sys.executable).parent / "khoctl")
KHO_APPEND = f"{harness.BASE_APPEND} kho=on"


@pytest.fixture(scope="module")
def kernels() -> Path:
    return kernelcache.kernels()


def finish(r: harness.Run) -> harness.Run:
    table = harness.table(r)
    harness.TABLES.append(f"{table}\n(run directory: {r.dir})")
    (r.dir / "table.txt").write_text(table + "\n")
    print(f"\n{table}\n(run directory: {r.dir})", file=sys.stderr)
    return r


@pytest.fixture(scope="module")
def chain(kernels: Path) -> Iterator[harness.Run]:
    a, b = str(kernels / "bzImage-a"), str(kernels / "bzImage-b")
    yield finish(
        harness.run(
            "chain",
            Path(a),
            {
                "0": [
                    ["ingest"],
                    ["check", b],
                    ["pmsg", "khod e2e: step 0 was here"],
                    ["kexec", b, "1"],
                ],
                "1": [["ingest"], ["kexec", a, "2"]],
                "2": [["ingest"], ["kexec", b, "3"]],
                "3": [["ingest"], ["daemon"]],
            },
            append=KHO_APPEND,
        )
    )


@pytest.fixture(scope="module")
def refuse(kernels: Path) -> Iterator[harness.Run]:
    a = str(kernels / "bzImage-a")
    steps = {"0": [["ingest"], ["check", a], ["kexec", a, "1", "--force"]], "1": [["ingest"]]}
    yield finish(harness.run("refuse", Path(a), steps, append=harness.BASE_APPEND))  # KHO off


@pytest.fixture(scope="module")
def panic(kernels: Path) -> Iterator[harness.Run]:
    # ramoops in a reserve_mem region, which KHO keeps; RAM survives the VM reset
    a = str(kernels / "bzImage-a")
    steps = {
        "0": [["ingest"], ["pmsg", "khod e2e: about to panic"], ["panic"]],
        "0#2": [["ingest"]],
    }
    yield finish(harness.run("panic", Path(a), steps, append=KHO_APPEND, reset_on_panic=True))


@pytest.fixture(scope="module")
def abi(kernels: Path) -> Iterator[harness.Run]:
    a, v3 = str(kernels / "bzImage-a"), str(kernels / "bzImage-v3abi")
    yield finish(
        harness.run(
            "abi",
            Path(a),
            {
                "0": [["ingest"], ["check", v3], ["kexec", v3, "1", "--force"]],
                "1": [["ingest"]],
            },
            append=KHO_APPEND,
        )
    )


def boots_by_step(r: harness.Run) -> dict[str, harness.Boot]:
    return {b.step: b for b in r.boots}


def khoctl(r: harness.Run, *argv: str) -> object:
    out = subprocess.run(
        [KHOCTL, *argv, "--json", "--db", f"sqlite:///{r.db}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)


def assert_matches_kernel(r: harness.Run) -> None:
    """Every boot is recorded, and what khod recorded is what the kernel logged."""
    recs = harness.records(r)
    assert r.boots, r.digest()
    for b in r.boots:
        rec = recs[b.boot_id]
        assert rec["release"] == b.release
        if b.exec_from is None:
            # the kernel named no previous kernel: only khod's own attempt record (or the
            # journal) may give the chain, the count one on from the boot before
            if rec["metadata_source"] in ("attempt", "derived"):
                prev = recs[r.boots[r.boots.index(b) - 1].boot_id]  # the boot before
                assert rec["previous_release"] == prev["release"]
                assert rec["kexec_count"] == prev["kexec_count"] + 1
            else:
                assert (rec["previous_release"], rec["kexec_count"]) == (None, 0)
        else:
            assert (rec["previous_release"], rec["kexec_count"]) == b.exec_from
            assert rec["kind"] == "kexec" and rec["metadata_source"] == "kho"


# --- chain ---


def test_1_cold_boot_with_kho(chain: harness.Run, kernels: Path) -> None:
    step0 = boots_by_step(chain)["0"]
    rec = harness.records(chain)[step0.boot_id]
    assert (rec["kind"], rec["kexec_count"], rec["kho_enabled"]) == ("cold", 0, 1)
    release_a = (kernels / "release-a").read_text().strip()
    assert (rec["out_release"], rec["out_kexec_count"]) == (release_a, 1)  # outgoing state
    check = json.loads(chain.file("0", "*-check.json").read_text())
    assert check["ok"] is True, check
    abi = next(c for c in check["checks"] if c["name"] == "abi")
    assert "both speak 'kho-v4' (target: image)" in abi["detail"]


def test_2_chain_of_three_kexecs(chain: harness.Run, kernels: Path) -> None:
    a = (kernels / "release-a").read_text().strip()
    b = (kernels / "release-b").read_text().strip()
    steps = boots_by_step(chain)
    assert [steps[s].exec_from for s in "123"] == [(a, 1), (b, 2), (a, 3)]  # the kernel's own
    assert_matches_kernel(chain)
    recs = harness.records(chain)
    assert [recs[steps[s].boot_id].get("verdict") for s in "123"] == ["landed"] * 3
    rows = khoctl(chain, "chain", "--boot", steps["3"].boot_id)
    assert isinstance(rows, list)
    assert [(x["kexec_count"], x["link"]) for x in rows] == [
        (0, "start"),
        (1, "ok"),
        (2, "ok"),
        (3, "ok"),
    ]


def test_4_the_previous_kernels_last_words_across_a_kexec(
    chain: harness.Run, kernels: Path
) -> None:
    step1 = boots_by_step(chain)["1"]
    out = khoctl(chain, "dmesg", step1.boot_id)
    assert isinstance(out, dict)
    dumps = {d["type"]: d for d in out["dumps"]}
    release_a = (kernels / "release-a").read_text().strip()
    assert (dumps["dmesg"]["reason"], dumps["dmesg"]["release"]) == ("Shutdown", release_a)
    assert "kexec_core: Starting new kernel" in dumps["dmesg"]["text"]
    assert dumps["pmsg"]["text"] == "khod e2e: step 0 was here\n"


def test_6_metrics_inside_the_guest(chain: harness.Run) -> None:
    prom = chain.file("3", "*-daemon.prom").read_text()
    assert "khod_kexecs_since_cold_boot 3.0" in prom
    assert 'khod_kexec_attempts_total{verdict="landed"} 3.0' in prom
    r = subprocess.run(
        ["promtool", "check", "metrics"], input=prom, text=True, capture_output=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr


# --- KHO off, --force, panic ---


def test_3_check_refuses_without_kho_and_force_goes_on(refuse: harness.Run) -> None:
    check = json.loads(refuse.file("0", "*-check.json").read_text())
    assert refuse.file("0", "*-check.rc").read_text() == "1"
    assert check["ok"] is False
    assert next(c for c in check["checks"] if c["name"] == "kho-enabled")["ok"] is False
    steps = boots_by_step(refuse)
    rec = harness.records(refuse)[steps["1"].boot_id]
    # KHO off: nothing handed over, but the kernel was loaded by kexec (0xD0), not cold;
    # the kernel gives no count, khoctl's attempt in the boot before does: one kexec on
    assert (rec["kind"], rec["kexec_count"], rec.get("verdict"), rec["bootloader_type"]) == (
        "kexec-no-handover",
        1,
        "landed-without-handover",
        0xD0,
    ), rec
    assert (rec["previous_release"], rec["metadata_source"]) == (steps["0"].release, "attempt")
    assert harness.records(refuse)[steps["0"].boot_id]["bootloader_type"] == 0xB0  # QEMU
    assert_matches_kernel(refuse)


def test_5_a_panic_is_collected_at_the_next_boot(panic: harness.Run) -> None:
    steps = boots_by_step(panic)
    out = khoctl(panic, "dmesg", steps["0#2"].boot_id)
    assert isinstance(out, dict)
    assert out["previous_boot_id"] == steps["0"].boot_id
    dumps = out["dumps"]
    assert "Panic" in {d["reason"] for d in dumps}, out
    crash = next(d for d in dumps if d["reason"] == "Panic")
    assert "sysrq triggered crash" in crash["text"]
    assert any(d["type"] == "pmsg" and "about to panic" in d["text"] for d in dumps)
    assert_matches_kernel(panic)


# --- ABI mismatch ---


def test_7_abi_mismatch(abi: harness.Run) -> None:
    check = json.loads(abi.file("0", "*-check.json").read_text())
    a = next(c for c in check["checks"] if c["name"] == "abi")
    assert not a["ok"] and "'kho-v3' (image)" in a["detail"]
    step1 = boots_by_step(abi)["1"]
    assert any("incompatible with 'kho-v3'" in line for line in step1.kho_lines), step1
    rec = harness.records(abi)[step1.boot_id]
    assert (rec["kind"], rec.get("verdict"), rec["kexec_count"]) == (
        "kexec-rejected",
        "abi-mismatch",
        1,  # the handover refused, the chain from khoctl's attempt: one kexec on
    )
    assert "incompatible" in rec["kind_reason"]
