"""khod on the real arm64 7.3.4 captures (tests/data/arm64-*): every boot's kind as its
/chosen and its log tell it, and the chain khod derives across the kexecs that hand
nothing over, from the journal's word that no boot came between."""

from __future__ import annotations

import dataclasses

import pytest

from khod.collect.boot import collect
from khod.observation import BootKind
from khod.paths import HostPaths
from khod.store.boots import load_boot, save_observation
from khod.store.db import open_store
from tests.conftest import DATA


@pytest.mark.parametrize(
    ("step", "kind"),
    [
        ("arm64-nokho/step0", BootKind.COLD),
        # offered in /chosen (linux,kho-fdt) and by the log, refused by kho=off
        ("arm64-nokho/step1", BootKind.KEXEC_REJECTED),
        # out of a kho=off kernel: /chosen/linux,booted-from-kexec and nothing handed over
        ("arm64-nokho/step2", BootKind.KEXEC_NO_HANDOVER),
        ("arm64-pstore/step0-boot2", BootKind.COLD),  # a VM reset after a panic
        ("arm64-chain/step2", BootKind.KEXEC),
    ],
)
def test_the_kind_of_each_real_arm64_boot(step: str, kind: BootKind) -> None:
    obs = collect(HostPaths(DATA / step))
    assert obs.kind is kind, obs.kind_reason


def test_a_chain_derived_across_arm64_kexecs_without_handover(db_url: str) -> None:
    store = open_store(db_url)
    steps = [collect(HostPaths(DATA / f"arm64-nokho/step{i}")) for i in range(3)]
    before = None
    for obs in steps:
        previous = before.boot_id if before is not None else None
        save_observation(store, dataclasses.replace(obs, journal_previous_boot=previous))
        before = obs
    got = [load_boot(store, o.machine_id, o.boot_id) for o in steps]
    assert [(g.previous_release, g.kexec_count, g.metadata_source) for g in got if g] == [
        (None, 0, None),
        ("7.3.4-khod-arm64-a", 1, "derived"),
        ("7.3.4-khod-arm64-b", 2, "derived"),
    ]
