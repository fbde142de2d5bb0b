"""``khod --once --textfile PATH``: the node_exporter mode, no resident khod. The file is
written whole (temp and rename beside it), readable by node_exporter, accepted by
promtool, and holds the families a scrape of the daemon's /metrics on the same store
shows."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests import daemon_helpers
from tests.conftest import SysrootFactory

BIN = Path(sys.executable).parent
ENV = {**os.environ, "KHOD_DB": ""}


def families(text: str) -> set[str]:
    return {f.name for f in text_string_to_metric_families(text)}


def khod_once(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "khod"), "--once", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=ENV,
    )


def test_once_textfile_has_the_daemons_families(sysroot: SysrootFactory, tmp_path: Path) -> None:
    root = sysroot("kexec1/step1")
    prom = tmp_path / "node-exporter"
    prom.mkdir()
    textfile = prom / "khod.prom"
    db = f"sqlite:///{tmp_path / 'khod.db'}"  # the store daemon_helpers' daemon uses
    r = khod_once("--sysroot", str(root), "--db", db, "--textfile", str(textfile))
    assert r.returncode == 0, r.stderr
    assert textfile.is_file(), "no textfile written"
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644  # node_exporter is another user
    assert [p.name for p in prom.iterdir()] == ["khod.prom"]  # no temp file left
    text = textfile.read_text()
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text, text=True, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    once = families(text)
    assert "khod_boot_info" in once and "khod_kexec_attempts" in once
    (info,) = [f for f in text_string_to_metric_families(text) if f.name == "khod_boot_info"]
    assert info.samples[0].labels["kind"] == "kexec"
    (last,) = [
        f
        for f in text_string_to_metric_families(text)
        if f.name == "khod_last_ingest_timestamp_seconds"
    ]
    assert last.samples[0].value > 0  # freshness, for an alert on a stale file

    with daemon_helpers.running_daemon(root, tmp_path) as d:
        d.wait_for("READY=1")
        scraped = d.scrape()
    assert families(scraped) == once

    # the config's daemon.textfile is the same: --once writes it too
    conf = tmp_path / "khod.toml"
    conf.write_text(f'[daemon]\ntextfile = "{prom / "from-config.prom"}"\n')
    r = khod_once("--sysroot", str(root), "--db", db, "--config", str(conf))
    assert r.returncode == 0, r.stderr
    assert families((prom / "from-config.prom").read_text()) == once


def test_once_textfile_that_cannot_be_written_is_one_line(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("kexec1/step1")
    db = f"sqlite:///{tmp_path / 'khod.db'}"
    missing = tmp_path / "no-such-dir" / "khod.prom"
    r = khod_once("--sysroot", str(root), "--db", db, "--textfile", str(missing))
    assert r.returncode == 1
    (line,) = r.stderr.splitlines()[-1:]
    assert line == f"khod: error: cannot write {missing}: No such file or directory", r.stderr
    assert "internal error" not in r.stderr
    # the boot was recorded all the same
    r = subprocess.run(
        [str(BIN / "khoctl"), "history", "--json", "--db", db, "--sysroot", str(root)],
        capture_output=True, text=True, check=False, timeout=60, env=ENV,
    )  # fmt: skip
    assert r.returncode == 0 and '"kind": "kexec"' in r.stdout
