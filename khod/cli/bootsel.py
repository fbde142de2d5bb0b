"""Naming boots and times as journalctl does: ``-b`` (this boot), ``-b -1`` (the one
before), ``-b 1`` (the first recorded), a boot id or a unique prefix of one;
``--since``/``--until`` in journalctl's syntax (``khod.timespec.parse_time``)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from khod.errors import KhodError

if TYPE_CHECKING:
    from khod.store.boots import BootRecord

_OFFSET = re.compile(r"^[+-]?\d{1,6}$")  # a boot id is 32 hex digits: never this short

BOOT_HELP = (
    "0 or no value: this boot (the newest recorded when this one is not); -1: the one "
    "before; 1: the first recorded; or a boot id, or a unique prefix of one"
)


def add_boot(c: argparse.ArgumentParser, help_: str, *, positional: bool = False) -> None:
    """``-b/--boot [BOOT]`` (journalctl's), and with ``positional`` a BOOT argument too."""
    if positional:
        c.add_argument("boot_arg", nargs="?", metavar="BOOT", help=f"{help_}; as -b takes it")
    c.add_argument(
        "-b", "--boot", nargs="?", const="0", metavar="BOOT", help=f"{help_}: {BOOT_HELP}"
    )


def boot_spec(args: argparse.Namespace) -> str | None:
    """The boot the command line names, by ``-b`` or by the BOOT argument."""
    given = [v for v in (getattr(args, "boot", None), getattr(args, "boot_arg", None)) if v]
    if len(given) > 1 and given[0] != given[1]:
        raise KhodError(f"two boots given ({given[0]!r} and {given[1]!r}): name one")
    return given[0] if given else None


def is_offset(spec: str) -> bool:
    return bool(_OFFSET.match(spec))


def pick_boot(
    boots_newest_first: Sequence[BootRecord],
    wanted: str | None,
    current: str | None,
    skipped: int = 0,
) -> BootRecord:
    """The boot ``wanted`` names (``-b``'s syntax); by default this boot, else the
    newest. ``boots_newest_first``: one machine's for an offset; ``skipped``: how many
    of them could not be read (an offset counted past them would name another boot)."""
    boots = list(boots_newest_first)
    if not boots:
        raise KhodError("no boots recorded")
    if skipped and wanted is not None and is_offset(wanted) and wanted not in ("0", "-0"):
        raise KhodError(
            f"boot {wanted}: {skipped} boot{'s' if skipped != 1 else ''} of this machine "
            "cannot be read, so an offset could name the wrong one: name the boot by its id"
        )
    if wanted is None or (is_offset(wanted) and int(wanted) == 0 and wanted[:1] != "+"):
        return next((b for b in boots if b.boot_id == current), boots[0])
    if is_offset(wanted):
        n = int(wanted)
        oldest_first = boots[::-1]
        if wanted[0] in "+" or n > 0:
            i = n - 1
        else:
            anchor = next((b for b in boots if b.boot_id == current), boots[0])
            i = oldest_first.index(anchor) + n
        if not 0 <= i < len(oldest_first):
            raise KhodError(
                f"boot {wanted} is not recorded: the store holds {len(boots)} "
                f"boot{'s' if len(boots) != 1 else ''} of this machine "
                f"({-(len(boots) - 1)}..0, or 1..{len(boots)})"
            )
        return oldest_first[i]
    # as journalctl --list-boots writes it (32 hex digits) or as khod stores it (dashed)
    prefix = wanted.lower().replace("-", "")
    hits = [b for b in boots if b.boot_id.replace("-", "").startswith(prefix)]
    if len(hits) > 1:
        raise KhodError(f"boot {wanted!r} is ambiguous: {len(hits)} boots match")
    if not hits:
        raise KhodError(f"boot {wanted!r} is not recorded")
    return hits[0]


def add_since_until(c: argparse.ArgumentParser, what: str = "boots") -> None:
    c.add_argument(
        "-S",
        "--since",
        metavar="TIME",
        help=f"{what} at or after TIME, as journalctl takes it: yesterday, today, -2h, "
        "'2026-11-01 08:00' (local time unless --utc), @EPOCH, or an age (7d)",
    )
    c.add_argument("-U", "--until", metavar="TIME", help=f"{what} at or before TIME")


def time_range(args: argparse.Namespace) -> tuple[float | None, float | None]:
    from khod.timespec import parse_time  # noqa: PLC0415

    utc = bool(getattr(args, "utc", False))
    since = getattr(args, "since", None)
    until = getattr(args, "until", None)
    return (
        None if since is None else parse_time(since, utc=utc, option="--since"),
        None if until is None else parse_time(until, utc=utc, option="--until"),
    )


def in_range(ts: float | None, since: float | None, until: float | None) -> bool:
    """Whether a time is in [since, until]; an unknown time is in only when no bound
    is set."""
    if since is None and until is None:
        return True
    if ts is None:
        return False
    return (since is None or ts >= since) and (until is None or ts <= until)
