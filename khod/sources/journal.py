"""The journal's list of boots, from ``journalctl`` (the journal files' format is
systemd's own; its tool reads them). Nothing when there is no journal or no journalctl."""

from __future__ import annotations

import shutil
import subprocess

from khod.errors import SourceError
from khod.paths import HostPaths

TIMEOUT = 10.0


def list_boots(paths: HostPaths) -> bytes | None:
    """``journalctl --list-boots -o json`` on this root's journal, or None without one."""
    if not any(d.is_dir() for d in paths.journal_dirs):
        return None
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        return None
    argv = [journalctl, "--list-boots", "--output=json", "--no-pager", "--quiet"]
    if paths.root != HostPaths().root:
        argv.append(f"--root={paths.root}")
    try:
        done = subprocess.run(argv, capture_output=True, timeout=TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SourceError("journalctl --list-boots", str(e)) from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["failed"]
        raise SourceError("journalctl --list-boots", why[0])
    return done.stdout
