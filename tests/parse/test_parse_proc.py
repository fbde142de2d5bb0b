from __future__ import annotations

import pytest

from khod.errors import ParseError
from khod.parse import proc
from tests.conftest import FIXTURES


def test_real_identity_files() -> None:
    root = FIXTURES / "kexec1/step1"
    assert proc.parse_boot_id((root / "proc/sys/kernel/random/boot_id").read_bytes(), "b") == (
        "30341bb4-f2be-44ce-9dc1-bc1efbab050a"
    )
    assert proc.parse_machine_id((root / "etc/machine-id").read_bytes(), "m") == (
        "65f7426a2b95da889897ce107b775321"
    )
    assert proc.parse_btime((root / "proc/stat").read_bytes(), "s") == 1795481029
    assert proc.parse_osrelease((root / "proc/sys/kernel/osrelease").read_bytes(), "r") == (
        "7.3.4-khlab-a"
    )


def test_real_scratch_lists() -> None:
    out = FIXTURES / "kexec1/step1/sys/kernel/debug/kho/out"
    assert proc.parse_scratch((out / "scratch_len").read_bytes(), "l") == (
        16 << 20,
        64 << 20,
        16 << 20,
    )  # kho_scratch=16M,64M,16M
    assert len(proc.parse_scratch((out / "scratch_phys").read_bytes(), "p")) == 3


@pytest.mark.parametrize(
    ("cmdline", "value"),
    [
        ("console=ttyS0 kho=on", True),
        ("kho=1", True),
        ("kho=off", False),
        ("quiet", None),
        ("kho=on kho=0", False),
    ],
)
def test_kho_cmdline(cmdline: str, value: bool | None) -> None:
    assert proc.kho_cmdline_setting(cmdline) is value


@pytest.mark.parametrize("data", [b"", b"nope\n", b"\xff" * 40, b"x" * 5000])
def test_bad_boot_id(data: bytes) -> None:
    with pytest.raises(ParseError):
        proc.parse_boot_id(data, "b")


def test_bad_scratch() -> None:
    with pytest.raises(ParseError, match="line 2"):
        proc.parse_scratch(b"0x10\nzz\n", "s")


def test_hostile_release_is_kept_visible() -> None:
    assert proc.parse_osrelease(b'7.3.4-"a\\b\xff\n', "r") == '7.3.4-"a\\b\\xff'
    with pytest.raises(ParseError):
        proc.parse_osrelease(b"\n", "r")
