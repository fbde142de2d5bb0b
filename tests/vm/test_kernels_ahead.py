"""Kernels khod had not met: the Live Update Orchestrator, the composite KHO compatible,
and kexecs that carry no handover, on the installed package in the systemd guest.

Runs (tests/vm/guestimage.py, the suite's kernels with LUO built in, tests/vm/kernel.py):

- ``luo`` (``liveupdate=on``): a -> b with a stand-in VMM (tests/vm/luovmm.py) holding a
  LUO session with a memfd through the kexec; b retrieves it -> a (``khoctl kexec``, no
  session) -> b by the classic loader (``kexec -c``: no handover) -> a with ``kho=off``
  (the handover offered, not revived) -> b from that ``kho=off`` kernel (no handover: the
  previous kernel had none to give).
- ``compat``: the ``kho-v4;radix-v1;vmalloc-v1`` kernel into itself (accepted), then into
  a stock ``kho-v4`` kernel (refused).

Every boot is held to what the kernel itself logged (``KHO:``, ``luo:`` lines) or
exposed (``/proc/sys/kernel/bootloader_type``).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.vm import guestimage
from tests.vm.guestimage import Boot, Run
from tests.vm.test_systemd_guest import APPEND, records, show

pytestmark = pytest.mark.vm
KERNEL = "/boot/khod-e2e/bzImage-{}"
VMM_TEXT = "guest memory of vm1, kept across the kernel update"
LUO_NUMBER = re.compile(r"luo: Retrieved live update data, liveupdate number: (\d+)")
KEXEC_LOADER = 0xD  # type_of_loader >> 4: kexec (arch/x86/kernel/kexec-bzimage64.c)


def kernel_said(b: Boot, pattern: re.Pattern[str]) -> list[str]:
    """What the kernel logged at this boot (the journal's kernel lines) matching pattern."""
    return [m.group(1) for line in b.out("journal").splitlines() if (m := pattern.search(line))]


def attempts(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as c:
        c.row_factory = sqlite3.Row
        return [dict(r) for r in c.execute("SELECT * FROM kexec_attempts ORDER BY id")]


LUO_PLAN: list[dict[str, Any]] = [
    # 0: cold on a; the VMM opens /dev/liveupdate while khod runs, keeps a memfd in a
    # session and, holding it, kexecs into b (khoctl kexec --now: no shutdown to kill it)
    {
        "then": f"khod-e2e-vmm preserve vm1 7 '{VMM_TEXT}' /khod-e2e/boot-0/vmm.json -- "
        f"khoctl kexec --kernel {KERNEL.format('b')} --now"
    },
    # 1: b; the VMM takes its memory back, then an ordinary kexec (no session) to a
    {
        "do": ["khod-e2e-vmm retrieve vm1 7 /khod-e2e/boot-1/vmm.json"],
        "then": f"khoctl kexec --kernel {KERNEL.format('a')}",
    },
    # 2: a; the classic loader: a kexec with no handover (the hook records the attempt)
    {"then": f"kexec -c -l {KERNEL.format('b')} --reuse-cmdline && systemctl kexec"},
    # 3: b, entered without a handover; into a with KHO off: the handover is offered
    {
        "then": f"khoctl kexec --kernel {KERNEL.format('a')} --force "
        '--append "$(cat /proc/cmdline) kho=off"'
    },
    # 4: a with kho=off; into b: a kernel without KHO hands nothing over
    {
        "then": f"khoctl kexec --kernel {KERNEL.format('b')} --force "
        "--append \"$(sed 's/ kho=off//' /proc/cmdline)\""
    },
    # 5: b
    {},
]


@pytest.fixture(scope="module")
def luo(image: tuple[Path, Path]) -> Run:
    tar, kernels = image
    r = guestimage.run("luo", tar, kernels, LUO_PLAN, append=f"{APPEND} liveupdate=on")
    show(r, *[f"boot {b.n}: luo: {kernel_said(b, LUO_NUMBER)}" for b in r.boots])
    return r


def test_the_luo_chain_runs_to_its_end(luo: Run) -> None:
    assert luo.rc == 0 and len(luo.boots) == 6, luo.digest()
    assert all(b.out("done") for b in luo.boots), luo.digest()


def test_a_vmm_holds_dev_liveupdate_while_khod_runs(luo: Run) -> None:
    """khod never opens /dev/liveupdate (it has one holder): the VMM opens it while
    khod.service is active, and its memory comes back in the next kernel."""
    kept, back = luo.boots[0].json("vmm.json"), luo.boots[1].json("vmm.json")
    assert luo.boots[0].out("is-active").strip() == "active"
    assert kept == {"step": "preserve", "session": "vm1", "token": 7, "opened": True,
                    "preserved": True}, kept  # fmt: skip
    assert luo.boots[1].out("is-active").strip() == "active"
    assert back and back.get("text") == VMM_TEXT and back.get("finished"), back


def events_of(db: Path, kind: str) -> dict[str, list[str]]:
    """Severities of the stored events of ``kind``, by boot id."""
    out: dict[str, list[str]] = {}
    with sqlite3.connect(db) as c:
        for boot_id, severity in c.execute(
            "SELECT b.boot_id, e.severity FROM events e JOIN boots b ON b.id = e.boot_pk "
            "WHERE e.kind = ?",
            (kind,),
        ):
            out.setdefault(boot_id, []).append(severity)
    return out


def test_khod_records_luo_as_the_kernel_said(luo: Run) -> None:
    """The number is the kernel's (its ``luo:`` line); 7.3.4 frees the incoming state
    once read, so debugfs shows reused memory: an info event, no error, and whether a
    session came is not told (the VMM's own retrieval above says it did)."""
    recs = records(luo.db)
    got = []
    for b in luo.boots:
        rec = recs[b.boot_id]
        said = kernel_said(b, LUO_NUMBER)
        if said:  # the kernel's own line is the second source of truth
            assert rec["liveupdate_num"] == int(said[0]), (b.n, rec, said)
        got.append((rec["luo_compatible"], rec["liveupdate_num"], rec["luo_sessions"]))
    assert [kernel_said(b, LUO_NUMBER) for b in luo.boots][:3] == [[], ["1"], ["2"]]
    assert got == [
        (None, None, None),  # a cold boot: nothing handed over
        ("luo-v5", 1, None),  # the VMM's session came with it
        ("luo-v5", 2, None),  # an ordinary kexec: LUO's state, no session
        (None, None, None),  # kexec -c: no handover
        (None, None, None),  # kho=off: "Disabling liveupdate because KHO is disabled"
        (None, None, None),  # from a kernel without KHO
    ], got
    freed = events_of(luo.db, "luo-state-freed")
    assert {b.n: freed.get(b.boot_id) for b in luo.boots[1:3]} == {1: ["info"], 2: ["info"]}
    assert events_of(luo.db, "parse-error") == {}


def test_kexecs_without_a_handover_are_not_cold_boots(luo: Run) -> None:
    recs = records(luo.db)
    rel = [b.out("release").strip() for b in luo.boots]
    loaders = [int(b.out("bootloader_type").strip() or -1) for b in luo.boots]
    got = [
        (
            recs[b.boot_id]["kind"],
            recs[b.boot_id]["previous_release"],
            recs[b.boot_id]["metadata_source"],
            recs[b.boot_id].get("verdict"),
            recs[b.boot_id]["bootloader_type"],
        )
        for b in luo.boots
    ]
    assert [x >> 4 for x in loaders] == [0xB] + [KEXEC_LOADER] * 5, loaders  # QEMU, then kexec
    assert [g[4] for g in got] == loaders, got  # khod read what the kernel exposes
    assert [g[:4] for g in got] == [
        ("cold", None, None, None),
        ("kexec", rel[0], "kho", "landed"),
        ("kexec", rel[1], "kho", "landed"),
        # kexec -c: no KHO state; khod's own attempt record (the hook's) names the kernel
        ("kexec-no-handover", rel[2], "attempt", "landed-without-handover"),
        # kho=off: the kernel logged "KHO: found kexec handover data." and took no
        # handover; where it came from, only khod's attempt says; the kexec landed, the
        # handover refused by configuration
        ("kexec-rejected", rel[3], "attempt", "landed-kho-off"),
        ("kexec-no-handover", rel[4], "attempt", "landed-without-handover"),
    ], got
    assert "KHO: found kexec handover data." in luo.boots[4].kho_lines, luo.boots[4].kho_lines
    # KHO is off in the kho=off kernel, and only in it
    assert [recs[b.boot_id]["kho_enabled"] for b in luo.boots] == [1, 1, 1, 1, 0, 1], got
    assert luo.boots[3].exec_from() is None and luo.boots[5].exec_from() is None
    assert [a["source"] for a in attempts(luo.db)] == [
        "khoctl", "khoctl", "hook", "khoctl", "khoctl",
    ]  # fmt: skip


COMPOSITE = "kho-v4;radix-v1;vmalloc-v1"
COMPAT_PLAN: list[dict[str, Any]] = [
    # 0: cold on the composite kernel; into itself
    {"then": f"khoctl kexec --kernel {KERNEL.format('composite')}"},
    # 1: what khoctl check says of a stock kho-v4 target; into it anyway
    {
        "do": [f"khoctl check --kernel {KERNEL.format('a')} --json"],
        "then": f"khoctl kexec --kernel {KERNEL.format('a')} --force",
    },
    # 2: the stock kernel refused the handover
    {},
]


@pytest.fixture(scope="module")
def compat(image: tuple[Path, Path]) -> Run:
    tar, kernels = image
    r = guestimage.run("compat", tar, kernels, COMPAT_PLAN, append=APPEND, first="composite")
    show(r, *[f"boot {b.n}: {b.kho_lines}" for b in r.boots])
    return r


def test_the_composite_compatible_is_accepted_by_itself_refused_by_kho_v4(compat: Run) -> None:
    assert compat.rc == 0 and len(compat.boots) == 3, compat.digest()
    recs = records(compat.db)
    b0, b1, b2 = compat.boots
    r1, r2 = recs[b1.boot_id], recs[b2.boot_id]
    # accepted: the kernel says where it came from, khod decoded the metadata
    assert b1.exec_from() == (b0.out("release").strip(), 1), b1.kho_lines
    assert (r1["kind"], r1["kho_abi"], r1["previous_release"], r1["kexec_count"]) == (
        "kexec",
        COMPOSITE,
        b0.out("release").strip(),
        1,
    ), r1
    assert r1.get("verdict") == "landed"
    # khoctl check saw the ABI change before the kexec
    check = b1.out("do-0.out")
    assert "kho-v4" in check and COMPOSITE in check and '"ok": false' in check, check
    # refused: the stock kernel's reason, quoted
    assert b2.exec_from() is None
    refused = [line for line in b2.kho_lines if "incompatible" in line or "compatible" in line]
    assert r2["kind"] == "kexec-rejected" and refused, (r2, b2.kho_lines)
    assert any(line.removeprefix("KHO: ") in (r2["kind_reason"] or "") for line in refused), (
        r2["kind_reason"],
        refused,
    )
    assert r2.get("verdict") == "abi-mismatch"
