"""Kernel log records and the KHO lines in them."""

from __future__ import annotations

import pytest

from khod.parse.kmsg import count_warnings, parse_kho_log, parse_kmsg
from tests.conftest import FIXTURES


def kmsg(step: str) -> bytes:
    return (FIXTURES / step / "dev/kmsg").read_bytes()


def test_real_exec_from_line() -> None:
    recs = parse_kmsg(kmsg("kexec1/step1"))
    assert recs[0].seq == 0 and recs[0].text.startswith("Linux version 7.3.4-khlab-a")
    log = parse_kho_log(recs)
    assert (log.exec_from_release, log.exec_from_count) == ("7.3.4-khlab-a", 1)
    assert log.found_handover and log.scratch_areas
    assert log.rejected is None and log.revival_disabled is None


def test_real_cold_boot_has_no_handover_lines() -> None:
    log = parse_kho_log(parse_kmsg(kmsg("cold/step0")))
    assert log.exec_from_count is None and not log.found_handover and log.scratch_areas


def test_real_boot_without_kho_has_no_kho_lines() -> None:
    log = parse_kho_log(parse_kmsg(kmsg("nokho/step2")))
    assert log.lines == () and not log.scratch_areas


def test_continuation_lines_and_escapes() -> None:
    data = (
        b"6,1,5,-;KHO: exec from: 7.3\\x5cx (count 12)\n SUBSYSTEM=x\n"
        b"garbage line\n4,2,6,c;hello\\x0aworld\n"
    )
    recs = parse_kmsg(data)
    assert [r.seq for r in recs] == [1, 2]
    assert recs[1].message == b"hello\nworld" and recs[1].level == 4
    log = parse_kho_log(recs)
    assert (log.exec_from_release, log.exec_from_count) == ("7.3\\x", 12)


@pytest.mark.parametrize(
    ("lines", "rejected", "disabled"),
    [
        # 7.1+ (the kernel's format strings, kernel/liveupdate/kexec_handover.c)
        (
            [
                b"KHO: setup: handover FDT (0x10116b000) is incompatible with 'kho-v4'",
                b"KHO: disabling KHO revival",
            ],
            "setup: handover FDT (0x10116b000) is incompatible with 'kho-v4'",
            "disabling KHO revival",
        ),
        # 6.16-7.0: an unfinalized kexec
        (
            [
                b"KHO: setup: handover FDT (0x10116b000) is invalid: -9",
                b"KHO: disabling KHO revival: -22",
            ],
            "setup: handover FDT (0x10116b000) is invalid: -9",
            "disabling KHO revival: -22",
        ),
        ([b"KHO: disabling KHO revival: -2"], None, "disabling KHO revival: -2"),
    ],
)
def test_rejected_handover(lines: list[bytes], rejected: str | None, disabled: str) -> None:
    data = b"".join(b"4,%d,0,-;%s\n" % (i, line) for i, line in enumerate(lines))
    log = parse_kho_log(parse_kmsg(data))
    assert (log.rejected, log.revival_disabled) == (rejected, disabled)


def test_metadata_errors_logged_by_the_kernel() -> None:
    data = b"4,1,0,-;KHO: kexec-metadata: version 2 not supported\n"
    assert parse_kho_log(parse_kmsg(data)).metadata_errors == (
        "KHO: kexec-metadata: version 2 not supported",
    )


def test_the_kernels_own_warnings_are_counted_line_by_line() -> None:
    lines = [
        b"4,1,10,-;------------[ cut here ]------------",
        b"4,2,11,-;WARNING: CPU: 1 PID: 1 at kernel/liveupdate/kexec_handover.c:812 kho_x+0x1/0x2",
        b"1,3,12,-;BUG: kernel NULL pointer dereference, address: 0000000000000008",
        b"4,4,13,-;Oops: 0002 [#1] PREEMPT SMP NOPTI",
        b"0,5,14,-;Internal error: Oops: 0000000096000005 [#1] PREEMPT SMP",
        b"3,6,15,-;INFO: task kworker/0:1:12 blocked for more than 122 seconds.",
        b"0,7,16,-;watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [swapper/1:0]",
        b"0,8,17,-;mce: [Hardware Error]: CPU 0: Machine Check: 0 Bank 4: b200000000070005",
        b"0,9,18,-;mce: [Hardware Error]: RIP !INEXACT! 10:<ffffffff8102e8b1>",  # same MCE
        b"4,10,19,-;mce: [Hardware Error]: Machine check events logged",
        b"6,11,20,-;KHO: exec from: 7.3.4 (count 1)",
        b"6,12,21,-;a driver says WARNING: in the middle of a line",
        b"12,13,22,-;WARNING: written to /dev/kmsg by a user program (facility 1)",
        b"14,14,23,-;BUG: so is this",
    ]
    recs = parse_kmsg(b"\n".join(lines) + b"\n")
    assert count_warnings(recs) == 8


def test_real_boots_have_no_warnings() -> None:
    for step in ("kexec1/step1", "cold/step0", "nokho/step2"):
        assert count_warnings(parse_kmsg(kmsg(step))) == 0
