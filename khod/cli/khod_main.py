"""khod: record this boot's kexec handover (KHO) state and pstore records; without
``--once``, stay up to serve Prometheus metrics.

The daemon's first act is the boot capture (``khod.sources.capture``, standard library only):
this module imports nothing else at the top, so that capture happens before argparse,
SQLAlchemy or prometheus-client are loaded.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any


def _argv_value(argv: Sequence[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


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


def configured_state_dir(argv: Sequence[str]) -> str | None:
    """``store.state_dir`` from ``--config`` or the default file and its drop-ins, merged
    as the configuration merges them (``khod.conffiles``: standard library only, before
    the configuration's parser is loaded). A file that cannot be read or parsed is
    skipped here; the full parser reports it right after."""
    from khod.conffiles import DEFAULT_PATH, ConfigError, merged  # noqa: PLC0415

    try:
        _, values = merged(_argv_value(argv, "--config") or DEFAULT_PATH, lenient=True)
    except ConfigError:
        return None
    _, value = values.get(("store", "state_dir"), ("", None))
    return value if isinstance(value, str) else None


def early_capture(argv: Sequence[str]) -> str | None:
    """Daemon start: spool this boot's incoming state before anything heavy is imported,
    into the state dir the ingest will look in (``resolve_state_dir``)."""
    if "--once" in argv or any(a in argv for a in ("-h", "--help", "--version")):
        return None
    from khod.sources.capture import capture  # noqa: PLC0415

    root = _argv_value(argv, "--sysroot") or "/"
    cli = _argv_value(argv, "--state-dir")
    state = resolve_state_dir(cli, None if cli else configured_state_dir(argv))
    try:
        return capture(root, os.path.join(state, "spool"))
    except OSError as e:
        print(f"khod: warning: boot capture failed: {e.strerror}", file=sys.stderr)
        return None


def parser() -> Any:
    import argparse  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from khod import __version__  # noqa: PLC0415
    from khod.cli.common import add_common, whole_number  # noqa: PLC0415

    p = argparse.ArgumentParser(
        prog="khod",
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

    cfg = load_config(args.config)
    over: dict[str, Any] = {}
    if args.listen is not None:
        over["listen"] = parse_listen(args.listen, "--listen")
    if args.textfile is not None:
        over["textfile"] = args.textfile
    if args.no_watch_modules:
        over["watch_modules"] = False
    if args.db is not None:
        over["db"] = args.db
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
    args = parser().parse_args(argv)
    cfg = effective_config(args)
    from khod.cli.common import host_paths  # noqa: PLC0415
    from khod.ingest.pipeline import run_ingest  # noqa: PLC0415

    paths = host_paths(args)
    if args.once:
        return run_ingest(job(args, cfg, paths))
    from pathlib import Path  # noqa: PLC0415

    from khod.daemon.loop import Daemon  # noqa: PLC0415
    from khod.daemon.settings import Settings  # noqa: PLC0415

    def settings() -> Settings:
        c = effective_config(args)
        return Settings(args.sysroot, args.config, c, Path(c.state_dir), c.db or None, args.debug)

    s = settings()
    args.snapshot, args.journal = s.snapshot, True
    if FIRST_INGEST is None:  # main() called in-process (tests): fork here
        from khod.daemon.first_ingest import FirstIngest  # noqa: PLC0415

        first = FirstIngest.fork()
    else:
        first = FIRST_INGEST
    # collected in a child: the resident process never loads the parsers or the bytes
    first.collect_and_send(job(args, s.cfg, paths))
    return Daemon(s, settings).run(first)


FIRST_INGEST: Any = None  # the daemon's pre-forked first ingest (khod.daemon.first_ingest)


def run() -> None:
    global FIRST_INGEST  # noqa: PLW0603
    argv = sys.argv[1:]
    from khod.oneline import guard_stdout  # noqa: PLC0415  (standard library only)

    guard_stdout(strict=not _daemon_mode(argv))  # before the capture opens any file
    os.umask(0o077)  # the state dir, spool, database and snapshot are private
    if "--capture-only" in argv:  # the boot-capture benchmark
        sys.exit(0 if early_capture([a for a in argv if a != "--capture-only"]) else 1)
    if early_capture(argv) is not None or _daemon_mode(argv):
        # the daemon: fork the first ingest now; it loads SQLAlchemy while this process
        # parses the command line and collects, then it stores what it is sent
        from khod.daemon.first_ingest import FirstIngest  # noqa: PLC0415

        FIRST_INGEST = FirstIngest.fork()
    from khod.cli.common import run_main  # noqa: PLC0415

    # the daemon's configuration error is 78 (EX_CONFIG): khod.service does not restart
    # on it (RestartPreventExitStatus=78), since retrying cannot fix a file
    code = run_main("khod", main, argv, config_error_status=78 if _daemon_mode(argv) else 1)
    if FIRST_INGEST is not None:
        FIRST_INGEST.abandon()  # never sent (an error before the daemon started): quietly
    sys.exit(code)


def _daemon_mode(argv: Sequence[str]) -> bool:
    return "--once" not in argv and not any(a in argv for a in ("-h", "--help", "--version"))


if __name__ == "__main__":
    run()
