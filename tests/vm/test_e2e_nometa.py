"""End to end on a KHO kernel without kexec-metadata (issue 27): the ``nometa`` kernel,
7.3.4 with the subtree left out (tests/vm/kernel.py), the stand-in for a 7.0 kernel.

One run, five boots (``a`` and ``b`` are the stock kernels)::

    0 a cold --khoctl kexec--> 1 nometa --khoctl kexec--> 2 nometa
      --kexec -s -l, kexec -e--> 3 a --khoctl kexec--> 4 b

- 1: the handover from ``a`` carries ``a``'s subtree; the nometa kernel does not read it
  (no ``exec from`` line), its debugfs shows it: the kernel's figures;
- 2: no subtree at all: the chain from khoctl's attempt in boot 1;
- 3: no subtree, no attempt, no journal in this guest: nothing shows that no boot came
  between 2 and 3, so previous_release and the count stay unknown;
- 4: ``a`` hands over its subtree again, count 1 (its own incoming count was 0): the
  kernel's figures win over the attempt's.

Every boot is checked against the kernel's own log on the console. Each boot also
captures the files khod reads (``capture``): ``python -m tests.vm.nometa_captures``
turns a run into tests/data/nometa-chain/ (tests/collect/test_nometa_captures.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.vm import harness, kernelcache
from tests.vm.test_e2e import KHO_APPEND, finish

pytestmark = pytest.mark.vm
FOUND = "KHO: found kexec handover data."
METADATA = "root/sys/kernel/debug/kho/{}/sub_fdts/kexec-metadata"


def plan(kernels: Path) -> dict[str, list[list[str]]]:
    a, b, nometa = (str(kernels / f"bzImage-{t}") for t in ("a", "b", "nometa"))
    return {
        "0": [["capture"], ["ingest"], ["kexec", nometa, "1"]],
        # --force: a kho-v4 kernel without outgoing metadata fails khoctl's check
        "1": [["capture"], ["ingest"], ["check", nometa], ["kexec", nometa, "2", "--force"]],
        "2": [["capture"], ["ingest"], ["kexec-plain", a, "3"]],
        "3": [["capture"], ["ingest"], ["kexec", b, "4"]],
        "4": [["capture"], ["ingest"]],
    }


@pytest.fixture(scope="module")
def kernels() -> Path:
    return kernelcache.kernels()


@pytest.fixture(scope="module")
def nometa(kernels: Path) -> Iterator[harness.Run]:
    yield finish(harness.run("nometa", kernels / "bzImage-a", plan(kernels), append=KHO_APPEND))


def release(kernels: Path, tag: str) -> str:
    return (kernels / f"release-{tag}").read_text().strip()


def by_step(r: harness.Run) -> tuple[list[harness.Boot], list[dict[str, Any]]]:
    """The five boots in order (as the console names them) and khod's record of each."""
    steps = {b.step: b for b in r.boots}
    assert sorted(steps) == ["0", "1", "2", "3", "4"], r.digest()
    boots = [steps[s] for s in "01234"]
    recs = harness.records(r)
    return boots, [recs[b.boot_id] for b in boots]


def chain_of(rec: dict[str, Any]) -> tuple[Any, ...]:
    return (rec["kind"], rec["previous_release"], rec["kexec_count"], rec["metadata_source"])


def test_the_nometa_kernel_logs_a_handover_and_no_exec_from(
    nometa: harness.Run, kernels: Path
) -> None:
    boots, _ = by_step(nometa)
    assert [b.release for b in boots] == [
        release(kernels, t) for t in ("a", "nometa", "nometa", "a", "b")
    ]
    assert FOUND not in boots[0].kho_lines and boots[0].exec_from is None
    for b in boots[1:]:
        assert FOUND in b.kho_lines, b  # KHO took every handover
    # the nometa kernel never reads a subtree; a stock one after it finds none
    assert [b.exec_from for b in boots] == [None, None, None, None, (release(kernels, "a"), 1)]
    # what debugfs shows: the nometa kernel hands no subtree on, in or out
    shows = [
        tuple((nometa.out(b.step) / METADATA.format(d)).exists() for d in ("in", "out"))
        for b in boots
    ]
    assert shows == [(False, True), (True, False), (False, False), (False, True), (True, True)]


def test_the_kernels_figures_where_a_subtree_was_handed_over(
    nometa: harness.Run, kernels: Path
) -> None:
    _, recs = by_step(nometa)
    a = release(kernels, "a")
    assert chain_of(recs[0]) == ("cold", None, 0, None)
    # boot 1: the nometa kernel did not read a's subtree, khod did (debugfs in/)
    assert chain_of(recs[1]) == ("kexec", a, 1, "kho")
    # boot 4: count 1 from the kernel, not one on from boot 3 (khoctl's attempt there)
    assert chain_of(recs[4]) == ("kexec", a, 1, "kho")
    assert [recs[n].get("verdict") for n in (1, 2, 4)] == ["landed"] * 3


def test_the_chain_from_khoctls_attempt_where_no_subtree_came(
    nometa: harness.Run, kernels: Path
) -> None:
    _, recs = by_step(nometa)
    assert chain_of(recs[2]) == ("kexec", release(kernels, "nometa"), 2, "attempt")
    check = json.loads(nometa.file("1", "*-check.json").read_text())
    meta = next(c for c in check["checks"] if c["name"] == "outgoing-metadata")
    assert not meta["ok"] and "no out/sub_fdts/kexec-metadata" in meta["detail"], meta


def test_unknown_where_nothing_shows_no_boot_was_missed(nometa: harness.Run) -> None:
    """Boot 3 came by a plain kexec: no attempt, and this guest has no journal to name
    the boot before it. khod does not guess from the boot it recorded last."""
    _, recs = by_step(nometa)
    assert chain_of(recs[3]) == ("kexec", None, None, None)
    assert recs[3].get("verdict") is None
    assert recs[3]["bootloader_type"] == 0xD0  # the kernel says kexec all the same
