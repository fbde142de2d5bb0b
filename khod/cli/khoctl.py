"""khoctl: the operator's view of the store and of this host's KHO state."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from khod import __version__
from khod.cli.common import (
    add_common,
    host_paths,
    print_json,
    print_text,
    run_main,
    whole_number,
)
from khod.errors import KhodError
from khod.sources.identity import this_boot, this_machine

if TYPE_CHECKING:  # annotations only: the store is imported by the commands that use it
    from khod.store.boots import BootRecord
    from khod.store.handle import Store


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="khoctl", description="Inspect kexec handover history.")
    p.add_argument("--version", action="version", version=f"khoctl {__version__}")
    add_common(p)  # before the command, as after it
    add_config(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        add_common(c, command=True)
        add_config(c, command=True)
        return c

    c = cmd("status", "this boot: live from the sysroot, plus whether it is recorded")
    c.add_argument("--json", action="store_true")
    for name, help_ in (
        ("history", "recorded boots, newest first"),
        ("chain", "the boots since the last cold boot, oldest first"),
    ):
        c = cmd(name, help_)
        c.add_argument("--json", action="store_true")
        c.add_argument(
            "--machine", metavar="ID", help="machine id (default: this host's; see --all)"
        )
        if name == "history":
            c.add_argument("--limit", type=whole_number(), metavar="N")
            c.add_argument("--all", action="store_true", help="boots of every machine")
        else:
            c.add_argument(
                "--boot",
                metavar="BOOT_ID",
                help="end the chain at this boot (default: this boot, or the newest)",
            )
    c = cmd("dmesg", "what a boot's predecessor left in pstore (default: this boot's)")
    c.add_argument("boot", nargs="?", metavar="BOOT", help="boot id, or a unique prefix of one")
    c.add_argument("--json", action="store_true")
    c.add_argument("--type", metavar="TYPE", help="only records of this type (dmesg, console...)")
    c.add_argument("--machine", metavar="ID", help="machine id (default: this host's)")
    from khod.cli import kexec  # noqa: PLC0415

    kexec.add_parsers(cmd)
    from khod.cli import fleet  # noqa: PLC0415

    fleet.add_parsers(cmd)
    from khod.cli import fleetadmin  # noqa: PLC0415

    fleetadmin.add_parsers(cmd)
    c = cmd("db", "manage the store's schema")
    c.add_argument("action", choices=("upgrade", "current"))
    return p


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


def configured_store(args: argparse.Namespace) -> None:
    """``--db``, else ``[store] db`` of the configuration khod reads, else the default
    (``khod.store.db.default_db_url``): khoctl and khod use one store."""
    if args.db is not None:
        return
    from khod.config import load_config  # noqa: PLC0415

    args.db = load_config(args.config, required=args.config is not None).db or None


def cmd_status(args: argparse.Namespace) -> int:
    from khod.cli.views import boot_json, status_text  # noqa: PLC0415
    from khod.collect.boot import collect  # noqa: PLC0415
    from khod.store.boots import UnreadableRow, live_record, load_boot  # noqa: PLC0415
    from khod.store.db import NoStore, open_reader  # noqa: PLC0415

    obs = collect(host_paths(args))
    d = boot_json(live_record(obs), history=True)
    recorded = False
    skipped: list[str] = []
    try:
        store = open_reader(args.db)
    except NoStore:
        pass
    else:
        try:
            try:
                recorded = load_boot(store, obs.machine_id, obs.boot_id) is not None
            except UnreadableRow as e:  # recorded, in a shape this khod cannot show
                recorded, skipped = True, [str(e)]
                note_skipped(skipped)
            if not recorded:
                note_other_machines(store, obs.machine_id, "see them with khoctl history --all")
        finally:
            store.dispose()
    d["recorded"] = recorded
    if args.json:
        d["skipped_boots"] = len(skipped)  # its recorded row could not be shown
        print_json(d)
    else:
        print_text(status_text(d))
    return 0


def _boots(args: argparse.Namespace, see: str = "") -> tuple[str | None, list[BootRecord], int]:
    """The boots the command looks at, and how many it could not show (said on stderr
    in one line); none of this machine's (an imported export, a fleet database): a note
    on stderr saying what the store holds and how to ``see`` it."""
    from khod.store.db import open_reader  # noqa: PLC0415
    from khod.store.reads import load_boots  # noqa: PLC0415

    store = open_reader(args.db)
    machine = args.machine
    # a boot named by id is looked up on every machine unless one is given
    named = getattr(args, "boot", None)
    if machine is None and not getattr(args, "all", False) and not named:
        machine = this_machine(host_paths(args))
    skipped: list[str] = []
    try:
        boots = list(load_boots(store, machine, getattr(args, "limit", None), skipped))
        if machine is not None and not boots and not skipped and see:
            note_other_machines(store, machine, see, mine=args.machine is None)
    finally:
        store.dispose()
    note_skipped(skipped)
    return machine, boots, len(skipped)


def note_skipped(skipped: Sequence[str]) -> None:
    """One line on stderr for the rows a reader left out (the first one's reason)."""
    if skipped:
        n = len(skipped)
        more = f" (and {n - 1} more)" if n > 1 else ""
        print_text(
            f"khoctl: warning: {n} boot{'s' if n != 1 else ''} not shown: {skipped[0]}{more}",
            sys.stderr,
        )


def note_other_machines(store: Store, machine: str, see: str, *, mine: bool = True) -> None:
    """When the store has no boot of ``machine``: say on stderr how many boots of how
    many other machines it holds, and how to see them."""
    from sqlalchemy import distinct, func, select  # noqa: PLC0415

    from khod.store.schema import boots  # noqa: PLC0415

    with store.engine.connect() as conn:
        if conn.execute(select(boots.c.id).where(boots.c.machine_id == machine).limit(1)).first():
            return
        n, hosts = conn.execute(
            select(func.count(), func.count(distinct(boots.c.machine_id))).where(
                boots.c.machine_id != machine
            )
        ).one()
    if not n:
        return
    whose = f"this machine ({machine})" if mine else f"machine {machine}"
    print(
        f"khoctl: note: no boots of {whose} are recorded; the store holds {n} boot"
        f"{'s' if n != 1 else ''} of {hosts} other machine{'s' if hosts != 1 else ''}: {see}",
        file=sys.stderr,
    )


def cmd_history(args: argparse.Namespace) -> int:
    from khod.cli.views import BOOT_COLUMNS, boot_json, table  # noqa: PLC0415
    from khod.store.db import open_reader  # noqa: PLC0415
    from khod.store.reads import pstore_counts  # noqa: PLC0415

    _, boots, _ = _boots(args, "see them with --all, or --machine ID")
    store = open_reader(args.db)
    try:
        pks = [b.id for b in boots if b.id is not None]
        counts = pstore_counts(store, pks)
        from khod.store.attempts import verdicts_by_boot  # noqa: PLC0415

        verdicts = verdicts_by_boot(store, pks)
    finally:
        store.dispose()
    rows = []
    for b in boots:
        d = boot_json(b, history=True)
        d["pstore_records"] = counts.get(b.id or 0, 0)
        d["verdict"] = verdicts.get(b.id or 0)  # of the kexec attempt that led here
        rows.append(d)
    if args.json:
        print_json(rows)
    elif rows:
        print_text(
            table(rows, (*BOOT_COLUMNS, ("PSTORE", "pstore_records"), ("VERDICT", "verdict")))
        )
    else:
        print("no boots recorded")
    return 0


def cmd_chain(args: argparse.Namespace) -> int:
    from khod.cli.views import BOOT_COLUMNS, chain_json, table  # noqa: PLC0415
    from khod.store.reads import chain_of  # noqa: PLC0415

    _, boots, _ = _boots(args, "see them with --machine ID")
    boot_id = args.boot or this_boot(host_paths(args))
    if args.boot and not any(b.boot_id == args.boot for b in boots):
        raise KhodError(f"boot {args.boot} is not recorded")
    if boot_id is not None and not any(b.boot_id == boot_id for b in boots):
        boot_id = None  # this boot is not recorded (yet): end at the newest
    rows = chain_json(chain_of(boots, boot_id))
    if args.json:
        print_json(rows)
    elif rows:
        print_text(table(rows, (*BOOT_COLUMNS, ("LINK", "link"))))
    else:
        print("no boots recorded")
    return 0


def pick_boot(boots: Sequence[BootRecord], wanted: str | None, current: str | None) -> BootRecord:
    """A boot by id or unique prefix; by default this boot, else the newest."""
    if wanted:
        hits = [b for b in boots if b.boot_id.startswith(wanted.lower())]
        if len(hits) > 1:
            raise KhodError(f"boot {wanted!r} is ambiguous: {len(hits)} boots match")
        if not hits:
            raise KhodError(f"boot {wanted!r} is not recorded")
        return hits[0]
    for b in boots:
        if b.boot_id == current:
            return b
    if not boots:
        raise KhodError("no boots recorded")
    return boots[0]


def cmd_dmesg(args: argparse.Namespace) -> int:
    from khod.cli.views import dumps_json, dumps_text  # noqa: PLC0415
    from khod.store.db import open_reader  # noqa: PLC0415
    from khod.store.reads import load_pstore  # noqa: PLC0415

    _, boots, skipped = _boots(args, "name a boot, or pass --machine ID")
    boot = pick_boot(boots, args.boot, this_boot(host_paths(args)))
    assert boot.id is not None  # read from the store
    store = open_reader(args.db)
    try:
        records = load_pstore(store, boot.id)
    finally:
        store.dispose()
    if args.type:
        records = [r for r in records if r["type"] == args.type]
    described = {r["describes"] for r in records} - {None}
    prev = next((b.boot_id for b in boots if b.id in described), None)
    dumps = dumps_json(records)
    if args.json:
        print_json(
            {
                "boot_id": boot.boot_id,
                "previous_boot_id": prev,
                "dumps": dumps,
                "skipped_boots": skipped,  # rows of boots that could not be shown
            }
        )
    elif dumps:
        print_text(dumps_text(dumps))
    else:
        print_text(f"no pstore records were found at boot {boot.boot_id}")
    return 0


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


COMMANDS = {
    "status": cmd_status,
    "history": cmd_history,
    "chain": cmd_chain,
    "dmesg": cmd_dmesg,
    "db": cmd_db,
}


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    configured_store(args)
    if args.command in ("check", "kexec", "record-kexec"):
        from khod.cli import kexec  # noqa: PLC0415

        return {
            "check": kexec.cmd_check,
            "kexec": kexec.cmd_kexec,
            "record-kexec": kexec.cmd_record_kexec,
        }[args.command](args)
    if args.command in ("export", "import", "sync", "report"):
        from khod.cli import fleet  # noqa: PLC0415

        return fleet.COMMANDS[args.command](args)
    if args.command == "fleet":
        from khod.cli import fleetadmin  # noqa: PLC0415

        return fleetadmin.cmd_fleet(args)
    return COMMANDS[args.command](args)


def run() -> None:
    from khod.oneline import guard_stdout  # noqa: PLC0415

    guard_stdout()
    sys.exit(run_main("khoctl", main, sys.argv[1:]))


if __name__ == "__main__":
    run()
