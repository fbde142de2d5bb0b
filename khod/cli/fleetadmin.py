"""khoctl fleet init|enroll|revoke|rollups|retain: the operator's side of fleet trust
(khod.fleet.admin), of the report's rollups (khod.fleet.rollups_admin) and of what the
fleet database keeps (khod.fleet.retain), run against the fleet database with its owner
role (``--db URL``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from khod.cli import fleetretain
from khod.cli.common import Cmd, print_json, print_text, whole_number
from khod.errors import KhodError

if TYPE_CHECKING:
    from khod.store.handle import Store


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
    from khod.cli.common import add_common, add_config  # noqa: PLC0415

    fleet = cmd(
        "fleet", "fleet database trust: CA, certificates, roles, bounds (owner's --db)", cmd_fleet
    )
    sub = fleet.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_, description=help_)
        add_common(c, command=True)
        add_config(c, command=True)
        c.add_argument("--json", action="store_true", help="print the outcome as JSON")
        return c

    c = action("ca", "make the fleet's CA: ca.crt and ca.key (keep the key off the servers)")
    c.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR", help="where to write (default .)"
    )
    c.add_argument("--name", default="khod fleet CA", help="its CN (default 'khod fleet CA')")
    c.add_argument(
        "--days", type=whole_number(1, 100000), default=3650, metavar="N", help="default 3650"
    )
    c = action(
        "server-cert",
        "a key and certificate for the database server, signed by the fleet CA",
    )
    c.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="the names (or addresses) hosts use in their URL; the first is the CN",
    )
    _ca_args(c)
    c.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR",
        help="where to write server.crt and server.key (default .)",
    )  # fmt: skip
    _days(c)
    c = action("init", "lock the fleet database down (roles, grants, policies) and set bounds")
    c.add_argument("--max-row-bytes", type=_size, metavar="SIZE", help="one row (default 32MiB)")
    c.add_argument(
        "--max-push-rows",
        type=whole_number(1),
        metavar="N",
        help="rows in one transaction (default 100000)",
    )
    c.add_argument(
        "--max-host-rows", type=whole_number(1), metavar="N", help="rows in all (default 5000000)"
    )
    c.add_argument("--max-host-bytes", type=_size, metavar="SIZE", help="in all (default 4GiB)")
    c = action("enroll", "a host's role and client certificate (or a reporting role's)")
    c.add_argument("machine_id", nargs="?", metavar="MACHINE_ID", help="the host's machine id")
    _ca_args(c)
    c.add_argument(
        "--out", type=Path, metavar="DIR", help="where to write (default ./khod-fleet-MACHINE_ID)"
    )
    _days(c)
    c.add_argument(
        "--connections",
        type=whole_number(1, 10000),
        default=2,
        metavar="N",
        help="per host (default 2)",
    )
    c.add_argument(
        "--statement-timeout", type=_seconds, default=60, metavar="T", help="default 60s"
    )
    c.add_argument(
        "--reporter",
        metavar="NAME",
        help="enroll a reporting role NAME (reads every row, writes none) instead of a host",
    )
    c = action("revoke", "the host (or reporting role) may no longer connect; its rows stay")
    c.add_argument("machine_id", nargs="?", metavar="MACHINE_ID", help="the host's machine id")
    c.add_argument("--reporter", metavar="NAME", help="revoke a reporting role instead")
    c.add_argument("--drop", action="store_true", help="drop the role too (its rows stay)")
    c = action(
        "rollups",
        "whether the report's rollups (PostgreSQL) agree with the rows, counted again; "
        "rebuild them from the rows",
    )
    how = c.add_mutually_exclusive_group()
    how.add_argument(
        "--check",
        action="store_true",
        help="compare them with the rows (the default): exit 1 where they differ",
    )
    how.add_argument(
        "--rebuild",
        action="store_true",
        help="replace them with the rows' counts in one transaction, holding off every "
        "write to boots, pstore_records and kexec_attempts (hosts' pushes wait) until it "
        "commits; then check",
    )

    c = action(
        "retain",
        "delete the boots older than --max-age, with what hangs off them (each machine's "
        "newest boot is kept)",
    )
    fleetretain.arguments(c)


def _ca_args(c: argparse.ArgumentParser) -> None:
    c.add_argument("--ca-cert", type=Path, metavar="PATH", help="the fleet CA's certificate")
    c.add_argument("--ca-key", type=Path, metavar="PATH", help="the fleet CA's private key")


def _days(c: argparse.ArgumentParser) -> None:
    c.add_argument(
        "--days",
        type=whole_number(1, 100000),
        default=397,
        metavar="N",
        help="certificate validity (default 397)",
    )


def _at_head(store: Store, action: str) -> None:
    """Enrolling and revoking never migrate the fleet database (its hosts may run the
    previous release, docs/fleet-versions.md): at another revision, one line."""
    from khod.store.db import current_revision  # noqa: PLC0415
    from khod.store.schema import HEAD_REVISION  # noqa: PLC0415

    rev = current_revision(store)
    if rev != HEAD_REVISION:
        raise KhodError(
            f"fleet {action}: database {store.location} is at schema revision {rev}, this "
            f"khoctl at {HEAD_REVISION}: upgrade it first (khoctl db upgrade --db URL), "
            "or use the khoctl of its revision"
        )


def _keeps_rollups(store: Store) -> None:
    """``fleet rollups`` reads and rebuilds the tables of any revision that keeps them
    (0013 on, as this khoctl knows them); before, or newer than this khoctl: one line."""
    from khod.fleet.rollup import SINCE_REVISION  # noqa: PLC0415
    from khod.store import migrate  # noqa: PLC0415
    from khod.store.db import current_revision  # noqa: PLC0415

    rev = current_revision(store)
    if rev is not None and migrate.knows(rev) and migrate.at_or_after(rev, SINCE_REVISION):
        return
    _at_head(store, "rollups")  # the line that says what to do


def cmd_fleet(args: argparse.Namespace) -> int:
    from khod.fleet import admin  # noqa: PLC0415

    if args.action in ("ca", "server-cert"):
        return _certs(args)
    if args.action == "rollups":
        return _rollups(args)
    if args.action == "retain":
        return fleetretain.cmd_retain(args)
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
            print_json({"database": store.location, "limits": out}, "fleet")
        else:
            said = ", ".join(f"{k} {v}" for k, v in out.items())
            print_text(f"fleet database {store.location} ready: {said}")
        return 0
    if args.action == "enroll" and args.ca_cert is not None:
        args.db = _root_cert_default(args.db, args.ca_cert)
    if args.reporter:
        role, group = admin.reader_role(args.reporter), admin.REPORT_GROUP
    elif args.machine_id:
        role, group = admin.host_role(args.machine_id), admin.HOST_GROUP
    else:
        raise KhodError(f"fleet {args.action}: name the host (MACHINE_ID) or --reporter NAME")
    store = open_store(args.db, create=False, migrate=False)
    try:
        _at_head(store, args.action)
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
            role = res["role"]  # a host enrolled again after a revocation: a new name
            files = f"{res['cert']}, {res['key']} and {res['ca']} (valid {args.days} days)"
            if args.reporter:
                line = (
                    f"enrolled {role}: {files}; the reader connects as {role} with them: "
                    "sslcert=, sslkey= and sslrootcert= in its URL, or a Grafana PostgreSQL "
                    "data source's TLS client certificate, key and CA"
                )
            else:
                line = (
                    f"enrolled {role}: {files}; install them on the host where its [sync] "
                    "cert, key and ca say (default /etc/khod/fleet/)"
                )
    finally:
        store.dispose()
    if args.json:
        print_json(res, "fleet")
    else:
        print_text(line)
    return 0


SQLITE_ROLLUPS = "a SQLite store keeps no rollups: the report counts every row"


def _rollups(args: argparse.Namespace) -> int:
    """Check (exit 1 where they differ) or rebuild the rollups; never migrates."""
    from khod.fleet import rollups_admin  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415

    store = open_store(args.db, create=False, migrate=False)
    try:
        if store.url.get_backend_name() != "postgresql":
            res: dict[str, object] = {"database": store.location, "kept": False}
            lines = [SQLITE_ROLLUPS]
            ok = True
        else:
            _keeps_rollups(store)
            res = {"database": store.location, "kept": True}
            lines = []
            if args.rebuild:
                done = rollups_admin.rebuild(store)
                res["rebuilt"] = done
                lines.append(
                    f"rebuilt the rollups: {done['boot_rows']} boot rows ({done['boots']} "
                    f"boots), {done['attempt_rows']} attempt rows ({done['attempts']} "
                    f"attempts); {done['changed_boot_rows']} boot rows, "
                    f"{done['changed_attempt_rows']} attempt rows, "
                    f"{done['changed_host_rows']} host totals and "
                    f"{done['changed_transition_rows']} transition totals had differed"
                )
            out = rollups_admin.check(store)
            res.update(out)
            ok = bool(out["agree"])
            if out["triggers_off"]:
                tables = sorted({t.split(".")[0] for t in out["triggers_off"]})
                lines.append(
                    f"rollup triggers not firing: {', '.join(out['triggers_off'])}: the "
                    "rollups miss every write until they do (ALTER TABLE ... ENABLE "
                    f"TRIGGER USER on {', '.join(tables)}; then khoctl fleet rollups "
                    "--rebuild)"
                )
            if not out["differing_machines"] and not out["differing_transition_rows"]:
                lines.append(
                    f"rollups agree with {out['boots']} boots and {out['attempts']} attempts"
                )
            else:
                more = out["differing_machines"] - len(out["machines"])
                named = ", ".join(out["machines"]) + (f" and {more} more" if more else "")
                totals = (
                    f", {out['differing_host_rows']} host totals, "
                    f"{out['differing_transition_rows']} transition totals"
                    if out["differing_host_rows"] or out["differing_transition_rows"]
                    else ""
                )
                lines.append(
                    f"rollups differ: {out['differing_boot_rows']} boot rows, "
                    f"{out['differing_attempt_rows']} attempt rows{totals} ("
                    + (f"machines {named}: " if named else "")
                    + "run khoctl fleet rollups --rebuild)"
                )
    finally:
        store.dispose()
    if args.json:
        print_json(res, "rollups")
    else:
        for line in lines:
            print_text(line)
    return 0 if ok else 1


def _root_cert_default(db: str | None, ca_cert: Path) -> str | None:
    """A PostgreSQL ``--db`` that names no ``sslrootcert`` verifies the server against
    the fleet CA given in ``--ca-cert`` (libpq would look in ~/.postgresql/root.crt)."""
    if not db:
        return db
    from sqlalchemy.engine import make_url  # noqa: PLC0415
    from sqlalchemy.exc import ArgumentError  # noqa: PLC0415

    try:
        url = make_url(db)
    except ArgumentError:
        return db  # open_store says what is wrong with it
    if url.get_backend_name() != "postgresql" or "sslrootcert" in url.query:
        return db
    url = url.update_query_dict({"sslrootcert": str(ca_cert.resolve())})
    return url.render_as_string(hide_password=False)


def _certs(args: argparse.Namespace) -> int:
    from khod.fleet import certs  # noqa: PLC0415

    out: Path = args.out
    if args.action == "ca":
        for name in ("ca.key", "ca.crt"):
            if (out / name).exists():
                raise KhodError(f"fleet ca: {out / name} exists: not replacing a CA")
        crt, key = certs.make_ca(out, args.name, args.days)
        res = {"cert": str(crt), "key": str(key)}
        line = f"fleet CA {crt} and its key {key} (valid {args.days} days)"
    else:
        if args.ca_cert is None or args.ca_key is None:
            raise KhodError("fleet server-cert: --ca-cert and --ca-key are needed to sign")
        issued = certs.issue(
            args.ca_cert, args.ca_key, args.names[0], out / "server.crt", out / "server.key",
            days=args.days, server_names=tuple(args.names),
        )  # fmt: skip
        res = {"cert": str(issued.cert), "key": str(issued.key), "names": args.names}
        line = (
            f"server certificate {issued.cert} for {', '.join(args.names)} and its key "
            f"{issued.key} (valid {args.days} days): ssl_cert_file and ssl_key_file"
        )
    if args.json:
        print_json(res, "fleet")
    else:
        print_text(line)
    return 0
