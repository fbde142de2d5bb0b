"""The KHO subtrees khod reads: one row each in ``SUBTREES``, their names spelled once,
each row's parser fed a real blob, and a subtree without a row kept opaque."""

from __future__ import annotations

import ast

from khod.collect.boot import collect
from khod.collect.subtrees import SUBTREES
from khod.observation import Severity, Subtree
from khod.paths import HostPaths
from khod.records import Direction, KhoSubtreeName
from tests.conftest import FIXTURES, REPO, SysrootFactory
from tests.parse.test_parse_luo import luo_ser

PACKAGE = REPO / "khod"
KHO = "sys/kernel/debug/kho"


def test_every_named_subtree_has_exactly_one_row() -> None:
    assert sorted(s.name for s in SUBTREES) == sorted(KhoSubtreeName)


def test_subtree_names_are_spelled_only_in_the_vocabulary() -> None:
    """A name spelled where it is used is a name a new module can misspell."""
    names = {str(n) for n in KhoSubtreeName}
    spelled = sorted(
        f"{p.relative_to(PACKAGE)}:{node.lineno}"
        for p in PACKAGE.rglob("*.py")
        if p.name != "records.py"
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    )
    assert spelled == []


def test_each_rows_parser_reads_a_real_blob() -> None:
    blobs = {
        KhoSubtreeName.KEXEC_METADATA: FIXTURES / f"kexec1/step1/{KHO}/in/sub_fdts/kexec-metadata",
        KhoSubtreeName.PSTORE_KHO: FIXTURES / f"pstore-kho/step1/{KHO}/in/sub_fdts/pstore-kho",
    }
    for row in SUBTREES:
        data = blobs[row.name].read_bytes() if row.name in blobs else luo_ser("luo-v5", 3)
        assert row.parse(data, row.name) is not None


def test_a_subtree_without_a_row_is_kept_opaque_with_its_bytes(sysroot: SysrootFactory) -> None:
    """hwpoison (a work-in-progress tree's plain struct): shown, stored, never an error."""
    root = sysroot("kexec1/step1")
    blob = bytes(range(40))
    (root / KHO / "in/sub_fdts/hwpoison").write_bytes(blob)
    obs = collect(HostPaths(root))
    assert Subtree("hwpoison", len(blob)) in obs.subtrees
    assert [b.data for b in obs.blobs if b.name == "sub_fdts/hwpoison"] == [blob]
    assert [b.direction for b in obs.blobs if b.name == "sub_fdts/hwpoison"] == [Direction.IN]
    assert not [e for e in obs.events if e.severity is not Severity.INFO], obs.events
    assert obs.kexec_count is not None  # the rest of the handover read as before
