"""The LUO subtree as 7.2+ kernels write it (a packed struct) and as 6.19-7.1 did (an
FDT), built here byte for byte from include/linux/kho/abi/luo.h."""

from __future__ import annotations

import struct

import pytest

from khod.errors import ParseError
from khod.parse.compat import same_abi, split_compat
from khod.parse.luo import UnknownLuoVersion, compat_len, parse_luo
from tests.fdtbuild import Node, build_fdt, cstr, u64le


def luo_ser(compatible: str, num: int, sessions_pa: int = 0, flbs_pa: int = 0) -> bytes:
    """struct luo_ser: char compatible[ALIGN(sizeof(LUO_ABI_COMPATIBLE), 8)], 3 x u64."""
    raw = compatible.encode() + b"\0"
    raw += b"\0" * (-len(raw) % 8)
    return raw + struct.pack("<QQQ", num, sessions_pa, flbs_pa)


def luo_fdt(compatible: str, num: int) -> bytes:
    return build_fdt(
        Node("", [("compatible", cstr(compatible)), ("liveupdate-number", u64le(num))])
    )


def test_luo_v5_is_32_bytes_with_the_number_at_offset_8() -> None:
    blob = luo_ser("luo-v5", 3, sessions_pa=0x1234000)
    assert len(blob) == 32 and blob[8:16] == struct.pack("<Q", 3)
    s = parse_luo(blob, "LUO")
    assert (s.compatible, s.layout, s.liveupdate_num, s.sessions, s.warnings) == (
        "luo-v5",
        "struct",
        3,
        True,
        (),
    )
    assert parse_luo(luo_ser("luo-v5", 1), "LUO").sessions is False


def test_the_composite_compatible_moves_the_number_to_offset_16() -> None:
    blob = luo_ser("luo-v5;block-v1", 7, flbs_pa=0x99)
    assert compat_len("luo-v5;block-v1") == 16 and len(blob) == 40
    assert blob[16:24] == struct.pack("<Q", 7)
    s = parse_luo(blob, "LUO")
    assert (s.compatible, s.liveupdate_num, s.sessions, s.flbs_pa) == (
        "luo-v5;block-v1",
        7,
        False,
        0x99,
    )


@pytest.mark.parametrize("version", ["luo-v1", "luo-v2"])
def test_the_fdt_of_older_kernels_gives_its_liveupdate_number(version: str) -> None:
    s = parse_luo(luo_fdt(version, 5), "LUO")
    assert (s.compatible, s.layout, s.liveupdate_num, s.sessions) == (version, "fdt", 5, None)


def test_a_longer_blob_is_accepted_as_the_kernel_does_with_a_warning() -> None:
    s = parse_luo(luo_ser("luo-v5", 2) + b"\0" * 8, "LUO")
    assert s.liveupdate_num == 2 and "trailing bytes ignored" in s.warnings[0]


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (luo_ser("luo-v5", 1)[:31], "too small"),
        (luo_ser("luo-v5;block-v1", 1)[:32], "too small"),  # a luo-v5 sized read
        (b"", "NUL-terminated"),
        (b"luo-v5", "NUL-terminated"),
        (b"\xffuo-v5\0\0" + bytes(24), "not ASCII"),
        (b"\0" * 32, "printable"),
        (luo_fdt("luo-v2", 1)[:20], "FDT"),
    ],
)
def test_short_or_garbled_blobs_are_parse_errors(blob: bytes, why: str) -> None:
    with pytest.raises(ParseError, match=why):
        parse_luo(blob, "LUO")


@pytest.mark.parametrize(
    "blob",
    [luo_ser("luo-v6", 1), luo_ser("luo-v5;fancy-v1", 1), luo_fdt("luo-v3", 1)],
)
def test_an_unknown_version_is_named_and_never_guessed(blob: bytes) -> None:
    with pytest.raises(UnknownLuoVersion) as e:
        parse_luo(blob, "LUO")
    assert e.value.compatible in ("luo-v6", "luo-v5;fancy-v1", "luo-v3")


def test_a_compatible_is_a_base_and_tags_and_the_whole_string_decides() -> None:
    c = split_compat("kho-v4;radix-v1;vmalloc-v1")
    assert (c.base, c.tags, c.composite) == ("kho-v4", ("radix-v1", "vmalloc-v1"), True)
    assert split_compat("kho-v4").tags == ()
    assert same_abi("kho-v4", "kho-v4")
    assert not same_abi("kho-v4", "kho-v4;radix-v1;vmalloc-v1")
    assert not same_abi(None, "kho-v4")


@pytest.mark.parametrize(
    ("text", "value", "kexec"),
    [
        (b"208\n", 0xD0, True),
        (b"176\n", 0xB0, False),
        (b"33\n", 0x21, False),  # the EFI stub
        (b"306\n", 0x132, False),  # an extended id (0x13, barebox)
    ],
)
def test_bootloader_type_and_what_says_kexec(text: bytes, value: int, kexec: bool) -> None:
    from khod.parse import proc

    assert proc.parse_bootloader_type(text, "b") == value
    assert proc.loaded_by_kexec(value) is kexec


@pytest.mark.parametrize("text", [b"", b"-1\n", b"0xd0\n", b"99999999\n", b"\xff"])
def test_a_bootloader_type_that_is_no_loader_id_is_a_parse_error(text: bytes) -> None:
    from khod.parse import proc

    with pytest.raises(ParseError):
        proc.parse_bootloader_type(text, "b")
