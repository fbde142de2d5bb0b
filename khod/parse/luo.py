"""The Live Update Orchestrator's KHO subtree ``LUO`` (``kho/{in,out}/sub_fdts/LUO``).

Mirrors ``include/linux/kho/abi/luo.h`` and ``kernel/liveupdate/luo_core.c``:

- 7.2+ (``luo-v5``, checked against 7.3.4): a raw ``__packed`` struct, native-endian::

      char compatible[LUO_ABI_COMPAT_LEN];  offset 0, NUL-padded
      u64  liveupdate_num;                  offset LUO_ABI_COMPAT_LEN
      u64  sessions_pa;                     0: no session handed over
      u64  flbs_pa;

  with ``LUO_ABI_COMPAT_LEN = ALIGN(sizeof(LUO_ABI_COMPATIBLE), 8)``: 8 for ``luo-v5``
  (32 bytes in all), 16 for the proposed ``luo-v5;block-v1`` (the number at offset 16).
  The kernel needs ``len >= sizeof(struct luo_ser)`` and an exact ``strncmp`` of the
  compatible; outgoing ``liveupdate_num`` is the incoming one + 1.
- 6.19-7.1 (``luo-v1``, ``luo-v2``): an FDT whose root has ``compatible`` and a
  native-endian u64 ``liveupdate-number`` (``luo-session``/``luo-flb`` nodes are not
  interpreted).

A compatible this khod does not know raises ``UnknownLuoVersion`` (its text kept): the
layout behind it is never guessed. The blob itself is stored raw by collection.
"""

from __future__ import annotations

import struct
import sys
from dataclasses import dataclass

from khod.errors import ParseError
from khod.parse.compat import split_compat
from khod.parse.fdt import FDT_MAGIC, parse_fdt

_E = "<" if sys.byteorder == "little" else ">"
LUO_TAIL = struct.Struct(_E + "QQQ")  # liveupdate_num, sessions_pa, flbs_pa
NATIVE_U64 = struct.Struct(_E + "Q")
FDT_MAGIC_BYTES = struct.pack(">I", FDT_MAGIC)
MAX_COMPATIBLE = 64
STRUCT_BASES = ("luo-v5",)  # raw struct luo_ser
STRUCT_TAGS = ("block-v1",)  # proposed tags whose layout is the same aligned rule
FDT_VERSIONS = ("luo-v1", "luo-v2")


class UnknownLuoVersion(ParseError):
    def __init__(self, source: str, compatible: str) -> None:
        self.compatible = compatible
        super().__init__(
            source,
            0,
            f"LUO compatible {compatible!r} not supported (this khod knows "
            f"{', '.join(STRUCT_BASES + FDT_VERSIONS)}); kept raw",
        )


@dataclass(frozen=True)
class LuoState:
    compatible: str
    layout: str  # "struct" (7.2+) or "fdt" (6.19-7.1)
    liveupdate_num: int
    sessions_pa: int | None  # None where the layout has no such field (FDT)
    flbs_pa: int | None
    warnings: tuple[str, ...] = ()

    @property
    def sessions(self) -> bool | None:
        """Whether sessions were handed over (``sessions_pa != 0``); None: not told."""
        return None if self.sessions_pa is None else self.sessions_pa != 0


def compat_len(compatible: str) -> int:
    """``ALIGN(sizeof(compatible), 8)``: sizeof counts the NUL."""
    n = len(compatible.encode("ascii")) + 1
    return (n + 7) // 8 * 8


def _text(raw: bytes, source: str, offset: int) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as e:
        raise ParseError(source, offset, "LUO compatible is not ASCII") from e
    if not text or not text.isprintable():
        raise ParseError(source, offset, f"LUO compatible {raw!r} is not a printable string")
    return text


def _known_struct(compatible: str) -> bool:
    c = split_compat(compatible)
    return c.base in STRUCT_BASES and all(t in STRUCT_TAGS for t in c.tags)


def parse_luo(data: bytes, source: str) -> LuoState:
    if data.startswith(FDT_MAGIC_BYTES):
        return _parse_fdt(data, source)
    nul = data.find(b"\0", 0, MAX_COMPATIBLE + 1)
    if nul < 0:
        raise ParseError(source, 0, f"LUO compatible is not NUL-terminated ({len(data)} bytes)")
    compatible = _text(data[:nul], source, 0)
    if not _known_struct(compatible):
        raise UnknownLuoVersion(source, compatible)
    off = compat_len(compatible)
    size = off + LUO_TAIL.size
    if len(data) < size:
        raise ParseError(source, len(data), f"LUO state is too small ({len(data)} < {size} bytes)")
    warnings: list[str] = []
    if any(data[nul:off]):
        warnings.append("LUO compatible padding is not zero")
    if len(data) > size:
        warnings.append(f"LUO state is {len(data)} bytes, expected {size}; trailing bytes ignored")
    num, sessions_pa, flbs_pa = LUO_TAIL.unpack_from(data, off)
    return LuoState(compatible, "struct", num, sessions_pa, flbs_pa, tuple(warnings))


def _parse_fdt(data: bytes, source: str) -> LuoState:
    root = parse_fdt(data, source)
    prop = root.prop("compatible")
    if prop is None:
        raise ParseError(source, None, "LUO FDT has no compatible")
    compatible = _text(prop.value.removesuffix(b"\0"), source, prop.offset)
    if compatible not in FDT_VERSIONS:
        raise UnknownLuoVersion(source, compatible)
    num = root.prop("liveupdate-number")
    if num is None:
        raise ParseError(source, None, "LUO FDT has no liveupdate-number")
    if len(num.value) != NATIVE_U64.size:
        raise ParseError(
            source, num.offset, f"liveupdate-number is {len(num.value)} bytes, expected 8"
        )
    (value,) = NATIVE_U64.unpack(num.value)
    return LuoState(compatible, "fdt", value, None, None)
