"""khoctl: the operator's view of the store and of this host's KHO state."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from khod import __version__
from khod.cli.common import Cmd, Handler, add_common, add_config, print_text, run_main
from khod.cli.output import add_output_options


def _modules() -> tuple[ModuleType, ...]:
    """The modules that hold khoctl's subcommands, in --help's order: each has
    ``add_parsers(cmd)``, which names each of its commands once, with its help and its
    handler. The parser, the dispatch, the man page and the completions all come from
    them."""
    from khod.cli import bootcmds, fleet, fleetadmin, kexec  # noqa: PLC0415

    return bootcmds, kexec, fleet, fleetadmin, sys.modules[__name__]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="khoctl",
        description="Inspect kexec handover history, check and run kexecs, fleet reports.",
    )
    p.add_argument("--version", action="version", version=f"khoctl {__version__}")
    add_common(p)  # before the command, as after it
    add_config(p)
    add_output_options(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str, handler: Handler) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        c.set_defaults(handler=handler)
        add_common(c, command=True)
        add_config(c, command=True)
        add_output_options(c, command=True)
        return c

    for module in _modules():
        module.add_parsers(cmd)
    return p


def add_parsers(cmd: Cmd) -> None:
    c = cmd("db", "manage the store's schema", cmd_db)
    c.add_argument(
        "action",
        choices=("upgrade", "current"),
        help="upgrade: migrate the store to this khod's schema; current: say its revision",
    )


def configured_store(args: argparse.Namespace) -> None:
    """``--db``, else ``[store] db`` of the configuration khod reads, else the default:
    khoctl and khod use one store (``khod.store.location.store_url``, the one rule)."""
    from khod.config import load_config  # noqa: PLC0415
    from khod.store.location import store_url  # noqa: PLC0415

    args.db_given = args.db  # what --db said, before any default (fleet retain wants it)
    configured = ""
    if args.db is None:  # the configuration is read only when --db does not say
        configured = load_config(args.config, required=args.config is not None).db
    args.db = store_url(args.db, configured)


def cmd_db(args: argparse.Namespace) -> int:
    from khod.store import db  # noqa: PLC0415
    from khod.store.schema import HEAD_REVISION  # noqa: PLC0415

    store = db.open_store(args.db, create=args.action == "upgrade", migrate=False)
    try:
        before = db.current_revision(store)
        if before is not None and before != HEAD_REVISION and not db.is_known(before):
            raise db.newer_than_head(store, before)
        if args.action == "upgrade":
            from khod.store import migrate  # noqa: PLC0415

            after = migrate.upgrade(store, before) if before != HEAD_REVISION else before
            print_text(f"{store.location}: schema {before or 'empty'} -> {after} (head)")
        else:
            state = "head" if before == HEAD_REVISION else "needs upgrade"
            print_text(f"{store.location}: schema {before or 'empty'} ({state})")
    finally:
        store.dispose()
    return 0


TIME_OPTIONS = frozenset({"-S", "--since", "-U", "--until"})


def _times_joined(argv: Sequence[str]) -> list[str]:
    """``--since -2h`` as journalctl takes it: argparse would read ``-2h`` as an option,
    so a time option's value that starts with ``-`` and a digit is joined to it."""
    out: list[str] = []
    it = iter(argv)
    for a in it:
        if a in TIME_OPTIONS:
            nxt = next(it, None)
            if nxt is not None and nxt[:1] == "-" and nxt[1:2].isdigit():
                out.append(f"{a}={nxt}")
                continue
            out.append(a)
            if nxt is not None:
                out.append(nxt)
            continue
        out.append(a)
    return out


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(_times_joined(argv))
    configured_store(args)
    handler: Handler = args.handler
    return handler(args)


def run() -> None:
    from khod.oneline import guard_stdout  # noqa: PLC0415

    guard_stdout()
    sys.exit(run_main("khoctl", main, sys.argv[1:]))


if __name__ == "__main__":
    run()
