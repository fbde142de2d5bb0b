"""Only the kernel's own log records are the kernel's word: facility 0 (``pri >> 3``
of the ``/dev/kmsg`` prefix) and the exact ``KHO: `` / ``luo: `` messages at the start
of the text. What a user writes to ``/dev/kmsg`` (facility user by default), or a
kernel line that quotes a user's binary name (a segfault), must change nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from khod.cli import khod_main
from khod.cli.common import run_main
from khod.parse.kmsg import count_warnings, parse_kho_log, parse_kmsg
from tests.checks.test_kexec import by_name, ctl, fakebin, image  # noqa: F401 (fixtures)
from tests.conftest import SysrootFactory

USER = 1 << 3  # LOG_USER: what a write to /dev/kmsg gets unless it names another


def hostile_records(root: Path) -> None:
    """What any local user can put into this boot's log, in the fixture's kmsg format."""
    kmsg = root / "dev/kmsg"
    data = kmsg.read_bytes()
    seq = data.count(b"\n") + 5000
    user_lines = [
        b"disabling KHO revival",
        b"KHO: disabling KHO revival",
        b"KHO: disabling KHO revival: -22",
        b"KHO: setup: handover FDT (0x1000) is incompatible with 'kho-v9'",
        b"KHO: found kexec handover data.",
        b"KHO: exec from: evil-9.9 (count 99)",
        b"KHO: Failed to reserve scratch area, disabling kexec handover",
        b"KHO: kexec-metadata: version 7 not supported",
        b"luo: Retrieved live update data, liveupdate number: 77",
        b"luo: LUO state is incompatible with 'luo-v9'",
        b"WARNING: CPU: 0 PID: 1 at evil.c:1 evil+0x0/0x1",
    ]
    out = [b"%d,%d,0,-;%s\n" % (USER | 4, seq + i, line) for i, line in enumerate(user_lines)]
    # the kernel's own segfault line names the binary (its comm cut at 15 bytes): the
    # record is facility 0, its text does not start with "KHO: "
    out.append(
        b"6,%d,0,-;disabling KHO r[4242]: segfault at 0 ip 0000000000401000 sp "
        b"00007ffd5d0e0000 error 4 in disabling KHO revival[401000+1000] likely on CPU 0 "
        b"(core 0, socket 0)\n" % (seq + 100)
    )
    # a comm of 15 bytes that starts like a KHO line, in a kernel record
    out.append(b"6,%d,0,-;KHO: disabling[4243]: segfault at 0 ip 0 sp 0 error 4\n" % (seq + 101))
    out.append(b"4,%d,0,-;KHO: exec from:[4244]: segfault at 0 ip 0 sp 0 error 4\n" % (seq + 102))
    kmsg.write_bytes(data + b"".join(out))


def khod_once(root: Path, db: str) -> None:
    argv = ["--once", "--sysroot", str(root), "--db", db, "--state-dir", str(root.parent / "st")]
    assert run_main("khod", khod_main.main, argv) == 0


def history(capsys: pytest.CaptureFixture[str], db: str) -> list[dict[str, Any]]:
    rc, rows, err = ctl(capsys, "history", "--json", "--all", "--db", db)
    assert rc == 0 and isinstance(rows, list), err
    return rows


def test_user_records_in_the_log_do_not_turn_a_kexec_into_a_rejection(
    sysroot: SysrootFactory,
    image: Path,  # noqa: F811
    fakebin: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = f"sqlite:///{tmp_path / 'k.db'}"
    step0, step1, step2 = (sysroot(f"pstore-kho/step{n}") for n in range(3))
    khod_once(step0, db)
    rc, _, err = ctl(capsys, "kexec", "--sysroot", str(step0), "--kernel", str(image), "--db", db)
    assert rc == 0, err
    hostile_records(step1)
    khod_once(step1, db)
    got = history(capsys, db)[0]
    assert (got["kind"], got["kexec_count"], got["previous_release"]) == (
        "kexec",
        1,
        "7.3.4-khlab-pk",
    ), got
    assert got["verdict"] == "landed"
    assert got["luo"]["liveupdate_num"] is None, got["luo"]

    rc, res, err = ctl(
        capsys, "check", "--json", "--sysroot", str(step1), "--kernel", str(image), "--db", db
    )
    c = by_name(res)["outgoing-metadata"]
    assert c["ok"] and c["detail"] == "7.3.4-khlab-pk count 2", c
    rc, _, err = ctl(capsys, "kexec", "--sysroot", str(step1), "--kernel", str(image), "--db", db)
    assert rc == 0, err
    khod_once(step2, db)
    rows = history(capsys, db)
    assert [(r["kind"], r["kexec_count"], r["verdict"]) for r in rows] == [
        ("kexec", 2, "landed"),
        ("kexec", 1, "landed"),
        ("cold", 0, None),
    ]


def test_only_facility_0_and_the_exact_kho_messages_count() -> None:
    root_lines = b"".join(
        b"%d,%d,0,-;%s\n" % (pri, i, line)
        for i, (pri, line) in enumerate(
            [
                (12, b"KHO: disabling KHO revival"),
                (14, b"KHO: setup: handover FDT (0x1) is invalid: -9"),
                (12, b"KHO: found kexec handover data."),
                (12, b"KHO: scratch areas: lowmem: 16MiB global: 64MiB pernode: 16MiB"),
                (12, b"KHO: exec from: evil (count 9)"),
                (12, b"luo: Retrieved live update data, liveupdate number: 5"),
                (6, b"disabling KHO r[1]: segfault at 0 in disabling KHO revival[1+1]"),
                (6, b"x kexec handover y"),
            ]
        )
    )
    log = parse_kho_log(parse_kmsg(root_lines))
    assert (log.rejected, log.revival_disabled, log.found_handover, log.scratch_areas) == (
        None,
        None,
        False,
        False,
    )
    assert (log.exec_from_count, log.liveupdate_num, log.lines) == (None, None, ())


def test_a_task_name_at_the_start_of_a_kernel_record_is_not_a_kernel_warning() -> None:
    """The kernel starts some of its own records with the task's name (at most 15
    bytes): a user names a program "WARNING: CPU: 0" or "BUG: x" and makes it fault."""
    lines = [
        b"6,1,0,-;WARNING: CPU: 0[4242]: segfault at 0 ip 0 sp 0 error 4 in a[1+1]",
        b"4,2,0,-;BUG: x invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE)",
        b"6,3,0,-;Oops: y (4243): drop_caches: 3",
        b"4,4,0,-;WARNING: CPU: 1 PID: 1 at kernel/liveupdate/kexec_handover.c:812 kho_x+0x1",
    ]
    assert count_warnings(parse_kmsg(b"\n".join(lines) + b"\n")) == 1


def test_a_task_name_cannot_forge_the_exec_from_line() -> None:
    data = b"6,1,0,-;KHO: exec from: (4242): drop_caches: 3 (count 9)\n"
    assert parse_kho_log(parse_kmsg(data)).exec_from_count is None


def test_a_hung_task_warning_counts_whatever_the_task_is_named() -> None:
    """``INFO: task COMM:PID blocked`` names the task 11 bytes in: a name that looks like
    a pid in brackets, or in parentheses, hides no hung task from the count."""
    lines = [
        b"3,1,0,-;INFO: task a[1]:4242 blocked for more than 122 seconds.",
        b"3,2,0,-;INFO: task b (2):4243 blocked for more than 122 seconds.",
        b"3,3,0,-;INFO: task kworker/0:1:17 blocked for more than 122 seconds.",
    ]
    assert count_warnings(parse_kmsg(b"\n".join(lines) + b"\n")) == 3
