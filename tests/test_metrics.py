"""The exposition: a golden text for a seeded store (a renamed metric is a visible
change), promtool, and label escaping of hostile release strings."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from khod.ingest import IngestOptions, ingest_boot
from khod.metrics import SnapshotCollector, exposition, make_registry
from khod.parse.metadata import decode_release
from khod.paths import HostPaths
from khod.snapshot import compute_snapshot, source_of
from khod.store.db import open_store
from tests.conftest import SysrootFactory

GOLDEN = Path(__file__).parent / "golden" / "metrics-pstore-step0-boot2.prom"


def seeded_exposition(sysroot: SysrootFactory, db_url: str) -> str:
    store = open_store(db_url)
    for step in ("pstore/step0", "pstore/step1", "pstore/step0-boot2"):
        obs, _, _ = ingest_boot(HostPaths(sysroot(step)), store, IngestOptions())
    snap = compute_snapshot(
        store, obs.machine_id, obs.boot_id, ingested_at=1795481300.0, duration=0.25
    )
    c = SnapshotCollector()
    c.set(snap)
    return exposition(make_registry(c)).decode()


def test_golden_exposition(sysroot: SysrootFactory, db_url: str) -> None:
    text = seeded_exposition(sysroot, db_url)
    if os.environ.get("KHOD_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text()


def test_golden_exposition_passes_promtool() -> None:
    r = subprocess.run(
        ["promtool", "check", "metrics"],
        input=GOLDEN.read_text(),
        text=True,
        capture_output=True,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr


HOSTILE = [
    'evil"quote',
    "back\\slash",
    "new\nline",
    decode_release(bytes(range(0x80, 0xC0)))[0],  # 64 bytes of non-UTF-8, as khod decodes them
]


@pytest.mark.parametrize("release", HOSTILE)
def test_hostile_release_strings_are_escaped(release: str) -> None:
    c = SnapshotCollector()
    c.set(
        {
            "boot": {
                "release": release,
                "previous_release": release,
                "kind": "kexec",
                "kho_abi": "kho-v4",
                "kho_enabled": True,
                "kexec_count": 3,
            }
        }
    )
    text = exposition(make_registry(c)).decode()
    r = subprocess.run(
        ["promtool", "check", "metrics"], input=text, text=True, capture_output=True, check=False
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (info,) = [f for f in text_string_to_metric_families(text) if f.name == "khod_boot_info"]
    (sample,) = info.samples
    assert sample.labels["release"] == release
    assert sample.labels["previous_release"] == release
    # the sample stayed on one line: a raw newline would have split it
    (line,) = [ln for ln in text.splitlines() if "kho-v4" in ln]
    assert line.startswith("khod_boot_info{") and line.endswith("} 1.0")


def test_source_of() -> None:
    assert source_of("/sys/kernel/debug/kho/in/fdt") == "kho"
    assert source_of("/dev/kmsg") == "kmsg"
    assert source_of("/var/lib/systemd/pstore/dmesg-ramoops-0") == "pstore"
    assert source_of("/proc/sys/kernel/random/boot_id") == "identity"


def test_an_empty_snapshot_still_exposes_every_family() -> None:
    text = exposition(make_registry(SnapshotCollector())).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {
        "khod_kexecs_since_cold_boot",
        "khod_boot_info",
        "khod_kho_enabled",
        "khod_boot_timestamp_seconds",
        "khod_kho_scratch_bytes",
        "khod_boots",
        "khod_pstore_records",
        "khod_kexec_attempts",
        "khod_source_errors",
        "khod_last_ingest_timestamp_seconds",
        "khod_ingest_duration_seconds",
    }
