"""``khoctl report transitions --derived {include,exclude,only}``: the boots through a
kexec whose chain khod derived itself (``metadata_source`` ``attempt`` or ``derived``)
counted with the kernel's, left out, or alone; the output says how many there were.
On a fleet built by hand; every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.builders import boot_row, pstore_row, write_export
from tests.fleet.test_fleet import ctl
from tests.fleet.test_report import T0, attempt_obj, host

# 7.0 -> 7.1 by source: hosts (one kexec each, after a cold 7.0 boot)
SOURCES_70 = {"kho": 6, "kmsg": 2, "attempt": 3, "derived": 4}
GROUP = {"kho": "a", "kmsg": "b", "attempt": "f", "derived": "d"}  # machine ids apart
DERIVED_69 = 2  # 6.9 -> 7.1: only derived chains
COLD_71 = 10  # cold 7.1 boots: the baseline


def fleet() -> list[dict[str, Any]]:
    """The hand-built fleet: 7.0 -> 7.1 on 15 hosts (6 kho, 2 kmsg, 3 attempt, 4
    derived; the first derived one panicked, found by the cold boot after it); 6.9 ->
    7.1 on 2 hosts, derived; 7.1's baseline: 10 cold boots; and one kexec without a
    handover whose chain is derived: 7.0 -> 7.1 too (on a fleet without KHO every
    kexec is one of those: the transitions are theirs)."""
    objs: list[dict[str, Any]] = []
    n = 0
    for src, hosts in SOURCES_70.items():
        for i in range(hosts):
            m = host(i, GROUP[src])
            b0, b1 = f"{src}{i}-0", f"{src}{i}-1"
            objs.append(boot_row(m, b0, "7.0", None, T0))
            objs.append(boot_row(m, b1, "7.1", "7.0", T0 + 100) | {"metadata_source": src})
            if src == "attempt":
                n += 1
                objs.append(attempt_obj(m, n, b0, "7.0", "7.1", "landed", b1))
            if src == "derived" and i == 0:
                objs.append(boot_row(m, f"{src}{i}-2", "7.0", None, T0 + 200))
                objs.append(pstore_row(m, f"{src}{i}-2", b1, "Panic"))
    for i in range(DERIVED_69):
        m = host(i, "9")
        objs.append(boot_row(m, f"s{i}-0", "6.9", None, T0))
        objs.append(boot_row(m, f"s{i}-1", "7.1", "6.9", T0 + 100) | {"metadata_source": "derived"})
    for i in range(COLD_71):
        objs.append(boot_row(host(i, "c"), f"c{i}-0", "7.1", None, T0))
    m = host(0, "e")
    objs.append(boot_row(m, "e0-0", "7.0", None, T0))
    objs.append(
        boot_row(m, "e0-1", "7.1", "7.0", T0 + 100)
        | {"kind": "kexec-no-handover", "metadata_source": "derived", "kho_enabled": False}
    )
    return sorted(objs, key=lambda o: ["boot", "pstore", "attempt"].index(o["object"]))


@pytest.fixture
def report(db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    f = write_export(tmp_path / "derived.jsonl", fleet())
    rc, out, err = ctl(capsys, "import", str(f), "--db", db_url, "--json")
    assert rc == 0, err
    assert json.loads(out)["new"] == {"boot": 47, "pstore": 1, "attempt": 3}

    def run(*argv: str) -> tuple[int, str, str]:
        return ctl(capsys, "report", "transitions", "--db", db_url, "--window", "0s", *argv)

    return run


def rows(report: Any, *argv: str) -> dict[tuple[str | None, str], dict[str, Any]]:
    rc, out, err = report("--json", "--include-cold", *argv)
    assert rc == 0, err
    return {(r["previous_release"], r["release"]): r for r in json.loads(out)}


def counts(r: dict[str, Any]) -> tuple[int, int, int, int]:
    return r["boots"], r["hosts"], r["crashes"], r["derived_boots"]


def test_derived_transitions_are_counted_by_default_and_said_so(report: Any) -> None:
    got = rows(report)
    assert got == rows(report, "--derived", "include")
    # 7.0 -> 7.1: 16 boots on 16 hosts, 8 of them derived (3 attempt, 4 derived and the
    # kexec without a handover), 1 crash
    assert counts(got[("7.0", "7.1")]) == (16, 16, 1, 8)
    assert counts(got[("6.9", "7.1")]) == (2, 2, 0, 2)
    assert got[("7.0", "7.1")]["attempts"] == 3
    # the baseline: the 10 cold boots
    assert counts(got[(None, "7.1")]) == (10, 10, 0, 0)
    rc, out, _ = report()
    assert rc == 0
    assert out.rstrip().splitlines()[-1] == (
        "Derived: 10 boots through a kexec counted here had a chain khod derived "
        "(metadata_source attempt or derived; --derived include)."
    )


def test_exclude_leaves_out_the_derived_boots_and_says_how_many(report: Any) -> None:
    got = rows(report, "--derived", "exclude")
    # only the kernel's own chains (kho, kmsg): 8 boots, the derived crash gone
    assert counts(got[("7.0", "7.1")]) == (8, 8, 0, 0)
    assert ("6.9", "7.1") not in got
    # khoctl's attempts are its own records, not a chain: counted either way
    assert got[("7.0", "7.1")]["attempts"] == 3
    assert counts(got[(None, "7.1")]) == (10, 10, 0, 0)  # the baseline is untouched
    rc, out, _ = report("--derived", "exclude")
    assert rc == 0
    assert "Derived: 10 boots through a kexec whose chain khod derived" in out
    assert out.rstrip().endswith("left out (--derived exclude).")


def test_only_keeps_the_derived_boots_alone(report: Any) -> None:
    got = rows(report, "--derived", "only")
    assert counts(got[("7.0", "7.1")]) == (8, 8, 1, 8)
    assert counts(got[("6.9", "7.1")]) == (2, 2, 0, 2)
    assert counts(got[(None, "7.1")]) == (10, 10, 0, 0)
    rc, out, _ = report("--derived", "only")
    assert rc == 0
    assert "Derived: 10 boots" in out and "--derived only" in out


def test_the_derived_boots_are_in_the_metrics(report: Any, tmp_path: Path) -> None:
    prom = tmp_path / "t.prom"
    assert report("--textfile", str(prom))[0] == 0
    line = 'khod_fleet_transition_derived_boots{previous_release="7.0",release="7.1"} 8.0'
    assert line in prom.read_text().splitlines()
    assert report("--textfile", str(prom), "--derived", "exclude")[0] == 0
    assert line.replace("} 8.0", "} 0.0") in prom.read_text().splitlines()


def test_a_fleet_without_kho_has_its_bad_transition_found(
    db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Debian's kernels: no KHO, every kexec a ``kexec-no-handover`` boot whose chain
    khod derived (or ``kexec-rejected``, a ``kho=off`` host). 6.1 -> 6.12 panics on 12
    of 20 hosts, 6.11 -> 6.12 on none of 20; 6.12's 30 cold boots are clean. The bad
    transition is named worse, the good one not; both are transitions, not baseline."""
    objs: list[dict[str, Any]] = []
    no_kho = {"kho_enabled": False, "kho_abi": None, "metadata_source": "derived"}
    for prev, group, bad in (("6.1", "1", 12), ("6.11", "2", 0)):
        for i in range(20):
            m = host(i, group)
            kind = "kexec-rejected" if i % 5 == 0 else "kexec-no-handover"
            objs.append(boot_row(m, f"{group}{i}-0", prev, None, T0) | no_kho)
            objs.append(
                boot_row(m, f"{group}{i}-1", "6.12", prev, T0 + 100) | no_kho | {"kind": kind}
            )
            objs.append(boot_row(m, f"{group}{i}-2", "6.12", None, T0 + 200) | no_kho)
            if i < bad:
                objs.append(pstore_row(m, f"{group}{i}-2", f"{group}{i}-1", "Panic"))
    for i in range(30):
        objs.append(boot_row(host(i, "c"), f"c{i}-0", "6.12", None, T0) | no_kho)
    objs.sort(key=lambda o: ["boot", "pstore"].index(o["object"]))
    f = write_export(tmp_path / "nokho.jsonl", objs)
    rc, _, err = ctl(capsys, "import", str(f), "--db", db_url)
    assert rc == 0, err
    rc, out, err = ctl(capsys, "report", "transitions", "--db", db_url, "--window", "0s", "--json")
    assert rc == 0, err
    got = {(r["previous_release"], r["release"]): r for r in json.loads(out)}
    bad, good = got[("6.1", "6.12")], got[("6.11", "6.12")]
    assert (bad["boots"], bad["crashes"], bad["derived_boots"]) == (20, 12, 20)
    assert (good["boots"], good["crashes"]) == (20, 0)
    assert bad["verdict"] == "worse" and good["verdict"] != "worse", (bad, good)
