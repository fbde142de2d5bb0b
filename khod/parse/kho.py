"""The KHO root FDT handed over at kexec (``/sys/kernel/debug/kho/{in,out}/fdt``).

Root ABI by ``compatible`` (``include/linux/kho/abi/kexec_handover.h``):

- ``kho-v1`` (6.16-7.0): root ``preserved-memory-map`` (u64 phys); each subtree node
  has ``fdt`` (u64 phys of a sub-FDT).
- ``kho-v2`` (intermediate 7.1 commits), ``kho-v3`` (7.1), ``kho-v4`` (7.2+): each
  subtree node has ``preserved-data`` (u64 phys) and ``blob-size`` (u64; optional in
  some kho-v2 trees).
- ``kho-v4;radix-v1;...``: a proposed ``;``-joined form; its first part is the base.
- ``"kho-v4", "radix-v1", ...``: the FDT string list a reviewer prefers instead, shown
  ``kho-v4\\0radix-v1`` (``khod.parse.compat``); its first string is the base.

The container is big-endian; KHO property *values* are native-endian u64 (seen
little-endian on x86-64, see KERNEL-INTERFACES.md section 9). Which properties a
node has is read from the node, never inferred from the version number. An unknown
compatible is kept as text and its properties are not interpreted.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from khod.errors import ParseError
from khod.parse.compat import split_compat
from khod.parse.fdt import FdtNode, FdtProperty, parse_fdt

KNOWN_ABIS = ("kho-v1", "kho-v2", "kho-v3", "kho-v4")
# KHO values are in the byte order of the kernel that wrote them, i.e. this machine's.
NATIVE_U64 = struct.Struct("<Q" if sys.byteorder == "little" else ">Q")
MAX_COMPATIBLE = 256


@dataclass(frozen=True)
class KhoSubtree:
    """One child of the KHO root: a subsystem's preserved blob."""

    name: str
    address: int | None  # physical address of the blob in the previous kernel
    address_property: str | None  # "preserved-data" (v2+) or "fdt" (v1)
    blob_size: int | None  # "blob-size" (v3+, some v2); None when the node has none


@dataclass(frozen=True)
class KhoRoot:
    compatible: str  # the root compatible exactly as written
    base: str  # first ";"-separated part
    known: bool  # base is one of KNOWN_ABIS
    memory_map: int | None  # root "preserved-memory-map" (0 = nothing preserved)
    subtrees: tuple[KhoSubtree, ...]


def _u64(prop: FdtProperty, source: str) -> int:
    if len(prop.value) != NATIVE_U64.size:
        raise ParseError(
            source, prop.offset, f"property {prop.name!r} is {len(prop.value)} bytes, expected 8"
        )
    return int(NATIVE_U64.unpack(prop.value)[0])


def parse_compatible(prop: FdtProperty, source: str) -> str:
    raw = prop.value
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if not raw or len(raw) > MAX_COMPATIBLE:
        raise ParseError(source, prop.offset, f"root compatible is {len(prop.value)} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise ParseError(source, prop.offset, "root compatible is not ASCII") from e
    if not text.isprintable():
        # a DT string list ("a\0b") or control bytes: keep it visible, never guess
        text = text.replace("\0", "\\0")
        if not text.isprintable():
            raise ParseError(source, prop.offset, "root compatible has control characters")
    return text


def parse_kho_root(root: FdtNode, source: str) -> KhoRoot:
    compat_prop = root.prop("compatible")
    if compat_prop is None:
        raise ParseError(source, None, "KHO root has no compatible")
    compatible = parse_compatible(compat_prop, source)
    base = split_compat(compatible).base
    known = base in KNOWN_ABIS
    if not known:
        return KhoRoot(
            compatible,
            base,
            False,
            None,
            tuple(KhoSubtree(c.name, None, None, None) for c in root.children),
        )
    mm = root.prop("preserved-memory-map")
    memory_map = _u64(mm, source) if mm is not None else None
    subtrees = []
    for child in root.children:
        address: int | None = None
        address_property: str | None = None
        for pname in ("preserved-data", "fdt"):
            p = child.prop(pname)
            if p is not None:
                address, address_property = _u64(p, source), pname
                break
        bs = child.prop("blob-size")
        subtrees.append(
            KhoSubtree(child.name, address, address_property, _u64(bs, source) if bs else None)
        )
    return KhoRoot(compatible, base, True, memory_map, tuple(subtrees))


def parse_kho_fdt(data: bytes, source: str) -> KhoRoot:
    return parse_kho_root(parse_fdt(data, source), source)
