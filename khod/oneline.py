"""The one-line error contract of every entry point (the CLI and the daemon's
children): an error is one line on stderr and an exit status, a traceback only with
``--debug``; and text printed for a person, safe for their terminal."""

from __future__ import annotations

import errno
import io
import os
import re
import select
import sys
from collections.abc import Callable, Sequence

from khod.errors import KhodError

# not ``typing``: the daemon's boot capture imports this module before anything else
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

    from _typeshed import ReadableBuffer as Buffer


# C0 but tab and newline, DEL, C1 (U+009B is a CSI on its own)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def escape_controls(text: str) -> str:
    """Every control character but newline and tab as ``\\xNN``, as journalctl shows
    them: text from the kernel or a user can then neither move the cursor nor retitle
    or clear the operator's terminal."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


_JSON_C1 = re.compile(r"[\x7f-\x9f]")


def escape_json_controls(text: str) -> str:
    """JSON text (``ensure_ascii=False``) with DEL and the C1 controls escaped as
    ``\\u0080`` too: JSON escapes only C0, and a terminal obeys C1 (U+009B is a CSI).
    They occur only inside strings, so the JSON decodes to the same values."""
    return _JSON_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_text(text: str, file: TextIO | None = None) -> None:
    """Print text for a person: control characters escaped when ``file`` (stdout by
    default) is a terminal, exact otherwise (a pipe, a file)."""
    out = sys.stdout if file is None else file
    print(escape_controls(text) if out.isatty() else text, file=out)


class OutputError(KhodError):
    """stdout cannot be written: closed (``>&-``), or a full disk (``>/dev/full``)."""


class _Stdout(io.FileIO):
    """fd 1, whose write errors (but a broken pipe: ``run_main`` tells a reader that
    left from a real error) are ``OutputError``; ``failing``: the errno every write
    fails with (stdout was closed: fd 1 holds /dev/null only so that no file the
    command opens lands on it); not ``strict``: a failed write is dropped; ``quiet``:
    every write is dropped (the error was said)."""

    def __init__(self, failing: int | None, strict: bool) -> None:
        super().__init__(1, "w", closefd=False)
        self.failing = failing
        self.strict = strict
        self.quiet = False

    def write(self, b: Buffer) -> int:
        size = memoryview(b).nbytes
        if self.quiet:
            return size
        try:
            if self.failing is not None:
                raise OSError(self.failing, os.strerror(self.failing))
            return super().write(b) or 0
        except BrokenPipeError:
            raise
        except OSError as e:
            if not self.strict:
                return size
            raise OutputError(f"cannot write output: {e.strerror}") from None


_GUARDED: _Stdout | None = None


def guard_stdout(*, strict: bool = True) -> None:
    """At an entry point, before anything is opened: stdout's write errors become one
    line (``OutputError``) instead of a traceback. A closed fd 1 is held by /dev/null,
    so that no database or file the command opens can become its stdout. ``strict``
    False (the daemon, whose lines on stdout only inform): a write that fails is
    dropped."""
    global _GUARDED  # noqa: PLW0603  (one stdout per process)
    failing = None
    try:
        os.fstat(1)
    except OSError as e:
        failing = e.errno or errno.EBADF
        fd = os.open(os.devnull, os.O_WRONLY)
        if fd != 1:
            os.dup2(fd, 1)
            os.close(fd)
    old = sys.stdout
    raw = _Stdout(failing, strict)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=getattr(old, "encoding", None) or "utf-8",
        errors=getattr(old, "errors", None) or "strict",
        line_buffering=raw.isatty(),
        write_through=bool(getattr(old, "write_through", False)),
    )
    _GUARDED = raw


def lenient_stdout() -> None:
    """From here on (the daemon, once its command line is read), a write to the guarded
    stdout that fails is dropped."""
    if _GUARDED is not None:
        _GUARDED.strict = False


STDOUT_CLOSED = 128 + 13  # the status of a program killed by SIGPIPE, as a shell shows it


def stdout_closed() -> bool:
    """True when the reader of stdout is gone (``khoctl history | head -c1``)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    p = select.poll()
    p.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in p.poll(0))


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush must not fail again."""
    if _GUARDED is not None:
        _GUARDED.quiet = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def store_error_line(e: BaseException) -> str | None:
    """A database error (locked, failing) raised where no StoreError was made of it:
    the database and the driver's first line; None for anything else."""
    location = getattr(e, "khod_location", None)
    if location is None:
        return None
    from khod.store.handle import describe_db_error  # noqa: PLC0415  (SQLAlchemy is loaded)

    return f"database {location}: {describe_db_error(e)}"


def _print_traceback() -> None:
    """--debug's traceback; ``traceback`` is loaded only then (the daemon's boot capture
    runs under ``run_main`` before anything it does not need)."""
    import traceback  # noqa: PLC0415

    traceback.print_exc()


def run_main(
    prog: str,
    main: Callable[[Sequence[str]], int],
    argv: Sequence[str],
    config_error_status: int = 1,
) -> int:
    """Call main; turn errors into one line on stderr and an exit status (1; a
    configuration error ``config_error_status``: the daemon's is 78, EX_CONFIG).

    A closed stdout (its reader exited) ends the command quietly with status 141, as
    SIGPIPE would; a broken pipe or socket anywhere else is an error."""
    debug = "--debug" in argv
    try:
        try:
            code = main(argv)
        except SystemExit:  # argparse's --help, --version and usage errors: flushed too
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a closed stdout shows here, not in the interpreter's exit
        return code
    except KhodError as e:
        if debug:
            _print_traceback()
        if isinstance(e, OutputError):
            _quiet_stdout()  # the interpreter's last flush must not fail again
        print_text(f"{prog}: error: {e}", sys.stderr)
        from khod.conffiles import ConfigError  # noqa: PLC0415  (standard library only)

        return config_error_status if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError as e:
        if stdout_closed():
            _quiet_stdout()
            return STDOUT_CLOSED
        if debug:
            _print_traceback()
        print(
            f"{prog}: error: broken pipe: {e} (run with --debug for the traceback)", file=sys.stderr
        )
        return 1
    except Exception as e:  # the contract: one line, the traceback only with --debug
        if debug:
            _print_traceback()
        line = store_error_line(e)
        if line is not None:
            print_text(f"{prog}: error: {line}", sys.stderr)
            return 1
        print_text(
            f"{prog}: error: internal error: {type(e).__name__}: {e} "
            "(run with --debug for the traceback)",
            sys.stderr,
        )
        return 1
