"""KHO root FDT: the real kho-v4 capture, older ABIs built from the spec, bad input."""

from __future__ import annotations

import struct

import pytest

from khod.errors import ParseError
from khod.parse.fdt import TruncatedFdt, parse_fdt, parse_fdt_header
from khod.parse.kho import parse_kho_fdt
from tests.conftest import FIXTURES
from tests.fdtbuild import (
    Node,
    build_fdt,
    cstr,
    kho_root,
    u64le,
    v1_subtree,
    v2_subtree,
    v3_subtree,
)

KHO = "sys/kernel/debug/kho"


def real(step: str, name: str) -> bytes:
    return (FIXTURES / step / KHO / name).read_bytes()


def test_real_kho_v4_in_fdt_from_7_3_4() -> None:
    root = parse_kho_fdt(real("kexec1/step1", "in/fdt"), "in/fdt")
    assert root.compatible == "kho-v4" and root.known
    assert root.memory_map is not None and root.memory_map != 0
    assert [(s.name, s.address_property, s.blob_size) for s in root.subtrees] == [
        ("kexec-metadata", "preserved-data", 73)
    ]


def test_real_pstore_kho_subtree_size_matches_the_debugfs_file() -> None:
    root = parse_kho_fdt(real("pstore-kho/step1", "in/fdt"), "in/fdt")
    sizes = {s.name: s.blob_size for s in root.subtrees}
    assert sizes["pstore-kho"] == len(real("pstore-kho/step1", "in/sub_fdts/pstore-kho"))
    assert sizes["kexec-metadata"] == 73


def test_real_out_fdt_of_a_cold_boot_parses() -> None:
    root = parse_kho_fdt(real("cold/step0", "out/fdt"), "out/fdt")
    assert root.compatible == "kho-v4"


def test_real_truncated_out_fdt_is_reported_as_truncated() -> None:
    # 7.3.4: out/fdt is sized at fs_initcall; the memblock subtree (reserve_mem=) grew it
    data = real("pstore/step0", "out/fdt")
    (total,) = struct.unpack_from(">I", data, 4)
    assert total > len(data)
    with pytest.raises(TruncatedFdt, match=f"header says {total} bytes, {len(data)} read"):
        parse_kho_fdt(data, "out/fdt")


def test_kho_v1_tree_built_from_the_spec() -> None:
    # no real 6.16-7.0 capture here: built byte for byte (tests/fdtbuild.py)
    blob = kho_root("kho-v1", 0x12345000, [v1_subtree("memblock", 0x7F000000)])
    root = parse_kho_fdt(blob, "v1")
    assert (root.base, root.known, root.memory_map) == ("kho-v1", True, 0x12345000)
    (s,) = root.subtrees
    assert (s.name, s.address, s.address_property, s.blob_size) == (
        "memblock",
        0x7F000000,
        "fdt",
        None,
    )


def test_kho_v2_tree_without_blob_size() -> None:
    root = parse_kho_fdt(kho_root("kho-v2", 1, [v2_subtree("LUO", 0x5000)]), "v2")
    (s,) = root.subtrees
    assert (s.address, s.address_property, s.blob_size) == (0x5000, "preserved-data", None)


def test_kho_v3_tree() -> None:
    root = parse_kho_fdt(kho_root("kho-v3", 1, [v3_subtree("kexec-metadata", 0x9000, 73)]), "v3")
    assert root.base == "kho-v3" and root.subtrees[0].blob_size == 73


def test_semicolon_joined_compatible_keeps_the_whole_string() -> None:
    root = parse_kho_fdt(kho_root("kho-v4;radix-v1;vmalloc-v1", 1, []), "p")
    assert (root.compatible, root.base, root.known) == (
        "kho-v4;radix-v1;vmalloc-v1",
        "kho-v4",
        True,
    )


def test_unknown_compatible_is_kept_and_not_interpreted() -> None:
    blob = build_fdt(
        Node(
            "", [("compatible", cstr("kho-v9"))], [Node("thing", [("preserved-data", b"\x01\x02")])]
        )
    )
    root = parse_kho_fdt(blob, "v9")
    assert (root.compatible, root.known, root.memory_map) == ("kho-v9", False, None)
    assert [(s.name, s.address) for s in root.subtrees] == [("thing", None)]


def test_u64_property_of_the_wrong_length_names_its_offset() -> None:
    blob = kho_root("kho-v4", 1, [Node("x", [("preserved-data", b"\x01\x02\x03\x04")])])
    with pytest.raises(ParseError, match=r"'preserved-data' is 4 bytes, expected 8") as ei:
        parse_kho_fdt(blob, "bad")
    assert ei.value.offset is not None and 0 < ei.value.offset < len(blob)


def test_wrong_magic() -> None:
    with pytest.raises(ParseError, match="not an FDT: magic 0xdeadbeef"):
        parse_fdt(b"\xde\xad\xbe\xef" + bytes(60), "x")


@pytest.mark.parametrize("cut", [0, 3, 20, 39, 100, 232])
def test_truncated_real_fdt(cut: int) -> None:
    with pytest.raises(ParseError):
        parse_kho_fdt(real("kexec1/step1", "in/fdt")[:cut], "in/fdt")


def test_totalsize_beyond_the_file() -> None:
    data = bytearray(real("kexec1/step1", "in/fdt"))
    struct.pack_into(">I", data, 4, 1 << 30)
    with pytest.raises(TruncatedFdt, match="header says 1073741824 bytes"):
        parse_fdt_header(bytes(data), "in/fdt")


def test_structure_block_outside_the_blob() -> None:
    data = bytearray(real("kexec1/step1", "in/fdt"))
    struct.pack_into(">I", data, 36, 1 << 20)  # size_dt_struct
    with pytest.raises(ParseError, match="structure block"):
        parse_fdt(bytes(data), "in/fdt")


def test_loop_of_offsets_in_the_structure_block() -> None:
    # a property whose length runs back over the structure block's own tokens
    data = bytearray(real("kexec1/step1", "in/fdt"))
    (off_struct,) = struct.unpack_from(">I", data, 8)
    # first FDT_PROP after the root's BEGIN_NODE (4-byte tag + 4-byte empty name)
    struct.pack_into(">I", data, off_struct + 12, 0xFFFFFFF0)
    with pytest.raises(ParseError, match="invalid FDT"):
        parse_fdt(bytes(data), "in/fdt")


def test_deep_nesting_is_bounded() -> None:
    n = Node("leaf")
    for i in range(40):
        n = Node(f"n{i}", [], [n])
    blob = build_fdt(Node("", [("compatible", cstr("kho-v4"))], [n]))
    with pytest.raises(ParseError, match="nested deeper"):
        parse_fdt(blob, "deep")


def test_memory_map_zero_is_decoded_as_zero() -> None:
    root = parse_kho_fdt(
        build_fdt(Node("", [("compatible", cstr("kho-v4")), ("preserved-memory-map", u64le(0))])),
        "z",
    )
    assert root.memory_map == 0
