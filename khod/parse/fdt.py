"""Flattened device tree (FDT/DTB) container, as KHO hands it over.

The header and structure block are big-endian (Devicetree Specification v0.4,
chapter 5; ``scripts/dtc/libfdt/fdt.h``). Traversal is libfdt's own (pylibfdt), but
only after the header has been bounds-checked here and the whole blob has passed
``fdt_check_full``: libfdt trusts ``totalsize``, we do not.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from khod.errors import ParseError

FDT_MAGIC = 0xD00DFEED
# struct fdt_header: ten big-endian u32 (version 17 layout, 40 bytes)
FDT_HEADER = struct.Struct(">10I")
FDT_HEADER_SIZE = FDT_HEADER.size
MAX_DEPTH = 32
MAX_NODES = 4096


class TruncatedFdt(ParseError):
    """The header promises more bytes than were read (KHO's ``out/fdt`` can be so)."""


@dataclass(frozen=True)
class FdtHeader:
    magic: int
    totalsize: int
    off_dt_struct: int
    off_dt_strings: int
    off_mem_rsvmap: int
    version: int
    last_comp_version: int
    boot_cpuid_phys: int
    size_dt_strings: int
    size_dt_struct: int


@dataclass(frozen=True)
class FdtProperty:
    name: str
    value: bytes
    offset: int  # absolute byte offset of the property's tag in the blob


@dataclass(frozen=True)
class FdtNode:
    name: str
    path: str
    properties: tuple[FdtProperty, ...] = ()
    children: tuple[FdtNode, ...] = field(default=())

    def prop(self, name: str) -> FdtProperty | None:
        for p in self.properties:
            if p.name == name:
                return p
        return None


def parse_fdt_header(data: bytes, source: str) -> FdtHeader:
    """Decode and bounds-check the header against the bytes actually read."""
    if len(data) < 4:
        raise ParseError(source, 0, f"too short for an FDT ({len(data)} bytes)")
    (magic,) = struct.unpack_from(">I", data, 0)
    if magic != FDT_MAGIC:
        raise ParseError(source, 0, f"not an FDT: magic 0x{magic:08x}, expected 0x{FDT_MAGIC:08x}")
    if len(data) < FDT_HEADER_SIZE:
        raise TruncatedFdt(source, len(data), f"FDT header truncated ({len(data)} bytes)")
    hdr = FdtHeader(*FDT_HEADER.unpack_from(data, 0))
    if hdr.totalsize < FDT_HEADER_SIZE:
        raise ParseError(source, 4, f"FDT totalsize {hdr.totalsize} is smaller than its header")
    if hdr.totalsize > len(data):
        raise TruncatedFdt(
            source, len(data), f"FDT truncated: header says {hdr.totalsize} bytes, {len(data)} read"
        )
    if hdr.version < 16 or hdr.last_comp_version > 17:
        raise ParseError(
            source,
            20,
            f"unsupported FDT version {hdr.version} (last compatible {hdr.last_comp_version})",
        )
    for what, off, size, at in (
        ("structure block", hdr.off_dt_struct, hdr.size_dt_struct, 8),
        ("strings block", hdr.off_dt_strings, hdr.size_dt_strings, 12),
    ):
        if off < FDT_HEADER_SIZE or off + size > hdr.totalsize:
            raise ParseError(source, at, f"FDT {what} [{off}, +{size}) outside the blob")
    if hdr.off_mem_rsvmap < FDT_HEADER_SIZE or hdr.off_mem_rsvmap + 16 > hdr.totalsize:
        raise ParseError(source, 16, f"FDT reserve map at {hdr.off_mem_rsvmap} outside the blob")
    return hdr


def parse_fdt(data: bytes, source: str) -> FdtNode:
    """Decode an FDT into a tree of nodes with raw property values."""
    hdr = parse_fdt_header(data, source)
    import libfdt  # noqa: PLC0415  (C extension; only loaded when there is an FDT)

    blob = bytearray(data[: hdr.totalsize])
    err = libfdt.fdt_check_full(blob, hdr.totalsize)
    if err:
        raise ParseError(source, None, f"invalid FDT: {libfdt.strerror(err)}")
    try:
        return _Walker(libfdt, libfdt.Fdt(blob), hdr.off_dt_struct, source).node(0, "", "/", 0)
    except libfdt.FdtException as e:
        raise ParseError(source, None, f"invalid FDT: {libfdt.strerror(e.err)}") from None
    except (UnicodeDecodeError, SystemError):
        # pylibfdt decodes node and property names as UTF-8 inside its SWIG layer
        raise ParseError(
            source, None, "invalid FDT: a node or property name is not UTF-8"
        ) from None


class _Walker:
    """Depth-first walk with node/depth limits; offsets are reported absolute."""

    def __init__(self, lib: Any, fdt: Any, base: int, source: str) -> None:
        self.lib, self.fdt, self.base, self.source = lib, fdt, base, source
        self.count = 0

    def node(self, offset: int, name: str, path: str, depth: int) -> FdtNode:
        f, quiet = self.fdt, self.lib.QUIET_NOTFOUND
        self.count += 1
        if self.count > MAX_NODES:
            raise ParseError(self.source, self.base + offset, f"more than {MAX_NODES} FDT nodes")
        if depth > MAX_DEPTH:
            raise ParseError(self.source, self.base + offset, f"FDT nested deeper than {MAX_DEPTH}")
        props: list[FdtProperty] = []
        poff = f.first_property_offset(offset, quiet)
        while poff >= 0:
            p = f.get_property_by_offset(poff)
            props.append(FdtProperty(str(p.name), bytes(p), self.base + poff))
            if len(props) > MAX_NODES:
                raise ParseError(self.source, self.base + poff, "too many FDT properties")
            poff = f.next_property_offset(poff, quiet)
        children: list[FdtNode] = []
        child = f.first_subnode(offset, quiet)
        while child >= 0:
            cname = str(f.get_name(child))
            children.append(self.node(child, cname, path.rstrip("/") + "/" + cname, depth + 1))
            child = f.next_subnode(child, quiet)
        return FdtNode(name=name, path=path, properties=tuple(props), children=tuple(children))
