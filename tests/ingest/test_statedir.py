"""``store.state_dir`` from the config file alone: the boot capture, the ingest and the
recovery of left-over spools all use that one directory, never the default."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from khod.paths import HostPaths
from khod.sources.capture import capture
from tests.conftest import SysrootFactory
from tests.daemon_helpers import BIN, running_daemon

BOOT = "76d14fe6-5764-46e9-a6d4-d1bfc29718ff"  # pstore-kho/step2
EARLIER = "f3d7c587-29b6-4fdf-91fe-146df8164692"  # pstore-kho/step1


def isolated_default(tmp: Path) -> tuple[Path, list[str], dict[str, str]]:
    """The default state dir, moved under ``tmp``: for root /var/lib/khod, seen through
    a private mount namespace where ``tmp/varlib`` is /var/lib (the host's is left
    alone); otherwise $XDG_STATE_HOME/khod. Returns (that dir, a command prefix, env)."""
    xdg = tmp / "xdg"
    env = {"XDG_STATE_HOME": str(xdg)}
    if os.geteuid() != 0:
        return xdg / "khod", [], env
    varlib = tmp / "varlib"
    varlib.mkdir()
    prefix = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'mount --bind "{varlib}" /var/lib && exec "$0" "$@"',
    ]
    return varlib / "khod", prefix, env


def config_naming(tmp: Path, state: Path) -> Path:
    conf = tmp / "khod.toml"
    conf.write_text(f'[store]\nstate_dir = "{state}"\n')
    return conf


def test_capture_spools_into_the_configured_state_dir(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("pstore-kho/step2")
    state = tmp_path / "configured"
    default, prefix, env = isolated_default(tmp_path)
    conf = config_naming(tmp_path, state)
    r = subprocess.run(
        [
            *prefix,
            str(BIN / "khod"),
            "--capture-only",
            "--config",
            str(conf),
            "--sysroot",
            str(root),
        ],
        env={**os.environ, **env},
        check=False,
    )
    assert r.returncode == 0
    assert [p.name for p in (state / "spool").iterdir()] == [f"{BOOT}.spool"]
    assert not default.exists()


def test_daemon_with_state_dir_only_in_the_config_leaves_no_orphan_spool(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    state = tmp_path / "configured"
    capture(HostPaths(sysroot("pstore-kho/step1")), str(state / "spool"))  # an earlier, unfinished
    default, prefix, env = isolated_default(tmp_path)
    conf = config_naming(tmp_path, state)
    root = sysroot("pstore-kho/step2")
    with running_daemon(
        root, tmp_path, "--config", str(conf), env=env, state_dir=False, prefix=prefix
    ) as d:
        d.wait_for("READY=1")
        assert (state / "metrics.json").exists()
    with sqlite3.connect(d.db.removeprefix("sqlite:///")) as conn:
        rows = conn.execute("SELECT boot_id FROM boots ORDER BY booted_at").fetchall()
    assert rows == [(EARLIER,), (BOOT,)]
    assert list((state / "spool").iterdir()) == []  # this boot's spool consumed too
    assert not default.exists(), sorted(str(p) for p in default.rglob("*"))


def test_the_early_reader_names_the_same_defaults_as_the_config() -> None:
    from khod import conffiles
    from khod.cli import khod_main
    from khod.config import DEFAULT_PATH, Config

    assert str(DEFAULT_PATH) == conffiles.DEFAULT_PATH  # the early reader's
    assert Config().state_dir == khod_main.DEFAULT_STATE_DIR


def test_capture_spools_into_the_state_dir_a_drop_in_names(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    root = sysroot("pstore-kho/step2")
    main, state = tmp_path / "from-main", tmp_path / "from-drop-in"
    default, prefix, env = isolated_default(tmp_path)
    conf = config_naming(tmp_path, main)
    (tmp_path / "khod.toml.d").mkdir()
    (tmp_path / "khod.toml.d" / "50-state.toml").write_text(f'[store]\nstate_dir = "{state}"\n')
    r = subprocess.run(
        [
            *prefix,
            str(BIN / "khod"),
            "--capture-only",
            "--config",
            str(conf),
            "--sysroot",
            str(root),
        ],
        env={**os.environ, **env},
        check=False,
    )
    assert r.returncode == 0
    assert [p.name for p in (state / "spool").iterdir()] == [f"{BOOT}.spool"]
    assert not main.exists()
    assert not default.exists()


def test_the_capture_reads_the_command_line_as_argparse_does(
    sysroot: SysrootFactory, tmp_path: Path
) -> None:
    """Options abbreviated (``--state``) or given with ``=`` (``--conf=``), as khod's
    parser takes them: the daemon captures this boot into the state dir the ingest
    reads, and leaves no spool in the default one."""
    root = sysroot("pstore-kho/step2")
    state = tmp_path / "given"
    default, prefix, env = isolated_default(tmp_path)
    conf = tmp_path / "khod.toml"
    conf.write_text("")
    with running_daemon(
        root,
        tmp_path,
        f"--conf={conf}",
        "--state",
        str(state),
        env=env,
        state_dir=False,
        prefix=prefix,
    ) as d:
        d.wait_for("READY=1")
    with sqlite3.connect(d.db.removeprefix("sqlite:///")) as conn:
        assert conn.execute("SELECT boot_id FROM boots").fetchall() == [(BOOT,)]
    assert list((state / "spool").iterdir()) == []  # captured there, then consumed
    assert not default.exists(), sorted(str(p) for p in default.rglob("*"))
