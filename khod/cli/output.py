"""khoctl's output habits, journalctl's: times in local time unless ``--utc``, tables
with a header unless ``--no-legend``, long text through a pager on a terminal unless
``--no-pager`` ($SYSTEMD_PAGER, else $PAGER, else less; LESS=FRSXMK unless set)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import subprocess
import sys
from typing import Any

from khod.oneline import escape_controls, print_text

# journalctl sets LESS to this when it is unset: quit if one screen, raw colours, chop
# long lines, keep the screen, verbose prompt, quit on ^C
LESS_FLAGS = "FRSXMK"


def add_output_options(p: argparse.ArgumentParser, *, command: bool = False) -> None:
    """--utc, --no-legend, --no-pager: before the command or after it (``add_common``)."""

    def flag(name: str, help_: str) -> None:
        p.add_argument(
            name, action="store_true", default=argparse.SUPPRESS if command else False, help=help_
        )

    flag("--utc", "show times in UTC (default: local time); read --since/--until as UTC")
    flag("--no-legend", "leave out tables' header line")
    flag("--no-pager", "do not pipe the output into a pager")


def when(ts: float | None, utc: bool) -> str | None:
    """A time for a person: local (or UTC) with its zone's abbreviation, like journalctl;
    None when there is none a calendar can show."""
    if ts is None:
        return None
    try:
        t = dt.datetime.fromtimestamp(ts, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None
    if not utc:
        t = t.astimezone()
    return t.strftime("%Y-%m-%d %H:%M:%S ") + (t.tzname() or "")


def epoch(iso_time: str | None) -> float | None:
    """The seconds of a JSON time (``khod.cli.views.iso``)."""
    return None if iso_time is None else dt.datetime.fromisoformat(iso_time).timestamp()


def pager_command() -> list[str] | None:
    """The pager to run, or None (no pager: $SYSTEMD_PAGER or $PAGER empty or cat)."""
    for var in ("SYSTEMD_PAGER", "PAGER"):
        value = os.environ.get(var)
        if value is not None:
            words = shlex.split(value)
            return None if not words or words == ["cat"] else words
    return ["less"]


def page(text: str, args: argparse.Namespace) -> None:
    """Print ``text``; on a terminal, unless --no-pager, through the pager."""
    if getattr(args, "no_pager", False) or not sys.stdout.isatty():
        print_text(text)
        return
    cmd = pager_command()
    if cmd is None:
        print_text(text)
        return
    env = dict(os.environ)
    env.setdefault("LESS", LESS_FLAGS)
    sys.stdout.flush()
    try:
        subprocess.run(cmd, input=escape_controls(text) + "\n", text=True, env=env, check=False)
    except OSError:  # no such pager: print as if there were none
        print_text(text)


def legend(args: Any) -> bool:
    return not getattr(args, "no_legend", False)
