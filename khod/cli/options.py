"""The options khod and khoctl share and the argparse types they use: argparse, pathlib
and os only, since the daemon parses its command line with them before its boot capture
(``khod.cli.khod_main``)."""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

from khod.errors import KhodError
from khod.paths import HostPaths

# not ``typing``: the daemon's boot capture imports this module before anything else
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

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


def add_config(p: argparse.ArgumentParser, *, command: bool = False) -> None:
    """--config, as khod takes it (before the command or after it, as ``add_common``)."""
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        default=argparse.SUPPRESS if command else None,
        help="khod's configuration: [store] db is the store unless --db is given, [sync] "
        "the fleet database (default: /etc/khod/khod.toml and khod.toml.d/, if present)",
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


@functools.cache
def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it ($COLUMNS, then
    stdout's terminal, else 80), without importing shutil (and the archive modules it
    tries to load) for a parser that may never print help; read once a process."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class HelpFormatter(argparse.HelpFormatter):
    """argparse's own formatter at argparse's width; built once per ``add_argument``
    (argparse checks each metavar with it), so its width is read without shutil."""

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        super().__init__(
            prog, indent_increment, max_help_position, _columns() - 2 if width is None else width
        )
