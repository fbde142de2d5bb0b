"""khoctl status, history, chain, show and dmesg: one host's boots as the store holds
them. A boot is named as journalctl names one (``khod.cli.bootsel``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from khod.cli.bootsel import (
    add_boot,
    add_since_until,
    boot_spec,
    in_range,
    is_offset,
    pick_boot,
    time_range,
)
from khod.cli.common import Cmd, host_paths, print_json, print_text, whole_number
from khod.cli.output import epoch, legend, page, when
from khod.sources.identity import this_boot, this_machine

if TYPE_CHECKING:  # annotations only: the store is imported by the commands that use it
    from khod.store.boots import BootRecord
    from khod.store.handle import Store

JSON_HELP = "print JSON (see khoctl(8), JSON OUTPUT)"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def add_parsers(cmd: Cmd) -> None:
    c = cmd("status", "this boot: live from the sysroot, plus whether it is recorded", cmd_status)
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c = cmd("history", "recorded boots, newest first", cmd_history)
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c.add_argument("--machine", metavar="ID", help="machine id (default: this host's; see --all)")
    c.add_argument(
        "-n",
        "--limit",
        type=whole_number(1),
        metavar="N",
        help="the newest N boots only (default: all)",
    )
    c.add_argument("--all", action="store_true", help="boots of every machine (a MACHINE column)")
    add_since_until(c)
    c = cmd("chain", "the boots since the last cold boot, oldest first", cmd_chain)
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c.add_argument("--machine", metavar="ID", help="machine id (default: this host's)")
    add_boot(c, "end the chain at this boot (default: this boot, or the newest)")
    add_since_until(c)
    c = cmd("show", "everything recorded about one boot, its events included", cmd_show)
    add_boot(c, "the boot (default: this boot, or the newest)", positional=True)
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c.add_argument("--machine", metavar="ID", help="machine id (default: this host's)")
    c = cmd("dmesg", "what a boot's predecessor left in pstore (default: this boot's)", cmd_dmesg)
    add_boot(c, "the boot whose ingest found the records", positional=True)
    c.add_argument("--json", action="store_true", help=JSON_HELP)
    c.add_argument("--type", metavar="TYPE", help="only records of this type (dmesg, console...)")
    c.add_argument("--machine", metavar="ID", help="machine id (default: this host's)")
    add_since_until(c, "dumps written")


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
                rec = load_boot(store, obs.machine_id, obs.boot_id)
                recorded = rec is not None
                if rec is not None and obs.previous_release is None and rec.previous_release:
                    # the kernel gave no chain; the one khod derived when it saved this
                    # boot (its attempt record, the journal) is only in the store
                    d.update(
                        previous_release=rec.previous_release,
                        kexec_count=rec.kexec_count,
                        metadata_source=rec.metadata_source,
                    )
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
        print_json(d, "status")
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
    # a boot named by id is looked up on every machine unless one is given; a boot
    # named by offset (-b -1) counts this machine's
    named = boot_spec(args)
    by_id = named is not None and not is_offset(named)
    if machine is None and not getattr(args, "all", False) and not by_id:
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
            f"khoctl: warning: {plural(n, 'boot')} not shown: {skipped[0]}{more}", sys.stderr
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
        f"khoctl: note: no boots of {whose} are recorded; the store holds {plural(n, 'boot')} "
        f"of {plural(hosts, 'other machine')}: {see}",
        file=sys.stderr,
    )


def cmd_history(args: argparse.Namespace) -> int:
    from khod.cli.views import BOOT_COLUMNS, boot_json, table  # noqa: PLC0415
    from khod.store.attempts import verdicts_by_boot  # noqa: PLC0415
    from khod.store.db import open_reader  # noqa: PLC0415
    from khod.store.reads import pstore_counts  # noqa: PLC0415

    since, until = time_range(args)
    _, boots, _ = _boots(args, "see them with --all, or --machine ID")
    boots = [b for b in boots if in_range(b.booted_at, since, until)]
    store = open_reader(args.db)
    try:
        pks = [b.id for b in boots if b.id is not None]
        counts = pstore_counts(store, pks)
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
        print_json(rows, "history")
        return 0
    if not rows:
        print("no boots recorded" + (" in that time" if since or until else ""))
        return 0
    for b, d in zip(boots, rows, strict=True):
        d["booted"] = when(b.booted_at, args.utc)
    columns = [*BOOT_COLUMNS, ("PSTORE", "pstore_records"), ("VERDICT", "verdict")]
    if args.all:
        columns.insert(1, ("MACHINE", "machine_id"))
    page(table(rows, columns, legend=legend(args)), args)
    return 0


def cmd_chain(args: argparse.Namespace) -> int:
    from khod.cli.views import BOOT_COLUMNS, chain_json, table  # noqa: PLC0415
    from khod.store.reads import chain_of  # noqa: PLC0415

    since, until = time_range(args)
    _, boots, skipped = _boots(args, "see them with --machine ID")
    current = this_boot(host_paths(args))
    wanted = boot_spec(args)
    boot_id = pick_boot(boots, wanted, current, skipped).boot_id if wanted else current
    if boot_id is not None and not any(b.boot_id == boot_id for b in boots):
        boot_id = None  # this boot is not recorded (yet): end at the newest
    chain = [b for b in chain_of(boots, boot_id) if in_range(b.booted_at, since, until)]
    rows = chain_json(chain)
    if args.json:
        print_json(rows, "chain")
    elif rows:
        for b, d in zip(chain, rows, strict=True):
            d["booted"] = when(b.booted_at, args.utc)
        page(table(rows, (*BOOT_COLUMNS, ("LINK", "link")), legend=legend(args)), args)
    else:
        print("no boots recorded")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from khod.cli.views import show_json, show_text  # noqa: PLC0415
    from khod.store.attempts import verdicts_by_boot  # noqa: PLC0415
    from khod.store.db import open_reader  # noqa: PLC0415
    from khod.store.reads import load_events, load_pstore  # noqa: PLC0415

    _, boots, skipped = _boots(args, "name a boot, or pass --machine ID")
    boot = pick_boot(boots, boot_spec(args), this_boot(host_paths(args)), skipped)
    assert boot.id is not None  # read from the store
    store = open_reader(args.db)
    try:
        events = load_events(store, boot.id)
        records = load_pstore(store, boot.id)
        verdict = verdicts_by_boot(store, [boot.id]).get(boot.id)
    finally:
        store.dispose()
    d = show_json(boot, events, records, verdict)
    if args.json:
        print_json(d, "show")
    else:
        page(show_text(d, boot, events, args.utc), args)
    return 0


def cmd_dmesg(args: argparse.Namespace) -> int:
    from khod.cli.views import dumps_json, dumps_text  # noqa: PLC0415
    from khod.store.db import open_reader  # noqa: PLC0415
    from khod.store.reads import load_pstore  # noqa: PLC0415

    since, until = time_range(args)
    _, boots, skipped = _boots(args, "name a boot, or pass --machine ID")
    boot = pick_boot(boots, boot_spec(args), this_boot(host_paths(args)), skipped)
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
    dumps = [d for d in dumps if in_range(epoch(d["record_time"]), since, until)]
    if args.json:
        print_json(
            {
                "boot_id": boot.boot_id,
                "previous_boot_id": prev,
                "dumps": dumps,
                "skipped_boots": skipped,  # rows of boots that could not be shown
            },
            "dmesg",
        )
    elif dumps:
        page(dumps_text(dumps, args.utc), args)
    else:
        print_text(f"no pstore records were found at boot {boot.boot_id}")
    return 0
