"""The exposition: a golden text for a seeded store (a renamed metric is a visible
change), promtool, and label escaping of hostile release strings."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from khod import __version__
from khod.cli import khod_main
from khod.cli.common import run_main
from khod.contracts import MetricsSnapshot, SnapshotBoot
from khod.ingest.snapshot import compute_snapshot
from khod.metrics import SnapshotCollector, exposition, make_registry
from khod.parse.metadata import decode_release
from khod.records import legacy_source
from khod.store.db import open_store
from tests.builders import Host
from tests.conftest import GOLDEN as GOLDEN_DIR
from tests.conftest import HostFactory, SysrootFactory

GOLDEN = GOLDEN_DIR / "metrics-pstore-step0-boot2.prom"


def this_boot(root: Path) -> tuple[str, str]:
    """The machine id and boot id of the tree at ``root``."""
    machine = (root / "etc/machine-id").read_text().strip()
    return machine, (root / "proc/sys/kernel/random/boot_id").read_text().strip()


def seeded_exposition(host: HostFactory, db_url: str) -> str:
    for step in ("pstore/step0", "pstore/step1", "pstore/step0-boot2"):
        h = host(step, db_url)
    machine, boot = this_boot(h.root)
    store = open_store(db_url)
    snap = compute_snapshot(store, machine, boot, ingested_at=1795481300.0, duration=0.25)
    c = SnapshotCollector()
    c.set(snap)
    return exposition(make_registry(c)).decode()


def test_golden_exposition(host: HostFactory, db_url: str) -> None:
    text = seeded_exposition(host, db_url)
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
        MetricsSnapshot(
            boot=SnapshotBoot(
                release=release,
                previous_release=release,
                kind="kexec",
                kho_abi="kho-v4",
                kho_enabled=True,
                kexec_count=3,
            )
        )
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


def test_legacy_source_of_events_stored_before_they_had_one() -> None:
    assert legacy_source("parse-error", "/sys/kernel/debug/kho/in/fdt") == "kho"
    assert legacy_source("read-error", "/dev/kmsg") == "kmsg"
    assert legacy_source("parse-error", "/var/lib/systemd/pstore/dmesg-ramoops-0") == "pstore"
    assert legacy_source("read-error", "/proc/sys/kernel/random/boot_id") == "identity"
    assert legacy_source("kexec-verdict", "kexec") == "kexec"
    assert legacy_source("store-damaged", "store") == "store"


def test_an_empty_snapshot_still_exposes_every_family() -> None:
    text = exposition(make_registry(SnapshotCollector())).decode()
    names = {f.name for f in text_string_to_metric_families(text)}
    assert names == {
        "khod_kexecs_since_cold_boot",
        "khod_boot_info",
        "khod_boot_chain_info",
        "khod_kho_enabled",
        "khod_liveupdate_number",
        "khod_boot_timestamp_seconds",
        "khod_kho_scratch_bytes",
        "khod_boots",
        "khod_pstore_records",
        "khod_kexec_attempts",
        "khod_source_errors",
        "khod_last_ingest_timestamp_seconds",
        "khod_ingest_duration_seconds",
        "khod_build_info",
    }
    assert 'khod_build_info{version="' + __version__ + '"} 1.0' in text


def _source_errors(db: Path, machine_id: str, boot_id: str) -> dict[str, float]:
    store = open_store(f"sqlite:///{db}")
    snap = compute_snapshot(store, machine_id, boot_id, ingested_at=0.0, duration=0.0)
    store.dispose()
    c = SnapshotCollector()
    c.set(snap)
    text = exposition(make_registry(c)).decode()
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "khod_source_errors"]
    return {s.labels["source"]: s.value for s in fam.samples if s.name.endswith("_total")}


def _origins(db: Path, kind: str) -> list[str | None]:
    """What the stored events of this kind say they come from."""
    from sqlalchemy import select

    from khod.store.schema import events

    store = open_store(f"sqlite:///{db}")
    with store.engine.connect() as conn:
        got = list(conn.execute(select(events.c.origin).where(events.c.kind == kind)).scalars())
    store.dispose()
    return got


def test_a_damaged_store_is_counted_as_a_store_error(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.store.test_powerloss import khod_once, seeded, truncated_mid_page

    db = tmp_path / "state" / "khod.db"
    seeded(sysroot, db, capsys)
    truncated_mid_page(db)
    rc, err = khod_once(sysroot("pstore-kho/step3"), db, capsys)
    assert rc == 0 and "was damaged" in err
    errors = _source_errors(
        db, "36523389201885c96b08f3a4f23394ad", "577f767f-a59e-4b49-833d-15b669e7c796"
    )
    assert (errors["store"], errors["identity"]) == (1, 0)
    assert _origins(db, "store-damaged") == ["store"]


def test_a_kexec_that_did_not_land_is_counted_as_a_kexec_error(
    sysroot: SysrootFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from khod.cli import khoctl
    from tests import variants
    from tests.store.test_powerloss import khod_once

    db = tmp_path / "state" / "khod.db"
    assert khod_once(sysroot("pstore/step0"), db, capsys)[0] == 0
    before = sysroot("pstore/step1")
    assert khod_once(before, db, capsys)[0] == 0
    variants.replace(before, "sys/kernel/kexec_loaded", b"1\n")
    argv = ["record-kexec", "--sysroot", str(before), "--db", f"sqlite:///{db}"]
    assert run_main("khoctl", khoctl.main, argv) == 0
    # the real capture: the kexec'd kernel panicked and the VM came back cold
    rc, err = khod_once(sysroot("pstore/step0-boot2"), db, capsys)
    assert rc == 0, err
    errors = _source_errors(
        db, "84ce2d5daaed6b971052fc40dfcd0a30", "c8be1a8f-766f-4cb8-8a3b-fc30c50a300f"
    )
    assert (errors.get("kexec"), errors["identity"]) == (1, 0)
    assert _origins(db, "kexec-verdict") == ["kexec"]


def test_the_live_update_number_of_this_boot_is_a_gauge(
    sysroot: SysrootFactory, db_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests import variants
    from tests.parse.test_parse_luo import luo_ser

    root = sysroot("kexec1/step1")
    variants.replace(root, "sys/kernel/debug/kho/in/sub_fdts/LUO", luo_ser("luo-v5", 41))
    Host(root, db_url, tmp_path / "state", capsys).ingest()
    store = open_store(db_url)
    snap = compute_snapshot(store, *this_boot(root), ingested_at=0.0, duration=0.0)
    c = SnapshotCollector()
    c.set(snap)
    text = exposition(make_registry(c)).decode()
    (fam,) = [f for f in text_string_to_metric_families(text) if f.name == "khod_liveupdate_number"]
    assert [(s.labels, s.value) for s in fam.samples] == [({}, 41)]


def test_where_the_chain_came_from_is_a_label(db_url: str, sysroot: SysrootFactory) -> None:
    """A kexec without a handover whose chain khod derived (the journal's boot before
    it is the one recorded): ``khod_boot_chain_info{metadata_source="derived"}``, beside
    ``khod_boot_info`` as it was; a cold boot's is empty."""
    import dataclasses

    from khod.store.boots import save_observation
    from tests.collect.test_chain import kexec_without_handover

    before, obs = kexec_without_handover(sysroot)
    store = open_store(db_url)
    save_observation(store, before)

    def chain_info(boot_id: str) -> tuple[dict[str, str], str]:
        snap = compute_snapshot(store, obs.machine_id, boot_id, ingested_at=0.0, duration=0.0)
        c = SnapshotCollector()
        c.set(snap)
        text = exposition(make_registry(c)).decode()
        r = subprocess.run(
            ["promtool", "check", "metrics"],
            input=text,
            text=True,
            capture_output=True,
            check=False,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        (fam,) = [
            f for f in text_string_to_metric_families(text) if f.name == "khod_boot_chain_info"
        ]
        (sample,) = fam.samples
        assert sample.value == 1
        return sample.labels, text

    assert chain_info(before.boot_id)[0] == {"metadata_source": ""}
    save_observation(store, dataclasses.replace(obs, journal_previous_boot=before.boot_id))
    labels, text = chain_info(obs.boot_id)
    assert labels == {"metadata_source": "derived"}
    (info,) = [f for f in text_string_to_metric_families(text) if f.name == "khod_boot_info"]
    assert info.samples[0].labels == {
        "release": obs.release,
        "previous_release": before.release,
        "kind": "kexec-no-handover",
        "kho_abi": "",
    }
    store.dispose()


# What a snapshot this khod cannot read looks like: a newer khod's (or an older one's,
# left on disk by the daemon before an upgrade), one cut short, one that is not JSON
UNREADABLE: dict[str, Callable[[bytes], bytes]] = {
    "another version": lambda good: json.dumps({**json.loads(good), "version": 2}).encode(),
    "cut short": lambda good: good[: len(good) // 2],
    "garbage": lambda _good: bytes(range(256)),
    "a time no float holds": lambda good: re.sub(
        rb'("last_ingest":\s*)[^,}]+', rb"\g<1>1" + b"0" * 400, good, count=1
    ),
    "a time that is not a number": lambda good: json.dumps(
        {**json.loads(good), "last_ingest": float("nan")}
    ).encode(),
}


@pytest.mark.parametrize("how", UNREADABLE)
def test_a_snapshot_that_cannot_be_read_is_one_line_and_the_last_good_one_is_served(
    sysroot: SysrootFactory, tmp_path: Path, how: str
) -> None:
    snap = tmp_path / "metrics.json"
    argv = ["--once", "--sysroot", str(sysroot("kexec1/step1"))]
    argv += ["--db", f"sqlite:///{tmp_path / 'k.db'}", "--snapshot", str(snap)]
    assert run_main("khod", khod_main.main, argv) == 0
    served = SnapshotCollector()
    assert served.load(snap) is None
    good = exposition(make_registry(served)).decode()
    assert "khod_kexecs_since_cold_boot 1.0" in good

    snap.write_bytes(UNREADABLE[how](snap.read_bytes()))
    refused = served.load(snap)
    assert refused is not None
    line = str(refused)
    assert line.startswith(f"metrics snapshot {snap}: ") and "\n" not in line, line
    assert (refused.event.kind, refused.event.source) == ("record-refused", str(snap))
    assert refused.event.message == line
    assert exposition(make_registry(served)).decode() == good  # the last good one, served on
    assert served.serving() == "the last good snapshot"

    fresh = SnapshotCollector()  # a daemon starting with it on disk: the empty one
    assert str(fresh.load(snap)) == line
    assert fresh.serving() == "no snapshot yet (empty)"
    empty = exposition(make_registry(SnapshotCollector())).decode()
    assert exposition(make_registry(fresh)).decode() == empty
