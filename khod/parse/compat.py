"""Compatible strings of KHO's root and of its subtrees: a base ABI and feature tags.

Mainline writes one version (``kho-v4``, ``luo-v5``). A proposed series joins parts
with ``;`` (``kho-v4;radix-v1;vmalloc-v1``, ``luo-v5;block-v1``): the first part is the
base ABI, the others are feature tags. The kernel decides "same ABI" on the whole
string (libfdt ``fdt_node_check_compatible`` on the KHO root, ``strncmp`` over the
aligned length for LUO), so a tag added or removed is an ABI change: ``same_abi``
compares whole strings and nothing else.

A reviewer prefers a standard FDT string list (``"kho-v4", "vmalloc-v1"``: NUL-separated
in the property). khod shows and stores it with each NUL written ``\0``
(``kho-v4\0vmalloc-v1``: a database text column takes no NUL); its first part is the
base and the others tags, as in the composite form, and the same whole-string rule holds.
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = ";"
LIST_SEPARATOR = "\\0"  # an FDT string list's NUL, as khod writes it


@dataclass(frozen=True)
class Compat:
    text: str  # exactly as written
    base: str  # the first ";"-separated part
    tags: tuple[str, ...]  # the others, in order

    @property
    def composite(self) -> bool:
        return bool(self.tags)


def split_compat(text: str) -> Compat:
    sep = LIST_SEPARATOR if LIST_SEPARATOR in text and SEPARATOR not in text else SEPARATOR
    base, *tags = text.split(sep)
    return Compat(text, base, tuple(tags))


def same_abi(a: str | None, b: str | None) -> bool:
    """Whether a kernel expecting ``b`` accepts state written as ``a`` (the kernel's
    own test: the whole string, tags included)."""
    return a is not None and a == b
