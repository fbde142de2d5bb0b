"""khoctl fleet init|enroll|revoke: the operator's side of fleet trust (khod.fleet.admin),
run against the fleet database with its owner role (``--db URL``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from khod.cli.common import print_json, print_text, whole_number
from khod.errors import KhodError

Cmd = Callable[[str, str], argparse.ArgumentParser]


def _size(text: str) -> int:
    from khod.config import ConfigError, parse_size  # noqa: PLC0415

    try:
        return parse_size(text, "size")
    except ConfigError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("size: ")) from None


def _seconds(text: str) -> int:
    from khod.timespec import duration  # noqa: PLC0415

    s = duration(text)
    if s is None:
        raise argparse.ArgumentTypeError(f"expected a duration like '60s', got {text!r}")
    return s


def add_parsers(cmd: Cmd) -> None:
    c = cmd("fleet", "fleet database trust: roles, host certificates, bounds (owner's --db)")
    c.add_argument(
        "action",
        choices=("init", "enroll", "revoke"),
        help="init: lock the database down, set bounds; enroll: a host's role and "
        "certificate; revoke: the host may no longer connect",
    )
    c.add_argument("machine_id", nargs="?", metavar="MACHINE_ID", help="the host (enroll, revoke)")
    c.add_argument("--json", action="store_true")
    g = c.add_argument_group("enroll")
    g.add_argument("--ca-cert", type=Path, metavar="PATH", help="the fleet CA's certificate")
    g.add_argument("--ca-key", type=Path, metavar="PATH", help="the fleet CA's private key")
    g.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write (default ./khod-fleet-MACHINE_ID)"
    )
    g.add_argument(
        "--days",
        type=whole_number(1, 100000),
        default=397,
        metavar="N",
        help="certificate validity",
    )
    g.add_argument(
        "--connections",
        type=whole_number(1, 10000),
        default=2,
        metavar="N",
        help="per host (default 2)",
    )
    g.add_argument(
        "--statement-timeout", type=_seconds, default=60, metavar="T", help="default 60s"
    )
    g.add_argument(
        "--reporter",
        metavar="NAME",
        help="enroll a reporting role NAME (reads every row, writes none) instead of a host",
    )
    g = c.add_argument_group("revoke")
    g.add_argument("--drop", action="store_true", help="drop the role too (its rows stay)")
    g = c.add_argument_group("init (each bound of one host)")
    g.add_argument("--max-row-bytes", type=_size, metavar="SIZE", help="one row (default 32MiB)")
    g.add_argument(
        "--max-push-rows",
        type=whole_number(1),
        metavar="N",
        help="rows in one transaction (default 100000)",
    )
    g.add_argument(
        "--max-host-rows", type=whole_number(1), metavar="N", help="rows in all (default 5000000)"
    )
    g.add_argument("--max-host-bytes", type=_size, metavar="SIZE", help="in all (default 4GiB)")


def cmd_fleet(args: argparse.Namespace) -> int:
    from khod.fleet import admin  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415

    if args.action == "init":
        limits = admin.Limits(
            args.max_row_bytes, args.max_push_rows, args.max_host_rows, args.max_host_bytes
        )
        store = open_store(args.db)  # migrated to head: roles, grants, policies
        try:
            out = admin.init(store, limits)
        finally:
            store.dispose()
        if args.json:
            print_json({"database": store.location, "limits": out})
        else:
            said = ", ".join(f"{k} {v}" for k, v in out.items())
            print_text(f"fleet database {store.location} ready: {said}")
        return 0
    if args.reporter:
        role, group = admin.reader_role(args.reporter), admin.REPORT_GROUP
    elif args.machine_id:
        role, group = admin.host_role(args.machine_id), admin.HOST_GROUP
    else:
        raise KhodError(f"fleet {args.action}: name the host (MACHINE_ID) or --reporter NAME")
    store = open_store(args.db, create=False)
    try:
        if args.action == "revoke":
            res = admin.revoke(store, role, drop=args.drop)
            line = f"revoked {', '.join(res['roles'])}: {res['sessions_ended']} sessions ended"
            line += ", role dropped" if args.drop else ""
        else:
            if args.ca_cert is None or args.ca_key is None:
                raise KhodError("fleet enroll: --ca-cert and --ca-key are needed to sign")
            out_dir = args.out or Path(f"khod-fleet-{args.reporter or args.machine_id}")
            bounds = admin.RoleBounds(args.connections, args.statement_timeout)
            res = admin.enroll(
                store, role, group, ca_cert=args.ca_cert, ca_key=args.ca_key, out=out_dir,
                days=args.days, bounds=bounds,
            )  # fmt: skip
            line = (
                f"enrolled {res['role']}: {res['cert']}, {res['key']} and {res['ca']} "
                f"(valid {args.days} days); install them where [sync] cert, key and ca say"
            )
    finally:
        store.dispose()
    if args.json:
        print_json(res)
    else:
        print_text(line)
    return 0
