"""khoctl export, import, sync and report: moving records to the fleet database and
asking it which kernel transition is the bad one."""

from __future__ import annotations

import argparse
import gzip
import io
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from khod.cli.common import Cmd, fraction, print_json, print_text, whole_number
from khod.errors import KhodError
from khod.records import DERIVED_CHOICES

SINCE_HELP = (
    "boots at or after TIME, as journalctl takes it: yesterday, -2h, '2026-11-01 08:00' "
    "(local time unless --utc), @EPOCH, or an age (7d)"
)


def add_parsers(cmd: Cmd) -> None:
    c = cmd("export", "write the store as JSON Lines (format khod-export, version 1)", cmd_export)
    c.add_argument("-S", "--since", metavar="TIME", help=SINCE_HELP)
    c.add_argument("-U", "--until", metavar="TIME", help="boots at or before TIME")
    c.add_argument(
        "-o", "--output", metavar="FILE", help="write here (.gz compresses; default stdout)"
    )
    c.add_argument("--quiet", action="store_true", help="no progress line")
    c = cmd(
        "import",
        "read khod-export files into the store; rows already there are skipped",
        cmd_import,
    )
    c.add_argument("files", nargs="+", metavar="FILE", help="an export (.gz too), or - for stdin")
    c.add_argument("--json", action="store_true", help="print JSON (see khoctl(8))")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c = cmd(
        "sync", "push the rows the fleet database has not had yet (store-and-forward)", cmd_sync
    )
    c.add_argument("--to", metavar="URL", help="the fleet database (default: sync.to in config)")
    c.add_argument("--full", action="store_true", help="send everything again (it is deduped)")
    c.add_argument("--quiet", action="store_true", help="no progress line")
    c.add_argument("--json", action="store_true", help="print JSON (see khoctl(8))")
    c = cmd("report", "fleet reports: which kernel transitions crash", cmd_report)
    c.add_argument("report", choices=("transitions",))
    c.add_argument("-S", "--since", metavar="TIME", help=SINCE_HELP)
    c.add_argument("-U", "--until", metavar="TIME", help="boots at or before TIME")
    c.add_argument("--json", action="store_true", help="print JSON (see khoctl(8))")
    c.add_argument(
        "--include-cold", action="store_true", help="add each release's cold boots as a baseline"
    )
    c.add_argument(
        "--derived",
        choices=DERIVED_CHOICES,
        default="include",
        help="the boots through a kexec whose chain khod derived itself (metadata_source "
        "attempt or derived): counted with the kernel's (include, the default), left out "
        "(exclude), or alone (only)",
    )
    c.add_argument(
        "--recompute",
        action="store_true",
        help="count every boot and attempt again instead of reading the rollups",
    )
    c.add_argument(
        "--min-boots",
        type=whole_number(),
        default=1,
        metavar="N",
        help="hide rows with fewer boots, attempts",
    )
    c.add_argument(
        "--textfile",
        metavar="PATH",
        help="also write the rows as Prometheus metrics (node_exporter's textfile collector)",
    )
    c.add_argument(
        "--bad-rate",
        type=fraction(),
        default=0.05,
        metavar="R",
        help="mark a transition bad at this crash rate (default 0.05), in --textfile",
    )
    c.add_argument(
        "--bad-min-boots",
        type=whole_number(),
        default=20,
        metavar="N",
        help="... once it has at least N boots (default 20)",
    )
    # the defaults of khod.fleet.stats.Thresholds (not imported here: start-up time)
    c.add_argument(
        "--alpha",
        type=fraction(open_low=True, open_high=True),
        default=0.01,
        metavar="P",
        help="false alarms: a healthy transition is ever called worse, over every run of "
        "the report, with chance at most P; and at most P of one report's worse are "
        "false (default 0.01)",
    )
    c.add_argument(
        "--min-evidence",
        type=whole_number(),
        default=5,
        metavar="N",
        help="a verdict needs at least N hosts in the transition and in its baseline (default 5)",
    )
    c.add_argument(
        "--window",
        metavar="D",
        help="a boot counts for the crash and warning rates once D has passed since it "
        "landed (default: [fleet] window of the configuration, else 24h)",
    )


