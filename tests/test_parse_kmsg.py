"""Kernel log records and the KHO lines in them."""

from __future__ import annotations

import pytest

from khod.parse.kmsg import parse_kho_log, parse_kmsg
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
