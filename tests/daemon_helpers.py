"""Run the real daemon as a subprocess with a real NOTIFY_SOCKET and a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Running:
    proc: subprocess.Popen[str]
    port: int
    notify: socket.socket
    state: Path
    db: str
    messages: list[str] = field(default_factory=list)

    def url(self, path: str = "/metrics") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url(), timeout=10) as r:
            return str(r.read().decode())

    def wait_for(self, message: str, timeout: float = 60.0) -> float:
        """Collect sd_notify datagrams until one equals ``message``; return when."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.notify.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.notify.recv(4096).decode()
            except TimeoutError:
                break
            for line in data.splitlines():
                self.messages.append(line)
                if line == message:
                    return time.monotonic()
            if self.proc.poll() is not None:
                break
        raise AssertionError(
            f"no {message!r} from khod; got {self.messages}; exit {self.proc.poll()}"
        )


@contextmanager
def running_daemon(
    sysroot: Path,
    tmp: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    state_dir: bool = True,
    prefix: Sequence[str] = (),
) -> Iterator[Running]:
    """``state_dir=False``: no ``--state-dir`` (the config file's or the default);
    ``prefix`` runs khod under another command (e.g. ``unshare``)."""
    sock_path = tmp / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    port = free_port()
    state = tmp / "state"
    db = f"sqlite:///{tmp / 'khod.db'}"
    proc = subprocess.Popen(
        [
            *prefix,
            str(BIN / "khod"),
            "--sysroot",
            str(sysroot),
            "--db",
            db,
            *(["--state-dir", str(state)] if state_dir else []),
            "--listen",
            f"127.0.0.1:{port}",
            "--no-watch-modules",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "NOTIFY_SOCKET": str(sock_path), "KHOD_DB": "", **(env or {})},
    )
    run = Running(proc, port, notify, state, db)
    try:
        yield run
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        notify.close()
        if proc.stdout:
            proc.stdout.close()
