"""kexec-metadata: the real 73-byte blobs and every malformed shape the kernel rejects."""

from __future__ import annotations

import struct

import pytest

from khod.errors import ParseError
from khod.parse.metadata import UnsupportedMetadataVersion, parse_kexec_metadata
from tests.conftest import FIXTURES

IN_META = "sys/kernel/debug/kho/in/sub_fdts/kexec-metadata"
OUT_META = "sys/kernel/debug/kho/out/sub_fdts/kexec-metadata"


def real_in() -> bytes:
    return (FIXTURES / "kexec1/step1" / IN_META).read_bytes()


def test_real_incoming_metadata() -> None:
    m = parse_kexec_metadata(real_in(), "m")
    assert (m.version, m.previous_release, m.kexec_count, m.warnings) == (1, "7.3.4-khlab-a", 1, ())


@pytest.mark.parametrize(
    ("step", "release", "count"),
    [
        ("cold/step0", "7.3.4-khlab-a", 1),  # a cold boot hands on count 1
        ("kexec1/step1", "7.3.4-khlab-a", 2),
        ("pstore-kho/step3", "7.3.4-khlab-pk", 4),
    ],
)
def test_real_outgoing_metadata(step: str, release: str, count: int) -> None:
    m = parse_kexec_metadata((FIXTURES / step / OUT_META).read_bytes(), "m")
    assert (m.previous_release, m.kexec_count) == (release, count)


@pytest.mark.parametrize(
    ("size", "match"),
    [
        (0, "blob too small"),
        (3, "blob too small"),
        (72, "too small for v1"),
        (40, "too small for v1"),
    ],
)
def test_short_blobs(size: int, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        parse_kexec_metadata(real_in()[:size], "m")


def test_4096_byte_blob_is_decoded_with_a_warning() -> None:
    # the kernel only checks size >= sizeof(struct); it reads the first 73 bytes
    m = parse_kexec_metadata(real_in() + bytes(4096 - 73), "m")
    assert (m.previous_release, m.kexec_count) == ("7.3.4-khlab-a", 1)
    assert any("4096 bytes" in w for w in m.warnings)


def test_version_2_is_unsupported_not_guessed() -> None:
    blob = struct.pack("<I", 2) + real_in()[4:]
    with pytest.raises(UnsupportedMetadataVersion) as ei:
        parse_kexec_metadata(blob, "m")
    assert ei.value.version == 2


def test_release_without_nul() -> None:
    blob = struct.pack("<I65sI", 1, b"x" * 65, 7)
    m = parse_kexec_metadata(blob, "m")
    assert (m.previous_release, m.kexec_count) == ("x" * 65, 7)
    assert "previous_release is not NUL-terminated" in m.warnings


def test_release_with_invalid_utf8_keeps_raw_bytes() -> None:
    blob = struct.pack("<I65sI", 1, b"7.3.4-\xff\xfe", 3)
    m = parse_kexec_metadata(blob, "m")
    assert m.previous_release == "7.3.4-\\xff\\xfe"
    assert m.previous_release_raw == b"7.3.4-\xff\xfe"
    assert "previous_release is not valid UTF-8" in m.warnings
