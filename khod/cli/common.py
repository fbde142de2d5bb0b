"""What khod and khoctl share: root/db options, JSON out; the one-line error contract
and terminal-safe text (``khod.oneline``) under the names the commands use."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeAlias

from khod.errors import KhodError
from khod.oneline import escape_json_controls, print_text, run_main
from khod.paths import HostPaths

__all__ = [
    "Cmd",
    "Handler",
    "add_common",
    "fraction",
    "host_paths",
    "print_json",
    "print_text",
    "run_main",
    "whole_number",
]

Handler: TypeAlias = Callable[[argparse.Namespace], int]
# how a module adds its subcommands to khoctl: cmd(name, help, handler) returns the
# subcommand's parser (khod.cli.khoctl.COMMAND_MODULES lists the modules)
Cmd: TypeAlias = Callable[[str, str, Handler], argparse.ArgumentParser]

INT64_MAX = (1 << 63) - 1  # the largest integer either database binds


def whole_number(low: int = 0, high: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high``; anything else is a
    usage error (exit 2) that says the range, not a database's overflow later."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {text!r}"
            )
        return value

    parse.__name__ = "whole number"
    return parse


def fraction(*, open_low: bool = False, open_high: bool = False) -> Callable[[str], float]:
    """An argparse type: a number from 0 to 1 (``open_*``: that end excluded)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        ok = (
            math.isfinite(value)
            and (value > 0 if open_low else value >= 0)
            and (value < 1 if open_high else value <= 1)
        )
        if not ok:
            low = "above 0" if open_low else "from 0"
            high = "below 1" if open_high else "to 1"
            raise argparse.ArgumentTypeError(f"expected a number {low} {high}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


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
        help="SQLAlchemy database URL (default: [store] db of the configuration, else "
        "$KHOD_DB, else SQLite at "
        "/var/lib/khod/khod.db for root, $XDG_STATE_HOME/khod/khod.db otherwise)",
    )
    p.add_argument(
        "--debug", action="store_true", default=default(False), help="show tracebacks on errors"
    )


def host_paths(args: argparse.Namespace) -> HostPaths:
    """The host the command reads (--sysroot), resolved once per command line."""
    paths: HostPaths | None = getattr(args, "host_paths", None)
    if paths is None:
        root: Path = args.sysroot
        if not root.is_dir():
            raise KhodError(f"--sysroot {root}: not a directory")
        paths = args.host_paths = HostPaths(root)
    return paths


# the tests set this: each --json document is checked against its schema
# (khod/schemas/NAME.v1.json, shipped in the package) as it is printed
JSON_CHECK: Callable[[str, Any], None] | None = None


def print_json(obj: Any, schema: str) -> None:
    """JSON as it is meant to be read (UTF-8, not \\u-escaped) but for the controls a
    terminal would obey (C1, DEL): escaped always, on a terminal or not. ``schema``:
    the name of the JSON Schema the document follows (khod/schemas/)."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False)
    if JSON_CHECK is not None:
        JSON_CHECK(schema, json.loads(text))
    sys.stdout.write(escape_json_controls(text) + "\n")
