"""khoctl reads khod's configuration: [store] db of the file (and its drop-ins) is the
store it uses unless --db is given, and --config goes before or after the command. So
``khoctl history`` shows what khod recorded, and khod-kexec.service's ``khoctl
record-kexec`` writes the attempt where the next boot's ingest gives it a verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import FIXTURES

BIN = Path(sys.executable).parent
STEP0 = str(FIXTURES / "kexec1/step0")
STEP1 = str(FIXTURES / "kexec1/step1")


def run(tmp: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    # the default store (no --db, no configuration) would be under tmp/xdg
    env = {**os.environ, "KHOD_DB": "", "XDG_STATE_HOME": str(tmp / "xdg"), "HOME": str(tmp)}
    return subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
    )


def test_khoctl_uses_the_configured_store(tmp_path: Path) -> None:
    store = tmp_path / "configured" / "khod.db"
    store.parent.mkdir()
    conf = tmp_path / "khod.toml"
    conf.write_text('[retention]\nmax_boots = 100\n[store]\ndb = ""\n')
    dropins = tmp_path / "khod.toml.d"
    dropins.mkdir()
    (dropins / "50-store.toml").write_text(f'[store]\ndb = "sqlite:///{store}"\n')

    r = run(tmp_path, "khod", "--once", "--config", str(conf), "--sysroot", STEP0)
    assert r.returncode == 0, r.stderr
    assert str(store) in r.stdout
    for argv in (
        ("khoctl", "--config", str(conf), "history", "--json", "--sysroot", STEP0),
        ("khoctl", "history", "--json", "--sysroot", STEP0, "--config", str(conf)),
    ):
        r = run(tmp_path, *argv)
        assert r.returncode == 0, r.stderr
        (boot,) = json.loads(r.stdout)
        assert boot["kind"] == "cold"
    # khod-kexec.service: the attempt goes into the configured store
    r = run(tmp_path, "khoctl", "record-kexec", "--config", str(conf), "--sysroot", STEP0)
    assert r.returncode == 0, r.stderr
    r = run(tmp_path, "khod", "--once", "--config", str(conf), "--sysroot", STEP1)
    assert r.returncode == 0, r.stderr
    r = run(tmp_path, "khoctl", "--config", str(conf), "history", "--all", "--json")
    assert r.returncode == 0, r.stderr
    newest, oldest = json.loads(r.stdout)
    assert (newest["kind"], newest["verdict"]) == ("kexec", "landed")
    assert oldest["kind"] == "cold"
    assert not (tmp_path / "xdg" / "khod").exists()  # nothing went to the default store
    # --db still wins over the configuration
    other = f"sqlite:///{tmp_path / 'other.db'}"
    r = run(tmp_path, "khoctl", "--config", str(conf), "history", "--all", "--db", other)
    assert r.returncode == 1 and f"no database at {tmp_path / 'other.db'}" in r.stderr


def test_a_bad_configuration_is_one_line(tmp_path: Path) -> None:
    conf = tmp_path / "khod.toml"
    conf.write_text("[store]\ndb = 5\n")
    r = run(tmp_path, "khoctl", "history", "--config", str(conf))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"khoctl: error: {conf}: store.db: expected a string, got 5"]
    r = run(tmp_path, "khoctl", "history", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 1
    assert r.stderr.splitlines() == [f"khoctl: error: {tmp_path / 'missing.toml'}: not found"]