def _range(args: argparse.Namespace) -> tuple[float | None, float | None]:
    from khod.cli.bootsel import time_range  # noqa: PLC0415

    return time_range(args)


def cmd_export(args: argparse.Namespace) -> int:
    from khod.fleet.export import export  # noqa: PLC0415
    from khod.store.db import open_reader  # noqa: PLC0415

    since, until = _range(args)
    to_stdout = args.output in (None, "-")
    # a progress line on a terminal, unless the export itself goes to that terminal
    bar = _bar("export", args, to_stdout)
    on_row = None if bar is None else (lambda rows: bar.update(None, rows))
    store = open_reader(args.db, read_only=None)  # written to only to mark the export
    try:
        from khod.store.retention import last_pstore_id, mark_exported  # noqa: PLC0415

        upto = last_pstore_id(store)  # every pstore row up to it is in a full export
        if to_stdout:
            out: IO[str] = sys.stdout
            counts = export(store, out, since, on_row, until)
            out.flush()
            where = "stdout"
        else:
            from khod.atomic import atomic_file  # noqa: PLC0415

            path = Path(args.output)
            try:
                with atomic_file(path) as raw:
                    binary: Any = (
                        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0)
                        if path.suffix == ".gz"
                        else raw
                    )
                    text = io.TextIOWrapper(binary, encoding="utf-8")
                    counts = export(store, text, since, on_row, until)
                    text.flush()
                    text.detach()
                    if binary is not raw:
                        binary.close()  # the gzip trailer, before the file is flushed
            except OSError as e:
                raise KhodError(f"cannot write {path}: {e.strerror or e}") from None
            where = str(path)
        if since is None and until is None:  # a whole export
            from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

            from khod.store.handle import describe_db_error  # noqa: PLC0415

            try:
                mark_exported(store, upto)
            except SQLAlchemyError as e:
                print(
                    f"khoctl: warning: export not recorded: {describe_db_error(e)}", file=sys.stderr
                )
    finally:
        if bar is not None:
            bar.done()
        store.dispose()
    from khod.fleet.importer import PLURAL  # noqa: PLC0415

    summary = ", ".join(f"{n} {PLURAL[kind]}" for kind, n in counts.items())
    print(f"khoctl: exported {summary} to {where}", file=sys.stderr)
    return 0


class Progress:
    """One line on a terminal, redrawn at most five times a second."""

    def __init__(self, name: str, total: int | None, stream: IO[str]) -> None:
        self.name = name
        self.total = total
        self.stream = stream
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def update(self, done: int | None, rows: int) -> None:
        """``done``: bytes read of ``total``; None: rows only (export, sync)."""
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        rate = rows / max(now - self.start, 1e-6)
        if done is None:
            head = self.name
        elif self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            head = f"{self.name} [{bar:<30}] {frac:4.0%}"
        else:
            head = f"{self.name} {done >> 20} MiB"
        self.stream.write(f"\r{head} {rows} rows, {rate:,.0f}/s\x1b[K")
        self.stream.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _bar(name: str, args: argparse.Namespace, to_stdout: bool = False) -> Progress | None:
    """A progress line on stderr when it is a terminal (and not --quiet)."""
    if args.quiet or not sys.stderr.isatty() or (to_stdout and sys.stdout.isatty()):
        return None
    return Progress(name, None, sys.stderr)


def _import_file(importer: Any, name: str, show: bool) -> Any:
    from khod.fleet.stream import import_stream  # noqa: PLC0415

    raw: Any
    if name == "-":
        raw = sys.stdin.buffer
    else:
        try:
            raw = open(name, "rb")  # noqa: SIM115  (closed below)
        except OSError as e:
            raise KhodError(f"cannot read {name}: {e.strerror}") from None
    try:
        gz = hasattr(raw, "peek") and raw.peek(2)[:2] == b"\x1f\x8b"
        lines: Any = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        total = os.fstat(raw.fileno()).st_size if name != "-" else None
        bar = Progress(name, total, sys.stderr) if show else None
        before = sum(importer.counts.read.values())

        def progress(consumed: int) -> None:
            if bar is not None:
                rows = sum(importer.counts.read.values()) - before
                bar.update(raw.tell() if raw.seekable() else consumed, rows)

        try:
            result = import_stream(importer, lines, name, progress)
            importer.flush()
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise KhodError(f"cannot read {name}: {e}") from None
        finally:
            if bar is not None:
                bar.done()
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()
    return result


