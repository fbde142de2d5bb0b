"""A child process the daemon's loop watches (an ingest, a sync): read without
blocking, killed at its deadline, so the loop never waits on it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Sequence
from typing import IO, Protocol


class Selectable(Protocol):
    """What the loop waits on with ``select``: a socket, a pipe, the uevent monitor."""

    def fileno(self) -> int: ...


class Child:
    """A child process the loop watches: its output (stderr too) read as it comes,
    never blocking; killed when it is still running at its deadline."""

    def __init__(
        self, argv: list[str], timeout: float, what: str, stdin: bytes | None = None
    ) -> None:
        self.what = what
        self.timeout = timeout
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.out = b""
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if stdin is not None:  # its job: small, and read first thing
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # gone: its output says why
                try:
                    self.proc.stdin.write(stdin)
                finally:
                    self.proc.stdin.close()

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    def step(self, ready: Sequence[Selectable]) -> int | None:
        """Its exit status once it has ended (or was stopped at its deadline), else None."""
        done = False
        if self.stdout in ready:
            chunk = os.read(self.stdout.fileno(), 65536)
            self.out = (self.out + chunk)[-65536:]
            done = not chunk  # EOF: the child is exiting
        if not done and time.monotonic() > self.deadline:
            self.proc.kill()
            self.out += f"{self.what}: no answer in {self.timeout:.0f}s, stopped\n".encode()
            done = True
        if not done:
            return None
        rc = self.proc.wait()
        self.stdout.close()
        return rc

    def lines(self, prefix: str) -> list[str]:
        text = self.out.decode(errors="replace")
        return [line.removeprefix(prefix) for line in text.splitlines() if line.strip()]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.stdout.close()
