"""Every ``_total`` the daemon serves is a counter: a restart of the daemon within one
boot (Restart=, a crash) must not lower any of its series, or Prometheus reads a reset
and counts again what it had already counted."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SysrootFactory
from tests.daemon_helpers import Running, running_daemon
from tests.store.test_diskfull import metric

STORE_ERRORS = 'khod_source_errors_total{source="store"}'


def totals(text: str) -> dict[str, float]:
    """Every sample of every counter family, by name and labels."""
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith("_total"):
                labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}"] = s.value
    return out


def went_down(before: dict[str, float], after: dict[str, float]) -> dict[str, tuple[float, float]]:
    return {k: (v, after.get(k, 0.0)) for k, v in before.items() if after.get(k, 0.0) < v}


def _fail_store(d: Running, errors: float, *, stop: bool = True) -> str:
    """Put a directory where the store is (it cannot be opened), ingest again, and wait
    until ``errors`` more failed ingests are counted; then put the store back."""
    db = Path(d.db.removeprefix("sqlite:///"))
    before = metric(d.scrape(), STORE_ERRORS) or 0
    away = db.with_name("khod.db.away")
    os.rename(db, away)
    db.mkdir()
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while (metric(d.scrape(), STORE_ERRORS) or 0) < before + errors:
        assert time.monotonic() < deadline, d.scrape()
        time.sleep(0.2)
    text = d.scrape()
    if stop:
        d.proc.terminate()
        assert d.proc.wait(10) == 0
    shutil.rmtree(db)
    os.rename(away, db)
    return text


def test_no_counter_goes_down_when_the_daemon_restarts_in_the_same_boot(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("pstore-kho/step2")
    conf = tmp_path / "khod.toml"
    conf.write_text('[daemon]\nretry_interval = "1s"\n')
    with running_daemon(root, tmp_path, "--config", str(conf)) as d:
        d.wait_for("READY=1")
        failing = _fail_store(d, 2)
    assert (metric(failing, STORE_ERRORS) or 0) >= 2
    (tmp_path / "notify.sock").unlink()
    with running_daemon(root, tmp_path, "--config", str(conf)) as d:  # same boot, same state
        d.wait_for("READY=1")
        restarted = d.scrape()
    assert went_down(totals(failing), totals(restarted)) == {}
    # a store error after the restart is counted on top of those before it
    (tmp_path / "notify.sock").unlink()
    with running_daemon(root, tmp_path, "--config", str(conf)) as d:
        d.wait_for("READY=1")
        again = _fail_store(d, 1)
    assert (metric(again, STORE_ERRORS) or 0) >= (metric(restarted, STORE_ERRORS) or 0) + 1
    assert went_down(totals(restarted), totals(again)) == {}


def test_the_count_follows_the_state_dir_a_reload_moves_it_to(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("pstore-kho/step2")
    conf = tmp_path / "khod.toml"
    body = '[daemon]\nretry_interval = "1s"\n[store]\nstate_dir = "{}"\n'
    conf.write_text(body.format(tmp_path / "a"))
    with running_daemon(root, tmp_path, "--config", str(conf), state_dir=False) as d:
        d.wait_for("READY=1")
        failing = _fail_store(d, 2, stop=False)
        d.wait_for("READY=1")  # the reload's ingest, retried once the store is back
        conf.write_text(body.format(tmp_path / "b"))
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for("RELOADING=1", timeout=10)
        d.wait_for("READY=1")
        d.proc.terminate()
        assert d.proc.wait(10) == 0
    (tmp_path / "notify.sock").unlink()
    with running_daemon(root, tmp_path, "--config", str(conf), state_dir=False) as d:
        d.wait_for("READY=1")
        restarted = d.scrape()
    assert went_down(totals(failing), totals(restarted)) == {}


BOOT_ID = "76d14fe6-5764-46e9-a6d4-d1bfc29718ff"  # pstore-kho/step2


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x1b]0;owned\x07{", "not JSON"),
        (b'{"version": 1, "boot_id": "%s", "store_errors": -5}', "store_errors is not a count"),
        (b'{"version": 1, "boot_id": "%s", "store_errors": true}', "store_errors is not a count"),
        (b'{"version": 9, "boot_id": "%s", "store_errors": 7}', "unknown version '9'"),
        (b"[" * 100_000, "larger than 4096 bytes"),
        (None, "Is a directory"),
    ],
)
def test_a_counters_file_that_is_not_khods_is_ignored_with_one_line(
    sysroot: SysrootFactory, tmp_path: Path, content: bytes | None, why: str
) -> None:
    path = tmp_path / "state" / "counters.json"
    path.parent.mkdir(mode=0o700)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content.replace(b"%s", BOOT_ID.encode()))
    with running_daemon(sysroot("pstore-kho/step2"), tmp_path) as d:
        d.wait_for("READY=1")
        text = d.scrape()
        d.proc.terminate()
        assert d.proc.wait(10) == 0
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert metric(text, STORE_ERRORS) == 0
    lines = [ln for ln in log.splitlines() if "counters.json" in ln]
    said = why if content is None else f"not khod's counters ({why})"
    assert lines == [f"khod: warning: ignoring {path}: {said}"], log
    assert "Traceback" not in log and "\x1b" not in log


def test_a_counters_file_of_another_boot_is_a_fresh_start(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    path = tmp_path / "state" / "counters.json"
    path.parent.mkdir(mode=0o700)
    other = '{"version": 1, "boot_id": "f3d7c587-29b6-4fdf-91fe-146df8164692", "store_errors": 7}'
    path.write_text(other)
    with running_daemon(sysroot("pstore-kho/step2"), tmp_path) as d:
        d.wait_for("READY=1")
        text = d.scrape()
        d.proc.terminate()
        assert d.proc.wait(10) == 0
        log = d.proc.stdout.read() if d.proc.stdout else ""
    assert metric(text, STORE_ERRORS) == 0
    assert "counters.json" not in log, log