def cmd_import(args: argparse.Namespace) -> int:
    from khod.fleet.importer import Importer  # noqa: PLC0415
    from khod.store.db import open_store  # noqa: PLC0415

    for name in args.files:  # before a database is created for nothing
        if name != "-" and not os.path.isfile(name):
            why = "not a file" if os.path.exists(name) else "No such file or directory"
            raise KhodError(f"cannot read {name}: {why}")
    store = open_store(args.db)
    importer = Importer(store)
    bad = 0
    files = []
    show = sys.stderr.isatty() and not args.quiet and not args.json
    try:
        for name in args.files:
            result = _import_file(importer, name, show)
            for line in result.bad:
                print_text(f"khoctl: warning: {line}", sys.stderr)
            if result.bad_count > len(result.bad):
                more = result.bad_count - len(result.bad)
                print(f"khoctl: warning: {name}: {more} more bad lines", file=sys.stderr)
            importer.record_refused(
                "import-refused", result.bad, result.bad_count - len(result.bad)
            )
            bad += result.bad_count
            files.append({"file": name, "lines": result.lines, "bad": result.bad_count})
    finally:
        store.dispose()
    c = importer.counts
    if args.json:
        print_json(
            {
                "files": files,
                "read": c.ordered(c.read),
                "new": c.ordered(c.new),
                "raised_warnings": c.raised,
                "unknown_boot": c.unknown_boot,
                "bad": bad,
                "chunks": {"bulk": c.bulk_chunks, "line_by_line": c.line_chunks},
            },
            "import",
        )
    else:
        parts = c.summary()
        print_text(f"imported {', '.join(parts) or 'nothing'} into {store.location}")
        if c.unknown_boot:
            print_text(
                f"{c.unknown_boot} rows skipped: their boot is in neither the file nor the store"
            )
        if bad:
            print(f"{bad} bad lines skipped")
    return 1 if bad else 0


def sync_target(args: argparse.Namespace) -> tuple[str, Any]:
    """The fleet database's URL (--to, else sync.to) and the TLS settings of [sync]."""
    from khod.config import DEFAULT_PATH, load_config  # noqa: PLC0415
    from khod.fleet.tls import TlsSettings  # noqa: PLC0415

    cfg = load_config(args.config, required=args.config is not None)
    tls = TlsSettings(cfg.sync_sslmode, cfg.sync_ca, cfg.sync_cert, cfg.sync_key)
    if args.to:
        return str(args.to), tls
    if not cfg.sync_to:
        where = args.config or DEFAULT_PATH
        raise KhodError(f"no fleet database: pass --to URL or set sync.to in {where}")
    return cfg.sync_to, tls


def cmd_sync(args: argparse.Namespace) -> int:
    from khod.fleet.sync import push  # noqa: PLC0415

    to, tls = sync_target(args)
    bar = _bar("sync", args)
    try:
        result = push(
            to,
            args.db,
            full=args.full,
            tls=tls,
            on_row=None if bar is None else (lambda rows: bar.update(None, rows)),
        )
    finally:
        if bar is not None:
            bar.done()
    c = result.counts
    for line in result.refused[:10]:
        print_text(f"khoctl: warning: {line}", sys.stderr)
    if len(result.refused) > 10:
        print(f"khoctl: warning: {len(result.refused) - 10} more rows not sent", file=sys.stderr)
    if args.json:
        print_json(
            {
                "target": result.target,
                "sent": c.ordered(c.read),
                "new": c.ordered(c.new),
                "raised_warnings": c.raised,
                "refused": len(result.refused),
            },
            "sync",
        )
    else:
        print_text(result.line())
    return 1 if result.refused else 0


def cmd_report(args: argparse.Namespace) -> int:
    from khod.cli.transitions import cmd_report as report  # noqa: PLC0415

    return report(args, *_range(args))
