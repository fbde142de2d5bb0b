"""The KHO subtrees khod reads: one row each, naming its parser and its collector.

A new subtree is a parser (``khod/parse/``), a collector module (``khod/collect/``) that
fills its fields of ``SubtreeFacts``, and a row here (docs/adding-a-source.md). A
subtree without a row is kept opaque: its bytes are stored, its name and size shown.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from khod.collect.collector import Collector, SubtreeFacts
from khod.collect.luo import collect_luo
from khod.collect.metadata import collect_metadata
from khod.collect.pstore import collect_pstore_kho
from khod.parse.kmsg import KhoLog
from khod.parse.luo import parse_luo
from khod.parse.metadata import parse_kexec_metadata
from khod.parse.pstore_kho import parse_pstore_kho
from khod.records import KhoSubtreeName
from khod.sources.kho import KhoFiles


@dataclass(frozen=True)
class SubtreeSource:
    name: KhoSubtreeName
    parse: Callable[[bytes, str], object]  # pure: the blob's bytes and how it is shown
    collect: Callable[[Collector, KhoFiles, KhoLog | None, SubtreeFacts], None]


SUBTREES = (
    SubtreeSource(KhoSubtreeName.KEXEC_METADATA, parse_kexec_metadata, collect_metadata),
    SubtreeSource(KhoSubtreeName.LUO, parse_luo, collect_luo),
    SubtreeSource(KhoSubtreeName.PSTORE_KHO, parse_pstore_kho, collect_pstore_kho),
)


def collect_subtrees(c: Collector, kf: KhoFiles, log: KhoLog | None) -> SubtreeFacts:
    found = SubtreeFacts()
    for source in SUBTREES:
        source.collect(c, kf, log, found)
    return found
