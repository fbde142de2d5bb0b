"""The chain khod derives where the kernel hands none over: from the boot it recorded
just before, only where the journal shows no boot came between; never guessed."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from khod.collect.boot import collect
from khod.observation import BootKind, BootObservation
from khod.parse.journal import previous_boot
from khod.paths import HostPaths
from khod.store.boots import load_boot, save_observation
from khod.store.db import open_store
from tests import variants
from tests.conftest import SysrootFactory


def list_boots(*boot_ids: str) -> bytes:
    """What ``journalctl --list-boots -o json`` writes: 32 hex digits, oldest first."""
    n = len(boot_ids)
    return json.dumps(
        [
            {"index": i - n + 1, "boot_id": b.replace("-", ""), "first_entry": i, "last_entry": i}
            for i, b in enumerate(boot_ids)
        ]
    ).encode()


def test_the_journals_boot_before_this_one() -> None:
    a, b, c = (
        "a" * 32,
        "b" * 8 + "-" + "b" * 4 + "-" + "b" * 4 + "-" + "b" * 4 + "-" + "b" * 12,
        "c" * 32,
    )
    data = list_boots(a, b, c)
    assert previous_boot(data, c, "j") == b.replace("-", "")
    assert previous_boot(data, b, "j") == a
    assert previous_boot(data, a, "j") is None  # the first it holds: nothing to show
    assert previous_boot(data, "d" * 32, "j") is None  # this boot not there yet


def kexec_without_handover(sysroot: SysrootFactory) -> tuple[BootObservation, BootObservation]:
    """nokho/step0 (cold), then nokho/step1 as a kexec without KHO shows it (x86 0xD0)."""
    before = collect(HostPaths(sysroot("nokho/step0")))
    after = sysroot("nokho/step1")
    variants.replace(after, "proc/sys/kernel/bootloader_type", b"208\n")
    obs = collect(HostPaths(after))
    assert (obs.kind, obs.previous_release, obs.metadata_source) == (
        BootKind.KEXEC_NO_HANDOVER,
        None,
        None,
    )
    return before, obs


def test_a_kexec_without_handover_takes_the_chain_from_the_boot_recorded_before(
    db_url: str, sysroot: SysrootFactory
) -> None:
    before, obs = kexec_without_handover(sysroot)
    store = open_store(db_url)
    save_observation(store, before)
    result = save_observation(store, dataclasses.replace(obs, journal_previous_boot=before.boot_id))
    got = load_boot(store, obs.machine_id, obs.boot_id)
    assert got is not None
    assert (got.previous_release, got.kexec_count, got.metadata_source) == (
        before.release,
        1,
        "derived",
    )
    assert result.chain is not None and result.chain.metadata_source == "derived"


@pytest.mark.parametrize("journal", [None, "f" * 32], ids=["no-journal", "a-boot-between"])
def test_without_proof_that_no_boot_was_missed_the_chain_stays_unknown(
    db_url: str, sysroot: SysrootFactory, journal: str | None
) -> None:
    before, obs = kexec_without_handover(sysroot)
    store = open_store(db_url)
    save_observation(store, before)
    save_observation(store, dataclasses.replace(obs, journal_previous_boot=journal))
    got = load_boot(store, obs.machine_id, obs.boot_id)
    assert got is not None
    assert (got.previous_release, got.metadata_source) == (None, None)


def test_the_kernels_figures_win(db_url: str) -> None:
    from tests.conftest import FIXTURES

    store = open_store(db_url)
    before = collect(HostPaths(FIXTURES / "kexec1/step0"))
    obs = collect(HostPaths(FIXTURES / "kexec1/step1"))
    save_observation(store, before)
    save_observation(store, dataclasses.replace(obs, journal_previous_boot=before.boot_id))
    got = load_boot(store, obs.machine_id, obs.boot_id)
    assert got is not None
    assert (got.previous_release, got.kexec_count, got.metadata_source) == (
        obs.previous_release,
        obs.kexec_count,
        "kho",
    )


def test_a_kho_kexec_without_metadata_is_derived(db_url: str, sysroot: SysrootFactory) -> None:
    """7.0 (kho-v1): the handover taken, no kexec-metadata, no "exec from" line."""
    from tests.conftest import FIXTURES

    before = collect(HostPaths(FIXTURES / "kexec1/step0"))
    after = sysroot("kexec1/step1")
    variants.remove(after, "sys/kernel/debug/kho/in/sub_fdts/kexec-metadata")
    variants.drop_kmsg_lines(after, b"KHO: exec from")
    obs = collect(HostPaths(after))
    assert (obs.kind, obs.kexec_count) == (BootKind.KEXEC, None)
    store = open_store(db_url)
    save_observation(store, before)
    save_observation(store, dataclasses.replace(obs, journal_previous_boot=before.boot_id))
    got = load_boot(store, obs.machine_id, obs.boot_id)
    assert got is not None
    assert (got.previous_release, got.kexec_count, got.metadata_source) == (
        before.release,
        1,
        "derived",
    )


@pytest.mark.parametrize(
    ("journal", "want"), [(None, "attempt"), ("same", "attempt"), ("f" * 32, None)]
)
def test_an_attempt_is_no_proof_when_the_journal_names_another_boot_before(
    db_url: str, sysroot: SysrootFactory, journal: str | None, want: str | None
) -> None:
    """khoctl's attempt shows that the boot before tried a kexec, not that this boot
    followed it: A -> an unrecorded B -> C, with the journal naming B, stays unknown."""
    from sqlalchemy import select

    from khod.store.chain import derive_chain
    from khod.store.schema import boots

    before, obs = kexec_without_handover(sysroot)
    store = open_store(db_url)
    save_observation(store, before)
    named = before.boot_id if journal == "same" else journal
    obs = dataclasses.replace(obs, journal_previous_boot=named)
    save_observation(store, obs)
    with store.writer.begin() as conn:
        pk = {
            b: conn.execute(select(boots.c.id).where(boots.c.boot_id == b)).scalar_one()
            for b in (before.boot_id, obs.boot_id)
        }
        chain = derive_chain(conn, obs, pk[obs.boot_id], pk[before.boot_id], attempted=True)
    assert (None if chain is None else chain.metadata_source) == want


def test_status_shows_the_chain_khod_derived_for_this_boot(
    db_url: str, sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``khoctl status`` on a recorded boot whose chain the kernel did not give: the
    chain khod stored for it (as ``history`` shows it), not the live unknown one."""
    from tests.fleet.test_fleet import ctl

    before, obs = kexec_without_handover(sysroot)
    store = open_store(db_url)
    save_observation(store, before)
    save_observation(store, dataclasses.replace(obs, journal_previous_boot=before.boot_id))
    store.dispose()
    after = tmp_path / "roots" / "nokho-step1"  # kexec_without_handover's, loaded by kexec
    rc, out, err = ctl(capsys, "status", "--json", "--sysroot", str(after), "--db", db_url)
    assert rc == 0, err
    got = json.loads(out)
    assert (got["boot_id"], got["recorded"]) == (obs.boot_id, True)
    assert (got["previous_release"], got["kexec_count"], got["metadata_source"]) == (
        before.release,
        1,
        "derived",
    )
    rc, out, err = ctl(capsys, "status", "--sysroot", str(after), "--db", db_url)
    assert rc == 0, err
    assert f"previous release:  {before.release} (the boot khod recorded before" in out, out
