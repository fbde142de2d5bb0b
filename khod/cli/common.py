"""What khod and khoctl share: root/db options, JSON out; the one-line error contract
and terminal-safe text (``khod.oneline``) under the names the commands use."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from khod.errors import KhodError
from khod.oneline import print_text, run_main
from khod.paths import HostPaths

__all__ = ["add_common", "host_paths", "print_json", "print_text", "run_main"]


def add_common(p: argparse.ArgumentParser, *, command: bool = False) -> None:
    """--sysroot, --db, --debug. khoctl takes them before its command and after it: the
    command's copy (``command``) sets nothing unless given, so a value given before the
    command stays, and one given after it wins."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if command else value

    p.add_argument(
        "--sysroot",
        type=Path,
        default=default(Path("/")),
        metavar="DIR",
        help="root of the host to read (default: /); a captured tree works too",
    )
    p.add_argument(
        "--db",
        metavar="URL",
        default=default(None),
        help="SQLAlchemy database URL (default: $KHOD_DB, else SQLite at "
        "/var/lib/khod/khod.db for root, $XDG_STATE_HOME/khod/khod.db otherwise)",
    )
    p.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks on errors"
    )


def host_paths(args: argparse.Namespace) -> HostPaths:
    root: Path = args.sysroot
    if not root.is_dir():
        raise KhodError(f"--sysroot {root}: not a directory")
    return HostPaths(root)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, ensure_ascii=False)
    sys.stdout.write("\n")
