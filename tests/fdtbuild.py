"""Build flattened device trees byte for byte from the Devicetree Specification v0.4,
chapter 5 (header v17, empty reserve map, structure block tokens, strings block).

Used to make KHO ABIs that have no real capture here (kho-v1, kho-v2, kho-v3, the
";"-joined proposal) and malformed trees. Checked against dtc in test_fdtbuild.py.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_END = 9


@dataclass
class Node:
    name: str = ""
    props: list[tuple[str, bytes]] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)


def u64le(v: int) -> bytes:
    """KHO property values are native-endian (little on x86-64)."""
    return struct.pack("<Q", v)


def cstr(s: str) -> bytes:
    return s.encode() + b"\0"


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def build_fdt(root: Node) -> bytes:
    strings = bytearray()
    offsets: dict[str, int] = {}

    def nameoff(name: str) -> int:
        if name not in offsets:
            offsets[name] = len(strings)
            strings.extend(cstr(name))
        return offsets[name]

    def node(n: Node) -> bytes:
        out = struct.pack(">I", FDT_BEGIN_NODE) + _pad4(cstr(n.name))
        for pname, value in n.props:
            out += struct.pack(">III", FDT_PROP, len(value), nameoff(pname)) + _pad4(value)
        for c in n.children:
            out += node(c)
        return out + struct.pack(">I", FDT_END_NODE)

    dt_struct = node(root) + struct.pack(">I", FDT_END)
    header_size = 40
    off_rsv = header_size
    rsvmap = struct.pack(">QQ", 0, 0)
    off_struct = off_rsv + len(rsvmap)
    off_strings = off_struct + len(dt_struct)
    total = off_strings + len(strings)
    header = struct.pack(
        ">10I",
        0xD00DFEED,
        total,
        off_struct,
        off_strings,
        off_rsv,
        17,
        16,
        0,
        len(strings),
        len(dt_struct),
    )
    return header + rsvmap + dt_struct + bytes(strings)


def kho_root(compatible: str, memory_map: int | None, subtrees: list[Node]) -> bytes:
    props = [("compatible", cstr(compatible))]
    if memory_map is not None:
        props.append(("preserved-memory-map", u64le(memory_map)))
    return build_fdt(Node("", props, subtrees))


def v1_subtree(name: str, phys: int) -> Node:
    """kho-v1 (6.16-7.0): the node points at a sub-FDT with ``fdt``."""
    return Node(name, [("fdt", u64le(phys))])


def v2_subtree(name: str, phys: int) -> Node:
    """kho-v2 (intermediate 7.1 commits): ``preserved-data`` only."""
    return Node(name, [("preserved-data", u64le(phys))])


def v3_subtree(name: str, phys: int, size: int) -> Node:
    """kho-v3 (7.1) and kho-v4 (7.2+): ``preserved-data`` and ``blob-size``."""
    return Node(name, [("blob-size", u64le(size)), ("preserved-data", u64le(phys))])
