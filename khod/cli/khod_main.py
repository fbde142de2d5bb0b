"""khod: record this boot's kexec handover (KHO) state and pstore records; without
``--once``, stay up to serve Prometheus metrics.

The command line is parsed once (``parser``); the daemon's first act after that is the
boot capture (``khod.sources.capture``, standard library only): this module imports
nothing else at the top, so that capture happens before SQLAlchemy or
prometheus-client are loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# not ``typing``: the daemon's boot capture imports this module before anything else
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_STATE_DIR = "/var/lib/khod"  # khod.config.Config.state_dir


def default_state_dir() -> str:
    if os.geteuid() == 0:
        return DEFAULT_STATE_DIR
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "khod")


def resolve_state_dir(cli: str | None, configured: str | None) -> str:
    """The one rule for the state dir (spool, snapshot), used by the early capture and
    by the configuration: ``--state-dir``, else ``store.state_dir`` from the config
    file, else the default (for root /var/lib/khod)."""
    if cli:
        return cli
    if configured and configured != DEFAULT_STATE_DIR:
        return configured
    return default_state_dir()


def configured_state_dir(config: Any) -> str | None:
    """``store.state_dir`` from ``--config`` (or the default file) and its drop-ins,
    merged as the configuration merges them (``khod.conffiles``: standard library only,
    before the configuration's parser is loaded). A file that cannot be read or parsed
    is skipped here; the full parser reports it right after."""
    from khod.conffiles import DEFAULT_PATH, ConfigError, merged  # noqa: PLC0415

    try:
        _, values = merged(str(config) if config else DEFAULT_PATH, lenient=True)
    except ConfigError:
        return None
    _, value = values.get(("store", "state_dir"), ("", None))
    return value if isinstance(value, str) else None


def early_capture(args: Any) -> str | None:
    """Daemon start: spool this boot's incoming state before anything heavy is imported,
    into the state dir the ingest will look in (``resolve_state_dir``)."""
    from khod.cli.options import host_paths  # noqa: PLC0415
    from khod.errors import KhodError  # noqa: PLC0415
    from khod.sources.capture import capture  # noqa: PLC0415

    try:
        paths = host_paths(args)  # the one HostPaths of this command line
    except KhodError:
        return None  # not a directory: the ingest right after says so, in one line
    cli = args.state_dir
    state = resolve_state_dir(cli, None if cli else configured_state_dir(args.config))
    try:
        return capture(paths, os.path.join(state, "spool"))
    except OSError as e:
        print(f"khod: warning: boot capture failed: {e.strerror}", file=sys.stderr)
        return None


def parser() -> Any:
    import argparse  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from khod import __version__  # noqa: PLC0415
    from khod.cli.options import HelpFormatter, add_common, whole_number  # noqa: PLC0415

    p = argparse.ArgumentParser(
        prog="khod",
        formatter_class=HelpFormatter,
        description="Record this boot's kexec handover "
        "(KHO) state and the previous kernel's last words.",
    )
    add_common(p)
    p.add_argument("--once", action="store_true", help="ingest this boot and exit")
    p.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help="configuration file (default: /etc/khod/khod.toml, if present)",
    )
    p.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        help="serve /metrics here (daemon.listen; default 127.0.0.1:9733)",
    )
    p.add_argument(
        "--textfile",
        metavar="PATH",
        help="also write the metrics here, for node_exporter (daemon.textfile)",
    )
    p.add_argument(
        "--no-watch-modules",
        action="store_true",
        help="do not rescan pstore when a module loads (daemon.watch_modules)",
    )
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="spool and metrics snapshot (store.state_dir; default /var/lib/khod for root)",
    )
    p.add_argument(
        "--own-pstore",
        action="store_true",
        default=None,
        help="unlink /sys/fs/pstore files once their records are committed "
        "(pstore.own; only where nothing else collects them)",
    )
    p.add_argument(
        "--pstore-inflate-limit",
        metavar="SIZE",
        help="keep a compressed pstore record raw past this size (pstore.inflate_"
        "limit; default 16MiB)",
    )
    p.add_argument(
        "--max-boots",
        type=whole_number(),
        metavar="N",
        help="retention.max_boots (default 10000)",
    )
    p.add_argument("--max-age", metavar="AGE", help="retention.max_age (default 730d)")
    p.add_argument("--max-bytes", metavar="SIZE", help="retention.max_bytes (default 1GiB)")
    p.add_argument(
        "--journal",
        action="store_true",
        help="with --once: send journal entries for the boot and the pstore records this "
        "ingest recorded new (the daemon always does; khod-pstore.service asks)",
    )
    # the daemon's own ingests take these from it (khod.ingest.pipeline.IngestJob);
    # on the command line they are for tests and the benchmarks
    p.add_argument("--snapshot", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--pstore-rescan", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--store-checked", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--capture-only", action="store_true", help=argparse.SUPPRESS)  # a benchmark
    p.add_argument("--version", action="version", version=f"khod {__version__}")
    return p


def effective_config(args: Any) -> Any:
    """The config file, then the command line over it; errors name the key."""
    from dataclasses import replace  # noqa: PLC0415

    from khod.config import (  # noqa: PLC0415
        load_config,
        parse_duration,
        parse_listen,
        parse_size,
    )
    from khod.store.location import store_url  # noqa: PLC0415

    cfg = load_config(args.config)
    over: dict[str, Any] = {}
    if args.listen is not None:
        over["listen"] = parse_listen(args.listen, "--listen")
    if args.textfile is not None:
        over["textfile"] = args.textfile
    if args.no_watch_modules:
        over["watch_modules"] = False
    over["db"] = store_url(args.db, cfg.db)
    if args.own_pstore:
        over["own_pstore"] = True
    if args.pstore_inflate_limit is not None:
        over["inflate_limit"] = parse_size(args.pstore_inflate_limit, "--pstore-inflate-limit")
    if args.max_boots is not None:
        over["max_boots"] = args.max_boots
    if args.max_bytes is not None:
        over["max_bytes"] = parse_size(args.max_bytes, "--max-bytes")
    if args.max_age is not None:
        over["max_age"] = parse_duration(args.max_age, "--max-age")
    over["state_dir"] = resolve_state_dir(args.state_dir, cfg.state_dir)
    return replace(cfg, **over)


def job(args: Any, cfg: Any, paths: Any, obs: Any = None) -> Any:
    """The ``khod.contracts.IngestJob`` this command line asks for."""
    from khod.contracts import IngestJob  # noqa: PLC0415

    return IngestJob(
        cfg,
        paths,
        obs,
        rescan=args.pstore_rescan,
        snapshot=args.snapshot,
        journal=args.journal,
        store_checked=args.store_checked,
        textfile=cfg.textfile if args.once else "",  # the daemon writes its own
    )


def main(argv: Sequence[str]) -> int:
    """khod in-process (the tests): the daemon's first ingest is forked here."""
    return run_args(parser().parse_args(argv))


def run_args(args: Any, first: Any = None) -> int:
    """khod for a parsed command line; ``first``: the daemon's first ingest, forked
    already (``khod.daemon.first_ingest``)."""
    cfg = effective_config(args)
    from khod.cli.common import host_paths  # noqa: PLC0415
    from khod.ingest.pipeline import run_ingest  # noqa: PLC0415

    paths = host_paths(args)
    if args.once:
        return run_ingest(job(args, cfg, paths))
    from pathlib import Path  # noqa: PLC0415

    from khod.daemon.loop import Daemon  # noqa: PLC0415
    from khod.daemon.settings import Settings  # noqa: PLC0415

    def settings(c: Any) -> Settings:
        return Settings(paths, args.config, c, Path(c.state_dir), c.db, args.debug)

    s = settings(cfg)
    args.snapshot, args.journal = s.snapshot, True
    if first is None:
        from khod.daemon.first_ingest import FirstIngest  # noqa: PLC0415

        first = FirstIngest.fork()
    # collected in a child: the resident process never loads the parsers or the bytes
    first.collect_and_send(job(args, s.cfg, paths))
    return Daemon(s, lambda: settings(effective_config(args))).run(first)


def run() -> None:
    from khod.oneline import guard_stdout, lenient_stdout, run_main  # noqa: PLC0415

    guard_stdout()  # before the capture opens any file; --help and --version write to it
    os.umask(0o077)  # the state dir, spool, database and snapshot are private
    argv = sys.argv[1:]
    parsed: list[Any] = []

    def parse(a: Sequence[str]) -> int:
        parsed.append(parser().parse_args(a))
        return 0

    # --help, --version and a usage error end here (SystemExit), under the one-line contract
    code = run_main("khod", parse, argv)
    if not parsed:
        sys.exit(code)
    args = parsed[0]
    if args.capture_only:  # the boot-capture benchmark
        sys.exit(0 if early_capture(args) else 1)
    first = None
    if not args.once:
        lenient_stdout()  # the daemon's lines on stdout only inform
        early_capture(args)
        # the daemon: fork the first ingest now; it loads SQLAlchemy while this process
        # reads the configuration and collects, then it stores what it is sent
        from khod.daemon.first_ingest import FirstIngest  # noqa: PLC0415

        first = FirstIngest.fork()
    # the daemon's configuration error is 78 (EX_CONFIG): khod.service does not restart
    # on it (RestartPreventExitStatus=78), since retrying cannot fix a file
    code = run_main(
        "khod",
        lambda _argv: run_args(args, first),
        ["--debug"] if args.debug else [],
        config_error_status=1 if args.once else 78,
    )
    if first is not None:
        first.abandon()  # never sent (an error before the daemon started): quietly
    sys.exit(code)


if __name__ == "__main__":
    run()
