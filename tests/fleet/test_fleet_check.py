"""The fleet verdict a host reads before it kexecs ([fleet] verdicts): whatever is at
that path or URL (hostile, broken, slow, not a file), the check is one warning line and
the kexec is not stopped by it; only a readable report that calls the transition worse
is an error."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from khod.checks import fleet
from khod.checks.base import ERROR, WARNING

WORSE = [{"previous_release": "6.1", "release": "6.2", "verdict": "worse", "rates": {}}]


def check(source: str) -> tuple[bool, str, str]:
    c = fleet.check_fleet(source, "6.1", "6.2")
    assert c is not None
    assert "\n" not in c.detail and len(c.detail) < 400 + len(source)
    return c.ok, c.severity, c.detail


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # nested past the recursion limit
        json.dumps([{**WORSE[0], "rates": [1]}]).encode(),
        json.dumps([{**WORSE[0], "rates": {"crash": {"verdict": "worse", "hosts": [1]}}}]).encode(),
        json.dumps(
            [{**WORSE[0], "rates": {"crash": {"verdict": "worse", "baseline": "x"}}}]
        ).encode(),
        b"\xff\xfe garbage",
        b'{"not": "a list"}',
    ],
)
def test_a_hostile_report_file_is_a_warning_or_an_honest_verdict(
    tmp_path: Path, body: bytes
) -> None:
    report = tmp_path / "report.json"
    report.write_bytes(body)
    ok, severity, detail = check(str(report))
    assert not ok
    if severity == ERROR:  # a readable report that says worse, whatever else it holds
        assert detail.startswith("the fleet calls 6.1 -> 6.2 worse")
    else:
        assert severity == WARNING and detail.startswith("cannot read the fleet's verdicts at ")


def test_a_fifo_at_the_reports_path_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "report.json"
    os.mkfifo(fifo)
    ok, severity, detail = check(str(fifo))
    assert (ok, severity) == (False, WARNING) and "not a regular file" in detail


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[str]:
    """A server that answers every connection with ``request.param`` and closes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(request.param)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/report.json"
    stop.set()
    t.join()
    sock.close()


@pytest.mark.parametrize(
    "server",
    [
        b"garbage\r\n\r\n",  # not HTTP
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # a bad chunk
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n[",  # cut short
    ],
    indirect=True,
)
def test_a_broken_http_answer_is_a_warning(server: str) -> None:
    ok, severity, detail = check(server)
    assert (ok, severity) == (False, WARNING), detail
    assert detail.startswith(f"cannot read the fleet's verdicts at {server}: ")


def test_a_readable_worse_report_is_an_error(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps(WORSE))
    assert check(str(report))[:2] == (False, ERROR)
